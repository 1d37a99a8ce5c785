// NVFP4 block-scaled GEMM sm100a: 128x128x256 1-SM tile; bf16 output. See nvfp4_gemm_sm100.cuh.
// Compiled only; never run (no sm_100 GPU in this project).
#include "nvfp4_gemm/nvfp4_gemm_sm100.cuh"

SOLRL_DEFINE_NVFP4_GEMM_SM100(nvfp4_gemm_sm100_bf16, cutlass::bfloat16_t)
