"""Triton kernels for NVFP4 quantization and dequantization (bit-exact with reference.py).

One program owns BLOCK_M whole rows and walks K in BLOCK_K chunks. Elements are read as
*pairs*: a 2-byte input is loaded as int32 words, fp32 as int64, so one word holds elements
2j (low half) and 2j+1 (high half) — exactly the two nibbles of output byte j. No reshape,
join or split (each a shared-memory layout shuffle) is needed:

    words (BLOCK_M, NB, 8) --> even (BLOCK_M, NB, 8) fp32,  odd (BLOCK_M, NB, 8) fp32
    amax_blk = max(|even|, |odd|) over the 8 pairs of a 16-element block -> s_blk (E4M3)
    byte = code(even) | code(odd) << 4          (the packed layout, element 2j low)
    int16 = e4m3(even) | e4m3(odd) << 8         (the E4M3 container, (R, K) bytes)

A row whose length is a power of two (up to 16384) is one chunk: loaded once and quantized
from registers. Other rows are walked in BLOCK_K chunks; with granularity "row" and no given
global scale a first walk computes the row amax (the second walk then reads the row from L2:
one DRAM pass). Divisions are div_rn and FMA contraction is disabled at launch so the fp32
arithmetic matches torch bit for bit.
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
    """fp32 y -> int32 e2m1 codes, RNE, saturating at +-6; sign bit from y's sign bit.

    Rounds a = min(|y|, 6) as _e2m1_round_nonneg does, t = a + magic with magic =
    1.5 * 2^(E+22), E = max(exponent of a, 0), and reads the code off the integer distance
    t - magic: that many quanta 2^(E-1), and the code is quanta + 2E (0.5 -> 1, 1 -> 2, ...
    4 -> 6, 6 -> 7; a rounding up into the next binade lands right too).
    Equivalent to the threshold table of reference.float_to_e2m1 (tested exhaustively).
    """
    a = tl.minimum(tl.abs(y), 6.0)
    e = tl.maximum(a.to(tl.int32, bitcast=True) & 0x7F800000, 0x3F800000)
    magic = e + ((22 << 23) | 0x400000)
    quanta = (a + magic.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True) - magic
    idx = quanta + ((e >> 22) - 254)
    return idx | ((y.to(tl.int32, bitcast=True) >> 28) & 8)


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
def _e2m1_round_nonneg(a):
    """fp32 a in [0, 6] -> the nearest e2m1 value (ties to even), as fp32.

    Rounds to one mantissa bit by adding and removing 1.5 * 2^(E+22), E = max(exponent of a,
    0): that number's fp32 ulp is the e2m1 quantum 2^(E-1) (0.5 below 2).
    """
    e = tl.maximum(a.to(tl.int32, bitcast=True) & 0x7F800000, 0x3F800000)
    magic = ((e + (22 << 23)) | 0x400000).to(tl.float32, bitcast=True)
    return (a + magic) - magic


@triton.jit
def _e2m1_round(y):
    """fp32 y -> the nearest e2m1 value as fp32 (RNE, saturating at +-6, sign kept: -0.0 for
    small negatives); equals _e2m1_values(_e2m1_codes(y)) (tested exhaustively)."""
    r = _e2m1_round_nonneg(tl.minimum(tl.abs(y), 6.0))
    sign = y.to(tl.int32, bitcast=True) & -0x80000000
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _split_pairs(w, IN_KIND: tl.constexpr):
    """Words of two elements -> (even, odd) fp32. IN_KIND: 0 bf16, 1 fp16 (int32 words),
    2 fp32 (int64 words). bf16 -> fp32 is a 16-bit shift."""
    if IN_KIND == 0:
        even = (w << 16).to(tl.float32, bitcast=True)
        odd = (w & -0x10000).to(tl.float32, bitcast=True)
    elif IN_KIND == 1:
        even = (w & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        odd = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        even = (w & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
        odd = (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    return even, odd


@triton.jit
def _block_amax(xe, xo):
    """(BM, NB, 8) element pairs -> (BM, NB) amax of each 16-element block."""
    return tl.max(tl.maximum(tl.abs(xe), tl.abs(xo)), axis=2)


@triton.jit
def _pair_sse(xe, xo, re, ro, total):
    """Per-block squared error of e2m1 values (re, ro) * total against (xe, xo)."""
    t = total[:, :, None]
    de = xe - re * t
    do = xo - ro * t
    return tl.sum(de * de + do * do, axis=2)


@triton.jit
def _scale_offsets(rows, cols, NCB, BLOCKED: tl.constexpr, n_scale_cols):
    """Offsets of scale (row, col) in the row-major or 128x4-blocked layout (layouts.py)."""
    if BLOCKED:
        tile = (rows // 128) * NCB + cols // 4
        return tile * 512 + (rows % 32) * 16 + ((rows % 128) // 32) * 4 + cols % 4
    else:
        return rows * n_scale_cols + cols


@triton.jit
def _row_global_scale(amax_row, FP8_EXACT: tl.constexpr):
    if FP8_EXACT:
        gs = tl.math.div_rn(amax_row, GS_DIV_FP8_EXACT)
    else:
        gs = tl.math.div_rn(amax_row, GS_DIV_RN)
    return tl.where(amax_row > 0, tl.maximum(gs, GLOBAL_SCALE_MIN), 1.0)


@triton.jit
def _load_global_scale(gs_ptr, rows, row_ok, GS_PER_ROW: tl.constexpr, BLOCK_M: tl.constexpr):
    """(BLOCK_M,) fp32 decode scales: one per row, or the tensor's one broadcast."""
    if GS_PER_ROW:
        return tl.load(gs_ptr + rows, mask=row_ok, other=1.0)
    return tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(gs_ptr)


@triton.jit
def _fp8_pairs(ve, vo, INTERPRET: tl.constexpr):
    """fp32 (even, odd), each exactly an E4M3 value -> int16 words holding the two E4M3
    bytes (even in the low byte), as the (R, K) E4M3 container lays them out.

    On the GPU one cvt.rn.satfinite.e4m3x2 per pair (exact here: the values are E4M3);
    the interpreter cannot run PTX and uses the element-wise cast instead."""
    if INTERPRET:
        lo = ve.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int16)
        hi = vo.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int16)
        return lo | (hi << 8)
    else:
        return tl.inline_asm_elementwise(
            "cvt.rn.satfinite.e4m3x2.f32 $0, $2, $1;", "=h,r,r", [ve, vo],
            dtype=tl.int16, is_pure=True, pack=1)


@triton.jit
def _quantize_chunk(
    xe, xo, amax_blk, gs, k0, K, rows64, row_ok, data_ptr, scales_ptr, fp8_ptr,
    FP8_EXACT: tl.constexpr, SEARCH: tl.constexpr,
    BLOCKED: tl.constexpr, WRITE_PACKED: tl.constexpr, WRITE_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Quantize one (BLOCK_M, BLOCK_K) chunk, given as its element pairs (even, odd; each
    (BLOCK_M, NB, 8) fp32) with its block amax (BLOCK_M, NB), and store it."""
    NB: tl.constexpr = BLOCK_K // 16
    KW = K // 2
    n_scale_cols = K // 16
    blk = tl.arange(0, NB)
    wcol = k0 // 2 + _chunk_word_offsets(NB)
    row3 = rows64[:, None, None]
    m = row_ok[:, None, None] & (wcol < KW)
    s_ideal = tl.math.div_rn(tl.math.div_rn(amax_blk, F4_E2M1_MAX), gs[:, None])
    if FP8_EXACT:
        s = tl.minimum(tl.maximum(_round_up_one_bit(s_ideal), FP8_EXACT_SCALE_MIN),
                       FP8_EXACT_SCALE_MAX)
    else:
        s = _e4m3_rn(tl.minimum(tl.maximum(s_ideal, E4M3_MIN_SUBNORMAL), F8E4M3_MAX))
    total = s * gs[:, None]
    inv = tl.math.div_rn(1.0, total)
    ye = xe * inv[:, :, None]
    yo = xo * inv[:, :, None]
    if SEARCH:  # try the next smaller and larger scales; keep the least squared error
        re = _e2m1_round(ye)
        ro = _e2m1_round(yo)
        best = _pair_sse(xe, xo, re, ro, total)
        s_up = s
        for step in tl.static_range(2):
            if step == 0:
                cand = tl.maximum(_one_bit_step_down(s_up), FP8_EXACT_SCALE_MIN)
            else:
                cand = tl.minimum(_one_bit_step_up(s_up), FP8_EXACT_SCALE_MAX)
            c_total = cand * gs[:, None]
            c_inv = tl.math.div_rn(1.0, c_total)
            c_ye = xe * c_inv[:, :, None]
            c_yo = xo * c_inv[:, :, None]
            c_re = _e2m1_round(c_ye)
            c_ro = _e2m1_round(c_yo)
            err = _pair_sse(xe, xo, c_re, c_ro, c_total)
            better = err < best
            s = tl.where(better, cand, s)
            b3 = better[:, :, None]
            ye = tl.where(b3, c_ye, ye)
            yo = tl.where(b3, c_yo, yo)
            re = tl.where(b3, c_re, re)
            ro = tl.where(b3, c_ro, ro)
            best = tl.where(better, err, best)
    if WRITE_PACKED:
        packed = (_e2m1_codes(ye) | (_e2m1_codes(yo) << 4)).to(tl.uint8)
        tl.store(data_ptr + row3 * KW + wcol, packed, mask=m)
        scols = k0 // 16 + blk
        soffs = _scale_offsets(rows64[:, None], scols[None, :], (n_scale_cols + 3) // 4,
                               BLOCKED, n_scale_cols)
        sm = row_ok[:, None] & (scols[None, :] < n_scale_cols)
        tl.store(scales_ptr + soffs, s.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=sm)
    if WRITE_FP8:
        if not SEARCH:
            re = _e2m1_round(ye)
            ro = _e2m1_round(yo)
        s3 = s[:, :, None]
        tl.store(fp8_ptr + row3 * KW + wcol, _fp8_pairs(re * s3, ro * s3, INTERPRET), mask=m)


@triton.jit
def _chunk_word_offsets(NB: tl.constexpr):
    """Word offsets (1, NB, 8) of a chunk's 16-element blocks, relative to its first word."""
    return tl.arange(0, NB)[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]


@triton.jit
def nvfp4_quantize_kernel(
    xw_ptr, data_ptr, scales_ptr, gs_ptr, fp8_ptr,
    R, K, stride_w,
    IN_KIND: tl.constexpr,  # 0 bf16, 1 fp16, 2 fp32 (xw_ptr: int32 / int32 / int64 words)
    FP8_EXACT: tl.constexpr,  # scale rule: 0 = "rn", 1 = "fp8_exact"
    SEARCH: tl.constexpr,  # fp8_exact MSE scale search
    GS_PER_ROW: tl.constexpr,  # gs_ptr holds R values (else one)
    COMPUTE_GS: tl.constexpr,  # compute the per-row global scale here and store it to gs_ptr
    BLOCKED: tl.constexpr,  # scales in the 128x4 swizzled layout
    WRITE_PACKED: tl.constexpr,  # write data (R, K/2) + scales
    WRITE_FP8: tl.constexpr,  # write the FP8-exact E4M3 values e2m1*s_blk (R, K) as int16 pairs
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_TILE: tl.constexpr,  # BLOCK_K >= K: the whole row is one chunk, loaded once
    INTERPRET: tl.constexpr,  # running in the Triton interpreter (no inline PTX)
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    KW = K // 2  # words per row
    woffs = _chunk_word_offsets(BLOCK_K // 16)
    wrow = xw_ptr + rows64[:, None, None] * stride_w
    rowok3 = row_ok[:, None, None]

    if ONE_TILE:  # one chunk per row: load once, amax and quantize from registers
        w = tl.load(wrow + woffs, mask=rowok3 & (woffs < KW), other=0)
        xe, xo = _split_pairs(w, IN_KIND)
        amax_blk = _block_amax(xe, xo)
        if COMPUTE_GS:
            gs = _row_global_scale(tl.max(amax_blk, axis=1), FP8_EXACT)
            tl.store(gs_ptr + rows, gs, mask=row_ok)
        else:
            gs = _load_global_scale(gs_ptr, rows, row_ok, GS_PER_ROW, BLOCK_M)
        _quantize_chunk(xe, xo, amax_blk, gs, 0, K, rows64, row_ok, data_ptr, scales_ptr,
                        fp8_ptr, FP8_EXACT, SEARCH, BLOCKED, WRITE_PACKED, WRITE_FP8,
                        BLOCK_M, BLOCK_K, INTERPRET)
    else:
        if COMPUTE_GS:  # first walk: row amax (the second walk re-reads the rows from L2)
            amax_row = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                wcol = k0 // 2 + woffs
                w = tl.load(wrow + wcol, mask=rowok3 & (wcol < KW), other=0)
                xe, xo = _split_pairs(w, IN_KIND)
                amax_blk = _block_amax(xe, xo)
                amax_row = tl.maximum(amax_row, tl.max(amax_blk, axis=1))
            gs = _row_global_scale(amax_row, FP8_EXACT)
            tl.store(gs_ptr + rows, gs, mask=row_ok)
        else:
            gs = _load_global_scale(gs_ptr, rows, row_ok, GS_PER_ROW, BLOCK_M)
        for k0 in range(0, K, BLOCK_K):
            wcol = k0 // 2 + woffs
            w = tl.load(wrow + wcol, mask=rowok3 & (wcol < KW), other=0)
            xe, xo = _split_pairs(w, IN_KIND)
            amax_blk = _block_amax(xe, xo)
            _quantize_chunk(xe, xo, amax_blk, gs, k0, K, rows64, row_ok, data_ptr,
                            scales_ptr, fp8_ptr, FP8_EXACT, SEARCH, BLOCKED, WRITE_PACKED,
                            WRITE_FP8, BLOCK_M, BLOCK_K, INTERPRET)


@triton.jit
def nvfp4_dequantize_kernel(
    data_ptr, scales_ptr, gs_ptr, outw_ptr,
    R, K,
    OUT_KIND: tl.constexpr,  # 0 bf16, 1 fp16 (int32 words), 2 fp32 (int64 words)
    GS_PER_ROW: tl.constexpr,
    BLOCKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[r, k] = (e2m1(code) * s_blk) * gs in fp32, cast; written as pairs of elements."""
    NB: tl.constexpr = BLOCK_K // 16
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    KW = K // 2
    n_scale_cols = K // 16
    NCB = (n_scale_cols + 3) // 4
    blk = tl.arange(0, NB)
    woffs = blk[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
    row3 = rows64[:, None, None]
    gs = _load_global_scale(gs_ptr, rows, row_ok, GS_PER_ROW, BLOCK_M)
    for k0 in range(0, K, BLOCK_K):
        wcol = k0 // 2 + woffs
        m = row_ok[:, None, None] & (wcol < KW)
        packed = tl.load(data_ptr + row3 * KW + wcol, mask=m, other=0).to(tl.int32)
        scols = k0 // 16 + blk
        soffs = _scale_offsets(rows64[:, None], scols[None, :], NCB, BLOCKED, n_scale_cols)
        sm = row_ok[:, None] & (scols[None, :] < n_scale_cols)
        s8 = tl.load(scales_ptr + soffs, mask=sm, other=0)
        s = s8.to(tl.float8e4nv, bitcast=True).to(tl.float32)[:, :, None]
        g = gs[:, None, None]
        ve = (_e2m1_values(packed & 0xF) * s) * g
        vo = (_e2m1_values(packed >> 4) * s) * g
        if OUT_KIND == 0:
            word = ((_bf16_rn(ve).to(tl.int32, bitcast=True) >> 16) & 0xFFFF) | (
                _bf16_rn(vo).to(tl.int32, bitcast=True) & -0x10000)
        elif OUT_KIND == 1:
            we = ve.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
            wo = vo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
            word = we | (wo << 16)
        else:
            we = ve.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
            wo = vo.to(tl.int32, bitcast=True).to(tl.int64)
            word = we | (wo << 32)
        tl.store(outw_ptr + row3 * KW + wcol, word, mask=m)


@triton.jit
def absmax_kernel(x_ptr, out_bits_ptr, N, BLOCK: tl.constexpr):
    """out = max(out, max |x|) over a flat tensor, via atomic max on the fp32 bits (for
    non-negative floats, the integer order of the bits is the numeric order)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < N, other=0.0)
    m = tl.max(tl.abs(x.to(tl.float32)), axis=0)
    tl.atomic_max(out_bits_ptr, m.to(tl.int32, bitcast=True))
