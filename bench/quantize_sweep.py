"""Sweep the quantize kernel's tile shapes on the GPU: GB/s (bytes read + written) vs copy.

    python bench/quantize_sweep.py [--K 8192] [--R 8192]

Each variant runs the real op (solrl_kernels.nvfp4.ops.nvfp4_quantize) with its tile choice
(ops._tiles) replaced by the variant's (BLOCK_M, BLOCK_K, num_warps).
"""

from __future__ import annotations

import argparse
import itertools
from unittest import mock

import torch
import triton

from solrl_kernels.nvfp4 import ops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--R", type=int, default=8192)
    p.add_argument("--K", type=int, default=8192)
    args = p.parse_args()
    torch.manual_seed(0)
    R, K = args.R, args.K
    x = torch.randn(R, K, device="cuda", dtype=torch.bfloat16)
    n = R * K
    y = torch.empty_like(x)
    copy = 4 * n / triton.testing.do_bench(lambda: y.copy_(x), return_mode="median") / 1e6
    print(f"copy {copy:.0f} GB/s  (R={R}, K={K})")
    gs = torch.full((R,), 0.01, device="cuda")
    for mode, (bm, bk, nw) in itertools.product(
        ("packed-row", "fp8-row", "packed-given"),
        itertools.product((1, 2, 4), (512, 1024, 2048, 4096, 8192), (2, 4, 8)),
    ):
        packed = mode.startswith("packed")
        compute = mode.endswith("row")
        if bm * bk > 8192 or (compute and bk < K and bk != 1024):
            continue

        def fn(packed=packed, compute=compute):
            return ops.nvfp4_quantize(x, gs, True, False, True, compute, False, packed, not packed)

        nbytes = 2 * n + (n // 2 + n // 16 if packed else n)
        with mock.patch.object(ops, "_tiles", lambda *a, t=(bm, bk, nw): t):
            ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
        gbps = nbytes / ms / 1e6
        print(f"{mode:13s} BLOCK_M={bm:2d} BLOCK_K={bk:4d} warps={nw}: {gbps:6.0f} GB/s "
              f"{gbps / copy:.2f}x copy")


if __name__ == "__main__":
    main()
