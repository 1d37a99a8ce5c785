// Blackwell (sm_100a) block-scaled NVFP4 GEMM: CUTLASS 3.x OpClassBlockScaledTensorOp with
// nv_float4_t<float_e2m1_t> operands (tcgen05 MMA with E4M3 block scales per 16 elements of K).
//
//   out[m, n] = alpha * sum_k (e2m1(a)[m, k] * sfa[m, k/16]) * (e2m1(b)[n, k] * sfb[n, k/16]) + bias[n]
//
// a_data (M, K/2) and b_data (N, K/2): uint8, two e2m1 codes per byte, element 2j in the LOW
// nibble (the standard NVFP4 packing, which is CUTLASS's float_e2m1_t subbyte order);
// b is K-major (nn.Linear.weight). Scales: float8_e4m3fn (CUTLASS float_ue4m3_t: the sign bit
// is never set by our quantizer) in the 128x4 "blocked" swizzle of solrl_kernels.nvfp4.to_blocked,
// which is CUTLASS's Sm1xxBlockScaledConfig layout (tile_to_shape(SfAtom, (rows, K), Step<_2,_1>):
// 128-row x 4-scale atoms, K-atoms fastest). alpha: device fp32 = global_scale_a * global_scale_b.
//
// NOT RUN ON HARDWARE: this project has no sm_100 GPU. The kernel compiles (nvcc >= 12.8,
// TORCH_CUDA_ARCH_LIST containing 10.0a); its first run on a B200 must be checked against
// the emulated reference (tests/test_native_ops.py::test_nvfp4_gemm_sm100_matches_reference).
#pragma once

#include <stdexcept>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/numeric_types.h"
#include "cutlass/util/packed_stride.hpp"

#include "launchers.h"

namespace solrl::sm100 {

using namespace cute;

template <class ElementD>
struct Nvfp4GemmSm100 {
  using ElementA = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
  using ElementB = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
  using LayoutA = cutlass::layout::RowMajor;     // (M, K), K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // (N, K) row-major
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignA = 32;  // e2m1 elements = 16 bytes
  static constexpr int kAlignB = 32;
  static constexpr int kAlignD = 8;
  using ElementAcc = float;
  using ElementCompute = float;
  using MmaTileShape = Shape<_128, _128, _256>;  // 1-SM tcgen05 tile (CUTLASS example 72b)
  using ClusterShape = Shape<_1, _1, _1>;

  // alpha * acc + bias[n]  (no source tensor C: beta = 0, ElementC = void)
  using FusionOp = cutlass::epilogue::fusion::LinCombPerColBias<ElementD, ElementCompute,
                                                                /*ElementBias=*/float,
                                                                /*ElementSource=*/ElementD,
                                                                /*ElementScalar=*/float>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm100, cutlass::arch::OpClassTensorOp, MmaTileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute,
      void, LayoutD, kAlignD, ElementD, LayoutD, kAlignD,
      cutlass::epilogue::collective::EpilogueScheduleAuto, FusionOp>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm100, cutlass::arch::OpClassBlockScaledTensorOp, ElementA, LayoutA, kAlignA,
      ElementB, LayoutB, kAlignB, ElementAcc, MmaTileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, void>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void run(const Nvfp4GemmSm100Params& p, const WorkspaceAllocator& ws, const char* name) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    using BlkScaledConfig = typename CollectiveMainloop::Sm1xxBlkScaledConfig;
    using DataA = typename ElementA::DataType;
    using DataB = typename ElementB::DataType;
    using ScaleA = typename ElementA::ScaleFactorType;
    using ScaleB = typename ElementB::ScaleFactorType;

    auto problem = cute::make_shape(p.M, p.N, p.K, 1);
    typename Gemm::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = {p.M, p.N, p.K, 1};
    args.mainloop.ptr_A = static_cast<DataA const*>(p.a_data);
    args.mainloop.dA = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(p.M, p.K, 1));
    args.mainloop.ptr_B = static_cast<DataB const*>(p.b_data);
    args.mainloop.dB = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(p.N, p.K, 1));
    args.mainloop.ptr_SFA = static_cast<ScaleA const*>(p.a_scales);
    args.mainloop.layout_SFA = BlkScaledConfig::tile_atom_to_shape_SFA(problem);
    args.mainloop.ptr_SFB = static_cast<ScaleB const*>(p.b_scales);
    args.mainloop.layout_SFB = BlkScaledConfig::tile_atom_to_shape_SFB(problem);
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(p.M, p.N, 1));
    args.epilogue.ptr_C = nullptr;
    args.epilogue.dC = stride_d;
    args.epilogue.ptr_D = static_cast<ElementD*>(p.out);
    args.epilogue.dD = stride_d;
    args.epilogue.thread.alpha_ptr = p.alpha;
    args.epilogue.thread.beta = 0.f;
    args.epilogue.thread.bias_ptr = p.bias;  // nullptr: no bias
    args.hw_info.device_id = 0;
    args.hw_info.sm_count = p.sm_count;

    Gemm gemm;
    cutlass::Status status = gemm.can_implement(args);
    if (status != cutlass::Status::kSuccess) {
      throw std::runtime_error(std::string("nvfp4_gemm_sm100 [") + name +
                               "]: CUTLASS cannot implement this problem: " +
                               cutlassGetStatusString(status));
    }
    void* workspace = ws(Gemm::get_workspace_size(args));
    status = gemm.run(args, workspace, p.stream);
    if (status != cutlass::Status::kSuccess) {
      throw std::runtime_error(std::string("nvfp4_gemm_sm100 [") + name +
                               "]: CUTLASS launch failed: " + cutlassGetStatusString(status) +
                               " (" + cudaGetErrorString(cudaGetLastError()) + ")");
    }
  }
};

}  // namespace solrl::sm100

#define SOLRL_DEFINE_NVFP4_GEMM_SM100(FN_NAME, ELEMENT_D)                                     \
  namespace solrl {                                                                          \
  void FN_NAME(const Nvfp4GemmSm100Params& p, const WorkspaceAllocator& ws) {                \
    ::solrl::sm100::Nvfp4GemmSm100<ELEMENT_D>::run(p, ws, #FN_NAME);                         \
  }                                                                                          \
  }
