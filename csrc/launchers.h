// Plain C++ interface between csrc/ops.cpp (torch side) and the CUTLASS translation units.
//
// The *.cu files include CUTLASS/CuTe only; ops.cpp includes torch only. They meet here, in
// structs of raw pointers and ints, so that neither side pays for the other's headers and the
// CUTLASS files compile without ATen.
//
// Errors: launchers throw std::runtime_error (torch turns it into a Python RuntimeError); all
// argument checks with user-facing messages happen in ops.cpp before a launcher is called.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

namespace solrl {

enum class OutDtype : int { kBF16 = 0, kFP16 = 1 };

// Epilogue activation, selected at run time inside one kernel (a uniform branch).
enum class Activation : int { kNone = 0, kGeluTanh = 1, kSilu = 2 };

// Device scratch memory for a launcher (CUTLASS workspace); ops.cpp backs it by the torch
// caching allocator on the current stream. Returns nullptr only for bytes == 0.
struct WorkspaceAllocator {
  void* (*alloc)(void* ctx, size_t bytes);
  void* ctx;
  void* operator()(size_t bytes) const { return bytes ? alloc(ctx, bytes) : nullptr; }
};

// wgmma k-blocks (K = 32 each) between promotions of the tensor core's accumulator into the
// fp32 one, a multiple of 4 (one 128-deep k-tile). 8 (K = 256): on the H200, 7% faster than
// 4 for 2.1e-4 relative accumulation error instead of 1.3e-4 (bf16 output rounding: 1.5e-3).
// (The default of _fp8_gemm_sm90_tile's schema in ops.cpp and of its fake says 8 too.)
constexpr int kFp8PromotionInterval = 8;

// out[m, n] = act(scale_a[m or 0] * scale_b[n or 0] * sum_k a[m, k] * b[n, k] + bias[n])
struct Fp8GemmSm90Params {
  const void* a;            // (M, K) float8_e4m3fn, row-major, 16-byte aligned
  const void* b;            // (N, K) float8_e4m3fn, row-major ("TN"), 16-byte aligned
  const float* scale_a;     // (M,) when scale_a_per_row, else (1,)
  const float* scale_b;     // (N,) when scale_b_per_col, else (1,)
  const float* bias;        // (N,) fp32, or nullptr
  void* out;                // (M, N) bf16/fp16, row-major, 16-byte aligned
  int M, N, K;              // K % 16 == 0, N % 8 == 0
  bool scale_a_per_row;
  bool scale_b_per_col;
  OutDtype out_dtype;
  Activation activation;
  int sm_count;             // multiprocessors of the device (persistent grid size)
  cudaStream_t stream;
  // Persistent tile scheduler (run time, no new kernel): output tiles are visited in groups of
  // max_swizzle (1, 2, 4, 8) along the raster's minor direction (L2 reuse of A/B tiles).
  int max_swizzle = 1;
  int raster = 0;           // 0: CUTLASS heuristic, 1: along M, 2: along N
  int promotion_interval = kFp8PromotionInterval;
};

// Tile configurations of the sm90 FP8 GEMM (one translation unit each, per output dtype).
enum class Fp8TileSm90 : int {
  k128x128_c1x2_coop = 0,   // large M, N: 128x128x128 CTA tile, 2 consumer warpgroups, 1x2 cluster
  k64x128_c1x1_pingpong = 1,  // small M / few tiles: 64x128x128 CTA tile, ping-pong warpgroups
  k128x192_c1x2_coop = 2,   // 128x192x128 CTA tile, 2 consumer warpgroups, 1x2 cluster
  k64x192_c1x2_pingpong = 3,  // 64x192x128 CTA tile per warpgroup, ping-pong, 1x2 cluster
};

// One function per (tile, out dtype) translation unit; each handles the three activations.
void fp8_gemm_sm90_128x128_c1x2_coop_bf16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_128x128_c1x2_coop_fp16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_128x192_c1x2_coop_bf16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_128x192_c1x2_coop_fp16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_64x192_c1x2_pingpong_bf16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_64x192_c1x2_pingpong_fp16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_64x128_c1x1_pingpong_bf16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);
void fp8_gemm_sm90_64x128_c1x1_pingpong_fp16(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws);

// out[m, n] = alpha * sum_k dq(a)[m, k] * dq(b)[n, k] + bias[n], dq(x) = e2m1(x) * E4M3 block scale
struct Nvfp4GemmSm100Params {
  const void* a_data;       // (M, K/2) uint8, two e2m1 per byte, element 2j in the low nibble
  const void* a_scales;     // float8_e4m3fn, 128x4-blocked swizzle of the (M, K/16) scales
  const void* b_data;       // (N, K/2) uint8
  const void* b_scales;     // float8_e4m3fn, 128x4-blocked swizzle of the (N, K/16) scales
  const float* alpha;       // device pointer to one fp32: global_scale_a * global_scale_b
  const float* bias;        // (N,) fp32, or nullptr
  void* out;                // (M, N) bf16/fp16, row-major
  int M, N, K;              // K % 32 == 0, N % 8 == 0
  OutDtype out_dtype;
  int sm_count;
  cudaStream_t stream;
};

void nvfp4_gemm_sm100_bf16(const Nvfp4GemmSm100Params& p, const WorkspaceAllocator& ws);
void nvfp4_gemm_sm100_fp16(const Nvfp4GemmSm100Params& p, const WorkspaceAllocator& ws);

// NVFP4 quantization of bf16/fp16 rows, each row in registers (csrc/nvfp4_quantize/), with a
// per-row global scale computed from the row (gs_in == nullptr) or given; bit-exact with
// solrl_kernels/nvfp4/reference.py (rules "rn" and "fp8_exact", no scale search).
// Longest row: 1024 threads x 2 blocks of 16 elements.
constexpr int kNvfp4QuantizeRowsMaxK = 32768;

struct Nvfp4QuantizeParams {
  const void* x;            // (R, K) bf16/fp16, unit last stride, rows 16-byte aligned
  int64_t ld_x;             // row stride of x in elements (a multiple of 8)
  int64_t R;
  int K;                    // K % 16 == 0, K <= kNvfp4QuantizeRowsMaxK
  // Rows of cat([x, x_tail], dim=1): columns [0, K_head) from x, [K_head, K) from x_tail
  // (same dtype, layout rules and rows as x); x_tail == nullptr: K_head == K.
  const void* x_tail;
  int64_t ld_x_tail;
  int K_head;               // a multiple of 16
  // GELU (tanh approximation, torch's formula in fp32, rounded back to x's dtype) applied to
  // columns [act_start, K) before quantizing (act_gelu); act_start a multiple of 16.
  bool act_gelu;
  int act_start;
  bool fp16;                // x is fp16 (else bf16)
  bool fp8_exact;           // scale rule "fp8_exact" (else "rn")
  const float* gs_in;       // given decode scales: R (gs_per_row) or 1 values; nullptr: computed
  bool gs_per_row;
  float* gs_out;            // (R,) the computed per-row scales (gs_in == nullptr)
  uint8_t* data;            // (R, K/2) packed e2m1, or nullptr
  uint8_t* scales;          // (R, K/16) E4M3 bytes, or the flat 128x4-blocked layout; with data
  bool blocked;             // scales in the 128x4-blocked layout
  uint8_t* fp8;             // (R, K) E4M3 values e2m1 * s_blk ("fp8_exact" only), or nullptr
  int threads_per_row;      // set by the launcher
  int log2_threads_per_row; // set by the launcher (when threads_per_row <= 32)
  cudaStream_t stream;
};

void nvfp4_quantize_rows_sm90(const Nvfp4QuantizeParams& p);

}  // namespace solrl
