"""Attention-specific quantizers (plain torch): the definitions the Triton kernels reproduce.

Every quantized operand of the attention is an *FP8-exact* tensor: a float8_e4m3fn value
times fp32 scales that factor out of the contraction it feeds, so ``Q K^T`` and ``P V`` run
as single FP8 dots (FP8 ``wgmma`` on Hopper) and the scales are applied afterwards.

Rows (Q and K: one token's head vector of D elements; V^T: one channel over the tokens):

    "nvfp4"  FP8-exact NVFP4 with one fp32 global scale per row (the "fp8_exact" rule of
             solrl_kernels.nvfp4.reference, granularity "row"):
             gs = max(amax / 384, GLOBAL_SCALE_MIN) (1 for an all-zero row),
             s_blk = clamp(round_up_one_bit(amax_blk / 6 / gs), 2^-7, 64), then (scale_search)
             the MSE-best of s_blk, its next smaller and its next larger {1, 1.5}*2^e value
             (ties keep the earlier), the error summed as (x - (e2m1 * s_blk) * gs)^2;
             code = e2m1_rn(clamp(x / (s_blk * gs), +-6)), a true fp32 division.
             value = (e2m1 * s_blk) * gs, and e2m1 * s_blk is an E4M3 number, so the row is
             E4M3 values times one fp32 scale. Composed here from the nvfp4 primitives so
             that the attention kernels have one fixed definition to reproduce.
    "fp8"    one fp32 scale per row: a = amax(|x|) (0 -> 448), inv = 448 / a, gs = a / 448,
             value = e4m3_rn(clamp(x * inv, +-448)) * gs.

P (the softmax numerator of one query row over one key tile of BLOCK_N keys, computed as
r = exp2(t - mt) in [0, 1]; mt is the tile's own max for "nvfp4", so that the tile's largest
element is exactly 1, and the running row max for "fp8"; reference.py, step 4):

    "nvfp4"  two-level: level 1 is the tile-row max (1, by construction) mapped to
             6 * 64 = P_SCALE = 384; level 2 is one {1, 1.5}*2^e scale per 16 keys,
             s = clamp(round_up_one_bit(max16(r) * 64 * P_BLOCK_SCALE_SHRINK), 2^-7, 64),
             code = e2m1_rn(min(r * (384 / s), 6)) (384 / s is exact), p8 = e2m1(code) * s,
             an E4M3 number; r ~ p8 / 384. Shrinking the ideal scale by 0.85 before rounding
             it up lets a block's largest element saturate slightly in exchange for a finer
             grid for the rest: relative RMS error 0.108 instead of 0.118 on softmax-like
             tiles, at no cost (a full 3-candidate MSE search gives 0.102 at 3x the work in
             the kernel's inner loop). The tile's largest element (r = 1) stays exact.
    "fp8"    p8 = e4m3_rn(min(r * 448, 448)); r ~ p8 / 448 (P_SCALE = 448). On the GPU one
             hardware conversion (cvt.rn.satfinite, round to nearest even) per two values.

The level-1 factor that maps the tile back to the running softmax max, exp2(max_tile - m),
is applied to the FP8 dot's fp32 result, so it never has to be representable in FP8.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..nvfp4.reference import (
    F4_E2M1_MAX,
    F8E4M3_MAX,
    FP8_EXACT_SCALE_MAX,
    FP8_EXACT_SCALE_MIN,
    GLOBAL_SCALE_MIN,
    e2m1_to_float,
    float_to_e2m1,
    round_down_one_bit_step,
    round_up_one_bit,
    round_up_one_bit_step,
)
from ..nvfp4.tensor import BLOCK_SIZE

QuantFormat = Literal["fp8", "nvfp4"]

# P is quantized relative to its tile-row max (exactly 1): 1 maps to P_SCALE in the FP8 values
P_SCALE = {"nvfp4": F4_E2M1_MAX * FP8_EXACT_SCALE_MAX, "fp8": F8E4M3_MAX}  # 384, 448
FP8_ROW_AMAX_MIN = 2.0**-100  # keeps 448 / amax finite for subnormal rows
NVFP4_ROW_DIV = F4_E2M1_MAX * FP8_EXACT_SCALE_MAX  # 384: the row amax maps to 6 * 64
P_BLOCK_SCALE_SHRINK = 0.85  # "nvfp4" P: ideal block scale * 0.85, then rounded up
P_BLOCK_SCALE_MUL = FP8_EXACT_SCALE_MAX * P_BLOCK_SCALE_SHRINK  # 54.4 (one fp32 multiply)


def _nvfp4_block_values(xb: torch.Tensor, s: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """xb (R, nb, 16), s (R, nb), gs (R, 1) -> e2m1_rn(clamp(x / (s * gs))) * s (E4M3 numbers)."""
    y = (xb / (s * gs).unsqueeze(-1)).clamp(-F4_E2M1_MAX, F4_E2M1_MAX)
    return e2m1_to_float(float_to_e2m1(y)) * s.unsqueeze(-1)


def _nvfp4_rows(x: torch.Tensor, scale_search: bool) -> tuple[torch.Tensor, torch.Tensor]:
    K = x.shape[-1]
    xb = x.reshape(-1, K // BLOCK_SIZE, BLOCK_SIZE)  # (R, nb, 16) fp32
    amax_blk = xb.abs().amax(-1)  # (R, nb)
    amax = amax_blk.amax(-1, keepdim=True)  # (R, 1)
    gs = (amax / NVFP4_ROW_DIV).clamp(min=GLOBAL_SCALE_MIN)
    gs = torch.where(amax > 0, gs, torch.ones_like(gs))
    s = round_up_one_bit(amax_blk / F4_E2M1_MAX / gs).clamp(FP8_EXACT_SCALE_MIN, FP8_EXACT_SCALE_MAX)
    vals = _nvfp4_block_values(xb, s, gs)
    if scale_search:
        best = ((xb - vals * gs.unsqueeze(-1)) ** 2).sum(-1)
        for cand in (
            round_down_one_bit_step(s).clamp(min=FP8_EXACT_SCALE_MIN),
            round_up_one_bit_step(s).clamp(max=FP8_EXACT_SCALE_MAX),
        ):
            c_vals = _nvfp4_block_values(xb, cand, gs)
            err = ((xb - c_vals * gs.unsqueeze(-1)) ** 2).sum(-1)
            better = err < best
            vals = torch.where(better.unsqueeze(-1), c_vals, vals)
            best = torch.where(better, err, best)
    return vals.reshape(x.shape), gs.reshape(*x.shape[:-1], 1)


def quantize_rows(
    x: torch.Tensor, fmt: QuantFormat, scale_search: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes each row of x (..., K) -> (values (..., K) fp32, global_scale (..., 1) fp32).

    ``values`` are exact E4M3 numbers (returned as float32 for the emulated matmuls) and
    ``values * global_scale`` is the dequantized row. "nvfp4" needs K % 16 == 0;
    scale_search applies to "nvfp4" only.
    """
    if fmt == "nvfp4":
        if x.shape[-1] % BLOCK_SIZE:
            raise ValueError(f"quantize_rows: K={x.shape[-1]} must be a multiple of {BLOCK_SIZE}")
        return _nvfp4_rows(x.float(), scale_search)
    if fmt == "fp8":
        xf = x.float()
        amax = xf.abs().amax(-1, keepdim=True)
        a = torch.where(amax > 0, amax.clamp(min=FP8_ROW_AMAX_MIN), torch.full_like(amax, F8E4M3_MAX))
        inv = F8E4M3_MAX / a
        values = (xf * inv).clamp(-F8E4M3_MAX, F8E4M3_MAX).to(torch.float8_e4m3fn).float()
        return values, a / F8E4M3_MAX
    raise ValueError(f"fmt must be 'fp8' or 'nvfp4', got {fmt!r}")


def quantize_p(r: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """r (..., N) in [0, 1] (N % 16 == 0 for "nvfp4") -> FP8 values p8 (..., N) as fp32.

    r ~ p8 / P_SCALE[fmt]. Masked keys must come in as r == 0 (they stay exactly 0).
    """
    rf = r.float()
    if fmt == "fp8":
        return (rf * P_SCALE["fp8"]).clamp(max=F8E4M3_MAX).to(torch.float8_e4m3fn).float()
    if fmt != "nvfp4":
        raise ValueError(f"fmt must be 'fp8' or 'nvfp4', got {fmt!r}")
    N = rf.shape[-1]
    if N % BLOCK_SIZE:
        raise ValueError(f"quantize_p: N={N} must be a multiple of {BLOCK_SIZE}")
    rb = rf.reshape(*rf.shape[:-1], N // BLOCK_SIZE, BLOCK_SIZE)
    bmax = rb.amax(-1, keepdim=True)
    # ideal scale amax_blk / 6 / (1 / 384) == 64 * amax_blk, shrunk by 0.85 (module doc)
    s = round_up_one_bit(bmax * P_BLOCK_SCALE_MUL).clamp(FP8_EXACT_SCALE_MIN, FP8_EXACT_SCALE_MAX)
    y = (rb * (P_SCALE["nvfp4"] / s)).clamp(max=F4_E2M1_MAX)
    p8 = e2m1_to_float(float_to_e2m1(y)) * s
    return p8.reshape(rf.shape)
