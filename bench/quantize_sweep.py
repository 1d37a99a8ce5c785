"""Sweep the quantize kernel's tile shapes on the GPU: GB/s (bytes read + written) vs copy.

    python bench/quantize_sweep.py
"""

from __future__ import annotations

import itertools

import torch
import triton

from solrl_kernels.nvfp4 import kernels
from solrl_kernels.nvfp4.ops import _KIND, _as_words


def main():
    torch.manual_seed(0)
    R, K = 8192, 8192
    x = torch.randn(R, K, device="cuda", dtype=torch.bfloat16)
    n = R * K
    y = torch.empty_like(x)
    copy = 4 * n / triton.testing.do_bench(lambda: y.copy_(x), return_mode="median") / 1e6
    print(f"copy {copy:.0f} GB/s")
    xw = _as_words(x)
    data = torch.empty(R, K // 2, device="cuda", dtype=torch.uint8)
    scales = torch.empty(R, K // 16, device="cuda", dtype=torch.uint8)
    fp8 = torch.empty(R, K, device="cuda", dtype=torch.uint8)
    gs = torch.empty(R, device="cuda", dtype=torch.float32)
    for mode, (bm, bk, nw) in itertools.product(
        ("packed-row", "fp8-row", "packed-given"),
        itertools.product((1, 2, 4), (512, 1024, 2048, 8192), (2, 4, 8)),
    ):
        packed = mode.startswith("packed")
        compute = mode.endswith("row")
        if bm * bk > 8192:
            continue

        def fn(bm=bm, bk=bk, nw=nw, packed=packed, compute=compute):
            kernels.nvfp4_quantize_kernel[(triton.cdiv(R, bm),)](
                xw, data, scales, gs, fp8, R, K, xw.stride(0),
                IN_KIND=_KIND[x.dtype], FP8_EXACT=True, SEARCH=False, GS_PER_ROW=True,
                COMPUTE_GS=compute, BLOCKED=False, WRITE_PACKED=packed, WRITE_FP8=not packed,
                BLOCK_M=bm, BLOCK_K=bk, num_warps=nw, enable_fp_fusion=False,
            )

        if not compute:
            gs.fill_(0.01)
        nbytes = 2 * n + (n // 2 + n // 16 if packed else n)
        ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
        gbps = nbytes / ms / 1e6
        print(f"{mode:13s} BLOCK_M={bm:2d} BLOCK_K={bk:3d} warps={nw}: {gbps:6.0f} GB/s "
              f"{gbps / copy:.2f}x copy")


if __name__ == "__main__":
    main()
