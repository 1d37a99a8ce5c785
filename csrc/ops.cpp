// torch.library registration of solrl_kernels' C++/CUDA ops (CUTLASS kernels in csrc/**/*.cu).
//
//   torch.ops.solrl_kernels.fp8_gemm_sm90      Hopper FP8 GEMM, per-row x per-col scales, bias, act
//   torch.ops.solrl_kernels.nvfp4_gemm_sm100   Blackwell block-scaled NVFP4 GEMM (compiled, never run
//                                              here: we have no sm_100 GPU)
//   torch.ops.solrl_kernels.nvfp4_quantize_rows  NVFP4 quantization of bf16/fp16 rows (Hopper)
//   torch.ops.solrl_kernels.stream_capture_id   id of the CUDA-graph capture on the current stream
//   torch.ops.solrl_kernels._fp8_gemm_sm90_tile  fp8_gemm_sm90 with a forced tile config and tile
//                                              scheduler / promotion settings (benchmarks)
//
// Every op exists whatever was compiled. Order of checks: arguments (dtypes, shapes, layouts,
// one device; TypeError/ValueError with the actual values, on any device, CPU tensors too) ->
// was the op's architecture family compiled (else: which TORCH_CUDA_ARCH_LIST entry to add) ->
// CUDA tensors -> GPU capability. Fake (meta) implementations: solrl_kernels/_native_ops.py.
// Narrow includes on purpose: no <ATen/ATen.h> (torch >= 2.10 requires C++20 for it) and no
// <ATen/cuda/CUDAContext.h> (it pulls cuBLAS/cuSPARSE headers that a bare CUDA toolkit or the
// nvidia-*-cu13 wheels may not put on the include path); only c10/cuda and the CUDA runtime.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "launchers.h"

namespace solrl {

namespace {

constexpr int kNumFp8TilesSm90 = 4;
static_assert(static_cast<int>(Fp8TileSm90::k64x192_c1x2_pingpong) == kNumFp8TilesSm90 - 1,
              "a new tile needs its row in fp8_gemm_sm90_impl's launcher table");

// ------------------------------------------------------------------------------ shared checks
// Numbers in messages go through std::to_string, never through an ostream: an extension linked
// with -Wl,-Bsymbolic-functions by a toolchain other than the one that built libstdc++ (Ubuntu's
// python3.12 + /opt/gcc on our GPU image) gets its own copy of ostream::_M_insert<long>, whose
// locale facets are not initialised, and segfaults while formatting an int in an error message.
std::string num(int64_t v) { return std::to_string(v); }

std::string dims_str(c10::IntArrayRef d) {
  std::string out = "[";
  for (size_t i = 0; i < d.size(); ++i) out += (i ? ", " : "") + std::to_string(d[i]);
  return out + "]";
}

std::string shape_str(const at::Tensor& t) { return dims_str(t.sizes()); }

void check_2d(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
              const char* layout) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D ", layout, ", got shape ",
                    shape_str(t));
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " ", layout,
                    " must be contiguous (row-major), got strides ", dims_str(t.strides()),
                    "; call .contiguous()");
}

void check_aligned16(const at::Tensor& t, const char* op, const char* name) {
  if (!t.is_cuda()) return;  // pointers of CPU tensors are never used
  auto addr = reinterpret_cast<uintptr_t>(t.data_ptr());
  TORCH_CHECK_VALUE(addr % 16 == 0, op, ": ", name,
                    " must start at a 16-byte aligned address (TMA), got address % 16 = ",
                    num(addr % 16), " (a view with a storage offset?); call .clone()");
}

void check_vector(const at::Tensor& t, const char* op, const char* name, int64_t n,
                  bool allow_scalar) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   t.scalar_type());
  const int64_t numel = t.numel();
  if (allow_scalar) {
    TORCH_CHECK_VALUE(numel == n || numel == 1, op, ": ", name, " must have ", num(n),
                      " elements (one per row/column) or 1 (per tensor), got shape ",
                      shape_str(t));
  } else {
    TORCH_CHECK_VALUE(numel == n, op, ": ", name, " must have ", num(n), " elements, got shape ",
                      shape_str(t));
  }
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ",
                    dims_str(t.strides()));
}

// bias (N,) bf16/fp16/fp32 -> fp32 contiguous (a 16-bit bias costs one small cast kernel;
// callers that care keep an fp32 copy)
std::optional<at::Tensor> check_bias(const std::optional<at::Tensor>& bias, const char* op,
                                     int64_t N) {
  if (!bias.has_value()) return std::nullopt;
  const at::Tensor& b = *bias;
  TORCH_CHECK_TYPE(b.scalar_type() == at::kFloat || b.scalar_type() == at::kBFloat16 ||
                       b.scalar_type() == at::kHalf,
                   op, ": bias must be float32, bfloat16 or float16, got ", b.scalar_type());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == N, op, ": bias must have shape (", num(N),
                    ",) (one per output column), got ", shape_str(b));
  return b.to(at::kFloat).contiguous();
}

OutDtype check_out_dtype(at::ScalarType out_dtype, const char* op) {
  if (out_dtype == at::kBFloat16) return OutDtype::kBF16;
  if (out_dtype == at::kHalf) return OutDtype::kFP16;
  TORCH_CHECK_VALUE(false, op, ": out_dtype must be torch.bfloat16 or torch.float16, got ",
                    out_dtype);
  return OutDtype::kBF16;
}

Activation parse_activation(c10::string_view act, const char* op) {
  if (act == "none") return Activation::kNone;
  if (act == "gelu_tanh") return Activation::kGeluTanh;
  if (act == "silu") return Activation::kSilu;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'gelu_tanh' or 'silu', got '",
                    std::string(act), "'");
  return Activation::kNone;
}

void check_same_device(std::initializer_list<std::pair<const char*, const at::Tensor*>> ts,
                       const char* op) {
  const at::Tensor& first = *ts.begin()->second;
  for (auto& [name, t] : ts) {
    TORCH_CHECK_VALUE(t->device() == first.device(), op, ": all tensors must be on one device; ",
                      ts.begin()->first, " is on ", first.device().str(), ", ", name, " on ",
                      t->device().str());
  }
}

void check_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, " runs on CUDA tensors only, got tensors on ", t.device().str(),
                    " (the inputs are valid; move them to the GPU)");
}

int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

void check_capability(const at::Tensor& t, int major, const char* op, const char* arch) {
  const int device = t.get_device();
  const int have = device_attribute(cudaDevAttrComputeCapabilityMajor, device);
  if (have == major) return;
  const int minor = device_attribute(cudaDevAttrComputeCapabilityMinor, device);
  cudaDeviceProp prop;
  C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  TORCH_CHECK(false, op, " needs an ", arch, " GPU (compute capability ", num(major), ".x); ",
              prop.name, " is sm_", num(have), num(minor));
}

// Workspace through the caching allocator; tensors live until the op returns (stream-ordered).
struct TorchWorkspace {
  at::TensorOptions options;
  std::vector<at::Tensor> keep;
  static void* alloc(void* ctx, size_t bytes) {
    auto* self = static_cast<TorchWorkspace*>(ctx);
    self->keep.push_back(at::empty({static_cast<int64_t>(bytes)}, self->options));
    return self->keep.back().data_ptr();
  }
};

// ---------------------------------------------------------------------------- fp8_gemm_sm90
struct Fp8ScheduleSm90 {
  Fp8TileSm90 tile;
  int raster;  // 0: CUTLASS's heuristic, 1: along M, 2: along N
};

// The op's default schedule, fitted to the H200 sweep of session 10 (bench/RESULTS.md §1a'):
// - few output tiles (or M <= 64): 64x128 ping-pong (twice the CTAs of a 128-row tile);
// - else 128x192 cooperative (4% faster per tile than 128x128 where both fill their waves)
//   unless its padding and partial last wave cost more than that: counting whole waves of
//   sm_count CTAs, 128x192 may take at most 1/0.93 of 128x128's tile work;
// - 128x192 rasters along M when it has at least as many N tiles as M tiles, else along N
//   (at M 8192, N 12288, 64 tiles each way: along M 0.98x cuBLAS FP8, along N 0.90x).
Fp8ScheduleSm90 default_fp8_schedule_sm90(int64_t M, int64_t N, int64_t sm_count) {
  auto tiles = [&](int64_t bm, int64_t bn) { return ((M + bm - 1) / bm) * ((N + bn - 1) / bn); };
  if (M <= 64 || tiles(128, 128) < sm_count) return {Fp8TileSm90::k64x128_c1x1_pingpong, 0};
  // time of a whole number of waves, in units of 128-row x 1-column tile work
  auto wave_cost = [&](int64_t bn) { return (tiles(128, bn) + sm_count - 1) / sm_count * bn; };
  if (100 * wave_cost(128) < 93 * wave_cost(192)) return {Fp8TileSm90::k128x128_c1x2_coop, 0};
  const bool n_tiles_dominate = (N + 191) / 192 >= (M + 127) / 128;
  return {Fp8TileSm90::k128x192_c1x2_coop, n_tiles_dominate ? 1 : 2};
}

at::Tensor fp8_gemm_sm90_impl(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                              const at::Tensor& scale_b, const std::optional<at::Tensor>& bias,
                              c10::string_view activation, at::ScalarType out_dtype,
                              int64_t tile, int64_t swizzle, int64_t raster,
                              int64_t promotion_interval) {
  constexpr const char* op = "fp8_gemm_sm90";
  check_2d(a, op, "a", at::kFloat8_e4m3fn, "(M, K)");
  check_2d(b, op, "b", at::kFloat8_e4m3fn, "(N, K) (K-major, like nn.Linear.weight)");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  TORCH_CHECK_VALUE(b.size(1) == K, op, ": a is (M, K) = ", shape_str(a), " but b is (N, K) = ",
                    shape_str(b), ": K differs");
  TORCH_CHECK_VALUE(K > 0 && K % 16 == 0, op, ": K must be a positive multiple of 16, got K=", num(K),
                    "; pad K with zeros");
  TORCH_CHECK_VALUE(N % 8 == 0, op, ": N must be a multiple of 8 (16-byte output rows), got N=",
                    num(N));
  TORCH_CHECK_VALUE(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, op,
                    ": M, N, K must fit in int32, got ", num(M), ", ", num(N), ", ", num(K));
  check_vector(scale_a, op, "scale_a", M, /*allow_scalar=*/true);
  check_vector(scale_b, op, "scale_b", N, /*allow_scalar=*/true);
  const OutDtype odt = check_out_dtype(out_dtype, op);
  const Activation act = parse_activation(activation, op);
  TORCH_CHECK_VALUE(tile >= -1 && tile < kNumFp8TilesSm90, op, ": tile must be -1 (heuristic) or in [0, ",
                    num(kNumFp8TilesSm90), "), got ", num(tile));
  TORCH_CHECK_VALUE(swizzle >= 0 && swizzle <= 8 && (swizzle & (swizzle - 1)) == 0, op,
                    ": swizzle must be 0 (default, = 1), 1, 2, 4 or 8, got ", num(swizzle));
  TORCH_CHECK_VALUE(raster >= 0 && raster <= 2, op,
                    ": raster must be 0 (heuristic), 1 (along M) or 2 (along N), got ", num(raster));
  TORCH_CHECK_VALUE(promotion_interval > 0 && promotion_interval % 4 == 0, op,
                    ": promotion_interval must be a positive multiple of 4, got ",
                    num(promotion_interval));
  std::optional<at::Tensor> bias32 = check_bias(bias, op, N);
  if (bias32) {
    check_same_device({{"a", &a}, {"b", &b}, {"scale_a", &scale_a}, {"scale_b", &scale_b},
                       {"bias", &*bias32}}, op);
  } else {
    check_same_device({{"a", &a}, {"b", &b}, {"scale_a", &scale_a}, {"scale_b", &scale_b}}, op);
  }
  check_aligned16(a, op, "a");
  check_aligned16(b, op, "b");

#ifndef SOLRL_ENABLE_SM90
  TORCH_CHECK(false, op,
              ": solrl_kernels._C was built without the Hopper kernels; rebuild with "
              "TORCH_CUDA_ARCH_LIST containing '9.0a' (and SOLRL_DISABLE_SM90 unset): "
              "TORCH_CUDA_ARCH_LIST='9.0a' pip install --no-build-isolation .");
  return at::Tensor();
#else
  check_cuda(a, op);
  c10::cuda::CUDAGuard guard(a.device());
  check_capability(a, 9, op, "sm_90 (Hopper)");
  at::Tensor out = at::empty({M, N}, a.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;

  Fp8GemmSm90Params p{};
  p.a = a.data_ptr();
  p.b = b.data_ptr();
  p.scale_a = scale_a.data_ptr<float>();
  p.scale_b = scale_b.data_ptr<float>();
  p.bias = bias32 ? bias32->data_ptr<float>() : nullptr;
  p.out = out.data_ptr();
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.scale_a_per_row = scale_a.numel() != 1;
  p.scale_b_per_col = scale_b.numel() != 1;
  p.out_dtype = odt;
  p.activation = act;
  p.sm_count = device_attribute(cudaDevAttrMultiProcessorCount, a.get_device());
  p.stream = c10::cuda::getCurrentCUDAStream().stream();
  p.max_swizzle = swizzle > 0 ? static_cast<int>(swizzle) : 1;
  p.raster = static_cast<int>(raster);
  p.promotion_interval = static_cast<int>(promotion_interval);

  Fp8TileSm90 cfg;
  if (tile >= 0) {
    cfg = static_cast<Fp8TileSm90>(tile);
  } else {
    const Fp8ScheduleSm90 sched = default_fp8_schedule_sm90(M, N, p.sm_count);
    cfg = sched.tile;
    if (raster == 0) p.raster = sched.raster;
  }
  TorchWorkspace ws_ctx{a.options().dtype(at::kByte), {}};
  WorkspaceAllocator ws{&TorchWorkspace::alloc, &ws_ctx};
  // one launcher per (tile, output dtype), in Fp8TileSm90 order
  using Launcher = void (*)(const Fp8GemmSm90Params&, const WorkspaceAllocator&);
  static constexpr Launcher kLaunchers[kNumFp8TilesSm90][2] = {
      {fp8_gemm_sm90_128x128_c1x2_coop_bf16, fp8_gemm_sm90_128x128_c1x2_coop_fp16},
      {fp8_gemm_sm90_64x128_c1x1_pingpong_bf16, fp8_gemm_sm90_64x128_c1x1_pingpong_fp16},
      {fp8_gemm_sm90_128x192_c1x2_coop_bf16, fp8_gemm_sm90_128x192_c1x2_coop_fp16},
      {fp8_gemm_sm90_64x192_c1x2_pingpong_bf16, fp8_gemm_sm90_64x192_c1x2_pingpong_fp16},
  };
  kLaunchers[static_cast<int>(cfg)][odt == OutDtype::kBF16 ? 0 : 1](p, ws);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
#endif
}

at::Tensor fp8_gemm_sm90(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                         const at::Tensor& scale_b, const std::optional<at::Tensor>& bias,
                         c10::string_view activation, at::ScalarType out_dtype) {
  return fp8_gemm_sm90_impl(a, b, scale_a, scale_b, bias, activation, out_dtype, /*tile=*/-1,
                            /*swizzle=*/0, /*raster=*/0, kFp8PromotionInterval);
}

// ------------------------------------------------------------------------- nvfp4_gemm_sm100
int64_t blocked_scales_numel(int64_t rows, int64_t k) {
  return ((rows + 127) / 128) * 128 * ((k / 16 + 3) / 4) * 4;
}

at::Tensor nvfp4_gemm_sm100(const at::Tensor& a_data, const at::Tensor& a_scales_blocked,
                            const at::Tensor& b_data, const at::Tensor& b_scales_blocked,
                            const at::Tensor& alpha, const std::optional<at::Tensor>& bias,
                            at::ScalarType out_dtype) {
  constexpr const char* op = "nvfp4_gemm_sm100";
  check_2d(a_data, op, "a_data", at::kByte, "(M, K/2) packed e2m1");
  check_2d(b_data, op, "b_data", at::kByte, "(N, K/2) packed e2m1 (K-major)");
  const int64_t M = a_data.size(0), K = 2 * a_data.size(1), N = b_data.size(0);
  TORCH_CHECK_VALUE(2 * b_data.size(1) == K, op, ": a_data is (M, K/2) = ", shape_str(a_data),
                    " but b_data is (N, K/2) = ", shape_str(b_data), ": K differs");
  TORCH_CHECK_VALUE(K > 0 && K % 32 == 0, op,
                    ": K must be a positive multiple of 32 (16-byte packed rows), got K=", num(K));
  TORCH_CHECK_VALUE(N % 8 == 0, op, ": N must be a multiple of 8 (16-byte output rows), got N=",
                    num(N));
  TORCH_CHECK_VALUE(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, op,
                    ": M, N, K must fit in int32, got ", num(M), ", ", num(N), ", ", num(K));
  auto check_scales = [&](const at::Tensor& s, const char* name, int64_t rows) {
    TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat8_e4m3fn, op, ": ", name,
                     " must be float8_e4m3fn, got ", s.scalar_type());
    const int64_t want = blocked_scales_numel(rows, K);
    TORCH_CHECK_VALUE(s.numel() == want, op, ": ", name, " must hold the 128x4-blocked (", num(rows),
                      ", ", num(K / 16), ") scales = ", num(want),
                      " elements (solrl_kernels.nvfp4.to_blocked), got shape ", shape_str(s));
    TORCH_CHECK_VALUE(s.is_contiguous(), op, ": ", name, " must be contiguous");
  };
  check_scales(a_scales_blocked, "a_scales_blocked", M);
  check_scales(b_scales_blocked, "b_scales_blocked", N);
  TORCH_CHECK_TYPE(alpha.scalar_type() == at::kFloat, op, ": alpha must be float32, got ",
                   alpha.scalar_type());
  TORCH_CHECK_VALUE(alpha.numel() == 1, op,
                    ": alpha must hold one value (global_scale_a * global_scale_b), got shape ",
                    shape_str(alpha));
  [[maybe_unused]] const OutDtype odt = check_out_dtype(out_dtype, op);
  std::optional<at::Tensor> bias32 = check_bias(bias, op, N);
  check_same_device({{"a_data", &a_data}, {"a_scales_blocked", &a_scales_blocked},
                     {"b_data", &b_data}, {"b_scales_blocked", &b_scales_blocked},
                     {"alpha", &alpha}}, op);
  if (bias32) check_same_device({{"a_data", &a_data}, {"bias", &*bias32}}, op);
  check_aligned16(a_data, op, "a_data");
  check_aligned16(b_data, op, "b_data");
  check_aligned16(a_scales_blocked, op, "a_scales_blocked");
  check_aligned16(b_scales_blocked, op, "b_scales_blocked");

#ifndef SOLRL_ENABLE_SM100
  TORCH_CHECK(false, op,
              ": solrl_kernels._C was built without the Blackwell kernels; rebuild with "
              "TORCH_CUDA_ARCH_LIST containing '10.0a' (nvcc >= 12.8, SOLRL_DISABLE_SM100 unset): "
              "TORCH_CUDA_ARCH_LIST='9.0a;10.0a' pip install --no-build-isolation .");
  return at::Tensor();
#else
  check_cuda(a_data, op);
  c10::cuda::CUDAGuard guard(a_data.device());
  check_capability(a_data, 10, op, "sm_100 (Blackwell B200/GB200)");
  at::Tensor out = at::empty({M, N}, a_data.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  at::Tensor alpha32 = alpha.contiguous();
  Nvfp4GemmSm100Params p{};
  p.a_data = a_data.data_ptr();
  p.a_scales = a_scales_blocked.data_ptr();
  p.b_data = b_data.data_ptr();
  p.b_scales = b_scales_blocked.data_ptr();
  p.alpha = alpha32.data_ptr<float>();
  p.bias = bias32 ? bias32->data_ptr<float>() : nullptr;
  p.out = out.data_ptr();
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.out_dtype = odt;
  p.sm_count = device_attribute(cudaDevAttrMultiProcessorCount, a_data.get_device());
  p.stream = c10::cuda::getCurrentCUDAStream().stream();
  TorchWorkspace ws_ctx{a_data.options().dtype(at::kByte), {}};
  WorkspaceAllocator ws{&TorchWorkspace::alloc, &ws_ctx};
  odt == OutDtype::kBF16 ? nvfp4_gemm_sm100_bf16(p, ws) : nvfp4_gemm_sm100_fp16(p, ws);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
#endif
}

// ------------------------------------------------------------------------ nvfp4_quantize_rows
// -> (data (R, K/2) uint8, scales (R, K/16) uint8 or the flat blocked layout (zero padding),
//     gs (R,) fp32 when computed, fp8 (R, K) float8_e4m3fn); outputs not asked for are empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nvfp4_quantize_rows(
    const at::Tensor& x, const std::optional<at::Tensor>& global_scale, bool fp8_exact,
    bool blocked, bool write_packed, bool write_fp8, const std::optional<at::Tensor>& x_tail,
    c10::string_view activation, int64_t activation_start) {
  constexpr const char* op = "nvfp4_quantize_rows";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
                   ": x must be bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (R, K), got shape ", shape_str(x));
  const int64_t R = x.size(0), K_head = x.size(1);
  auto check_rows = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.size(1) <= 1 || t.stride(1) == 1, op, ": ", name,
                      " must have unit last stride, got strides ", dims_str(t.strides()));
    TORCH_CHECK_VALUE(t.size(0) <= 1 || t.stride(0) % 8 == 0, op, ": ", name,
                      "'s row stride must be a multiple of 8 elements (16-byte rows), got ",
                      num(t.stride(0)));
  };
  check_rows(x, "x");
  if (x_tail) {
    TORCH_CHECK_TYPE(x_tail->scalar_type() == x.scalar_type(), op, ": x_tail must have x's dtype (",
                     x.scalar_type(), "), got ", x_tail->scalar_type());
    TORCH_CHECK_VALUE(x_tail->dim() == 2 && x_tail->size(0) == R, op,
                      ": x_tail must be 2-D with x's ", num(R), " rows, got shape ",
                      shape_str(*x_tail));
    TORCH_CHECK_VALUE(K_head % 16 == 0, op,
                      ": with x_tail, x's K must be a multiple of 16, got K=", num(K_head));
    check_rows(*x_tail, "x_tail");
    check_same_device({{"x", &x}, {"x_tail", &*x_tail}}, op);
    check_aligned16(*x_tail, op, "x_tail");
  }
  const int64_t K = K_head + (x_tail ? x_tail->size(1) : 0);
  TORCH_CHECK_VALUE(K % 16 == 0 && K <= kNvfp4QuantizeRowsMaxK, op,
                    ": K must be a multiple of 16 up to ", num(kNvfp4QuantizeRowsMaxK), ", got K=",
                    num(K));
  TORCH_CHECK_VALUE(activation == "none" || activation == "gelu_tanh", op,
                    ": activation must be 'none' or 'gelu_tanh', got '", std::string(activation),
                    "'");
  TORCH_CHECK_VALUE(activation_start >= 0 && activation_start <= K && activation_start % 16 == 0,
                    op, ": activation_start must be a multiple of 16 in [0, K=", num(K), "], got ",
                    num(activation_start));
  TORCH_CHECK_VALUE(write_packed || write_fp8, op, ": nothing to write (write_packed and write_fp8 "
                    "are both false)");
  TORCH_CHECK_VALUE(fp8_exact || !write_fp8, op,
                    ": the E4M3 container (write_fp8) needs fp8_exact=True");
  TORCH_CHECK_VALUE(write_packed || !blocked, op, ": blocked scales need write_packed=True");
  if (global_scale) {
    check_vector(*global_scale, op, "global_scale", R, /*allow_scalar=*/true);
    check_same_device({{"x", &x}, {"global_scale", &*global_scale}}, op);
  }
  check_aligned16(x, op, "x");

  auto u8 = x.options().dtype(at::kByte);
  at::Tensor data = at::empty(write_packed ? std::vector<int64_t>{R, K / 2} : std::vector<int64_t>{0}, u8);
  // blocked scales: no memset where the kernel writes every byte (no padding rows or columns)
  const bool blocked_filled = R % 128 == 0 && (K / 16) % 4 == 0;
  at::Tensor scales = !write_packed    ? at::empty({0}, u8)
                      : !blocked         ? at::empty({R, K / 16}, u8)
                      : blocked_filled   ? at::empty({blocked_scales_numel(R, K)}, u8)
                                         : at::zeros({blocked_scales_numel(R, K)}, u8);
  at::Tensor gs = at::empty({global_scale ? 0 : R}, x.options().dtype(at::kFloat));
  at::Tensor fp8 = at::empty(write_fp8 ? std::vector<int64_t>{R, K} : std::vector<int64_t>{0},
                             x.options().dtype(at::kFloat8_e4m3fn));
#ifndef SOLRL_ENABLE_SM90
  TORCH_CHECK(false, op,
              ": solrl_kernels._C was built without the Hopper kernels; rebuild with "
              "TORCH_CUDA_ARCH_LIST containing '9.0a' (and SOLRL_DISABLE_SM90 unset)");
#else
  check_cuda(x, op);
  c10::cuda::CUDAGuard guard(x.device());
  check_capability(x, 9, op, "sm_90 (Hopper)");
  if (R == 0 || K == 0) return {data, scales, gs.fill_(1.0f), fp8};
  Nvfp4QuantizeParams p{};
  p.x = x.data_ptr();
  p.ld_x = R > 1 ? x.stride(0) : K_head;
  p.R = R;
  p.K = static_cast<int>(K);
  p.K_head = static_cast<int>(K_head);
  p.act_gelu = activation == "gelu_tanh";
  p.act_start = static_cast<int>(activation_start);
  if (x_tail) {
    p.x_tail = x_tail->data_ptr();
    p.ld_x_tail = R > 1 ? x_tail->stride(0) : x_tail->size(1);
  }
  p.fp16 = x.scalar_type() == at::kHalf;
  p.fp8_exact = fp8_exact;
  at::Tensor gs_in;
  if (global_scale) {
    gs_in = global_scale->contiguous();
    p.gs_in = gs_in.data_ptr<float>();
    p.gs_per_row = gs_in.numel() != 1;
  }
  p.gs_out = global_scale ? nullptr : gs.data_ptr<float>();
  p.data = write_packed ? data.data_ptr<uint8_t>() : nullptr;
  p.scales = write_packed ? scales.data_ptr<uint8_t>() : nullptr;
  p.blocked = blocked;
  p.fp8 = write_fp8 ? static_cast<uint8_t*>(fp8.data_ptr()) : nullptr;
  p.stream = c10::cuda::getCurrentCUDAStream().stream();
  nvfp4_quantize_rows_sm90(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return {data, scales, gs, fp8};
}

// The id of the CUDA stream capture in progress on the current stream of `device`, 0 when it
// is not capturing. solrl_kernels/gemm/activation_cache.py shares a quantized activation
// between sibling layers only within one capture (or outside any).
int64_t stream_capture_id(int64_t device) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  C10_CUDA_CHECK(
      cudaStreamGetCaptureInfo(c10::cuda::getCurrentCUDAStream().stream(), &status, &id));
  return status == cudaStreamCaptureStatusActive ? static_cast<int64_t>(id) : 0;
}

// Which kernel families this build holds (for _backends / error messages).
std::vector<std::string> compiled_archs() {
  std::vector<std::string> out;
#ifdef SOLRL_ENABLE_SM90
  out.emplace_back("sm90a");
#endif
#ifdef SOLRL_ENABLE_SM100
  out.emplace_back("sm100a");
#endif
  return out;
}

}  // namespace
}  // namespace solrl

TORCH_LIBRARY(solrl_kernels, m) {
  m.def(
      "fp8_gemm_sm90(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, Tensor? bias, "
      "str activation, ScalarType out_dtype) -> Tensor");
  m.def(
      "_fp8_gemm_sm90_tile(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, Tensor? bias, "
      "str activation, ScalarType out_dtype, int tile, int swizzle=0, int raster=0, "
      "int promotion_interval=8) -> Tensor");
  m.def(
      "nvfp4_gemm_sm100(Tensor a_data, Tensor a_scales_blocked, Tensor b_data, "
      "Tensor b_scales_blocked, Tensor alpha, Tensor? bias, ScalarType out_dtype) -> Tensor");
  m.def(
      "nvfp4_quantize_rows(Tensor x, Tensor? global_scale, bool fp8_exact, bool blocked, "
      "bool write_packed, bool write_fp8, Tensor? x_tail=None, str activation=\"none\", "
      "int activation_start=0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("compiled_archs() -> str[]", &solrl::compiled_archs);
  m.def("stream_capture_id(int device) -> int", &solrl::stream_capture_id);
}

// CUDA does the work; CPU runs the same argument checks and then says the op needs CUDA
// tensors (so bad inputs are reported identically with or without a GPU).
TORCH_LIBRARY_IMPL(solrl_kernels, CUDA, m) {
  m.impl("fp8_gemm_sm90", &solrl::fp8_gemm_sm90);
  m.impl("_fp8_gemm_sm90_tile", &solrl::fp8_gemm_sm90_impl);
  m.impl("nvfp4_gemm_sm100", &solrl::nvfp4_gemm_sm100);
  m.impl("nvfp4_quantize_rows", &solrl::nvfp4_quantize_rows);
}

TORCH_LIBRARY_IMPL(solrl_kernels, CPU, m) {
  m.impl("fp8_gemm_sm90", &solrl::fp8_gemm_sm90);
  m.impl("_fp8_gemm_sm90_tile", &solrl::fp8_gemm_sm90_impl);
  m.impl("nvfp4_gemm_sm100", &solrl::nvfp4_gemm_sm100);
  m.impl("nvfp4_quantize_rows", &solrl::nvfp4_quantize_rows);
}
