// C++ smoke test of csrc/ops.cpp through the dispatcher, no GPU needed (CMake target
// solrl_ops_check, run by ctest). Named *.cc so that setup.py (csrc/**/*.cpp) leaves it out.
//
// Checks: the three schemas are registered; bad arguments on CPU tensors raise
// c10::TypeError / c10::ValueError with the actual values in the message; valid CPU arguments
// are refused with "runs on CUDA tensors only" (or, where the op's architecture family was not
// compiled, with the TORCH_CUDA_ARCH_LIST entry to add).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <functional>
#include <optional>
#include <string>

namespace {

int failures = 0, passes = 0;

template <class Exc>
void expect_throw(const char* what, const std::string& needle, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Exc& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::printf("FAIL %s: message lacks '%s': %s\n", what, needle.c_str(), e.what());
      ++failures;
    } else {
      std::printf("ok   %s\n", what);
      ++passes;
    }
    return;
  } catch (const std::exception& e) {
    std::printf("FAIL %s: wrong exception type: %s\n", what, e.what());
    ++failures;
    return;
  }
  std::printf("FAIL %s: no exception\n", what);
  ++failures;
}

}  // namespace

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const char* name : {"solrl_kernels::fp8_gemm_sm90", "solrl_kernels::_fp8_gemm_sm90_tile",
                           "solrl_kernels::nvfp4_gemm_sm100", "solrl_kernels::nvfp4_quantize_rows"}) {
    if (!dispatcher.findSchema({name, ""}).has_value()) {
      std::printf("FAIL schema %s is not registered\n", name);
      ++failures;
    } else {
      std::printf("ok   schema %s\n", name);
      ++passes;
    }
  }

  auto fp8_gemm = dispatcher.findSchemaOrThrow("solrl_kernels::fp8_gemm_sm90", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const std::optional<at::Tensor>&,
                                        c10::string_view, at::ScalarType)>();
  const int64_t M = 40, N = 24, K = 64;
  auto e4m3 = at::TensorOptions().dtype(at::kFloat8_e4m3fn);
  at::Tensor a = at::randn({M, K}).to(at::kFloat8_e4m3fn);
  at::Tensor b = at::randn({N, K}).to(at::kFloat8_e4m3fn);
  at::Tensor sa = at::rand({M}) + 0.5, sb = at::rand({N}) + 0.5;

  expect_throw<c10::TypeError>("fp8 a dtype", "must be Float8_e4m3fn, got Float", [&] {
    fp8_gemm.call(a.to(at::kFloat), b, sa, sb, std::nullopt, "none", at::kBFloat16);
  });
  expect_throw<c10::ValueError>("fp8 K mismatch", "K differs", [&] {
    fp8_gemm.call(a, at::zeros({N, K + 16}, e4m3), sa, sb, std::nullopt, "none", at::kBFloat16);
  });
  expect_throw<c10::ValueError>("fp8 K % 16", "got K=40", [&] {
    fp8_gemm.call(at::zeros({M, 40}, e4m3), at::zeros({N, 40}, e4m3), sa, sb, std::nullopt,
                  "none", at::kBFloat16);
  });
  expect_throw<c10::ValueError>("fp8 N % 8", "got N=20", [&] {
    fp8_gemm.call(a, at::zeros({20, K}, e4m3), sa, at::ones({20}), std::nullopt, "none",
                  at::kBFloat16);
  });
  expect_throw<c10::ValueError>("fp8 scale_a numel", "got shape [7]", [&] {
    fp8_gemm.call(a, b, at::ones({7}), sb, std::nullopt, "none", at::kBFloat16);
  });
  expect_throw<c10::ValueError>("fp8 activation", "got 'relu'", [&] {
    fp8_gemm.call(a, b, sa, sb, std::nullopt, "relu", at::kBFloat16);
  });
  expect_throw<c10::ValueError>("fp8 out_dtype", "got Float", [&] {
    fp8_gemm.call(a, b, sa, sb, std::nullopt, "none", at::kFloat);
  });
  expect_throw<c10::ValueError>("fp8 bias shape", "got [25]", [&] {
    fp8_gemm.call(a, b, sa, sb, at::ones({N + 1}), "none", at::kBFloat16);
  });
#ifdef SOLRL_ENABLE_SM90
  const char* fp8_cpu_msg = "runs on CUDA tensors only";  // c10::ValueError
#else
  const char* fp8_cpu_msg = "TORCH_CUDA_ARCH_LIST containing '9.0a'";  // c10::Error
#endif
  expect_throw<c10::Error>("fp8 CPU tensors", fp8_cpu_msg, [&] {
    fp8_gemm.call(a, b, sa, at::ones({1}), at::ones({N}, at::kBFloat16), "gelu_tanh",
                  at::kHalf);
  });

  auto nvfp4_gemm =
      dispatcher.findSchemaOrThrow("solrl_kernels::nvfp4_gemm_sm100", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, at::ScalarType)>();
  auto u8 = at::TensorOptions().dtype(at::kByte);
  at::Tensor ad = at::zeros({M, K / 2}, u8), bd = at::zeros({N, K / 2}, u8);
  at::Tensor asc = at::zeros({128 * 4}, e4m3), bsc = at::zeros({128 * 4}, e4m3);
  at::Tensor alpha = at::ones({});
  expect_throw<c10::ValueError>("nvfp4 scales numel", "= 512 elements", [&] {
    nvfp4_gemm.call(ad, at::zeros({M * K / 16}, e4m3), bd, bsc, alpha, std::nullopt,
                    at::kBFloat16);
  });
  expect_throw<c10::ValueError>("nvfp4 K % 32", "got K=48", [&] {
    nvfp4_gemm.call(at::zeros({M, 24}, u8), asc, at::zeros({N, 24}, u8), bsc, alpha,
                    std::nullopt, at::kBFloat16);
  });
#ifdef SOLRL_ENABLE_SM100
  const char* nvfp4_cpu_msg = "runs on CUDA tensors only";  // c10::ValueError
#else
  const char* nvfp4_cpu_msg = "TORCH_CUDA_ARCH_LIST containing '10.0a'";  // c10::Error
#endif
  expect_throw<c10::Error>("nvfp4 CPU tensors", nvfp4_cpu_msg, [&] {
    nvfp4_gemm.call(ad, asc, bd, bsc, alpha, std::nullopt, at::kBFloat16);
  });

  std::printf("%d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}
