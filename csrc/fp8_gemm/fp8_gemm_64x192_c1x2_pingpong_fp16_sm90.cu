// FP8 GEMM sm90a: 64x192x128 CTA tile, 1x2 cluster, ping-pong; fp16 output. See fp8_gemm_sm90.cuh.
#include "fp8_gemm/fp8_gemm_sm90.cuh"

SOLRL_DEFINE_FP8_GEMM_SM90(fp8_gemm_sm90_64x192_c1x2_pingpong_fp16, Tile64x192C1x2Pingpong, cutlass::half_t)
