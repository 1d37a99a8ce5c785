// FP8 GEMM sm90a: 128x192x128 CTA tile, 1x2 cluster, cooperative; fp16 output. See fp8_gemm_sm90.cuh.
#include "fp8_gemm/fp8_gemm_sm90.cuh"

SOLRL_DEFINE_FP8_GEMM_SM90(fp8_gemm_sm90_128x192_c1x2_coop_fp16, Tile128x192C1x2Coop, cutlass::half_t)
