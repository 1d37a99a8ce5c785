"""Quantized attention: "fp8", "nvfp4" and "nvfp4_pv" (FP8 Q/K, NVFP4 P/V); all FP8-exact, so
they run on Hopper FP8 tensor cores.

    from solrl_kernels.attention import attention
    out = attention(q, k, v, precision="nvfp4")      # q, k, v: (B, H, S, D), D in {64, 128}

    from solrl_kernels.attention.processors import set_attention_precision
    restore = set_attention_precision(transformer, "nvfp4")   # diffusers Flux / SD3 / SANA
    ...
    restore()

Files: quant.py (the attention-specific quantizers), reference.py (the emulated attention,
source of truth), kernels.py (Triton), ops.py (public function + torch.library op),
processors.py (diffusers attention processors), accuracy.py (accuracy study, a CLI).
"""

from .ops import KernelConfig, attention, kernel_path_available
from .reference import (
    DEFAULT_CONFIG,
    PRECISIONS,
    AttentionQuantConfig,
    Precision,
    attention_reference,
    naive_nvfp4_attention_reference,
)

__all__ = [
    "DEFAULT_CONFIG", "PRECISIONS", "AttentionQuantConfig", "KernelConfig", "Precision",
    "attention", "attention_reference", "kernel_path_available", "naive_nvfp4_attention_reference",
]
