"""The linear layers of one FLUX.1 single-stream block: NVFP4 vs BF16, sharing the quantized
activation between siblings or not (GPU).

    pytest bench/test_bench_block.py -m gpu -s -p no:cacheprovider

A FLUX.1 single-stream block (hidden 3072, MLP 12288) runs five linears: q, k, v and the MLP
up-projection all read the same normalized hidden states x (M, 3072), and proj_out reads the
concatenated attention output and GELU(MLP) (M, 15360). One call of the timed function is
those five GEMMs on fresh views of the two inputs (a new view per call: the activation cache
keys on the tensor object, so the repeats inside one CUDA-graph replay cannot share). Cases:
  * BF16: five torch.matmul (cuBLAS)                                        (baseline)
  * NVFP4 "fp8" storage, activation reuse on: x quantized once for its 4 readers
  * the same with reuse off: x quantized 4 times
GPU time by CUDA-graph replay (bench/timing.py); the reuse works inside a capture because
the cache keys entries on the capture id (solrl_kernels._C). M = 4608 (1024 px: 4096 image +
512 text tokens) and 2 x 4608.
"""

from __future__ import annotations

import pytest
import torch
from timing import gpu_ms

from solrl_kernels.gemm import nvfp4_linear, prepare_weight, set_activation_reuse

HIDDEN, MLP = 3072, 12288
MS = [4608, 9216]


@pytest.mark.gpu
@pytest.mark.parametrize("M", MS)
def test_bench_flux_single_block_linears(benchmark, M):
    from record import record

    from solrl_kernels._backends import native_ops_available

    torch.cuda.empty_cache()
    gen = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(M, HIDDEN, device="cuda", generator=gen, dtype=torch.bfloat16)
    h = torch.randn(M, HIDDEN + MLP, device="cuda", generator=gen, dtype=torch.bfloat16)
    shapes = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, HIDDEN), "v": (HIDDEN, HIDDEN),
              "mlp": (MLP, HIDDEN), "proj_out": (HIDDEN, HIDDEN + MLP)}
    w16 = {k: torch.randn(*s, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02
           for k, s in shapes.items()}
    w4 = {k: prepare_weight(w, storage="fp8") for k, w in w16.items()}
    readers_of_x = ("q", "k", "v", "mlp")

    def bf16():
        return [x @ w16[k].T for k in readers_of_x] + [h @ w16["proj_out"].T]

    def nvfp4():
        xv, hv = x.view_as(x), h.view_as(h)  # fresh tensor objects per call (see module doc)
        return [nvfp4_linear(xv, w4[k]) for k in readers_of_x] + [nvfp4_linear(hv, w4["proj_out"])]

    flops = 2.0 * M * sum(n * k for n, k in shapes.values())
    tf = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
    t = {"bf16": gpu_ms(bf16, 50)[0]}
    for reuse in (True, False):
        set_activation_reuse(reuse)
        try:
            t[f"reuse={reuse}"] = gpu_ms(nvfp4, 50)[0]
        finally:
            set_activation_reuse(True)
    benchmark.pedantic(nvfp4, rounds=1, iterations=1)
    speed = {k: tf(v) for k, v in t.items()}
    print(f"\nFLUX single block linears M={M}: BF16 {speed['bf16']:.0f} TFLOP/s; NVFP4 reuse "
          f"{speed['reuse=True']:.0f} ({speed['reuse=True'] / speed['bf16']:.2f}x), no reuse "
          f"{speed['reuse=False']:.0f} ({speed['reuse=False'] / speed['bf16']:.2f}x); "
          f"capture id readable: {native_ops_available()}")
    for reuse in (True, False):
        record(f"block/flux_single_linears[fp8,reuse={reuse}]/M{M}", "TFLOP/s",
               speed[f"reuse={reuse}"], "cuBLAS BF16", speed["bf16"], M=M,
               timing="cuda_graph", gemms=5, activation_reuse=reuse)
    assert speed["reuse=True"] >= speed["reuse=False"] * 0.98  # sharing never costs
