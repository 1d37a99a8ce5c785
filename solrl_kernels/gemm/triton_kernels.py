"""Triton kernels of the Hopper NVFP4 linear layer (DESIGN §3): FP8 GEMMs with a fused epilogue.

All kernels compute  out[m, n] = act(scale_a[m] * scale_b[n] * sum_k a[m, k] * b[n, k] + bias[n])
(the plain-torch reference is :func:`solrl_kernels.gemm.reference.fp8_gemm_reference`), with

  a        float8_e4m3fn (M, K) row-major: the activations, FP8-exact NVFP4 expanded to E4M3
  b        the weight (N, K), either E4M3 values (the "fp8" storage mode), or packed NVFP4:
           e2m1 codes uint8 (N, K/2) + E4M3 block scales (N, K/16) (the "packed" mode)
  scale_a  fp32 (M,) per token, or (1,);  scale_b fp32 (N,) per output channel, or (1,)
  out      (M, N) row-major, bf16 / fp16 / fp32

Kernels (each has a launcher below that checks its inputs):

  fp8_gemm_tma_kernel       persistent grid, TMA descriptors for a and b, FP8 wgmma, grouped
                            (GROUP_M) tile order, epilogue in registers, masked pointer store.
  fp8_gemm_ptr_kernel       one tile per program, pointer loads (portable: sm_89, interpreter).
  expand_nvfp4_kernel       packed NVFP4 (fp8_exact rule) -> E4M3 values in global memory; with
                            fp8_gemm_* it is the "expand" variant of the packed mode: the weight
                            stays 4.5 bits at rest, one layer's worth is expanded per call.
  nvfp4_gemm_fused_kernel   packed weight expanded in registers inside the GEMM, as the LEFT
                            wgmma operand: it computes out^T = W X^T tile by tile, so the expanded
                            weight tile feeds the tensor cores from registers (no shared-memory
                            round trip) and X^T comes from shared memory through TMA.

Accumulation: Hopper's FP8 wgmma adds into its fp32 accumulator with reduced precision
("fast accumulation"). With PROMOTE_K > 0 the partial sums are promoted into a full fp32
accumulator every PROMOTE_K elements of K (tl.dot's max_num_imprecise_acc); 0 keeps Triton's
default for sm_90 (no promotion).

Expansion of a packed weight (exact for the fp8_exact rule, DESIGN §3): a code c (sign bit 3,
magnitude index bits 0-2) becomes the fp16 number with bits (c & 8) << 12 | (c & 7) << 9,
which is e2m1(c) * 2^-14 (the 3 magnitude bits land in fp16's 2 low exponent bits and top
mantissa bit; index 1 lands in the subnormal range as 2^-15, still exact); times 2^14 and
times the block scale (both exact in fp16: |e2m1 * s| <= 6 * 64) it is converted to E4M3, exact
because the fp8_exact rule makes every product an E4M3 number.
"""

from __future__ import annotations

import triton
import triton.language as tl

# activation codes (constexpr ints): the order of reference.ACTIVATIONS
ACT_NONE, ACT_GELU_TANH, ACT_SILU = 0, 1, 2


@triton.jit
def _tile_pid(tile_id, num_pid_in_group, num_pid_m, GROUP_M: tl.constexpr):
    """Grouped ("super-tile") order: GROUP_M row tiles sweep all column tiles together so the
    b tiles they share stay in L2."""
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile_id % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _activation(y, ACTIVATION: tl.constexpr):
    if ACTIVATION == 1:  # GELU, tanh approximation: 0.5 y (1 + tanh(u)) = y * sigmoid(2u)
        # (no cancellation for negative y); |2u| <= 40 keeps exp finite, sigmoid(-40) ~ 4e-18
        u2 = 1.5957691216057308 * (y + 0.044715 * y * y * y)
        y = y * tl.sigmoid(tl.minimum(tl.maximum(u2, -40.0), 40.0))
    elif ACTIVATION == 2:  # SiLU
        y = y * tl.sigmoid(y)
    return y


@triton.jit
def _epilogue_store(
    acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, out_ptr, stride_om,
    SA_PER_ROW: tl.constexpr, SB_PER_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
):
    """acc fp32 (BM, BN) at rows offs_m, columns offs_n -> scaled, biased, activated, stored."""
    mask_m = offs_m < M
    mask_n = offs_n < N
    if SA_PER_ROW:
        sa = tl.load(sa_ptr + offs_m, mask=mask_m, other=0.0)
        acc = acc * sa[:, None]
    else:
        acc = acc * tl.load(sa_ptr)
    if SB_PER_COL:
        sb = tl.load(sb_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc * sb[None, :]
    else:
        acc = acc * tl.load(sb_ptr)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    acc = _activation(acc, ACTIVATION)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _dot(a, b_t, acc, PROMOTE_K: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b_t with a (BM, BK), b_t (BK, BN). UPCAST: fp32 operands (the interpreter)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b_t.to(tl.float32), acc)
    elif PROMOTE_K > 0:
        acc = tl.dot(a, b_t, acc, max_num_imprecise_acc=PROMOTE_K)
    else:
        acc = tl.dot(a, b_t, acc)
    return acc


@triton.jit
def fp8_gemm_tma_kernel(
    a_desc, b_desc, sa_ptr, sb_ptr, bias_ptr, out_ptr,
    M, N, K, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS, PROMOTE_K: tl.constexpr, FLATTEN: tl.constexpr,
    SA_PER_ROW: tl.constexpr, SB_PER_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Persistent TMA FP8 GEMM. a_desc: block (BLOCK_M, BLOCK_K) over a (M, K); b_desc: block
    (BLOCK_N, BLOCK_K) over b (N, K). Out-of-range rows / K columns read as zeros (TMA)."""
    start_pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    for tile_id in tl.range(start_pid, num_tiles, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = _tile_pid(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            off_k = ki * BLOCK_K
            a = a_desc.load([off_m, off_k])
            b = b_desc.load([off_n, off_k])
            acc = _dot(a, b.T, acc, PROMOTE_K, UPCAST)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        _epilogue_store(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, out_ptr, stride_om,
                        SA_PER_ROW, SB_PER_COL, HAS_BIAS, ACTIVATION)


@triton.jit
def fp8_gemm_ptr_kernel(
    a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, out_ptr,
    M, N, K, stride_am, stride_bn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PROMOTE_K: tl.constexpr,
    SA_PER_ROW: tl.constexpr, SB_PER_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, UPCAST: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile per program; a (M, K) and b (N, K) K-contiguous."""
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_pid(pid, GROUP_M * num_pid_n, num_pid_m, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # clamp rows instead of masking them: loads stay unmasked along M/N (stores are masked)
    rows_a = tl.where(offs_m < M, offs_m, 0)
    rows_b = tl.where(offs_n < N, offs_n, 0)
    a_ptrs = a_ptr + rows_a[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + rows_b[:, None] * stride_bn + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k[None, :] < K - ki * BLOCK_K
        a = tl.load(a_ptrs, mask=k_mask, other=0.0)
        b = tl.load(b_ptrs, mask=k_mask, other=0.0)
        acc = _dot(a, b.T, acc, PROMOTE_K, UPCAST)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    _epilogue_store(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, out_ptr, stride_om,
                    SA_PER_ROW, SB_PER_COL, HAS_BIAS, ACTIVATION)


@triton.jit
def _e2m1_to_fp16(codes):
    """uint8 e2m1 codes (values 0..15, any shape) -> exact fp16 values (see module docstring)."""
    c = codes.to(tl.uint16)
    bits = ((c & 0x8) << 12) | ((c & 0x7) << 9)
    return bits.to(tl.float16, bitcast=True) * 16384.0


@triton.jit
def _expand_tile(d, s_ptrs, s_mask, BN: tl.constexpr, BK: tl.constexpr):
    """d uint8 (BN, BK/2) packed codes (element 2j in the low nibble) and the BK/16 block scales
    per row at s_ptrs (BN, BK/16) -> float8e4nv (BN, BK) in natural K order."""
    s = tl.load(s_ptrs, mask=s_mask, other=0.0).to(tl.float16)  # (BN, BK/16)
    s8 = tl.reshape(tl.broadcast_to(s[:, :, None], (BN, BK // 16, 8)), (BN, BK // 2))
    lo = (_e2m1_to_fp16(d & 0xF) * s8).to(tl.float8e4nv)
    hi = (_e2m1_to_fp16(d >> 4) * s8).to(tl.float8e4nv)
    return tl.reshape(tl.join(lo, hi), (BN, BK))


@triton.jit
def expand_nvfp4_kernel(
    data_ptr, scales_ptr, out_ptr, N, K,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """data uint8 (N, K/2), scales E4M3 (N, K/16) (fp8_exact rule) -> out E4M3 (N, K)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kb = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)  # byte columns
    offs_ks = pid_k * (BLOCK_K // 16) + tl.arange(0, BLOCK_K // 16)  # scale columns
    mask_n = offs_n < N
    d = tl.load(data_ptr + offs_n[:, None] * (K // 2) + offs_kb[None, :],
                mask=mask_n[:, None] & (offs_kb[None, :] < K // 2), other=0)
    s_ptrs = scales_ptr + offs_n[:, None] * (K // 16) + offs_ks[None, :]
    w = _expand_tile(d, s_ptrs, mask_n[:, None] & (offs_ks[None, :] < K // 16), BLOCK_N, BLOCK_K)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], w,
             mask=mask_n[:, None] & (offs_k[None, :] < K))


@triton.jit
def nvfp4_gemm_fused_kernel(
    a_desc, w_ptr, ws_ptr, sa_ptr, sb_ptr, bias_ptr, out_ptr,
    M, N, K, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
    PROMOTE_K: tl.constexpr,
    SA_PER_ROW: tl.constexpr, SB_PER_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Packed weight, expanded in registers, as the left operand: acc (BLOCK_N, BLOCK_M) = W X^T.

    a_desc: TMA descriptor over a (M, K) E4M3 with block (BLOCK_M, BLOCK_K); w_ptr uint8
    (N, K/2), ws_ptr E4M3 (N, K/16) row-major. Tiles are ordered GROUP_N weight tiles at a
    time over all M tiles (the weight tiles of a group stay in L2 while X streams).

        out^T tile (BLOCK_N x BLOCK_M)  =  W tile (BLOCK_N x BLOCK_K)  @  X tile^T (BLOCK_K x BLOCK_M)
                                           registers (expanded)           shared memory (TMA)
    """
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_n, pid_m = _tile_pid(pid, GROUP_N * num_pid_m, num_pid_n, GROUP_N)
    off_m = pid_m * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_w = tl.where(offs_n < N, offs_n, 0)
    offs_kb = tl.arange(0, BLOCK_K // 2)
    offs_ks = tl.arange(0, BLOCK_K // 16)
    w_ptrs = w_ptr + rows_w[:, None] * (K // 2) + offs_kb[None, :]
    s_ptrs = ws_ptr + rows_w[:, None] * (K // 16) + offs_ks[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        kb_left = K // 2 - ki * (BLOCK_K // 2)
        d = tl.load(w_ptrs, mask=offs_kb[None, :] < kb_left, other=0)
        w = _expand_tile(d, s_ptrs, offs_ks[None, :] < K // 16 - ki * (BLOCK_K // 16),
                         BLOCK_N, BLOCK_K)
        x = a_desc.load([off_m, ki * BLOCK_K])
        acc = _dot(w, x.T, acc, PROMOTE_K, UPCAST)
        w_ptrs += BLOCK_K // 2
        s_ptrs += BLOCK_K // 16
    acc_t = tl.trans(acc)  # (BLOCK_M, BLOCK_N)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    _epilogue_store(acc_t, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, out_ptr, stride_om,
                    SA_PER_ROW, SB_PER_COL, HAS_BIAS, ACTIVATION)
