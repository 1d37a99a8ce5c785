"""NVFP4 linear layer vs cuBLAS BF16 and cuBLAS FP8 at DiT linear shapes (GPU).

    pytest bench/test_bench_gemm.py -m gpu -s -p no:cacheprovider

Shapes: the nn.Linear (K -> N) projections of FLUX.1 (hidden 3072, MLP 12288), SD3.5-L
(2432, 9728) and SANA 1.6B (2240, 5600), at M = 4096, 8192, 16384 tokens. Per case, on fresh
random bf16 data: a reference check first (each of our paths vs the float64 product of the
dequantized operands, on the first 1024 rows), then the GPU time of one call (CUDA-graph
replay, bench/timing.py: host launch overhead excluded and recorded separately) of
  * cuBLAS BF16: torch.matmul(x, w^T)                                  (baseline 1)
  * cuBLAS FP8: torch._scaled_mm, row-wise scales, inputs pre-quantized (baseline 2: cuBLAS's
    nvjet kernel with outer-vector scales, torch 2.11 + CUDA 13 on the H200), and the same
    with per-tensor scales (another nvjet kernel, ~6% faster), so both readings are on record
  * ours, "fp8" storage: nvfp4_linear(x, w) incl. activation quantization (backend auto)
  * ours, "packed" storage (4.5-bit weights): the same (auto: on Hopper the weight expanded
    to E4M3 per call, then the CUTLASS GEMM), and with backend="triton" (the Triton packed
    GEMM, auto until session 5)
  * ours GEMM only (activations pre-quantized), both storages
all in the same run. TFLOP/s count 2*M*N*K. Each figure goes to bench/results.json through
record(); a table is printed at the end and written to bench/logs/gemm_bench.txt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timing import gpu_ms, host_us

from solrl_kernels import nvfp4
from solrl_kernels.gemm import nvfp4_linear, prepare_weight, resolve_backend, set_activation_reuse
from solrl_kernels.gemm import ops as gemm_ops
from solrl_kernels.gemm.reference import nvfp4_linear_reference, relative_error
from solrl_kernels.gemm.weight import quantize_to_fp8

LINEARS = {  # model: [(K, N), ...]
    "flux": [(3072, 3072), (3072, 12288), (12288, 3072)],
    "sd35l": [(2432, 2432), (2432, 9728), (9728, 2432)],
    "sana": [(2240, 2240), (2240, 5600), (5600, 2240)],
}
MS = [4096, 8192, 16384]
CASES = [pytest.param(model, K, N, M, id=f"{model}-{K}x{N}-M{M}")
         for model, shapes in LINEARS.items() for K, N in shapes for M in MS]
TABLE: list[dict] = []


def _median_ms(fn) -> float:
    return gpu_ms(fn, rep_ms=50)[0]


def _tflops(M, N, K, ms):
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


@pytest.fixture(scope="module", autouse=True)
def quantize_every_call():
    """Every timed nvfp4_linear call quantizes its input: the repeated x would otherwise reuse
    the first call's activation (solrl_kernels/gemm/activation_cache.py) and time the GEMM."""
    set_activation_reuse(False)
    yield
    set_activation_reuse(True)


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    if not TABLE:
        return
    head = (f"{'case':24s} {'BF16':>7s} {'FP8cuBLAS':>9s} {'FP8-LtPT':>8s} {'ours fp8':>9s} "
            f"{'xBF16':>6s} {'xFP8':>5s} {'xLtPT':>5s} {'packed':>7s} {'xBF16':>6s} {'xFP8':>5s} {'gemm fp8':>8s} "
            f"{'gemm pk':>8s} {'pk-tri':>7s} {'err fp8':>8s} {'err pk':>8s} {'GPU us':>7s} "
            f"{'host us':>7s}"
            "   (TFLOP/s by CUDA-graph replay; x = speed ratio; us: one nvfp4_linear fp8 call)")
    lines = [head]
    for r in TABLE:
        lines.append(
            f"{r['case']:24s} {r['bf16']:7.0f} {r['fp8']:9.0f} {r['fp8_lt']:8.0f} "
            f"{r['ours_fp8']:9.0f} {r['ours_fp8'] / r['bf16']:6.2f} {r['ours_fp8'] / r['fp8']:5.2f} "
            f"{r['ours_fp8'] / r['fp8_lt']:5.2f} "
            f"{r['ours_packed']:7.0f} {r['ours_packed'] / r['bf16']:6.2f} "
            f"{r['ours_packed'] / r['fp8']:5.2f} {r['gemm_fp8']:8.0f} {r['gemm_packed']:8.0f} "
            f"{r['packed_triton']:7.0f} "
            f"{r['err_fp8']:8.1e} {r['err_packed']:8.1e} {r['gpu_us']:7.0f} {r['host']:7.0f}")
    text = "\n".join(lines)
    print("\n" + text)
    log = Path(__file__).with_name("logs")
    log.mkdir(exist_ok=True)
    (log / "gemm_bench.txt").write_text(text + "\n")


@pytest.mark.gpu
@pytest.mark.parametrize("model,K,N,M", CASES)
def test_bench_nvfp4_linear(benchmark, model, K, N, M):
    from record import record

    torch.cuda.empty_cache()
    gen = torch.Generator(device="cuda").manual_seed(M * 7 + N * 3 + K)
    x = torch.randn(M, K, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02
    w_fp8 = prepare_weight(w, storage="fp8")
    w_packed = prepare_weight(w, storage="packed")
    backend_fp8 = resolve_backend(w_fp8, x.device)
    backend_packed = resolve_backend(w_packed, x.device)

    # reference check first (first 1024 rows), float64 of the dequantized operands
    rows = min(M, 1024)
    wt = nvfp4.quantize(w, "fp8_exact", granularity="row")
    ref = nvfp4_linear_reference(x[:rows], wt, None, "none", torch.float64)
    # float32 outputs: bf16 rounding alone would be ~1.5e-3 (tests/test_gemm.py)
    err_fp8 = relative_error(nvfp4_linear(x[:rows], w_fp8, out_dtype=torch.float32), ref)
    err_packed = relative_error(nvfp4_linear(x[:rows], w_packed, out_dtype=torch.float32), ref)
    assert err_fp8 <= 1e-3 and err_packed <= 1e-3, (err_fp8, err_packed)

    a, sa = quantize_to_fp8(x)
    sa = sa.reshape(-1)
    b, sb = w_fp8.values, w_fp8.global_scale.reshape(-1)
    t_bf16 = _median_ms(lambda: torch.matmul(x, w.T))
    t_fp8 = _median_ms(lambda: torch._scaled_mm(a, b.t(), scale_a=sa.reshape(-1, 1),
                                                scale_b=sb.reshape(1, -1),
                                                out_dtype=torch.bfloat16))
    one = torch.ones((), device="cuda")
    t_fp8_lt = _median_ms(lambda: torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one,
                                                   out_dtype=torch.bfloat16))
    t_ours_fp8 = _median_ms(lambda: nvfp4_linear(x, w_fp8))
    t_ours_packed = _median_ms(lambda: nvfp4_linear(x, w_packed))
    t_packed_triton = _median_ms(lambda: nvfp4_linear(x, w_packed, backend="triton"))
    if backend_fp8 == "native":
        gemm_fp8 = lambda: torch.ops.solrl_kernels.fp8_gemm_sm90(a, b, sa, sb, None, "none",
                                                                  torch.bfloat16)
    else:
        gemm_fp8 = lambda: gemm_ops.fp8_gemm_triton(a, b, sa, sb, None, "none", torch.bfloat16)
    t_gemm_fp8 = _median_ms(gemm_fp8)
    t_gemm_packed = _median_ms(lambda: gemm_ops.nvfp4_gemm_packed_triton(
        a, w_packed.data, w_packed.scales, sa, sb, None, "none", torch.bfloat16))
    host = host_us(lambda: nvfp4_linear(x, w_fp8))
    benchmark.pedantic(lambda: nvfp4_linear(x, w_fp8), rounds=1, iterations=1)

    tf = {k: _tflops(M, N, K, t) for k, t in dict(
        bf16=t_bf16, fp8=t_fp8, fp8_lt=t_fp8_lt, ours_fp8=t_ours_fp8,
        ours_packed=t_ours_packed,
        packed_triton=t_packed_triton, gemm_fp8=t_gemm_fp8, gemm_packed=t_gemm_packed).items()}
    case = f"{model}-{K}x{N}-M{M}"
    TABLE.append(dict(case=case, err_fp8=err_fp8, err_packed=err_packed, host=host,
                      gpu_us=t_ours_fp8 * 1e3, **tf))
    benchmark.extra_info.update(case=case, backend_fp8=backend_fp8,
                                backend_packed=backend_packed, **tf)
    weight_bytes = dict(bf16=w.numel() * 2, fp8=w_fp8.nbytes(), packed=w_packed.nbytes())
    for variant, key, backend in (("fp8", "ours_fp8", backend_fp8),
                                  ("packed", "ours_packed", backend_packed)):
        extra = dict(M=M, N=N, K=K, backend=backend, incl_activation_quant=True,
                     x_cublas_fp8=tf[key] / tf["fp8"], cublas_fp8_tflops=tf["fp8"],
                     x_cublaslt_fp8_per_tensor=tf[key] / tf["fp8_lt"],
                     weight_bytes_ratio_vs_bf16=weight_bytes[variant] / weight_bytes["bf16"],
                     rel_err=err_fp8 if variant == "fp8" else err_packed, timing="cuda_graph",
                     host_us_per_call=host)
        record(f"gemm/nvfp4_linear[{variant}]/{case}", "TFLOP/s", tf[key], "cuBLAS BF16",
               tf["bf16"], **extra)
    record(f"gemm/nvfp4_linear[packed-triton]/{case}", "TFLOP/s", tf["packed_triton"],
           "cuBLAS BF16", tf["bf16"], M=M, N=N, K=K, backend="triton",
           incl_activation_quant=True, x_cublas_fp8=tf["packed_triton"] / tf["fp8"],
           weight_bytes_ratio_vs_bf16=weight_bytes["packed"] / weight_bytes["bf16"],
           timing="cuda_graph")
    for variant, key in (("fp8", "gemm_fp8"), ("packed", "gemm_packed")):
        record(f"gemm/gemm_only[{variant}]/{case}", "TFLOP/s", tf[key], "cuBLAS FP8 _scaled_mm",
               tf["fp8"], M=M, N=N, K=K, x_bf16=tf[key] / tf["bf16"])
