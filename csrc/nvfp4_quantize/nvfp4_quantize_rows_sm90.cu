// NVFP4 quantization of bf16/fp16 rows, one row held in registers (bit-exact with
// solrl_kernels/nvfp4/reference.py; the Triton kernel in nvfp4/kernels.py computes the same).
//
// Why a CUDA kernel beside the Triton one: a per-row global scale needs the row's amax before
// any element can be quantized. Triton tiles are powers of two, so a row of 3072 / 5120 / 12288
// elements is either padded with idle lanes or walked twice (the second time from L2); both
// left the pass at 0.63-0.73x of copy bandwidth on the H200. Here each row is spread over
// as many threads as it needs (2 to 4 blocks of 16 elements per thread), loaded once,
// reduced in registers / shared memory, and quantized from the same registers.
//
// Layout of the work: thread t of a row owns the 16-element NVFP4 blocks t, t + T, t + 2T, ...
// (T threads per row); a block is two 16-byte loads, one scale, one 16-byte store of the E4M3
// container (or 8 bytes of codes). Rows of up to 1024 elements share a warp (2 blocks per
// thread, T a power of two <= 32); longer rows own a CTA of T = 32 * ceil(blocks / (32 b))
// threads, b = 2..4 blocks per thread chosen per K (blocks_per_thread).
//
// Blocked scales (the 128x4 swizzle, blocked_offset) are stored byte by byte like row-major
// ones (0.72x copy bandwidth on the H200, session 8). A variant that staged a CTA's scales in
// shared memory and wrote whole 16-byte chunks measured 0.69-0.71x (session 9) and was
// removed in session 10; backend="auto" sends blocked scales with a given scale to Triton
// (0.85x, bench/RESULTS.md §2).
//
// Arithmetic: fp32, correctly rounded, in the reference's order. The fp32 operations whose
// operands may be subnormal are inline PTX without .ftz: setup.py compiles with
// --use_fast_math (-ftz=true), which would flush the subnormal inputs and quotients the
// reference keeps. Comparisons and max/min of non-negative floats are done on their bits
// (integer order == numeric order).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "launchers.h"

namespace solrl {
namespace {

constexpr int kBlocksPerThreadShared = 2;  // when rows share warps (K <= 1024)
constexpr int kMinBlocksPerThread = 2, kMaxBlocksPerThread = 4;  // 5 spills (64 registers)
constexpr int kThreadsShared = 128;  // CTA size when rows share warps
constexpr int kMaxThreads = 1024;
constexpr uint32_t kBitsExactMin = 0x3C000000u;    // 2^-7   (FP8_EXACT_SCALE_MIN)
constexpr uint32_t kBitsExactMax = 0x42800000u;    // 64.0f  (FP8_EXACT_SCALE_MAX)
constexpr uint32_t kBitsE4m3Min = 0x3B000000u;     // 2^-9   (E4M3_MIN_SUBNORMAL)
constexpr uint32_t kBitsE4m3Max = 0x43E00000u;     // 448.0f (F8E4M3_MAX)
constexpr uint32_t kBitsE4m3MinNormal = 0x3C800000u;  // 2^-6
constexpr uint32_t kBitsGlobalScaleMin = 0x05800000u;  // 2^-116 (GLOBAL_SCALE_MIN)
constexpr uint32_t kBitsFastDivMin = 0x12800000u;      // 2^-90
constexpr uint32_t kBitsFastDivMax = 0x71800000u;      // 2^100

__device__ __forceinline__ float mul_rn(float a, float b) {
  float d;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ float add_rn(float a, float b) {
  float d;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ float div_rn(float a, float b) {
  float d;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ float rcp_rn(float a) {
  float d;
  asm("rcp.rn.f32 %0, %1;" : "=f"(d) : "f"(a));
  return d;
}
__device__ __forceinline__ float fma_rn(float a, float b, float c) {
  float d;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(d) : "f"(a), "f"(b), "f"(c));
  return d;
}
__device__ __forceinline__ float as_float(uint32_t u) { return __uint_as_float(u); }
__device__ __forceinline__ uint32_t as_bits(float f) { return __float_as_uint(f); }

// Per 16-bit half, the larger magnitude of a and b (sign bit: garbage, xorsign).
template <bool kHalf>
__device__ __forceinline__ uint32_t absmax_x2(uint32_t a, uint32_t b) {
  uint32_t d;
  if constexpr (kHalf) {
    asm("max.xorsign.abs.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  } else {
    asm("max.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  }
  return d;
}

// One 16-bit element (the low half of h) -> fp32 (exact).
template <bool kHalf>
__device__ __forceinline__ float to_f32(uint32_t h) {
  if constexpr (kHalf) {
    float f;
    asm("{ .reg .b16 t; cvt.u16.u32 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "r"(h));
    return f;
  } else {
    return as_float(h << 16);
  }
}

// torch's GELU, tanh approximation (aten/src/ATen/native/cuda/ActivationGeluKernel.cu), in fp32.
__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const float inner = kBeta * (x + kKappa * (x * x * x));
  return 0.5f * x * (1.0f + tanhf(inner));
}

// GELU of the two 16-bit elements of w, each rounded back to the input type (RN).
template <bool kHalf>
__device__ __forceinline__ uint32_t gelu_x2(uint32_t w) {
  const float lo = gelu_tanh(to_f32<kHalf>(w & 0xFFFFu)), hi = gelu_tanh(to_f32<kHalf>(w >> 16));
  uint32_t d;
  if constexpr (kHalf) {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  }
  return d;
}

// max over the threads of a row: a segment of tpr (power of two <= 32) lanes, or the
// blockDim.x threads of the CTA (tpr a multiple of 32).
__device__ __forceinline__ uint32_t row_max(uint32_t m, int tpr, uint32_t* red) {
  if (tpr <= 32) {
    for (int off = tpr / 2; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
    return m;
  }
  for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
  const int lane = threadIdx.x % 32;
  if (lane == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = lane < static_cast<int>(blockDim.x / 32) ? red[lane] : 0u;  // the row's warps reduce them
  for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
  return m;
}

// reference.round_up_one_bit then the clamp to [2^-7, 64], on the bits of s >= 0.
__device__ __forceinline__ uint32_t fp8_exact_scale(uint32_t s) {
  const uint32_t mant = s & 0x7FFFFFu, expo = s & 0x7F800000u;
  const uint32_t up = mant == 0 ? s : (mant <= 0x400000u ? (expo | 0x400000u) : expo + 0x800000u);
  return min(max(up, kBitsExactMin), kBitsExactMax);
}

// E4M3 round-to-nearest-even of s clamped to [2^-9, 448] (reference: .to(float8_e4m3fn)).
__device__ __forceinline__ uint32_t rn_scale(uint32_t s) {
  s = min(max(s, kBitsE4m3Min), kBitsE4m3Max);
  if (s >= kBitsE4m3MinNormal) return (s + 0x7FFFFu + ((s >> 20) & 1u)) & ~0xFFFFFu;
  return as_bits(add_rn(add_rn(as_float(s), 16384.0f), -16384.0f));  // quantum 2^-9
}

// (bits(a) & 0x7F800000) | 2 in one LOP3 (ptxas does not merge the and/or of two immediates)
__device__ __forceinline__ uint32_t exp_or_2(uint32_t a) {
  uint32_t d;
  asm("lop3.b32 %0, %1, 0x7F800000, 2, 0xEA;" : "=r"(d) : "r"(a));
  return d;
}

// e2m1 rounding of y (RNE, saturating at 6), as in nvfp4/kernels.py _e2m1_nibble: with
// a = min(|y|, 6) and k built from a's exponent E (k = 2^E * (1 + (256 + 2E) * 2^-23)),
// t = RN(a + k * 2^22) holds the magnitude index in its low 4 bits, and t - k * 2^22 (exact)
// is the rounded magnitude. |y| < 0.25 rounds to 0 either way, so flushing a subnormal |y|
// in the min is harmless.
struct E2m1 {
  uint32_t t;       // low 4 bits: the magnitude index 0..7
  float magnitude;  // the e2m1 magnitude, >= 0
};
__device__ __forceinline__ E2m1 e2m1_round(float y) {
  const float a = fminf(fabsf(y), 6.0f);
  const uint32_t e = max(exp_or_2(as_bits(a)), 0x3F800002u);
  const float k = as_float(e + (e >> 22));
  const float t = fma_rn(k, 4194304.0f, a);
  return {as_bits(t), fma_rn(k, -4194304.0f, t)};
}

// Two fp32 values that are E4M3 numbers -> their E4M3 bytes, lo in the low byte.
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
  uint32_t d;
  asm("{ .reg .b16 t; cvt.rn.satfinite.e4m3x2.f32 t, %2, %1; cvt.u32.u16 %0, t; }"
      : "=r"(d) : "f"(lo), "f"(hi));
  return d;
}

// Offset of scale (row, col) in the 128x4-blocked layout (nvfp4/layouts.py to_blocked).
__device__ __forceinline__ int64_t blocked_offset(int64_t row, int col, int n_col_blocks) {
  const int64_t tile = (row / 128) * n_col_blocks + col / 4;
  return tile * 512 + (row % 32) * 16 + ((row % 128) / 32) * 4 + col % 4;
}

// The sign bits of the 8 elements in words w0..w3 (2 elements each, sign bits 15 and 31), at
// bit 3 of nibble e (bits 3, 7, ..., 31) as the packed layout wants them, others zero.
// prmt selector nibbles 8 + i replicate the sign bit of byte i over the output byte:
// a = (e0, e1, o0, o1), b = (e2, e3, o2, o3) for even / odd elements e_j = 2j, o_j = 2j + 1;
// the even bytes then fill the low nibbles and the odd ones the high nibbles.
__device__ __forceinline__ uint32_t sign_nibbles(uint32_t w0, uint32_t w1, uint32_t w2,
                                                 uint32_t w3) {
  uint32_t a, b, ev, od, d;
  asm("prmt.b32 %0, %1, %2, 0xFBD9;" : "=r"(a) : "r"(w0), "r"(w1));
  asm("prmt.b32 %0, %1, %2, 0xFBD9;" : "=r"(b) : "r"(w2), "r"(w3));
  asm("prmt.b32 %0, %1, %2, 0x5410;" : "=r"(ev) : "r"(a), "r"(b));
  asm("prmt.b32 %0, %1, %2, 0x7632;" : "=r"(od) : "r"(a), "r"(b));
  asm("lop3.b32 %0, %1, %2, 0x08080808, 0xD8;" : "=r"(d) : "r"(od), "r"(ev));  // c ? b : a
  return d & 0x88888888u;
}

// One 16-element block as loaded: 8 words of 2 elements (element 2j in the low half of word j).
struct Block {
  uint4 lo, hi;
};

// The row's decode scale(s) as the blocks need them: gs and RN(1 / gs); for "fp8_exact" with
// a computed gs also RN(1 / RN(1.5 gs)), so that a block's inverse needs no division
// (nvfp4/kernels.py _grid_reciprocals / _grid_inverse).
struct RowScale {
  float gs, rg, r15;
  bool grid;      // r15 valid: block scales on the fp8_exact grid
  bool fast_div;  // gs in [2^-90, 2^100]: x / gs by Markstein's correction (block_ideal_scale)
};

__device__ __forceinline__ RowScale row_scale(float gs, bool grid) {
  RowScale rs;
  rs.gs = gs;
  rs.rg = rcp_rn(gs);
  rs.grid = grid;
  rs.r15 = grid ? rcp_rn(mul_rn(1.5f, gs)) : 0.0f;
  rs.fast_div = as_bits(gs) >= kBitsFastDivMin && as_bits(gs) <= kBitsFastDivMax;
  return rs;
}

// RN(RN(amax / 6) / gs), the block's ideal scale, without division instructions (div.rn is
// ~10 instructions with a range check and a slow-path call). Each quotient RN(a / b) is
// q = RN(a * RN(1/b)) corrected once: RN(q + RN(a - q b) * RN(1/b)) (Markstein: exact when
// RN(1/b) is correctly rounded, q is faithful and the remainder does not underflow).
// - a / 6 with a a bf16 / fp16 value: exact for every one of them, subnormals included
//   (tests/test_native_quantize.py checks all 2 x 2^15 in exact arithmetic).
// - h / gs: exact while gs is in [2^-90, 2^100] (rs.fast_div) for every quotient in
//   [2^-12, 2^12], which covers the E4M3 / fp8_exact clamp ranges; quotients outside them
//   are faithful (within one ulp) and clamp to the same scale. Other gs: div.rn.
__device__ __forceinline__ float block_ideal_scale(uint32_t amax, const RowScale& rs) {
  constexpr float kSixth = 0.16666667163372039795f;  // RN(1/6)
  const float a = as_float(amax);
  float h = mul_rn(a, kSixth);
  h = fma_rn(fma_rn(-h, 6.0f, a), kSixth, h);
  if (!rs.fast_div) return div_rn(h, rs.gs);
  const float q = mul_rn(h, rs.rg);
  return fma_rn(fma_rn(-q, rs.gs, h), rs.rg, q);
}

// RN(1 / RN(s * gs)) for the block scale s.
__device__ __forceinline__ float block_inverse(float scale, const RowScale& rs) {
  if (rs.grid) {  // s in {1, 1.5} * 2^e: RN(1 / (m * gs * 2^e)) = RN(1 / RN(m * gs)) * 2^-e
    const uint32_t sb = as_bits(scale);
    const uint32_t r = as_bits((sb & 0x400000u) ? rs.r15 : rs.rg);
    return as_float(r - (sb & 0x7F800000u) + 0x3F800000u);
  }
  return rcp_rn(mul_rn(scale, rs.gs));
}

// Block b of `row` (amax: its fp32 bits) -> its scale byte and its codes and/or E4M3 values.
// kPacked: write data + scales; kFp8: write the E4M3 container (compile-time: the unused
// output's arithmetic disappears).
template <bool kHalf, bool kPacked, bool kFp8>
__device__ __forceinline__ void quantize_block(const Nvfp4QuantizeParams& p, const Block& blk,
                                               uint32_t amax, const RowScale& rs, int64_t row,
                                               int b) {
  const uint32_t ideal = as_bits(block_ideal_scale(amax, rs));
  const float scale = as_float(p.fp8_exact ? fp8_exact_scale(ideal) : rn_scale(ideal));
  const float inv = block_inverse(scale, rs);
  const uint32_t words[8] = {blk.lo.x, blk.lo.y, blk.lo.z, blk.lo.w,
                             blk.hi.x, blk.hi.y, blk.hi.z, blk.hi.w};
  uint32_t codes[2] = {0, 0}, fp8[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {  // word j: elements 2j (low half) and 2j + 1
    const float y0 = mul_rn(to_f32<kHalf>(words[j] & 0xFFFFu), inv);
    const float y1 = mul_rn(to_f32<kHalf>(words[j] >> 16), inv);
    const E2m1 r0 = e2m1_round(y0), r1 = e2m1_round(y1);
    if constexpr (kPacked) {  // 8 magnitude indices per word; funnel shifts push earlier ones down
      uint32_t& c = codes[j / 4];
      c = __funnelshift_r(c, r0.t, 4);
      c = __funnelshift_r(c, r1.t, 4);
    }
    if constexpr (kFp8) {  // (e2m1 value with y's sign) * s_blk: an E4M3 number
      const float v0 = mul_rn(as_float(as_bits(r0.magnitude) | (as_bits(y0) & 0x80000000u)), scale);
      const float v1 = mul_rn(as_float(as_bits(r1.magnitude) | (as_bits(y1) & 0x80000000u)), scale);
      fp8[j] = e4m3x2(v0, v1);
    }
  }
  if constexpr (kPacked) {  // y = x * inv keeps x's sign: the sign bits come from x's words
    reinterpret_cast<uint2*>(p.data + row * (p.K / 2))[b] =
        make_uint2(codes[0] | sign_nibbles(words[0], words[1], words[2], words[3]),
                   codes[1] | sign_nibbles(words[4], words[5], words[6], words[7]));
    const int blocks = p.K / 16;
    const int64_t off = p.blocked ? blocked_offset(row, b, (blocks + 3) / 4) : row * blocks + b;
    p.scales[off] = static_cast<uint8_t>(e4m3x2(scale, 0.0f) & 0xFFu);
  }
  if constexpr (kFp8) {
    reinterpret_cast<uint4*>(p.fp8 + row * p.K)[b] =
        make_uint4(fp8[0] | (fp8[1] << 16), fp8[2] | (fp8[3] << 16),
                   fp8[4] | (fp8[5] << 16), fp8[6] | (fp8[7] << 16));
  }
}

// One row per CTA, or rows sharing warps; scales stored byte by byte.
template <int kBpt, bool kHalf, bool kPacked, bool kFp8>
__global__ void __launch_bounds__(kMaxThreads) nvfp4_quantize_rows_kernel(const Nvfp4QuantizeParams p) {
  __shared__ uint32_t red[32];
  const int tpr = p.threads_per_row;  // == blockDim.x, or a power of two <= 32
  int lane_in_row;
  int64_t row;
  if (tpr > 32) {
    lane_in_row = threadIdx.x;
    row = blockIdx.x;
  } else {
    lane_in_row = threadIdx.x & (tpr - 1);
    row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> p.log2_threads_per_row;
  }
  const bool row_ok = row < p.R;
  const int blocks = p.K / 16;
  const int64_t src_row = row_ok ? row : 0;
  const uint4* src =
      reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.x) + src_row * p.ld_x);
  // a concatenated row: blocks from blocks_head on come from x_tail
  const int blocks_head = p.K_head / 16;
  const uint4* tail = p.x_tail == nullptr
                          ? src
                          : reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.x_tail) +
                                                           src_row * p.ld_x_tail);

  Block blk[kBpt];
#pragma unroll
  for (int i = 0; i < kBpt; ++i) {
    const int b = lane_in_row + i * tpr;
    const bool ok = row_ok && b < blocks;
    const uint4* s = b < blocks_head ? src + 2 * b : tail + 2 * (b - blocks_head);
    blk[i].lo = ok ? __ldg(s) : make_uint4(0, 0, 0, 0);
    blk[i].hi = ok ? __ldg(s + 1) : make_uint4(0, 0, 0, 0);
  }
  if (p.act_gelu) {  // uniform: the whole grid takes one path
#pragma unroll
    for (int i = 0; i < kBpt; ++i) {
      if ((lane_in_row + i * tpr) * 16 >= p.act_start) {
        uint4 &u = blk[i].lo, &v = blk[i].hi;
        u = make_uint4(gelu_x2<kHalf>(u.x), gelu_x2<kHalf>(u.y), gelu_x2<kHalf>(u.z), gelu_x2<kHalf>(u.w));
        v = make_uint4(gelu_x2<kHalf>(v.x), gelu_x2<kHalf>(v.y), gelu_x2<kHalf>(v.z), gelu_x2<kHalf>(v.w));
      }
    }
  }
  uint32_t amax[kBpt];  // fp32 bits of the block amax
  uint32_t amax_thread = 0;
#pragma unroll
  for (int i = 0; i < kBpt; ++i) {
    const uint4 &u = blk[i].lo, &v = blk[i].hi;
    const uint32_t m = absmax_x2<kHalf>(
        absmax_x2<kHalf>(absmax_x2<kHalf>(u.x, u.y), absmax_x2<kHalf>(u.z, u.w)),
        absmax_x2<kHalf>(absmax_x2<kHalf>(v.x, v.y), absmax_x2<kHalf>(v.z, v.w)));
    amax[i] = max(as_bits(to_f32<kHalf>(m & 0x7FFFu)), as_bits(to_f32<kHalf>((m >> 16) & 0x7FFFu)));
    amax_thread = max(amax_thread, amax[i]);
  }

  RowScale rs;
  if (p.gs_in == nullptr) {  // per-row global scale: amax / (6 * S_MAX), 1 for a zero row
    const uint32_t m = row_max(amax_thread, tpr, red);
    const uint32_t q = as_bits(div_rn(as_float(m), p.fp8_exact ? 384.0f : 2688.0f));
    rs = row_scale(m != 0 ? as_float(max(q, kBitsGlobalScaleMin)) : 1.0f, p.fp8_exact);
    if (row_ok && lane_in_row == 0) p.gs_out[row] = rs.gs;
  } else {
    rs = row_scale(p.gs_in[p.gs_per_row && row_ok ? row : 0], false);
  }
  if (!row_ok) return;
#pragma unroll
  for (int i = 0; i < kBpt; ++i) {
    const int b = lane_in_row + i * tpr;
    if (b < blocks) quantize_block<kHalf, kPacked, kFp8>(p, blk[i], amax[i], rs, row, b);
  }
}

}  // namespace

static_assert(kNvfp4QuantizeRowsMaxK == kMaxThreads * kMinBlocksPerThread * 16, "launchers.h");

namespace {

using KernelFn = void (*)(Nvfp4QuantizeParams);

template <int kBpt, bool kHalf>
KernelFn pick_outputs(bool packed, bool fp8) {
  return packed ? (fp8 ? nvfp4_quantize_rows_kernel<kBpt, kHalf, true, true>
                       : nvfp4_quantize_rows_kernel<kBpt, kHalf, true, false>)
                : nvfp4_quantize_rows_kernel<kBpt, kHalf, false, true>;
}

template <int kBpt>
KernelFn pick_kernel(bool half, bool packed, bool fp8) {
  return half ? pick_outputs<kBpt, true>(packed, fp8) : pick_outputs<kBpt, false>(packed, fp8);
}

// Blocks per thread for a row of `blocks` blocks that owns a CTA: the kernel's work per thread
// is a fixed part (indexing, the row's max across the CTA, its scale: ~230 instructions, about
// 1.35 blocks' worth, counted in the sm_90a SASS of the packed kernel) plus one part per block,
// and a warp costs the same with idle lanes. Minimise warps x (1.35 + blocks per thread):
// K = 8192 -> 4 (128 threads), 5120 -> 4 (96, 80 busy), 3072 -> 3 (64), 12288 -> 4 (192),
// 15360 -> 4 (256, 240 busy).
int blocks_per_thread(int blocks) {
  int best = kMinBlocksPerThread;
  double best_cost = 1e300;
  for (int bpt = kMinBlocksPerThread; bpt <= kMaxBlocksPerThread; ++bpt) {
    const int threads = (blocks + bpt - 1) / bpt;
    if (threads > kMaxThreads) continue;
    const double cost = ((threads + 31) / 32) * (1.35 + bpt);
    if (cost < best_cost) best = bpt, best_cost = cost;
  }
  return best;
}

// The launch of an (R, K) pass (tests/test_native_quantize.py mirrors this arithmetic and
// the kernel's indexing, and checks them for every K).
struct Plan {
  int bpt;                   // blocks per thread: the kernel's kBpt
  int threads_per_row;       // a power of two <= 32 (rows share warps), else a multiple of 32
  int log2_threads_per_row;  // used by the kernel only when threads_per_row <= 32
  int cta;                   // threads per CTA
  int64_t grid;
};

Plan make_plan(int64_t R, int K) {
  Plan pl{};
  const int blocks = K / 16;
  const int need = (blocks + kBlocksPerThreadShared - 1) / kBlocksPerThreadShared;
  if (need <= 32) {  // rows share warps: a power-of-two segment
    pl.bpt = kBlocksPerThreadShared;
    while ((1 << pl.log2_threads_per_row) < need) ++pl.log2_threads_per_row;
    pl.threads_per_row = 1 << pl.log2_threads_per_row;
    pl.cta = kThreadsShared;
    const int rows_per_cta = kThreadsShared / pl.threads_per_row;
    pl.grid = (R + rows_per_cta - 1) / rows_per_cta;
    return pl;
  }
  // a row per CTA (of one warp when 3-4 blocks per thread fit in 32 lanes: the kernel then
  // takes the shared-warp indexing with one row per CTA)
  pl.bpt = blocks_per_thread(blocks);
  pl.threads_per_row = ((blocks + pl.bpt - 1) / pl.bpt + 31) / 32 * 32;
  pl.log2_threads_per_row = 5;  // used only when threads_per_row == 32
  pl.cta = pl.threads_per_row;
  pl.grid = R;
  return pl;
}

}  // namespace

void nvfp4_quantize_rows_sm90(const Nvfp4QuantizeParams& params) {
  Nvfp4QuantizeParams p = params;
  const int blocks = p.K / 16;
  if (p.K <= 0 || p.K % 16 != 0 || blocks > kMaxThreads * kMinBlocksPerThread) {
    throw std::runtime_error("nvfp4_quantize_rows: K must be a positive multiple of 16 up to " +
                             std::to_string(kNvfp4QuantizeRowsMaxK) + ", got " +
                             std::to_string(p.K));
  }
  const bool packed = p.data != nullptr, fp8 = p.fp8 != nullptr;
  if (!packed && !fp8) throw std::runtime_error("nvfp4_quantize_rows: no output");
  if (p.blocked && !packed) {
    throw std::runtime_error("nvfp4_quantize_rows: blocked scales need the packed output");
  }
  const Plan pl = make_plan(p.R, p.K);
  p.threads_per_row = pl.threads_per_row;
  p.log2_threads_per_row = pl.log2_threads_per_row;
  if (pl.grid == 0) return;
  if (pl.grid > INT32_MAX) throw std::runtime_error("nvfp4_quantize_rows: too many rows");
  KernelFn kernel;
  switch (pl.bpt) {
    case 2: kernel = pick_kernel<2>(p.fp16, packed, fp8); break;
    case 3: kernel = pick_kernel<3>(p.fp16, packed, fp8); break;
    default: kernel = pick_kernel<4>(p.fp16, packed, fp8); break;
  }
  kernel<<<static_cast<unsigned>(pl.grid), pl.cta, 0, p.stream>>>(p);
}

}  // namespace solrl
