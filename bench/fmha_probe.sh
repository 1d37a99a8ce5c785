#!/usr/bin/env bash
# Issue 5's open question, before writing an FA3-style kernel of our own: how fast is CUTLASS's
# Hopper FMHA (examples/88_hopper_fmha: TMA, warp-specialized cooperative / ping-pong
# schedules, FP8 forward for head dims 128 and 256) at our attention shapes, against cuDNN's
# BF16 SDPA in the same run? If its FP8 forward reaches >= ~1.6x cuDNN BF16, wrapping it
# (per-tensor E4M3 Q / mean-subtracted K / V, bf16 output with the V scale as the epilogue's
# alpha) is the way to issue 5's 1.4x; if not, neither is a kernel of the same design.
#
#   bash bench/fmha_probe.sh [OUT_DIR]        (H200; run.sh part `fmha-probe`)
#
# Builds the example twice (-DFP8: e4m3 in and out; without: fp16; prebuilt binaries in
# build/fmha_probe/ are used instead when present: `bash bench/fmha_probe.sh --build-only`
# makes them on the development machine, nvcc 13.0 as on the H200), runs each at FLUX.1
# 1024 px (B 1 and 2, H 24, S 4608, D 128) and 512 px (B 4, S 1536), and times
# torch SDPA (cuDNN backend, bf16) at the same shapes. The example's own numbers: runtime by
# CUDA events over --iterations, TFLOP/s = 4 B H Q K D / t; --verify checks against its
# reference kernel. Needs build/cutlass_src with examples/ (bench/device/fetch.sh).
#
# Built as CUTLASS's CMake Release build does (-O3 -DNDEBUG --use_fast_math): without NDEBUG
# its device asserts are calls to __assertfail, and with a call in the kernel ptxas serialises
# every wgmma ("wgmma pipeline crossing function boundary": a DEPBAR after each QGMMA). With
# it, 3 of the FP8 kernels (the 128x256 tile, individual scheduler) still serialise for lack
# of registers (ptxas C7512); the build log's count is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD_ONLY=0
[ "${1:-}" = "--build-only" ] && { BUILD_ONLY=1; shift; }
OUT=${1:-${OUT:-/tmp/out}}
mkdir -p "$OUT" build/fmha_probe
C=$PWD/build/cutlass_src
[ -d "$C/examples/88_hopper_fmha" ] || { echo "no $C/examples: run bench/device/fetch.sh"; exit 1; }
E=$C/examples/88_hopper_fmha
# curand_kernel.h (the example's random fill): the toolkit's, else the nvidia-* wheels'
EXTRA=""
NVCC_INC=$(dirname "$(command -v nvcc)")/../include
[ -f "$NVCC_INC/curand_kernel.h" ] || EXTRA=$(python3 -c "import nvidia, os; [print('-I' + os.path.join(p, d, 'include')) for p in nvidia.__path__ for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, 'include', 'curand_kernel.h'))]" 2>/dev/null | head -1)
build() {  # name, extra flags
  [ -x "build/fmha_probe/$1" ] && return 0
  nvcc -std=c++17 -O3 -DNDEBUG --use_fast_math -gencode=arch=compute_90a,code=sm_90a $2 \
    -I"$C/include" -I"$C/tools/util/include" -I"$C/examples/common" -I"$E" $EXTRA \
    --expt-relaxed-constexpr -o "build/fmha_probe/$1" "$E/88_hopper_fmha.cu" > "$OUT/$1.build.log" 2>&1 \
    || { echo "build $1 failed:"; tail -20 "$OUT/$1.build.log"; return 1; }
  grep -c "wgmma.mma_async instructions are serialized" "$OUT/$1.build.log" | sed "s/^/$1: kernels with serialized wgmma: /"
}
build fmha_fp8 -DFP8 & build fmha_f16 "" & wait
[ "$BUILD_ONLY" = 1 ] && exit 0
for shape in "1 24 4608" "2 24 4608" "4 24 1536"; do
  set -- $shape
  for bin in fmha_fp8 fmha_f16; do
    [ -x "build/fmha_probe/$bin" ] && "build/fmha_probe/$bin" --b=$1 --h=$2 --q=$3 --k=$3 --d=128 --iterations=20 --verify 2>&1 \
      | tee -a "$OUT/fmha_probe.log" | grep -E "######|TFLOPS|FAIL"
  done
done
python3 - <<'PY' 2>&1 | tee -a "$OUT/fmha_probe.log"
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
for b, h, s in ((1, 24, 4608), (2, 24, 4608), (4, 24, 1536)):
    q, k, v = (torch.randn(b, h, s, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            F.scaled_dot_product_attention(q, k, v)
        end.record()
        torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 20
    print(f"cuDNN SDPA bf16 B {b} H {h} S {s} D 128: {4 * b * h * s * s * 128 / ms / 1e9:.0f} TFLOPS/s")
PY
