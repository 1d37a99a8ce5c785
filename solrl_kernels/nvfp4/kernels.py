"""Triton kernels for NVFP4 quantization and dequantization (bit-exact with reference.py).

One program owns BLOCK_M whole rows and walks K in BLOCK_K chunks. Elements are read as
*pairs*: a 2-byte input is loaded as int32 words, fp32 as int64, so one word holds elements
2j (low half) and 2j+1 (high half) — exactly the two nibbles of output byte j. No reshape,
join or split (each a shared-memory layout shuffle) is needed:

    words (BLOCK_M, NB, 2, 4) --> even, odd (BLOCK_M, NB, 2, 4) fp32 (a block's 8 pairs as
    2 groups of 4: a group's 8 codes are one int32 of the packed layout)
    amax_blk = max(|even|, |odd|) over the 8 pairs of a 16-element block -> s_blk (E4M3)
    (16-bit inputs: reduced as packed pairs, max.xorsign.abs.{bf16,f16}x2)
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
def _exp_or_2(a, INTERPRET: tl.constexpr):
    """int32 (bits(a) & 0x7F800000) | 2: one LOP3 with two constants (inline PTX; ptxas does
    not merge the and/or of two immediates by itself)."""
    if INTERPRET:
        return (a.to(tl.int32, bitcast=True) & 0x7F800000) | 2
    else:
        return tl.inline_asm_elementwise(
            "lop3.b32 $0, $1, 0x7F800000, 2, 0xEA;", "=r,r", [a],
            dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _e2m1_nibble(y, INTERPRET: tl.constexpr):
    """fp32 y -> int32 t whose low 4 bits are the e2m1 magnitude index 0..7 (RNE, saturating
    at 6; bit 3 clear), with garbage above them.

    Rounds a = min(|y|, 6) to one mantissa bit by adding magic = 2^(E+22) + (256 + 2E) * q,
    E = max(exponent of a, 0), q = 2^(E-1) the e2m1 quantum: magic's fp32 ulp is q and its
    significand is even, so a + magic rounded to nearest even is magic + RNE(a / q) * q (at
    most 4 quanta: t stays in magic's binade), and the low 23 bits of t are
    256 + 2E + quanta = 256 + index (0.5 -> 1, 1 -> 2, ... 4 -> 6, 6 -> 7; a rounding up into
    the next binade lands right too). magic is one exact fma: magic = k * 2^22, where
    k = 2^E * (1 + (256 + 2E) * 2^-23) is built from the bits: e = (exponent field of
    max(a, 1)) | 2, k = e + (e >> 22) (e >> 22 = 2 * (127 + E) = 254 + 2E).
    """
    a = tl.minimum(tl.abs(y), 6.0)
    e = tl.maximum(_exp_or_2(a, INTERPRET), 0x3F800002)
    k = e + (e >> 22)
    return tl.fma(k.to(tl.float32, bitcast=True), 4194304.0, a).to(tl.int32, bitcast=True)


@triton.jit
def _e2m1_codes(y, INTERPRET: tl.constexpr):
    """fp32 y -> int32 e2m1 codes, RNE, saturating at +-6; sign bit from y's sign bit.
    Equivalent to the threshold table of reference.float_to_e2m1 (tested exhaustively)."""
    return (_e2m1_nibble(y, INTERPRET) & 7) | ((y.to(tl.int32, bitcast=True) >> 28) & 8)


@triton.jit
def _split4(x, BLOCK_M: tl.constexpr, NB: tl.constexpr):
    """(BM, NB, 2, 4) -> its 4 slices along the last axis, each (BM, NB, 2) (in registers:
    the last axis is within a thread)."""
    a, b = tl.split(tl.reshape(x, (BLOCK_M, NB, 2, 2, 2)))  # a: j = 0, 2; b: j = 1, 3
    x0, x2 = tl.split(a)
    x1, x3 = tl.split(b)
    return x0, x1, x2, x3


# One line, no escapes: Inductor pastes kernel sources (with these globals) into a '''-string.
_PACK_CODES_PTX = tl.constexpr(" ".join([
    "{",
    ".reg .b32 w, u, v, p, q;",
    "shl.b32 w, $1, 28;",
    "shf.r.wrap.b32 w, w, $2, 4;",
    "shf.r.wrap.b32 w, w, $3, 4;",
    "shf.r.wrap.b32 w, w, $4, 4;",
    "shf.r.wrap.b32 w, w, $5, 4;",
    "shf.r.wrap.b32 w, w, $6, 4;",
    "shf.r.wrap.b32 w, w, $7, 4;",
    "shf.r.wrap.b32 w, w, $8, 4;",
    "prmt.b32 u, $9, $11, 0x00FB;",
    "prmt.b32 v, $13, $15, 0xFB00;",
    "prmt.b32 p, $10, $12, 0x00FB;",
    "prmt.b32 q, $14, $16, 0xFB00;",
    "lop3.b32 u, u, 0x0000FFFF, v, 0xE2;",
    "lop3.b32 p, p, 0x0000FFFF, q, 0xE2;",
    "lop3.b32 u, p, 0xF0F0F0F0, u, 0xE2;",
    "lop3.b32 $0, w, 0x88888888, u, 0xF8;",
    "}",
]))


@triton.jit
def _pack_codes(ye, yo, BLOCK_M: tl.constexpr, NB: tl.constexpr, PTX: tl.constexpr,
                INTERPRET: tl.constexpr):
    """(BM, NB, 2, 4) fp32 pairs y -> (BM, NB, 2) int32 words of 8 e2m1 codes each: the 4
    pairs j of a group, element 2j in nibble 2j (the packed layout).

    On the GPU one PTX block per word (_PACK_CODES_PTX):
    - the magnitude indices (_e2m1_nibble) go in by funnel shifts, w = (w >> 4) | (t << 28)
      (shf.r.wrap: only the low 4 bits of t enter, so its garbage costs no masking; the first
      t is shifted to the top and the other 7 push it down to nibble 0);
    - the 8 sign bits (bit 31 of each y) by prmt, whose selector nibbles 0xB / 0xF pick byte 3
      of the first / second operand and replicate its sign bit over the byte:
      u = bytes (se0, se1, ., .) from ye0, ye1 and v = (., ., se2, se3) from ye2, ye3, merged
      (bit-select 0x0000FFFF) into the even signs (se0, se1, se2, se3); likewise the odd ones
      (so0, ...); the bit-select 0xF0F0F0F0 of the two gives nibble 2j = se_j, 2j+1 = so_j;
    - w | (signs & 0x88888888).
    Elsewhere (PTX false: the interpreter, and kernels where the block's 16 live inputs would
    cost registers) the same words come from plain integer operations.
    """
    te = _e2m1_nibble(ye, INTERPRET)
    to = _e2m1_nibble(yo, INTERPRET)
    e0, e1, e2, e3 = _split4(te, BLOCK_M, NB)
    o0, o1, o2, o3 = _split4(to, BLOCK_M, NB)
    ye0, ye1, ye2, ye3 = _split4(ye.to(tl.int32, bitcast=True), BLOCK_M, NB)
    yo0, yo1, yo2, yo3 = _split4(yo.to(tl.int32, bitcast=True), BLOCK_M, NB)
    if not PTX:
        word = ((e0 & 15) | ((o0 & 15) << 4) | ((e1 & 15) << 8) | ((o1 & 15) << 12)
                | ((e2 & 15) << 16) | ((o2 & 15) << 20) | ((e3 & 15) << 24) | (o3 << 28))
        signs = (((ye0 >> 28) & 0x8) | ((yo0 >> 24) & 0x80) | ((ye1 >> 20) & 0x800)
                 | ((yo1 >> 16) & 0x8000) | ((ye2 >> 12) & 0x80000) | ((yo2 >> 8) & 0x800000)
                 | ((ye3 >> 4) & 0x8000000) | (yo3 & -0x80000000))
        return word | signs
    else:
        return tl.inline_asm_elementwise(
            _PACK_CODES_PTX, "=r" + ",r" * 16,
            [e0, o0, e1, o1, e2, o2, e3, o3, ye0, yo0, ye1, yo1, ye2, yo2, ye3, yo3],
            dtype=tl.int32, is_pure=True, pack=1)


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
def _absmax_bf16x2(a, b):
    """Per 16-bit half: the larger magnitude (its sign bit is garbage: xorsign)."""
    return tl.inline_asm_elementwise(
        "max.xorsign.abs.bf16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
        pack=1)


@triton.jit
def _absmax_f16x2(a, b):
    return tl.inline_asm_elementwise(
        "max.xorsign.abs.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
        pack=1)


@triton.jit
def _absmax_16x2_int(a, b):
    """The interpreter's _absmax_*x2: for finite (or infinite) 16-bit floats the order of the
    magnitudes is the integer order of their bits without the sign."""
    lo = tl.maximum(a & 0x7FFF, b & 0x7FFF)
    hi = tl.maximum((a >> 16) & 0x7FFF, (b >> 16) & 0x7FFF)
    return lo | (hi << 16)


@triton.jit
def _block_amax(w, IN_KIND: tl.constexpr, INTERPRET: tl.constexpr):
    """(BM, NB, 2, 4) input words -> (BM, NB) fp32 amax of each 16-element block.

    16-bit inputs reduce the words as packed pairs (max.xorsign.abs.{bf16,f16}x2: one
    instruction per word, no split), then take the larger half; max is exact, so the result
    is the same fp32 value as the max over the split elements."""
    if IN_KIND == 2:
        xe, xo = _split_pairs(w, IN_KIND)
        amax = tl.max(tl.max(tl.maximum(tl.abs(xe), tl.abs(xo)), axis=3), axis=2)
    else:
        if INTERPRET:
            m = tl.reduce(tl.reduce(w, 3, _absmax_16x2_int), 2, _absmax_16x2_int)
        elif IN_KIND == 0:
            m = tl.reduce(tl.reduce(w, 3, _absmax_bf16x2), 2, _absmax_bf16x2)
        else:
            m = tl.reduce(tl.reduce(w, 3, _absmax_f16x2), 2, _absmax_f16x2)
        lo, hi = _split_pairs(m, IN_KIND)
        amax = tl.maximum(tl.abs(lo), tl.abs(hi))
    return amax


@triton.jit
def _pair_sse(xe, xo, re, ro, total):
    """Per-block squared error of e2m1 values (re, ro) * total against (xe, xo)."""
    t = total[:, :, None, None]
    de = xe - re * t
    do = xo - ro * t
    return tl.sum(tl.sum(de * de + do * do, axis=3), axis=2)


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
def _grid_reciprocals(gs):
    """Per row: RN(1 / gs) and RN(1 / RN(1.5 * gs)), the reciprocals of the total scales
    s * gs of the two mantissas s of the fp8_exact grid {1, 1.5} * 2^e (see _grid_inverse)."""
    return tl.math.div_rn(1.0, gs), tl.math.div_rn(1.0, gs * 1.5)


@triton.jit
def _grid_inverse(s, r1, r15):
    """RN(1 / RN(s * gs)) for block scales s in {1, 1.5} * 2^e, e in [-7, 6], from the row's
    _grid_reciprocals, without a division: RN(s * gs) = RN(m * gs) * 2^e and
    RN(1 / (t * 2^e)) = RN(1 / t) * 2^-e exactly while no value involved is subnormal or
    infinite, which holds for a computed global scale (gs in [2^-116, 2^119.5]: every total
    is within [2^-123, 2^125.5]). 2^-e is applied to the bits of the exponent field."""
    sb = s.to(tl.int32, bitcast=True)
    r = tl.where((sb & 0x400000) != 0, r15[:, None], r1[:, None]).to(tl.int32, bitcast=True)
    return (r - (sb & 0x7F800000) + 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _scale_pairs(xe, xo, s, gs, r1, r15, GRID_INV: tl.constexpr):
    """Element pairs (BM, NB, 2, 4) divided by their block's total scale s * gs, as products
    with its fp32 reciprocal RN(1 / RN(s * gs)) (from the row's reciprocals when GRID_INV:
    _grid_inverse). Returns (ye, yo, total)."""
    total = s * gs[:, None]
    if GRID_INV:
        inv = _grid_inverse(s, r1, r15)
    else:
        inv = tl.math.div_rn(1.0, total)
    return xe * inv[:, :, None, None], xo * inv[:, :, None, None], total


@triton.jit
def _quantize_chunk(
    w, amax_blk, gs, r1, r15, k0, K, rows64, row_ok, data_ptr, scales_ptr, fp8_ptr,
    IN_KIND: tl.constexpr, FP8_EXACT: tl.constexpr, SEARCH: tl.constexpr,
    GRID_INV: tl.constexpr, PACK_PTX: tl.constexpr,
    BLOCKED: tl.constexpr, WRITE_PACKED: tl.constexpr, WRITE_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Quantize one (BLOCK_M, BLOCK_K) chunk, given as its input words w (BLOCK_M, NB, 2, 4)
    with its block amax (BLOCK_M, NB), and store it (the words are split into elements here,
    after the block scales)."""
    NB: tl.constexpr = BLOCK_K // 16
    KW = K // 2
    n_scale_cols = K // 16
    blk = tl.arange(0, NB)
    xe, xo = _split_pairs(w, IN_KIND)
    wcol = k0 // 2 + _chunk_word_offsets(NB)
    row3 = rows64[:, None, None, None]
    m = row_ok[:, None, None, None] & (wcol < KW)
    s_ideal = tl.math.div_rn(tl.math.div_rn(amax_blk, F4_E2M1_MAX), gs[:, None])
    if FP8_EXACT:
        s = tl.minimum(tl.maximum(_round_up_one_bit(s_ideal), FP8_EXACT_SCALE_MIN),
                       FP8_EXACT_SCALE_MAX)
    else:
        s = _e4m3_rn(tl.minimum(tl.maximum(s_ideal, E4M3_MIN_SUBNORMAL), F8E4M3_MAX))
    ye, yo, total = _scale_pairs(xe, xo, s, gs, r1, r15, GRID_INV)
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
            c_ye, c_yo, c_total = _scale_pairs(xe, xo, cand, gs, r1, r15, GRID_INV)
            c_re = _e2m1_round(c_ye)
            c_ro = _e2m1_round(c_yo)
            err = _pair_sse(xe, xo, c_re, c_ro, c_total)
            better = err < best
            s = tl.where(better, cand, s)
            b3 = better[:, :, None, None]
            ye = tl.where(b3, c_ye, ye)
            yo = tl.where(b3, c_yo, yo)
            re = tl.where(b3, c_re, re)
            ro = tl.where(b3, c_ro, ro)
            best = tl.where(better, err, best)
    if WRITE_PACKED:
        if IN_KIND == 2:  # int64 words: a group of 4 pairs spans threads; one byte per pair
            codes = _e2m1_codes(ye, INTERPRET) | (_e2m1_codes(yo, INTERPRET) << 4)
            tl.store(data_ptr + row3 * KW + wcol, codes.to(tl.uint8), mask=m)
        else:
            word = _pack_codes(ye, yo, BLOCK_M, NB, PACK_PTX, INTERPRET)
            wcol4 = (k0 // 8 + tl.arange(0, NB)[None, :, None] * 2
                     + tl.arange(0, 2)[None, None, :])
            tl.store(data_ptr + rows64[:, None, None] * (K // 8) + wcol4, word,
                     mask=row_ok[:, None, None] & (wcol4 < K // 8))
        scols = k0 // 16 + blk
        soffs = _scale_offsets(rows64[:, None], scols[None, :], (n_scale_cols + 3) // 4,
                               BLOCKED, n_scale_cols)
        sm = row_ok[:, None] & (scols[None, :] < n_scale_cols)
        tl.store(scales_ptr + soffs, s.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=sm)
    if WRITE_FP8:
        if not SEARCH:
            re = _e2m1_round(ye)
            ro = _e2m1_round(yo)
        s3 = s[:, :, None, None]
        # stored as (BM, NB, 8): a block's 8 pairs are 16 contiguous bytes (one STG.128; the
        # (.., 2, 4) tile would give two 8-byte stores)
        pairs = tl.reshape(_fp8_pairs(re * s3, ro * s3, INTERPRET), (BLOCK_M, NB, 8))
        wcol8 = k0 // 2 + tl.arange(0, NB)[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        tl.store(fp8_ptr + rows64[:, None, None] * KW + wcol8, pairs,
                 mask=row_ok[:, None, None] & (wcol8 < KW))


@triton.jit
def _chunk_word_offsets(NB: tl.constexpr):
    """Word offsets (1, NB, 2, 4) of a chunk's 16-element blocks, relative to its first word
    (a block's 8 words as 2 x 4: each group of 4 words packs into one int32 of codes)."""
    return (tl.arange(0, NB)[None, :, None, None] * 8 + tl.arange(0, 2)[None, None, :, None] * 4
            + tl.arange(0, 4)[None, None, None, :])


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
    # fp8_exact search with the global scale computed here: the 3 block reciprocals without
    # a division (2 per row instead; not worth it for 1 per block)
    GRID_INV: tl.constexpr = FP8_EXACT and COMPUTE_GS and SEARCH
    # the packing's PTX block (fewest instructions) where it costs no registers (measured
    # with ptxas for sm_90; a one-chunk row with a given scale took 48 -> 54 registers at
    # K = 8192, one CTA of 256 threads less per SM)
    PACK_PTX: tl.constexpr = (COMPUTE_GS or not ONE_TILE) and not INTERPRET
    woffs = _chunk_word_offsets(BLOCK_K // 16)
    wrow = xw_ptr + rows64[:, None, None, None] * stride_w
    rowok3 = row_ok[:, None, None, None]

    if ONE_TILE:  # one chunk per row: load once, amax and quantize from registers
        w = tl.load(wrow + woffs, mask=rowok3 & (woffs < KW), other=0)
        amax_blk = _block_amax(w, IN_KIND, INTERPRET)
        if COMPUTE_GS:
            gs = _row_global_scale(tl.max(amax_blk, axis=1), FP8_EXACT)
            tl.store(gs_ptr + rows, gs, mask=row_ok)
        else:
            gs = _load_global_scale(gs_ptr, rows, row_ok, GS_PER_ROW, BLOCK_M)
        r1, r15 = gs, gs
        if GRID_INV:
            r1, r15 = _grid_reciprocals(gs)
        _quantize_chunk(w, amax_blk, gs, r1, r15, 0, K, rows64, row_ok, data_ptr, scales_ptr,
                        fp8_ptr, IN_KIND, FP8_EXACT, SEARCH, GRID_INV, PACK_PTX, BLOCKED,
                        WRITE_PACKED, WRITE_FP8,
                        BLOCK_M, BLOCK_K, INTERPRET)
    else:
        if COMPUTE_GS:  # first walk: row amax (the second walk re-reads the rows from L2)
            amax_row = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                wcol = k0 // 2 + woffs
                w = tl.load(wrow + wcol, mask=rowok3 & (wcol < KW), other=0)
                amax_blk = _block_amax(w, IN_KIND, INTERPRET)
                amax_row = tl.maximum(amax_row, tl.max(amax_blk, axis=1))
            gs = _row_global_scale(amax_row, FP8_EXACT)
            tl.store(gs_ptr + rows, gs, mask=row_ok)
        else:
            gs = _load_global_scale(gs_ptr, rows, row_ok, GS_PER_ROW, BLOCK_M)
        r1, r15 = gs, gs
        if GRID_INV:
            r1, r15 = _grid_reciprocals(gs)
        for k0 in range(0, K, BLOCK_K):
            wcol = k0 // 2 + woffs
            w = tl.load(wrow + wcol, mask=rowok3 & (wcol < KW), other=0)
            amax_blk = _block_amax(w, IN_KIND, INTERPRET)
            _quantize_chunk(w, amax_blk, gs, r1, r15, k0, K, rows64, row_ok, data_ptr,
                            scales_ptr, fp8_ptr, IN_KIND, FP8_EXACT, SEARCH, GRID_INV,
                            PACK_PTX, BLOCKED, WRITE_PACKED,
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
