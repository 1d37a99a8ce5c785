// Hopper (sm_90a) FP8 GEMM with a fused epilogue: CUTLASS 3.x TMA warp-specialized mainloop,
// FP8 wgmma (QGMMA) with fp32 accumulation, and an epilogue visitor tree (EVT).
//
//   out[m, n] = act(scale_a[m] * (scale_b[n] * acc[m, n]) + bias[n]),  acc = sum_k a[m, k] * b[n, k]
//
// a: (M, K) E4M3 row-major; b: (N, K) E4M3 row-major ("TN": both K-major, as nn.Linear's weight);
// scale_a: (M,) or (1,) fp32 (per token / per tensor), scale_b: (N,) or (1,) fp32 (per output
// channel / per tensor) -- chosen at run time by a dynamic broadcast stride, so one kernel
// serves all four combinations; bias: (N,) fp32 or absent (nullptr: the EVT skips it);
// act: none / GELU-tanh / SiLU, chosen at run time (uniform branch in the epilogue), so one
// kernel per (tile, output dtype) serves every combination.
//
// Accuracy: the mainloop is CUTLASS's FP8 mainloop WITHOUT "fast accumulation": wgmma
// accumulates into a temporary fp32 fragment that is added ("promoted") into the main fp32
// accumulator every p.promotion_interval wgmma of K=32 (default 8: every 256 of K), so long K
// (15360) keeps fp32 accuracy instead of the tensor core's reduced-precision accumulator.
// Measured on the H200 (bench/gemm_schedule_sweep.py --what promotion, 28 DiT shapes): the
// accumulation adds 1.3e-4 / 2.1e-4 / 3.4e-4 relative error at intervals 4 / 8 / 16, for
// 0.91 / 0.98 / 0.98x the speed of cuBLAS FP8 (row-wise, no fast accumulation); 8 it is.
// The price is a second accumulator fragment in registers, which is why the large tile is
// 128x128 cooperative (2 x 64x128 per consumer warpgroup, 2 x 64 regs) and not 128x256.
//
// DESIGN.md section 3: FP8-exact NVFP4 tensors expand to exactly these operands (E4M3 values
// times one fp32 scale per row/column), so on Hopper an NVFP4 linear layer is this GEMM.
#pragma once

#include <stdexcept>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/numeric_types.h"
#include "cutlass/util/packed_stride.hpp"

#include "launchers.h"

namespace solrl::sm90 {

using namespace cute;

// ---------------------------------------------------------------------------------------------
// Run-time activation functor for Sm90Compute: Sm90Compute hands a functor's `Arguments` (here
// the activation id) to its operator(), so one kernel covers none / gelu_tanh / silu.
// ---------------------------------------------------------------------------------------------
struct ActivationArgs {
  int kind = 0;  // solrl::Activation
};

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as
// x * sigmoid(2u) = x / (1 + exp(-2u)): no cancellation for negative x (unlike 1 + tanh(u)
// with tanh.approx.f32), and exp(-2u) = inf gives the right limit -0. silu(x) = x / (1 + exp(-x)).
// expf and '/' are the fast-math versions (ex2.approx, approximate division): relative error
// ~1e-6, far below the bf16/fp16 output rounding.
CUTLASS_HOST_DEVICE float activation_fp32(float x, int kind) {
  if (kind == int(Activation::kGeluTanh)) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
  }
  if (kind == int(Activation::kSilu)) {
    return x / (1.0f + expf(-x));
  }
  return x;
}

template <class T>
struct RuntimeActivation {
  using Arguments = ActivationArgs;
  CUTLASS_HOST_DEVICE T operator()(T const& x, Arguments const& args) const {
    return T(activation_fp32(float(x), args.kind));
  }
};

template <class T, int N>
struct RuntimeActivation<cutlass::Array<T, N>> {
  using Arguments = ActivationArgs;
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& x,
                                                      Arguments const& args) const {
    cutlass::Array<T, N> y;
    if (args.kind == int(Activation::kNone)) {  // uniform branch: the whole grid takes one path
      return x;
    }
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) {
      y[i] = T(activation_fp32(float(x[i]), args.kind));
    }
    return y;
  }
};

// ---------------------------------------------------------------------------------------------
// Tile configurations
// ---------------------------------------------------------------------------------------------
struct Tile128x128C1x2Coop {
  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_1, _2, _1>;  // the A tile is multicast to the 2 CTAs along N
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;  // not FP8FastAccum
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

struct Tile128x192C1x2Coop {  // each consumer warpgroup: 64x192, 2 x 96 fp32 registers with promotion
  using TileShape = Shape<_128, _192, _128>;
  using ClusterShape = Shape<_1, _2, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

struct Tile64x192C1x2Pingpong {  // each warpgroup its own 64x192 tile: epilogue overlaps the other's MMAs
  using TileShape = Shape<_64, _192, _128>;
  using ClusterShape = Shape<_1, _2, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

struct Tile64x128C1x1Pingpong {
  using TileShape = Shape<_64, _128, _128>;
  using ClusterShape = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;  // not FP8FastAccum
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

// ---------------------------------------------------------------------------------------------
// The GEMM type for one (tile, output dtype)
// ---------------------------------------------------------------------------------------------
template <class Config, class ElementD>
struct Fp8GemmSm90 {
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using LayoutA = cutlass::layout::RowMajor;     // (M, K), K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // (K, N) column-major == (N, K) row-major
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignA = 16;  // elements (16 bytes): TMA needs 16-byte strides
  static constexpr int kAlignB = 16;
  static constexpr int kAlignD = 8;
  using ElementAcc = float;
  using ElementCompute = float;
  using TileShape = typename Config::TileShape;
  using ClusterShape = typename Config::ClusterShape;
  static constexpr auto RN = cutlass::FloatRoundStyle::round_to_nearest;

  // EVT:  act( ScaleA[m] * (ScaleB[n] * acc) + Bias[n] )
  //   Sm90ColBroadcast = a column vector, indexed by m;  Sm90RowBroadcast = a row vector, by n.
  //   Stride<bool, ...>: the bool stride picks vector (true) or scalar (false) at run time.
  using ScaleA = cutlass::epilogue::fusion::Sm90ColBroadcast<
      0, TileShape, float, ElementCompute, Stride<bool, _0, _0>>;
  using ScaleB = cutlass::epilogue::fusion::Sm90RowBroadcast<
      0, TileShape, float, ElementCompute, Stride<_0, bool, _0>>;
  using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<
      0, TileShape, float, ElementCompute, Stride<_0, _1, _0>>;
  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  using MulNode = cutlass::epilogue::fusion::Sm90Compute<
      cutlass::multiplies, ElementCompute, ElementCompute, RN>;
  using MulAddNode = cutlass::epilogue::fusion::Sm90Compute<
      cutlass::homogeneous_multiply_add, ElementCompute, ElementCompute, RN>;
  using ActNode = cutlass::epilogue::fusion::Sm90Compute<
      RuntimeActivation, ElementD, ElementCompute, RN>;
  using EVTScaledAcc = cutlass::epilogue::fusion::Sm90EVT<MulNode, ScaleB, Acc>;
  using EVTAffine = cutlass::epilogue::fusion::Sm90EVT<MulAddNode, ScaleA, EVTScaledAcc, Bias>;
  using EVT = cutlass::epilogue::fusion::Sm90EVT<ActNode, EVTAffine>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute,
      void, LayoutD, kAlignD,  // no source tensor C
      ElementD, LayoutD, kAlignD, typename Config::EpilogueSchedule, EVT>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignA, ElementB,
      LayoutB, kAlignB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Config::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void run(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws, const char* name) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(p.M, p.K, 1));
    StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(p.N, p.K, 1));
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(p.M, p.N, 1));

    typename Gemm::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = {p.M, p.N, p.K, 1};
    args.mainloop.ptr_A = static_cast<ElementA const*>(p.a);
    args.mainloop.dA = stride_a;
    args.mainloop.ptr_B = static_cast<ElementB const*>(p.b);
    args.mainloop.dB = stride_b;
    args.mainloop.mma_promotion_interval = p.promotion_interval;
    args.epilogue.ptr_C = nullptr;
    args.epilogue.dC = stride_d;
    args.epilogue.ptr_D = static_cast<ElementD*>(p.out);
    args.epilogue.dD = stride_d;
    // EVT arguments mirror the tree: {children..., node op}
    args.epilogue.thread = {
        {                                                               // MulAdd node
         {p.scale_a, 0.f, {p.scale_a_per_row, _0{}, _0{}}},             //   ScaleA (col bcast)
         {{p.scale_b, 0.f, {_0{}, p.scale_b_per_col, _0{}}}, {}, {}},   //   ScaleB * acc
         {p.bias, 0.f, {}},                                             //   Bias (nullptr: 0)
         {}},
        {int(p.activation)}};                                           // Act node
    args.hw_info.device_id = 0;  // unused when sm_count is given
    args.hw_info.sm_count = p.sm_count;
    using RasterOrder = cutlass::gemm::kernel::detail::RasterOrderOptions;
    args.scheduler.max_swizzle_size = p.max_swizzle;
    args.scheduler.raster_order = p.raster == 1   ? RasterOrder::AlongM
                                  : p.raster == 2 ? RasterOrder::AlongN
                                                  : RasterOrder::Heuristic;

    Gemm gemm;
    cutlass::Status status = gemm.can_implement(args);
    if (status != cutlass::Status::kSuccess) {
      throw std::runtime_error(std::string("fp8_gemm_sm90 [") + name +
                               "]: CUTLASS cannot implement this problem: " +
                               cutlassGetStatusString(status));
    }
    void* workspace = ws(Gemm::get_workspace_size(args));
    status = gemm.run(args, workspace, p.stream);
    if (status != cutlass::Status::kSuccess) {
      throw std::runtime_error(std::string("fp8_gemm_sm90 [") + name +
                               "]: CUTLASS launch failed: " + cutlassGetStatusString(status) +
                               " (" + cudaGetErrorString(cudaGetLastError()) + ")");
    }
  }
};

}  // namespace solrl::sm90

// One translation unit = one (tile config, output dtype): keeps the number of template
// instantiations (and CI compile time) small and lets a parallel build spread them out.
#define SOLRL_DEFINE_FP8_GEMM_SM90(FN_NAME, CONFIG, ELEMENT_D)                                \
  namespace solrl {                                                                          \
  void FN_NAME(const Fp8GemmSm90Params& p, const WorkspaceAllocator& ws) {                   \
    ::solrl::sm90::Fp8GemmSm90<::solrl::sm90::CONFIG, ELEMENT_D>::run(p, ws, #FN_NAME);      \
  }                                                                                          \
  }
