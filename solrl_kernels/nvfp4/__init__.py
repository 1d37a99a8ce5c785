"""NVFP4: the format (reference), its scale layouts, and fast quantization kernels.

Public API: quantize, dequantize, pack, unpack, to_blocked, from_blocked,
to_fp8_container, NVFP4Tensor.
"""

from .layouts import from_blocked, to_blocked
from .reference import (
    E2M1_VALUES,
    F4_E2M1_MAX,
    F8E4M3_MAX,
    FP8_EXACT_SCALE_MAX,
    FP8_EXACT_SCALE_MIN,
    dequantize,
    pack,
    to_fp8_container,
    unpack,
)
from .reference import quantize as quantize_reference
from .tensor import BLOCK_SIZE, NVFP4Tensor

quantize = quantize_reference  # replaced by the dispatching version below once kernels land

__all__ = [
    "BLOCK_SIZE", "E2M1_VALUES", "F4_E2M1_MAX", "F8E4M3_MAX", "FP8_EXACT_SCALE_MAX",
    "FP8_EXACT_SCALE_MIN", "NVFP4Tensor", "dequantize", "from_blocked", "pack", "quantize",
    "quantize_reference", "to_blocked", "to_fp8_container", "unpack",
]
