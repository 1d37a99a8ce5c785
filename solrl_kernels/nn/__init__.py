"""NVFP4 layers and model swaps for rollouts.

    from solrl_kernels.nn import rollout_mode
    with rollout_mode(transformer, linear="nvfp4", attention="bf16"):
        previews = sample(transformer, ...)        # linear layers run NVFP4, restored after

:class:`NVFP4Linear` (``from_linear``), :class:`NVFP4PointwiseConv2d` (``from_conv``),
:func:`quantize_model` (permanent swap), :func:`rollout_mode` (temporary swap, re-quantizing
the current weights on every entry), :class:`QuantizeConfig`, :class:`QuantizationReport`.
"""

from .linear import NVFP4Linear, NVFP4PointwiseConv2d, is_pointwise_conv
from .swap import (
    DEFAULT_EXCLUDE,
    QuantizationReport,
    QuantizeConfig,
    collect_sites,
    effective_weight,
    quantize_model,
    rollout_mode,
)

__all__ = [
    "DEFAULT_EXCLUDE", "NVFP4Linear", "NVFP4PointwiseConv2d", "QuantizationReport",
    "QuantizeConfig", "collect_sites", "effective_weight", "is_pointwise_conv",
    "quantize_model", "rollout_mode",
]
