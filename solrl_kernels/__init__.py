"""solrl_kernels: NVFP4 quantization, block-scaled GEMM and attention kernels (no RL here).

    from solrl_kernels import nvfp4
    t = nvfp4.quantize(x, scale_rule="fp8_exact")

`python -m solrl_kernels` reports which execution paths are available on this machine.
"""

from . import nvfp4
from ._backends import backends_report, native_ops_available

__all__ = ["nvfp4", "backends_report", "native_ops_available"]
__version__ = "0.1.0"
