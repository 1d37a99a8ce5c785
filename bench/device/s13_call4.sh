set -u
PROFILE_ARGS="--model sd35-large --batch 4 --compile --modes nvfp4+epilogue-gelu,nvfp4,nvfp4+epilogue-gelu,nvfp4" bash bench/device/run.sh profile
export PYTHONPATH=/tmp/site:$PWD
timeout 150 python3 bench/transformer_profile.py --batch 4 --compile --modes nvfp4+epilogue-gelu,nvfp4 > $OUT/transformer_profile_flux.log 2>&1
grep -E "^\[|GEMM fp8|quantize|Inductor" $OUT/transformer_profile_flux.log
timeout 280 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/test_gemm.py tests/test_native_quantize.py tests/test_nn.py tests/test_activation_cache.py > $OUT/gpu_tests_affected.log 2>&1
tail -5 $OUT/gpu_tests_affected.log
