"""Tune the CUTLASS FP8 GEMM on the GPU: schedule (tile, swizzle, raster) and fp32 promotion.

    python bench/gemm_schedule_sweep.py                     # schedules, 9 DiT (K, N) x 3 M
    python bench/gemm_schedule_sweep.py --what promotion    # promotion intervals 4/8/12/16
    python bench/gemm_schedule_sweep.py --what promotion --tile 2   # ... of another tile
    python bench/gemm_schedule_sweep.py --what tiles        # tile configs x raster orders
    python bench/gemm_schedule_sweep.py --what baselines    # the op's default vs every cuBLAS FP8
    python bench/gemm_schedule_sweep.py --ms 8192           # one M

For every shape, in one run: torch._scaled_mm (rowwise, bf16 out: the baseline), then
``_fp8_gemm_sm90_tile`` for every configuration. "schedules": every (tile, swizzle, raster),
each output compared bit for bit against the default schedule's (scheduling moves tiles
between SMs, never the arithmetic). "promotion": tile --tile (default 0) with the fp32
promotion every 4, 8, 12, 16 wgmma k-blocks (K = 128 ... 512), each with the accumulation
error it adds on top of the bf16 output rounding (acc_err), plus a K = 15360 shape. "tiles":
every tile config x raster order at the default swizzle and promotion, each output compared
bit for bit against the default tile's (same k-order of the accumulation). "baselines": the
op's default schedule against the other ways torch runs an FP8 GEMM on pre-quantized inputs:
per-tensor scales, without and with fast accumulation (with torch 2.11 + CUDA 13 on the H200
all three, row-wise included, are cuBLAS nvjet kernels); the kernel each one launches is
printed once (torch.profiler).
GPU time by CUDA-graph replay. Prints one line per shape and the geometric mean of each
configuration over all shapes (ratio to cuBLAS FP8). Nothing goes to results.json: the
configuration the op then uses is measured by the benchmarks.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/

from timing import gpu_ms  # noqa: E402

from solrl_kernels._backends import FP8_GEMM_SM90_TILES  # noqa: E402
from solrl_kernels.gemm.reference import relative_error  # noqa: E402

SHAPES_KN = [(3072, 3072), (3072, 12288), (12288, 3072), (2432, 2432), (2432, 9728),
             (9728, 2432), (2240, 2240), (2240, 5600), (5600, 2240)]
TILES = {t: name for t, name in FP8_GEMM_SM90_TILES.items() if t >= 0}  # forced tiles
SWIZZLES = (1, 2, 4, 8)
RASTERS = {0: "heur", 1: "alongM", 2: "alongN"}
PROMOTIONS = (4, 8, 12, 16)
E4M3 = torch.float8_e4m3fn


def acc_err(out: torch.Tensor, a, w, sa, sw, rows: int = 512) -> float:
    """The accumulation's own relative error, separated from the bf16 output rounding.

    e_out = |out - ref| / |ref| against the float64 product; the rounding floor e_bf16 =
    |bf16(ref) - ref| / |ref|; the two are nearly independent, so the accumulation adds
    sqrt(e_out^2 - e_bf16^2) (0 when below the estimate's resolution)."""
    ref = (a[:rows].double() @ w.double().T) * sa[:rows, None].double() * sw[None, :].double()
    e_out = relative_error(out[:rows], ref)
    e_bf16 = relative_error(ref.to(torch.bfloat16), ref)
    return math.sqrt(max(e_out**2 - e_bf16**2, 0.0))


def _operands(M: int, K: int, N: int):
    torch.manual_seed(M + K + N)
    a = (torch.randn(M, K, device="cuda") * 2).to(E4M3)
    w = (torch.randn(N, K, device="cuda") * 2).to(E4M3)
    sa = torch.rand(M, device="cuda") + 0.5
    sw = torch.rand(N, device="cuda") * 0.05 + 0.01
    return a, w, sa, sw


def _cublas_fp8(a, w, sa, sw) -> dict:
    """torch._scaled_mm on the pre-quantized operands, bf16 out: row-wise scales (the baseline
    of every sweep) first, then per-tensor scales without and with fast accumulation."""
    one = torch.ones((), device="cuda")
    bf16 = torch.bfloat16
    return {
        "cuBLAS row-wise": lambda: torch._scaled_mm(a, w.T, scale_a=sa[:, None],
                                                    scale_b=sw[None, :], out_dtype=bf16),
        "cuBLAS per-tensor": lambda: torch._scaled_mm(a, w.T, scale_a=one, scale_b=one,
                                                      out_dtype=bf16),
        "cuBLAS per-tensor fast-acc": lambda: torch._scaled_mm(
            a, w.T, scale_a=one, scale_b=one, out_dtype=bf16, use_fast_accum=True),
    }


def sweep_shape(M: int, K: int, N: int, what: str, tile: int = 0) -> dict[str, float]:
    """TFLOP/s of cuBLAS FP8 ("cublas8") and of each config ("tile/swizzle/raster/promotion");
    "err <config>": the accumulation error of each promotion interval (what="promotion")."""
    op = torch.ops.solrl_kernels._fp8_gemm_sm90_tile
    a, w, sa, sw = _operands(M, K, N)
    bf16 = torch.bfloat16
    tf = lambda ms: 2.0 * M * N * K / (ms * 1e-3) / 1e12  # noqa: E731
    cublas = _cublas_fp8(a, w, sa, sw)
    res = {"cublas8": tf(gpu_ms(cublas.pop("cuBLAS row-wise"), 20)[0])}
    if what == "baselines":
        for key, fn in cublas.items():
            res[key] = tf(gpu_ms(fn, 20)[0])
        res["ours default"] = tf(gpu_ms(lambda: torch.ops.solrl_kernels.fp8_gemm_sm90(
            a, w, sa, sw, None, "none", bf16), 20)[0])
        return res
    if what == "schedules":
        configs = [(t, s, r, 8) for t, s, r in itertools.product(TILES, SWIZZLES, RASTERS)]
    elif what == "tiles":
        configs = [(t, 1, r, 8) for t, r in itertools.product(TILES, RASTERS)]
    else:
        configs = [(tile, 1, 0, p) for p in PROMOTIONS]
    default_out = op(a, w, sa, sw, None, "none", bf16, 0)
    for t, s, r, p in configs:
        out = op(a, w, sa, sw, None, "none", bf16, t, s, r, p)
        if (t == 0 or what == "tiles") and p == 8 and not torch.equal(out, default_out):
            raise SystemExit(f"M={M} K={K} N={N} tile {t} swizzle {s} raster {r}: output differs "
                             "from the default schedule's")
        key = f"{TILES[t]}/s{s}/{RASTERS[r]}/p{p}"
        res[key] = tf(gpu_ms(lambda t=t, s=s, r=r, p=p: op(a, w, sa, sw, None, "none", bf16,
                                                              t, s, r, p), 20)[0])
        if what == "promotion":
            res["err " + key] = acc_err(out, a, w, sa, sw)
    return res


def print_kernels(M: int = 4096, K: int = 3072, N: int = 3072) -> None:
    """The CUDA kernels each cuBLAS FP8 GEMM of the "baselines" sweep launches (one call each)."""
    for name, fn in _cublas_fp8(*_operands(M, K, N)).items():
        fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kernels = sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})
        print(f"{name}: {kernels}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--what", choices=("schedules", "promotion", "tiles", "baselines"),
                    default="schedules",
                    help="schedules: tile x swizzle x raster; promotion: fp32 promotion intervals "
                    f"{PROMOTIONS} at the default schedule, with their accumulation error; "
                    "tiles: tile x raster; baselines: the op against per-tensor cuBLAS")
    ap.add_argument("--tile", type=int, choices=sorted(TILES), default=0,
                    help="the tile of the promotion sweep")
    args = ap.parse_args()
    from solrl_kernels import _backends

    if not _backends.native_ops_available():  # loads solrl_kernels._C
        raise SystemExit(f"solrl_kernels._C unavailable: {_backends.native_unavailable_reason()}")

    if args.what == "baselines":
        print_kernels()
    rows = []
    shapes = [(M, K, N) for M in args.ms for K, N in SHAPES_KN]
    if args.what == "promotion":
        shapes.append((2048, 15360, 3072))  # the longest K of the accuracy requirement
    for M, K, N in shapes:
        r = sweep_shape(M, K, N, args.what, args.tile)
        rows.append(r)
        cfgs = [k for k in r if k != "cublas8" and not k.startswith("err")]
        print(f"M={M:5d} K={K:5d} N={N:5d} cublas8 {r['cublas8']:6.0f} | " + "  ".join(
            f"{k} {r[k] / r['cublas8']:.3f}" + (f" (err {r['err ' + k]:.1e})" if "err " + k in r
                                                  else "") for k in cfgs), flush=True)
    print("\ngeomean over shapes, ours / cuBLAS FP8 (TFLOP/s ratio), per config:")
    for k in sorted(cfgs, key=lambda k: -sum(math.log(r[k] / r["cublas8"]) for r in rows)):
        g = math.exp(sum(math.log(r[k] / r["cublas8"]) for r in rows) / len(rows))
        print(f"  {k:24s} {g:.3f}")


if __name__ == "__main__":
    main()
