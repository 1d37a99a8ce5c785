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
#include "nvfp4_quantize/nvfp4_quantize_device.cuh"

namespace solrl {
namespace {

using namespace nvfp4_dev;

constexpr int kBlocksPerThreadShared = 2;  // when rows share warps (K <= 1024)
constexpr int kMinBlocksPerThread = 2, kMaxBlocksPerThread = 4;  // 5 spills (64 registers)
constexpr int kThreadsShared = 128;  // CTA size when rows share warps
constexpr int kMaxThreads = 1024;
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
  const uint4* src =
      reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.x) + (row_ok ? row : 0) * p.ld_x);

  Block blk[kBpt];
#pragma unroll
  for (int i = 0; i < kBpt; ++i) {
    const int b = lane_in_row + i * tpr;
    const bool ok = row_ok && b < blocks;
    blk[i].lo = ok ? __ldg(src + 2 * b) : make_uint4(0, 0, 0, 0);
    blk[i].hi = ok ? __ldg(src + 2 * b + 1) : make_uint4(0, 0, 0, 0);
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
