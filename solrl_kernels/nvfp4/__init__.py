"""NVFP4: the format (reference.py), its scale layouts (layouts.py), Triton kernels
(kernels.py, ops.py) and one public function per job (api.py).

    t = quantize(x, scale_rule="fp8_exact")       # NVFP4Tensor
    x_hat = dequantize(t, torch.bfloat16)
    values, gs = quantize_to_fp8(x)                # FP8-exact NVFP4 as E4M3 + fp32 scale
"""

from .api import dequantize, quantize, quantize_to_fp8
from .layouts import blocked_numel, from_blocked, to_blocked
from .reference import (
    E2M1_VALUES,
    F4_E2M1_MAX,
    F8E4M3_MAX,
    FP8_EXACT_SCALE_MAX,
    FP8_EXACT_SCALE_MIN,
    pack,
    to_fp8_container,
    unpack,
)
from .tensor import BLOCK_SIZE, NVFP4Tensor

__all__ = [
    "BLOCK_SIZE", "E2M1_VALUES", "F4_E2M1_MAX", "F8E4M3_MAX", "FP8_EXACT_SCALE_MAX",
    "FP8_EXACT_SCALE_MIN", "NVFP4Tensor", "blocked_numel", "dequantize", "from_blocked", "pack",
    "quantize", "quantize_to_fp8", "to_blocked", "to_fp8_container", "unpack",
]
