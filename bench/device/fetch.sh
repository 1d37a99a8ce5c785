#!/usr/bin/env bash
# Prepare what the H200 runs need and its image lacks, on the development machine:
#   .whl/              diffusers, tyro and their pure-Python needs (the image has torch, peft,
#                      transformers, pytest, pytest-benchmark, triton)
#   build/cutlass_src/ the CUTLASS/CuTe headers of the nvidia-cutlass wheel (~28 MB), and its
#                      Hopper FMHA example (88_hopper_fmha, for bench/fmha_probe.sh)
#   .whl/ also gets nvidia-cudnn-frontend (11.6 MB) with CUDNN_FE=1, for bench/cudnn_fp8_attention.py
#                      (run.sh cudnn-fp8); the tree then exceeds a call's 64 MiB with both
#                      build/ folders: carry .whl with build/device_prebuilt only
# PYTHON=... picks the interpreter that has nvidia-cutlass installed (default python3).
# Both are git-ignored; name them in the device call's `carry`: [".whl", "build/cutlass_src"].
set -euo pipefail
cd "$(dirname "$0")/../.."
${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 \
  importlib_metadata==10.2.0 lazy_importer==0.1.0
if [ "${CUDNN_FE:-0}" = 1 ]; then  # manylinux_2_28 wheel; its own deps are not needed for graph SDPA
  ${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d .whl nvidia-cudnn-frontend==1.32.0
fi
src=$(${PYTHON:-python3} -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source'))")
mkdir -p build/cutlass_src/tools/util
cp -r "$src/include" build/cutlass_src/
cp -r "$src/tools/util/include" build/cutlass_src/tools/util/
mkdir -p build/cutlass_src/examples
cp -r "$src/examples/88_hopper_fmha" "$src/examples/common" build/cutlass_src/examples/
du -sh .whl build/cutlass_src
