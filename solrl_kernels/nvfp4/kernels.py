"""Triton kernels for NVFP4 quantization and dequantization (bit-exact with reference.py).

One program owns BLOCK_M whole rows and walks K in BLOCK_K chunks:

    rows r0..r0+BLOCK_M   x[r, k0:k0+BLOCK_K]  -> (BLOCK_M, BLOCK_K/16, 16) blocks
                          amax per block -> s_blk (E4M3) -> e2m1 codes -> packed bytes
                          (+ optionally the FP8-exact E4M3 values e2m1*s_blk)

With granularity "row" and no given global scale, a first walk over the row computes its
amax (the second walk then reads the row from L2: one DRAM pass). Division is div_rn and
FMA contraction is disabled at launch so the fp32 arithmetic matches torch bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import reference as ref

# the reference's constants, as constexprs the kernels may read
F4_E2M1_MAX = tl.constexpr(ref.F4_E2M1_MAX)
F8E4M3_MAX = tl.constexpr(ref.F8E4M3_MAX)
E4M3_MIN_SUBNORMAL = tl.constexpr(ref.E4M3_MIN_SUBNORMAL)
FP8_EXACT_SCALE_MAX = tl.constexpr(ref.FP8_EXACT_SCALE_MAX)
FP8_EXACT_SCALE_MIN = tl.constexpr(ref.FP8_EXACT_SCALE_MIN)
GLOBAL_SCALE_MIN = tl.constexpr(ref.GLOBAL_SCALE_MIN)
GS_DIV_RN = tl.constexpr(ref.F4_E2M1_MAX * ref.F8E4M3_MAX)
GS_DIV_FP8_EXACT = tl.constexpr(ref.F4_E2M1_MAX * ref.FP8_EXACT_SCALE_MAX)


@triton.jit
def _round_up_one_bit(s):
    """Smallest {1, 1.5}*2^e >= s (fp32, s >= 0; 0 stays 0). Mirrors reference.round_up_one_bit."""
    bits = s.to(tl.int32, bitcast=True)
    mant = bits & 0x7FFFFF
    expo = bits & 0x7F800000
    out = tl.where(mant == 0, bits, tl.where(mant <= 0x400000, expo | 0x400000, expo + 0x800000))
    return tl.where(s > 0, out.to(tl.float32, bitcast=True), 0.0)


@triton.jit
def _e4m3_rn(s):
    """Round fp32 s in [2^-9, 448] to the nearest E4M3 value (ties to even), as fp32.

    Done in fp32/int arithmetic rather than by the cast, so the interpreter (whose fp8 cast
    loses the carry when rounding up into the next binade) and the GPU agree bit for bit.
    Normal range: drop 20 mantissa bits with RNE; subnormal range (< 2^-6): quantum 2^-9,
    by adding and removing 2^14 (whose fp32 ulp is 2^-9).
    """
    bits = s.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -0x100000).to(tl.float32, bitcast=True)
    subnormal = (s + 16384.0) - 16384.0
    return tl.where(s >= 0.015625, normal, subnormal)


@triton.jit
def _bf16_rn(v):
    """fp32 -> fp32 holding the nearest bf16 (ties to even); the cast is then exact.

    The interpreter truncates fp32 -> bf16 casts while the GPU rounds to nearest even.
    """
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _one_bit_step_down(s):
    bits = s.to(tl.int32, bitcast=True)
    mant = bits & 0x7FFFFF
    expo = bits & 0x7F800000
    return tl.where(mant != 0, expo, (expo - 0x800000) | 0x400000).to(tl.float32, bitcast=True)


@triton.jit
def _one_bit_step_up(s):
    bits = s.to(tl.int32, bitcast=True)
    mant = bits & 0x7FFFFF
    expo = bits & 0x7F800000
    return tl.where(mant == 0, expo | 0x400000, expo + 0x800000).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_codes(y):
    """fp32 y (already clamped to +-6) -> int32 codes, RNE; sign bit from y's sign bit."""
    a = tl.abs(y)
    idx = (
        (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
        + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
        + (a > 5.0).to(tl.int32)
    )
    sign = (y.to(tl.int32, bitcast=True) >> 31) & 1
    return idx | (sign << 3)


@triton.jit
def _e2m1_values(codes):
    """int32 codes -> fp32 e2m1 values, built from bits: idx>=2 -> 2^((idx>>1)-1)*(1+(idx&1)/2)."""
    idx = codes & 7
    bits = tl.where(
        idx >= 2, ((126 + (idx >> 1)) << 23) | ((idx & 1) << 22), tl.where(idx == 1, 126 << 23, 0)
    )
    bits = bits | ((codes & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _quantize_blocks(xb, s, gs):
    """xb (BM, NB, 16), s (BM, NB), gs (BM,) -> int32 codes (BM, NB, 16)."""
    total = s * gs[:, None]
    y = tl.math.div_rn(xb, total[:, :, None])
    y = tl.minimum(tl.maximum(y, -6.0), 6.0)
    return _e2m1_codes(y)


@triton.jit
def _block_sse(xb, codes, s, gs):
    deq = _e2m1_values(codes) * (s * gs[:, None])[:, :, None]
    d = xb - deq
    return tl.sum(d * d, axis=2)


@triton.jit
def _scale_offsets(rows, cols, NCB, BLOCKED: tl.constexpr, n_scale_cols):
    """Offsets of scale (row, col) in the row-major or 128x4-blocked layout (layouts.py)."""
    if BLOCKED:
        tile = (rows // 128) * NCB + cols // 4
        return tile * 512 + (rows % 32) * 16 + ((rows % 128) // 32) * 4 + cols % 4
    else:
        return rows * n_scale_cols + cols


@triton.jit
def nvfp4_quantize_kernel(
    x_ptr, data_ptr, scales_ptr, gs_ptr, fp8_ptr,
    R, K, stride_xr,
    FP8_EXACT: tl.constexpr,  # scale rule: 0 = "rn", 1 = "fp8_exact"
    SEARCH: tl.constexpr,  # fp8_exact MSE scale search
    GS_PER_ROW: tl.constexpr,  # gs_ptr holds R values (else one)
    COMPUTE_GS: tl.constexpr,  # compute the per-row global scale here and store it to gs_ptr
    BLOCKED: tl.constexpr,  # scales in the 128x4 swizzled layout
    WRITE_PACKED: tl.constexpr,  # write data (R, K/2) + scales
    WRITE_FP8: tl.constexpr,  # write the FP8-exact E4M3 values e2m1*s_blk (R, K)
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    NB: tl.constexpr = BLOCK_K // 16
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    n_scale_cols = K // 16
    NCB = (n_scale_cols + 3) // 4

    if COMPUTE_GS:
        amax_row = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            m = row_ok[:, None] & (cols[None, :] < K)
            x = tl.load(x_ptr + rows64[:, None] * stride_xr + cols[None, :], mask=m, other=0.0)
            amax_row = tl.maximum(amax_row, tl.max(tl.abs(x.to(tl.float32)), axis=1))
        if FP8_EXACT:
            gs = tl.math.div_rn(amax_row, GS_DIV_FP8_EXACT)
        else:
            gs = tl.math.div_rn(amax_row, GS_DIV_RN)
        gs = tl.where(amax_row > 0, tl.maximum(gs, GLOBAL_SCALE_MIN), 1.0)
        tl.store(gs_ptr + rows, gs, mask=row_ok)
    elif GS_PER_ROW:
        gs = tl.load(gs_ptr + rows, mask=row_ok, other=1.0)
    else:
        gs = tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(gs_ptr)

    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        m = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + rows64[:, None] * stride_xr + cols[None, :], mask=m, other=0.0)
        xb = tl.reshape(x.to(tl.float32), (BLOCK_M, NB, 16))
        amax_blk = tl.max(tl.abs(xb), axis=2)  # (BM, NB)
        s_ideal = tl.math.div_rn(tl.math.div_rn(amax_blk, F4_E2M1_MAX), gs[:, None])
        if FP8_EXACT:
            s = tl.minimum(tl.maximum(_round_up_one_bit(s_ideal), FP8_EXACT_SCALE_MIN),
                           FP8_EXACT_SCALE_MAX)
        else:
            s_c = tl.minimum(tl.maximum(s_ideal, E4M3_MIN_SUBNORMAL), F8E4M3_MAX)
            s = _e4m3_rn(s_c)
        codes = _quantize_blocks(xb, s, gs)
        if SEARCH:
            best = _block_sse(xb, codes, s, gs)
            s_up = s
            cand = tl.maximum(_one_bit_step_down(s_up), FP8_EXACT_SCALE_MIN)
            c_codes = _quantize_blocks(xb, cand, gs)
            err = _block_sse(xb, c_codes, cand, gs)
            better = err < best
            s = tl.where(better, cand, s)
            codes = tl.where(better[:, :, None], c_codes, codes)
            best = tl.where(better, err, best)
            cand = tl.minimum(_one_bit_step_up(s_up), FP8_EXACT_SCALE_MAX)
            c_codes = _quantize_blocks(xb, cand, gs)
            err = _block_sse(xb, c_codes, cand, gs)
            better = err < best
            s = tl.where(better, cand, s)
            codes = tl.where(better[:, :, None], c_codes, codes)

        if WRITE_PACKED:
            pairs = tl.reshape(codes, (BLOCK_M, BLOCK_K // 2, 2))
            lo, hi = tl.split(pairs)
            packed = (lo | (hi << 4)).to(tl.uint8)
            pcols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            pm = row_ok[:, None] & (pcols[None, :] < K // 2)
            tl.store(data_ptr + rows64[:, None] * (K // 2) + pcols[None, :], packed, mask=pm)
            scols = k0 // 16 + tl.arange(0, NB)
            soffs = _scale_offsets(rows64[:, None], scols[None, :], NCB, BLOCKED, n_scale_cols)
            sm = row_ok[:, None] & (scols[None, :] < n_scale_cols)
            s8 = s.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
            tl.store(scales_ptr + soffs, s8, mask=sm)
        if WRITE_FP8:
            vals = _e2m1_values(codes) * s[:, :, None]  # exact E4M3 numbers for fp8_exact
            v8 = tl.reshape(vals, (BLOCK_M, BLOCK_K)).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
            tl.store(fp8_ptr + rows64[:, None] * K + cols[None, :], v8, mask=m)


@triton.jit
def nvfp4_dequantize_kernel(
    data_ptr, scales_ptr, gs_ptr, out_ptr,
    R, K,
    GS_PER_ROW: tl.constexpr,
    BLOCKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[r, k] = (e2m1(code) * s_blk) * gs, in fp32, cast to out's dtype."""
    NB: tl.constexpr = BLOCK_K // 16
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    n_scale_cols = K // 16
    NCB = (n_scale_cols + 3) // 4
    if GS_PER_ROW:
        gs = tl.load(gs_ptr + rows, mask=row_ok, other=1.0)
    else:
        gs = tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(gs_ptr)
    for k0 in range(0, K, BLOCK_K):
        pcols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        pm = row_ok[:, None] & (pcols[None, :] < K // 2)
        packed = tl.load(data_ptr + rows64[:, None] * (K // 2) + pcols[None, :], mask=pm, other=0)
        packed = packed.to(tl.int32)
        codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), (BLOCK_M, NB, 16))
        scols = k0 // 16 + tl.arange(0, NB)
        soffs = _scale_offsets(rows64[:, None], scols[None, :], NCB, BLOCKED, n_scale_cols)
        sm = row_ok[:, None] & (scols[None, :] < n_scale_cols)
        s8 = tl.load(scales_ptr + soffs, mask=sm, other=0)
        s = s8.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        vals = (_e2m1_values(codes) * s[:, :, None]) * gs[:, None, None]
        cols = k0 + tl.arange(0, BLOCK_K)
        m = row_ok[:, None] & (cols[None, :] < K)
        out = tl.reshape(vals, (BLOCK_M, BLOCK_K))
        if out_ptr.dtype.element_ty == tl.bfloat16:
            out = _bf16_rn(out)
        out = out.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows64[:, None] * K + cols[None, :], out, mask=m)
