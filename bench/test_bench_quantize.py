"""Quantization throughput (GB/s, bytes read + written) against a device copy, same run.

    pytest bench/test_bench_quantize.py --benchmark-enable -s

Bytes counted are the fewest the job must move: input read once, outputs written once.
The baseline is ``dst.copy_(src)`` of the same input tensor (2 bytes read + 2 written per
bf16 element). Each case is first checked bit-exact against the plain-torch reference on a
slice; GB/s are from the GPU time of a call (CUDA-graph replay, bench/timing.py), and the
host time per call is printed and recorded beside it. Each case runs through the public
function with backend="auto" (whichever kernel nvfp4.api's routing picks for the shape) and,
recorded with a "[triton]" / "[cuda]" suffix, with each kernel forced (the scale search has
no CUDA kernel), so that the routing can be checked against the same run.
"""

from __future__ import annotations

import pytest
import torch
from record import record
from timing import gpu_ms, host_us

from solrl_kernels import nvfp4
from solrl_kernels.nvfp4 import reference as ref
from solrl_kernels.nvfp4.testing import assert_same_nvfp4

pytestmark = pytest.mark.gpu

SHAPES = [(8192, 8192), (16384, 5120), (24576, 3072)]  # 64M, 80M, 72M elements


def _gbps(fn, nbytes: int) -> tuple[float, str]:
    ms, how = gpu_ms(fn, rep_ms=200)
    return nbytes / (ms * 1e-3) / 1e9, how


def _cases(x, backend):
    R, K = x.shape
    n = R * K
    packed_out = n // 2 + n // 16  # codes + E4M3 scales
    gs = ref.global_scale_from_amax(x.float().abs().max(), "rn")
    return {
        # name: (fn, bytes moved, reference check)
        "quantize rn, given global scale": (
            lambda: nvfp4.quantize(x, "rn", global_scale=gs, check_finite=False, backend=backend),
            2 * n + packed_out,
        ),
        "quantize rn, tensor amax pass included": (
            lambda: nvfp4.quantize(x, "rn", check_finite=False, backend=backend),
            2 * n + packed_out,
        ),
        "quantize fp8_exact, per-row scale (one pass)": (
            lambda: nvfp4.quantize(x, "fp8_exact", granularity="row", check_finite=False,
                                   backend=backend),
            2 * n + packed_out + 4 * R,
        ),
        "quantize fp8_exact+search, per-row": (
            lambda: nvfp4.quantize(x, "fp8_exact", scale_search=True, granularity="row",
                                   check_finite=False, backend=backend),
            2 * n + packed_out + 4 * R,
        ),
        "quantize_to_fp8 (E4M3 container), per-row": (
            lambda: nvfp4.quantize_to_fp8(x, granularity="row", backend=backend),
            2 * n + n + 4 * R,
        ),
        "quantize rn, blocked scales": (
            lambda: nvfp4.quantize(x, "rn", global_scale=gs, check_finite=False,
                                   scale_layout="blocked", backend=backend),
            2 * n + packed_out,
        ),
    }


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bench_quantize(benchmark, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    x[:, :16] *= 50  # outlier channel, as in DiT activations
    # correctness first: the kernels reproduce the reference bits on a slice
    sl = x[:256]
    for rule, search, gran in (("rn", False, "tensor"), ("fp8_exact", False, "row"),
                               ("fp8_exact", True, "row")):
        for backend in ("triton",) if search else ("cuda", "triton"):
            assert_same_nvfp4(nvfp4.quantize(sl, rule, search, gran, backend=backend),
                              ref.quantize(sl.cpu(), rule, search, gran), sl if search else None)

    y = torch.empty_like(x)
    n = x.numel()
    copy_gbps, copy_how = _gbps(lambda: y.copy_(x), 4 * n)
    deq = nvfp4.quantize(x, "rn", check_finite=False)
    cases = _cases(x, "auto")
    for backend in ("triton", "cuda"):
        cases.update({f"{name} [{backend}]": case for name, case in _cases(x, backend).items()
                      if backend == "triton" or "search" not in name})
    cases["dequantize -> bf16"] = (lambda: nvfp4.dequantize(deq, torch.bfloat16),
                                   n // 2 + n // 16 + 2 * n)
    rows = []
    for name, (fn, nbytes) in cases.items():
        gbps, how = _gbps(fn, nbytes)
        host = host_us(fn)
        rec = record(f"{name} {shape[0]}x{shape[1]} bf16", "GB/s", gbps,
                     "device copy (torch copy_)", copy_gbps, timing=how,
                     baseline_timing=copy_how, host_us_per_call=host)
        rows.append((name, gbps, rec["ratio"], how, host))

    print(f"\n{shape}: copy {copy_gbps:.0f} GB/s ({copy_how})")
    for name, gbps, ratio, how, host in rows:
        print(f"  {name:57s} {gbps:7.0f} GB/s  {ratio:5.2f}x copy  ({how}; host {host:.0f} us/call)")
    benchmark.pedantic(
        lambda: (nvfp4.quantize_to_fp8(x), torch.cuda.synchronize()), rounds=20, warmup_rounds=3
    )
