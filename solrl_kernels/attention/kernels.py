"""Triton kernels of the quantized attention (reference.py defines what they compute).

Four launches; three of them read the bf16 inputs once (B*H = G heads, S keys, D channels):

  attn_stats_partial_kernel  grid (G, D / BLOCK_D, S / CHUNK): per head, channel block and
                        chunk of tokens, float64 sums of Q (smooth_q), K (smooth_k) and V,
                        and the max / min of V (so that a long sequence still fills the GPU)
  attn_stats_kernel     grid (G,): combines the chunks: mean of Q, K and V and the amax of
                        V - mean (the per-channel V scale).
                        -> stats (G, 4, D) fp32: [q_mean, k_mean, v_mean, v_scale]
  attn_quant_kv_kernel  grid (G, S_pad / BLOCK_S): smooths and quantizes K rows (per token)
                        and V^T rows (per channel, blocks of 16 tokens), computes the Q-
                        smoothing bias of every key. -> k8 (G, S_pad, D) e4m3, k_scale
                        (G, S_pad), k_bias (G, S_pad) (-inf on padding keys: the mask),
                        v8t (G, D, S_pad) e4m3, v_scale (G, D)
  attn_fwd_kernel       grid (Sq / BLOCK_M, G): loads its bf16 Q tile, smooths and quantizes
                        it in registers, then streams FP8 K/V tiles of BLOCK_N keys:

        s  = dot_fp8(q8, k8^T)                    (BLOCK_M, BLOCK_N) fp32
        t  = s * q_scale[:, None] * k_scale[None, :] + k_bias[None, :]   (log2 units)
        mt = rowmax(t); m' = max(m, mt); alpha = exp2(m - m')
      "nvfp4" P (two-level; its level 1 is the tile max):
        r = exp2(t - mt)                          r in (0, 1], 1 at the row's tile max
        p8 = quantize_p(r)                        FP8-exact values, r ~ p8 / 384
        beta = exp2(mt - m') / 384
        l   = l * alpha + rowsum(p8) * beta
        acc = acc * alpha + dot_fp8(p8, v8) * beta
      "fp8" P (FlashAttention-3's FP8 softmax; the loop: ~11 SASS instructions per score):
        r = exp2(t - m' + log2 448)               448 * exp2(t - m'), at most 448
        l   = l * alpha + rowsum(r)               the unrounded numerators
        acc = acc * alpha + dot_fp8(fp8(r), v8)   one cvt.rn.satfinite per two scores
      epilogue: out = acc * v_scale / l + v_mean

K/V are quantized once by a pre-pass rather than in the attention's loads: each K/V tile
is read by Sq / BLOCK_M programs, so in-loop quantization would repeat its work that many
times, while the pre-pass costs one extra read of K and V and one FP8 write.

FP8 values are built exactly in fp32 (e2m1 * scale, or an arithmetic E4M3 rounding) and
only then cast, so the cast is exact on the GPU and in the interpreter (whose fp8 casts
round differently). Under the interpreter (``DOT_F32``) the dots run on fp32 copies.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ..nvfp4 import reference as nvfp4_ref
from ..nvfp4.kernels import (
    _e2m1_round,
    _e2m1_round_nonneg,
    _e4m3_rn,
    _one_bit_step_down,
    _one_bit_step_up,
    _round_up_one_bit,
)
from . import quant

F4_E2M1_MAX = tl.constexpr(nvfp4_ref.F4_E2M1_MAX)
F8E4M3_MAX = tl.constexpr(nvfp4_ref.F8E4M3_MAX)
SCALE_MAX = tl.constexpr(nvfp4_ref.FP8_EXACT_SCALE_MAX)
SCALE_MIN = tl.constexpr(nvfp4_ref.FP8_EXACT_SCALE_MIN)
GLOBAL_SCALE_MIN = tl.constexpr(nvfp4_ref.GLOBAL_SCALE_MIN)
NVFP4_ROW_DIV = tl.constexpr(nvfp4_ref.F4_E2M1_MAX * nvfp4_ref.FP8_EXACT_SCALE_MAX)  # 384
FP8_ROW_AMAX_MIN = tl.constexpr(quant.FP8_ROW_AMAX_MIN)
P_BLOCK_SCALE_MUL = tl.constexpr(quant.P_BLOCK_SCALE_MUL)
P_SCALE_NVFP4 = tl.constexpr(quant.P_SCALE["nvfp4"])
LOG2_P_SCALE_FP8 = tl.constexpr(math.log2(quant.P_SCALE["fp8"]))


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _e4m3_rn_signed(x):
    """fp32 x with |x| <= 448 -> fp32 holding the nearest E4M3 value (ties to even)."""
    r = _e4m3_rn(tl.abs(x))
    return tl.where(x < 0, -r, r)


@triton.jit
def _nvfp4_block_values(xb, s, gs):
    """xb (R, NB, 16), s (R, NB), gs (R,) -> fp32 e2m1 * s (exact E4M3 numbers)."""
    y = tl.math.div_rn(xb, (s * gs[:, None])[:, :, None])
    y = tl.minimum(tl.maximum(y, -F4_E2M1_MAX), F4_E2M1_MAX)
    return _e2m1_round(y) * s[:, :, None]


@triton.jit
def _block_sse(xb, vals, gs):
    d = xb - vals * gs[:, None, None]
    return tl.sum(d * d, axis=2)


@triton.jit
def _fp8_exact_block_values(xb, amax_blk, gs, SEARCH: tl.constexpr):
    """xb (R, NB, 16), its block amax (R, NB), gs (R,) -> FP8-exact NVFP4 values e2m1 * s.

    Scale rounded up to {1, 1.5}*2^e; with SEARCH, the next smaller and larger grid scales
    are tried and the least squared error wins (the nvfp4 reference's rule)."""
    s_ideal = tl.math.div_rn(tl.math.div_rn(amax_blk, F4_E2M1_MAX), gs[:, None])
    s = tl.minimum(tl.maximum(_round_up_one_bit(s_ideal), SCALE_MIN), SCALE_MAX)
    vals = _nvfp4_block_values(xb, s, gs)
    if SEARCH:
        best = _block_sse(xb, vals, gs)
        for step in tl.static_range(2):
            if step == 0:
                cand = tl.maximum(_one_bit_step_down(s), SCALE_MIN)
            else:
                cand = tl.minimum(_one_bit_step_up(s), SCALE_MAX)
            c_vals = _nvfp4_block_values(xb, cand, gs)
            err = _block_sse(xb, c_vals, gs)
            better = err < best
            vals = tl.where(better[:, :, None], c_vals, vals)
            best = tl.where(better, err, best)
    return vals


@triton.jit
def _quant_rows(x, FMT_NVFP4: tl.constexpr, SEARCH: tl.constexpr, R: tl.constexpr,
                K: tl.constexpr):
    """x (R, K) fp32 -> (values (R, K) fp32, exact E4M3 numbers; gs (R,) fp32).

    quant.quantize_rows, operation for operation ("nvfp4": FP8-exact NVFP4, per-row global
    scale, optional 3-candidate MSE scale search; "fp8": one E4M3 scale per row).
    """
    if FMT_NVFP4:
        NB: tl.constexpr = K // 16
        xb = tl.reshape(x, (R, NB, 16))
        amax_blk = tl.max(tl.abs(xb), axis=2)  # (R, NB)
        amax = tl.max(amax_blk, axis=1)  # (R,)
        gs = tl.math.div_rn(amax, NVFP4_ROW_DIV)
        gs = tl.where(amax > 0, tl.maximum(gs, GLOBAL_SCALE_MIN), 1.0)
        vals = _fp8_exact_block_values(xb, amax_blk, gs, SEARCH)
        return tl.reshape(vals, (R, K)), gs
    else:
        amax = tl.max(tl.abs(x), axis=1)
        a = tl.where(amax > 0, tl.maximum(amax, FP8_ROW_AMAX_MIN), F8E4M3_MAX)
        inv = tl.math.div_rn(tl.zeros_like(a) + F8E4M3_MAX, a)
        y = x * inv[:, None]
        y = tl.minimum(tl.maximum(y, -F8E4M3_MAX), F8E4M3_MAX)
        return _e4m3_rn_signed(y), tl.math.div_rn(a, F8E4M3_MAX)


@triton.jit
def _p_scale_inv(s):
    """384 / s for s in {1, 1.5} * 2^e (exact): bit arithmetic instead of a division."""
    bits = s.to(tl.int32, bitcast=True)
    e_bits = (262 - (bits >> 23)) << 23  # 2^(8 - e)
    return tl.where((bits & 0x7FFFFF) == 0, e_bits | 0x400000, e_bits).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_p_nvfp4(r, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """r (BLOCK_M, BLOCK_N) in [0, 1] -> (p fp32, p8 e4m3): two-level NVFP4 P, FP8-exact
    values (quant.quantize_p "nvfp4"). Under DOT_F32 (interpreter) p8 is unused."""
    rb = tl.reshape(r, (BLOCK_M, BLOCK_N // 16, 16))
    bmax = tl.max(rb, axis=2)
    s = tl.minimum(tl.maximum(_round_up_one_bit(bmax * P_BLOCK_SCALE_MUL), SCALE_MIN),
                   SCALE_MAX)
    y = tl.minimum(rb * _p_scale_inv(s)[:, :, None], F4_E2M1_MAX)
    p = tl.reshape(_e2m1_round_nonneg(y) * s[:, :, None], (BLOCK_M, BLOCK_N))
    return p, p.to(tl.float8e4nv)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _column_sum(base, stride, s_lo, s_hi, d, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """float64 sums over rows s_lo <= s < s_hi of the (rows, d) tile at base."""
    acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float64)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        r = s0 + tl.arange(0, BLOCK_S)
        x = tl.load(base + r[:, None].to(tl.int64) * stride + d[None, :],
                    mask=(r < s_hi)[:, None], other=0.0)
        acc += x.to(tl.float64)
    return tl.sum(acc, axis=0)


@triton.jit
def attn_stats_partial_kernel(
    q_ptr, k_ptr, v_ptr, part_ptr,
    H, Sq, Sk, CHUNK,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs,
    SMOOTH_Q: tl.constexpr, SMOOTH_K: tl.constexpr,
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grid (G, D / BLOCK_D, n_chunks): one chunk of CHUNK tokens of one head, BLOCK_D channels
    -> part[g, c, 0..4, d] float64: sums of Q, K, V over the chunk's tokens (0 where not
    smoothed), max and min of V (-inf / +inf for an empty chunk)."""
    g = tl.program_id(0)
    b = g // H
    h = g % H
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    c = tl.program_id(2)
    s_lo = c * CHUNK
    out = part_ptr + (g.to(tl.int64) * tl.num_programs(2) + c) * 5 * D + d
    zero = tl.zeros((BLOCK_D,), dtype=tl.float64)
    if SMOOTH_Q:
        tl.store(out, _column_sum(q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, sqs,
                                  s_lo, tl.minimum(s_lo + CHUNK, Sq), d, BLOCK_S, BLOCK_D))
    else:
        tl.store(out, zero)
    if SMOOTH_K:
        tl.store(out + D, _column_sum(k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh, sks,
                                      s_lo, tl.minimum(s_lo + CHUNK, Sk), d, BLOCK_S, BLOCK_D))
    else:
        tl.store(out + D, zero)

    v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    s_hi = tl.minimum(s_lo + CHUNK, Sk)
    acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float64)
    vmax = tl.full((BLOCK_S, BLOCK_D), float("-inf"), dtype=tl.float32)
    vmin = tl.full((BLOCK_S, BLOCK_D), float("inf"), dtype=tl.float32)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        r = s0 + tl.arange(0, BLOCK_S)
        ok = (r < s_hi)[:, None]
        x = tl.load(v_base + r[:, None].to(tl.int64) * svs + d[None, :], mask=ok, other=0.0)
        x = x.to(tl.float32)
        acc += x.to(tl.float64)
        vmax = tl.maximum(vmax, tl.where(ok, x, float("-inf")))
        vmin = tl.minimum(vmin, tl.where(ok, x, float("inf")))
    tl.store(out + 2 * D, tl.sum(acc, axis=0))
    tl.store(out + 3 * D, tl.max(vmax, axis=0).to(tl.float64))
    tl.store(out + 4 * D, tl.min(vmin, axis=0).to(tl.float64))


@triton.jit
def attn_stats_kernel(
    part_ptr, stats_ptr, Sq, Sk, n_chunks,
    PV_NVFP4: tl.constexpr, SMOOTH_V: tl.constexpr, D: tl.constexpr,
):
    """grid (G,): the chunks' partials -> stats[g, 0..3, :] = q_mean, k_mean, v_mean (0 where
    not smoothed), V channel scale.

    Means: float64 sums (exact in practice: any order gives reference.token_mean's bits)
    divided once and rounded to fp32. stats[g, 3] from amax = max_j |v_j - v_mean|: V in
    "nvfp4", the per-channel global scale gs = amax / 384 (floored; 1 for 0); "fp8"
    a = amax (floored; 448 for 0), from which the quant kernel takes inv = 448 / a and the
    epilogue gs = a / 448, as quant.quantize_rows.
    """
    g = tl.program_id(0)
    d = tl.arange(0, D)
    part = part_ptr + g.to(tl.int64) * n_chunks * 5 * D + d
    q_sum = tl.zeros((D,), dtype=tl.float64)
    k_sum = tl.zeros((D,), dtype=tl.float64)
    v_sum = tl.zeros((D,), dtype=tl.float64)
    vmax = tl.full((D,), float("-inf"), dtype=tl.float64)
    vmin = tl.full((D,), float("inf"), dtype=tl.float64)
    for _ in range(0, n_chunks):
        q_sum += tl.load(part)
        k_sum += tl.load(part + D)
        v_sum += tl.load(part + 2 * D)
        vmax = tl.maximum(vmax, tl.load(part + 3 * D))
        vmin = tl.minimum(vmin, tl.load(part + 4 * D))
        part += 5 * D
    out = stats_ptr + g.to(tl.int64) * 4 * D + d
    tl.store(out, (q_sum / Sq).to(tl.float32))  # 0 when Q is not smoothed
    tl.store(out + D, (k_sum / Sk).to(tl.float32))
    if SMOOTH_V:
        v_mean = (v_sum / Sk).to(tl.float32)
    else:
        v_mean = tl.zeros((D,), dtype=tl.float32)
    # max_j |v_j - mean| == max(vmax - mean, mean - vmin): fp32 subtraction is monotonic
    amax = tl.maximum(vmax.to(tl.float32) - v_mean, v_mean - vmin.to(tl.float32))
    amax = tl.maximum(amax, 0.0)
    if PV_NVFP4:
        gs = tl.math.div_rn(amax, NVFP4_ROW_DIV)
        gs = tl.where(amax > 0, tl.maximum(gs, GLOBAL_SCALE_MIN), 1.0)
    else:
        gs = tl.where(amax > 0, tl.maximum(amax, FP8_ROW_AMAX_MIN), F8E4M3_MAX)
    tl.store(out + 2 * D, v_mean)
    tl.store(out + 3 * D, gs)


@triton.jit
def attn_quant_kv_kernel(
    k_ptr, v_ptr, stats_ptr,
    k8_ptr, k_scale_ptr, k_bias_ptr, v8t_ptr,
    H, Sk, S_pad, bias_mul,
    skb, skh, sks, svb, svh, svs,
    QK_NVFP4: tl.constexpr, PV_NVFP4: tl.constexpr, SEARCH: tl.constexpr,
    SMOOTH_Q: tl.constexpr, SMOOTH_K: tl.constexpr,
    D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One (head, BLOCK_S keys) tile: smoothed, quantized K rows and V^T blocks; key bias.

    Padding keys (Sk <= j < S_pad) get k8 = 0, k_scale = 0, k_bias = -inf, v8t = 0.
    bias_mul = softmax scale * log2(e).
    """
    g = tl.program_id(0)
    b = g // H
    h = g % H
    s0 = tl.program_id(1) * BLOCK_S
    r = s0 + tl.arange(0, BLOCK_S)
    ok = r < Sk
    d = tl.arange(0, D)
    st = stats_ptr + g.to(tl.int64) * 4 * D + d
    q_mean = tl.load(st)
    k_mean = tl.load(st + D)
    v_mean = tl.load(st + 2 * D)
    v_gs = tl.load(st + 3 * D)  # nvfp4: the channel's global scale; fp8: its amax (a)

    k = tl.load(k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh + r[:, None].to(tl.int64) * sks
                + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    if SMOOTH_K:
        k = k - k_mean[None, :]
    k = tl.where(ok[:, None], k, 0.0)
    if SMOOTH_Q:
        bias = tl.sum(k * q_mean[None, :], axis=1) * bias_mul
    else:
        bias = tl.zeros((BLOCK_S,), dtype=tl.float32)
    bias = tl.where(ok, bias, float("-inf"))
    k_vals, k_gs = _quant_rows(k, QK_NVFP4, SEARCH, BLOCK_S, D)
    k_gs = tl.where(ok, k_gs, 0.0)
    row_out = g.to(tl.int64) * S_pad + r
    tl.store(k8_ptr + row_out[:, None] * D + d[None, :], k_vals.to(tl.float8e4nv))
    tl.store(k_scale_ptr + row_out, k_gs)
    tl.store(k_bias_ptr + row_out, bias)

    # V^T rows are channels: load the tile transposed, (D, BLOCK_S); blocks of 16 tokens
    vt = tl.load(v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
                 + r[None, :].to(tl.int64) * svs + d[:, None], mask=ok[None, :], other=0.0)
    vt = tl.where(ok[None, :], vt.to(tl.float32) - v_mean[:, None], 0.0)
    if PV_NVFP4:
        vb = tl.reshape(vt, (D, BLOCK_S // 16, 16))
        amax_blk = tl.max(tl.abs(vb), axis=2)  # (D, NB)
        vals = _fp8_exact_block_values(vb, amax_blk, v_gs, SEARCH)
        v8 = tl.reshape(vals, (D, BLOCK_S))
    else:
        inv = tl.math.div_rn(tl.zeros_like(v_gs) + F8E4M3_MAX, v_gs)
        y = vt * inv[:, None]
        y = tl.minimum(tl.maximum(y, -F8E4M3_MAX), F8E4M3_MAX)
        v8 = _e4m3_rn_signed(y)
    tl.store(v8t_ptr + (g.to(tl.int64) * D + d[:, None]) * S_pad + r[None, :],
             v8.to(tl.float8e4nv))


@triton.jit
def attn_fwd_kernel(
    q_ptr, k8_ptr, k_scale_ptr, k_bias_ptr, v8t_ptr, stats_ptr, o_ptr,
    H, Sq, S_pad, n_tiles, qk_mul,
    sqb, sqh, sqs, sob, soh, sos,
    QK_NVFP4: tl.constexpr, PV_NVFP4: tl.constexpr, SEARCH: tl.constexpr,
    SMOOTH_Q: tl.constexpr,
    DOT_F32: tl.constexpr,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Online-softmax attention over pre-quantized K/V (module doc); qk_mul = scale*log2(e)."""
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    b = g // H
    h = g % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Sq
    d = tl.arange(0, D)
    st = stats_ptr + g.to(tl.int64) * 4 * D + d

    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None].to(tl.int64) * sqs
                + d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    if SMOOTH_Q:
        q = tl.where(row_ok[:, None], q - tl.load(st)[None, :], 0.0)
    q_vals, q_gs = _quant_rows(q, QK_NVFP4, SEARCH, BLOCK_M, D)
    q_mul = q_gs * qk_mul
    if DOT_F32:
        q8 = q_vals
    else:
        q8 = q_vals.to(tl.float8e4nv)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    kv_row0 = g.to(tl.int64) * S_pad
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs = k8_ptr + (kv_row0 + offs_n)[:, None] * D + d[None, :]  # (BLOCK_N, D)
    v_ptrs = v8t_ptr + (g.to(tl.int64) * D + d)[:, None] * S_pad + offs_n[None, :]  # (D, BLOCK_N)
    ks_ptrs = k_scale_ptr + kv_row0 + offs_n
    kb_ptrs = k_bias_ptr + kv_row0 + offs_n
    for _ in range(0, n_tiles):
        k8 = tl.load(k_ptrs)
        k_gs = tl.load(ks_ptrs)
        k_b = tl.load(kb_ptrs)
        if DOT_F32:
            s = tl.dot(q8, tl.trans(k8.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q8, tl.trans(k8))
        t = s * q_mul[:, None] * k_gs[None, :] + k_b[None, :]
        mt = tl.max(t, axis=1)
        m_new = tl.maximum(m_i, mt)
        alpha = tl.exp2(m_i - m_new)
        vt = tl.load(v_ptrs)
        if PV_NVFP4:  # r relative to the tile max: level 1 of P's two-level scale
            r = tl.exp2(t - mt[:, None])
            p, p8 = _quantize_p_nvfp4(r, BLOCK_M, BLOCK_N)
            beta = tl.exp2(mt - m_new) * (1.0 / P_SCALE_NVFP4)
            l_i = l_i * alpha + tl.sum(p, axis=1) * beta
            if DOT_F32:
                pv = tl.dot(p, tl.trans(vt.to(tl.float32)), input_precision="ieee")
            else:
                pv = tl.dot(p8, tl.trans(vt))
            acc = acc * alpha[:, None] + pv * beta[:, None]
        else:  # relative to the running max, times 448 (folded into exp2); l unrounded
            r = tl.exp2(t - (m_new - LOG2_P_SCALE_FP8)[:, None])
            l_i = l_i * alpha + tl.sum(r, axis=1)
            if DOT_F32:
                p = _e4m3_rn(tl.minimum(r, F8E4M3_MAX))
                pv = tl.dot(p, tl.trans(vt.to(tl.float32)), input_precision="ieee")
            else:  # cvt.rn.satfinite.e4m3x2.f32: round to nearest even, saturating at 448
                pv = tl.dot(r.to(tl.float8e4nv), tl.trans(vt))
            acc = acc * alpha[:, None] + pv
        m_i = m_new
        k_ptrs += BLOCK_N * D
        v_ptrs += BLOCK_N
        ks_ptrs += BLOCK_N
        kb_ptrs += BLOCK_N

    v_gs = tl.load(st + 3 * D)
    if not PV_NVFP4:
        v_gs = tl.math.div_rn(v_gs, tl.zeros_like(v_gs) + F8E4M3_MAX)
    v_mean = tl.load(st + 2 * D)
    out = acc * v_gs[None, :] / l_i[:, None] + v_mean[None, :]
    tl.store(o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh + rows[:, None].to(tl.int64) * sos
             + d[None, :], out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
