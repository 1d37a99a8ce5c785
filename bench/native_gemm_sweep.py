"""GPU sweep of the CUTLASS FP8 GEMM (torch.ops.solrl_kernels.fp8_gemm_sm90) at DiT linear shapes.

    python bench/native_gemm_sweep.py                 # full sweep: 7 (K, N) x M in 4096/8192/16384
    python bench/native_gemm_sweep.py --quick         # 3 shapes, M = 8192
    python bench/native_gemm_sweep.py --tiles         # also time each tile config of the op
    python bench/native_gemm_sweep.py --no-record     # print only, leave bench/results.json alone

Shapes (K, N): FLUX.1 / SD3.5-L (3072 <-> 12288, 3072 x 3072), SD3.5-L MLP (2432 <-> 9728),
SANA (2240 <-> 5600); M = tokens. Inputs: fresh random E4M3 activations (M, K) and weights
(N, K), per-row fp32 scales (M,) and per-column scales (N,). For every shape, in one run:

  ours       fp8_gemm_sm90(a, w, s_a, s_w, None, "none", bf16)
  ours+epi   the same with a bf16 bias and GELU-tanh fused (the cost of the epilogue)
  cublas8    torch._scaled_mm(a, w.T, s_a (M,1), s_w (1,N), out_dtype=bf16) (rowwise, no fast accum)
  cublas16   torch.matmul(x_bf16, w_bf16.T)

First a reference check (ours vs float64 on 256 rows, rel. error after bf16 rounding), then
medians of CUDA-event timings (triton.testing.do_bench, warm-up first). Speeds are TFLOP/s and
ratios against cuBLAS FP8 / BF16 timed in the same run; records go to bench/results.json
through bench/record.py.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ (record.py)

from solrl_kernels._backends import FP8_GEMM_SM90_TILES  # noqa: E402

SHAPES_KN = [(3072, 3072), (3072, 12288), (12288, 3072), (2432, 9728), (9728, 2432),
             (2240, 5600), (5600, 2240)]
MS = [4096, 8192, 16384]
TILES = {t: name for t, name in FP8_GEMM_SM90_TILES.items() if t >= 0}  # forced tiles
E4M3 = torch.float8_e4m3fn


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))


def tflops(M: int, N: int, K: int, ms: float) -> float:
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


def reference_check(a, w, sa, sw, out, rows: int = 256) -> float:
    """Relative error of out[:rows] vs float64, after rounding the reference to bf16."""
    ref = (a[:rows].double() @ w.double().T) * sa[:rows, None].double() * sw[None, :].double()
    ref = ref.to(torch.bfloat16).double()
    return float((out[:rows].double() - ref).norm() / ref.norm())


def bench_shape(M: int, K: int, N: int, tiles: bool) -> dict:
    """Reference check, then TFLOP/s of every case at one shape."""
    op = torch.ops.solrl_kernels
    torch.manual_seed(M + K + N)
    x = torch.randn(M, K, device="cuda")
    wt = torch.randn(N, K, device="cuda") * 0.05
    a = (x * 2).to(E4M3)
    w = (wt * 40).to(E4M3)
    sa = torch.rand(M, device="cuda") + 0.5
    sw = torch.rand(N, device="cuda") * 0.05 + 0.01
    bias = torch.randn(N, device="cuda").to(torch.bfloat16)
    x16, w16 = x.to(torch.bfloat16), wt.to(torch.bfloat16)

    out = op.fp8_gemm_sm90(a, w, sa, sw, None, "none", torch.bfloat16)
    err = reference_check(a, w, sa, sw, out)
    if err > 1e-3:
        raise SystemExit(f"reference check failed at M={M} K={K} N={N}: rel err {err:.2e}")
    wT = w.T  # (K, N) column-major view: what _scaled_mm wants for its second operand
    cases = {
        "ours": lambda: op.fp8_gemm_sm90(a, w, sa, sw, None, "none", torch.bfloat16),
        "ours+epi": lambda: op.fp8_gemm_sm90(a, w, sa, sw, bias, "gelu_tanh", torch.bfloat16),
        "cublas8": lambda: torch._scaled_mm(a, wT, scale_a=sa[:, None], scale_b=sw[None, :],
                                            out_dtype=torch.bfloat16),
        "cublas16": lambda: torch.matmul(x16, w16.T),
    }
    if tiles:
        for t, name in TILES.items():
            cases[f"ours[{name}]"] = (
                lambda t=t: op._fp8_gemm_sm90_tile(a, w, sa, sw, None, "none", torch.bfloat16, t))
    times = {k: bench_ms(fn) for k, fn in cases.items()}
    return {"M": M, "K": K, "N": N, "rel_err": err,
            **{k: tflops(M, N, K, t) for k, t in times.items()}}


def run(args) -> list[dict]:
    from solrl_kernels import _backends

    if not _backends.native_ops_available():
        raise SystemExit(f"solrl_kernels._C unavailable: {_backends.native_unavailable_reason()}")
    from solrl_kernels import _native_ops  # noqa: F401  fakes

    cap = torch.cuda.get_device_capability()
    if cap[0] != 9:
        raise SystemExit(f"fp8_gemm_sm90 needs an sm_90 GPU, this is sm_{cap[0]}{cap[1]}")
    shapes = SHAPES_KN[:3] if args.quick else SHAPES_KN
    rows = []
    for M in [8192] if args.quick else MS:
        for K, N in shapes:
            row = bench_shape(M, K, N, args.tiles)
            rows.append(row)
            print(f"M={M:6d} K={K:5d} N={N:5d}  " + "  ".join(
                f"{k} {v:7.1f}" for k, v in row.items() if k not in ("M", "K", "N", "rel_err")
            ) + f"  (TFLOP/s; ref err {row['rel_err']:.1e})", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    extra = [k for k in rows[0] if k.startswith("ours[")]
    head = (f"{'M':>6} {'K':>6} {'N':>6} | {'ours':>7} {'ours+epi':>8} {'cublas8':>8} "
            f"{'cublas16':>8} | {'vs fp8':>6} {'vs bf16':>7}" + "".join(f" {k:>18}" for k in extra))
    print("\nfp8_gemm_sm90, TFLOP/s (median), ratios vs cuBLAS timed in the same run")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['M']:>6} {r['K']:>6} {r['N']:>6} | {r['ours']:7.1f} {r['ours+epi']:8.1f} "
              f"{r['cublas8']:8.1f} {r['cublas16']:8.1f} | {r['ours'] / r['cublas8']:6.2f} "
              f"{r['ours'] / r['cublas16']:7.2f}" + "".join(f" {r[k]:18.1f}" for k in extra))
    g = torch.tensor([r["ours"] / r["cublas8"] for r in rows]).log().mean().exp()
    print(f"geomean ours / cuBLAS FP8: {float(g):.3f}")


def write_records(rows: list[dict]) -> None:
    from record import record

    for r in rows:
        name = f"native_fp8_gemm_sm90/M{r['M']}_K{r['K']}_N{r['N']}"
        common = dict(M=r["M"], K=r["K"], N=r["N"], rel_err=r["rel_err"])
        record(name, "TFLOP/s vs cuBLAS FP8", r["ours"], "torch._scaled_mm rowwise bf16-out",
               r["cublas8"], **common)
        record(name, "TFLOP/s vs cuBLAS BF16", r["ours"], "torch.matmul bf16", r["cublas16"],
               **common)
        record(name + "+bias+gelu", "TFLOP/s vs cuBLAS FP8", r["ours+epi"],
               "torch._scaled_mm rowwise bf16-out (no epilogue)", r["cublas8"], **common)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 shapes at M=8192")
    p.add_argument("--tiles", action="store_true", help="also time each forced tile config")
    p.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = p.parse_args()
    rows = run(args)
    print_table(rows)
    if not args.no_record:
        write_records(rows)


if __name__ == "__main__":
    main()
