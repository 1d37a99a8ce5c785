// FP8 GEMM sm90a: 64x128x128 CTA tile, no cluster, ping-pong; fp16 output. See fp8_gemm_sm90.cuh.
#include "fp8_gemm/fp8_gemm_sm90.cuh"

SOLRL_DEFINE_FP8_GEMM_SM90(fp8_gemm_sm90_64x128_c1x1_pingpong_fp16, Tile64x128C1x1Pingpong, cutlass::half_t)
