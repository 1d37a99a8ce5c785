"""Sweep the quantize kernel's tile shapes on the GPU: GB/s (bytes read + written) vs copy,
from GPU time (CUDA-graph replay: bench/timing.py).

    python bench/quantize_sweep.py [--shapes 8192x8192 16384x5120 ...] [--modes ...] [--rep 30]

Each variant runs the real op (solrl_kernels.nvfp4.ops.nvfp4_quantize_op) with its tile choice
(ops._tiles) replaced by the variant's (BLOCK_M, BLOCK_K, num_warps); the line marked
"default" is what ops._tiles picks. Variants give each thread 1 or 2 16-element blocks
in chunks no longer than the row's next power of two. Where _C is built, the CUDA row
quantizer's figure for the same mode is printed first.
"""

from __future__ import annotations

import argparse
import itertools
from unittest import mock

import torch
import triton
from timing import gpu_ms

from solrl_kernels import native_ops_available
from solrl_kernels.nvfp4 import ops

MODES = {  # name: (write_packed, compute_gs, blocked): fp8_exact per-row, or rn given per-tensor
    "packed-row": (True, True, False),
    "fp8-row": (False, True, False),
    "packed-given": (True, False, False),
    "blocked-given": (True, False, True),
}


def _variants(K: int):
    one = triton.next_power_of_2(K)
    for bm, bk, nw in itertools.product((1, 2), sorted({1024, 2048, 4096, one}), (2, 4, 8)):
        blocks_per_thread = bm * bk // 16 / (32 * nw)
        if bk <= one and 1 <= blocks_per_thread <= 2:
            yield bm, bk, nw


def sweep(R: int, K: int, modes: list[str], rep: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(R, K, device="cuda", dtype=torch.bfloat16)
    n = R * K
    y = torch.empty_like(x)
    copy = 4 * n / gpu_ms(lambda: y.copy_(x), rep)[0] / 1e6
    print(f"copy {copy:.0f} GB/s  (R={R}, K={K})", flush=True)
    gs_row = torch.full((R,), 0.01, device="cuda")
    gs_tensor = torch.full((1,), 0.01, device="cuda")
    for mode in modes:
        packed, compute, blocked = MODES[mode]
        default = ops._tiles(K, blocked and not compute)
        # per-row fp8_exact, or (given) rn with one scale per tensor
        gs, fp8_exact, per_row = (gs_row, True, True) if compute else (gs_tensor, False, False)

        def fn(packed=packed, compute=compute, blocked=blocked, gs=gs, fp8_exact=fp8_exact,
               per_row=per_row):
            return ops.nvfp4_quantize_op(x, gs, fp8_exact, False, per_row, compute, blocked,
                                         packed, not packed)

        nbytes = 2 * n + (n // 2 + n // 16 if packed else n)
        if native_ops_available():
            gs_arg = None if compute else gs

            def cuda_fn(packed=packed, blocked=blocked, gs_arg=gs_arg, fp8_exact=fp8_exact):
                return torch.ops.solrl_kernels.nvfp4_quantize_rows(x, gs_arg, fp8_exact, blocked,
                                                                   packed, not packed)

            gbps = nbytes / gpu_ms(cuda_fn, rep)[0] / 1e6
            print(f"{R}x{K} {mode:13s} CUDA row quantizer:                 "
                  f"{gbps:6.0f} GB/s {gbps / copy:.2f}x copy", flush=True)
        for t in dict.fromkeys([default, *_variants(K)]):
            with mock.patch.object(ops, "_tiles", lambda *a, t=t: t):
                ms = gpu_ms(fn, rep)[0]
            gbps = nbytes / ms / 1e6
            mark = "  default" if t == default else ""
            print(f"{R}x{K} {mode:13s} BLOCK_M={t[0]:2d} BLOCK_K={t[1]:5d} warps={t[2]:2d}: "
                  f"{gbps:6.0f} GB/s {gbps / copy:.2f}x copy{mark}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["8192x8192", "16384x5120"])
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES)[:3])
    p.add_argument("--rep", type=int, default=30)
    args = p.parse_args()
    for shape in args.shapes:
        R, K = map(int, shape.split("x"))
        sweep(R, K, args.modes, args.rep)


if __name__ == "__main__":
    main()
