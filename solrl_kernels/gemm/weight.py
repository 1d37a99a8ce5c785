"""Weight storage modes of the NVFP4 linear layer.

"packed": an :class:`~solrl_kernels.nvfp4.NVFP4Tensor` (N, K): e2m1 codes uint8 (N, K/2) +
          E4M3 block scales (N, K/16) + fp32 global scale(s): 4.5 bits per element (+ 32 bits
          per row), the memory win (a 12B model in ~6.8 GB).
"fp8":    :class:`FP8Weight`: the same FP8-exact NVFP4 numbers expanded to E4M3 values
          (N, K) + the global scale(s): 8 bits per element, but the Hopper GEMM is a plain
          FP8 GEMM (no expansion in the inner loop). Only for the "fp8_exact" scale rule,
          whose products e2m1 * s_blk are E4M3 numbers (values * global_scale ==
          dequantize(w) exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from .. import nvfp4
from ..nvfp4.reference import check_input, row_major_scales
from ..nvfp4.tensor import Granularity, NVFP4Tensor, ScaleRule, as_device

WeightStorage = Literal["packed", "fp8"]
WEIGHT_STORAGES = ("packed", "fp8")


@dataclass(frozen=True)
class FP8Weight:
    """FP8-exact NVFP4 weight expanded to E4M3 ("fp8" storage).

    values:        float8_e4m3fn (N, K), each value e2m1 * s_blk of the NVFP4 weight.
    global_scale:  fp32 (N, 1) (granularity "row": one per output channel) or 0-dim ("tensor").
    dequantized weight = values.float() * global_scale.
    """

    values: torch.Tensor
    global_scale: torch.Tensor
    scale_rule: ScaleRule = "fp8_exact"

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def K(self) -> int:
        return self.values.shape[-1]

    @property
    def granularity(self) -> Granularity:
        return "tensor" if self.global_scale.dim() == 0 else "row"

    @property
    def device(self) -> torch.device:
        return self.values.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.global_scale))

    def to(self, device) -> FP8Weight:
        """A copy on ``device`` (a device only: the storage dtypes are fixed)."""
        device = as_device(device, "FP8Weight")
        return replace(self, values=self.values.to(device),
                       global_scale=self.global_scale.to(device))


def quantize_to_fp8(
    x: torch.Tensor, granularity: Granularity = "row", check_finite: bool = False,
    x_tail: torch.Tensor | None = None, tail_activation: str = "none", activation: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (E4M3 values (..., K), fp32 global scale (..., 1) or 0-dim): FP8-exact NVFP4
    expanded to E4M3, exactly ``to_fp8_container(quantize(x, "fp8_exact", granularity=...))``.
    check_finite: raise ValueError on NaN/Inf (a host sync; off for activations).
    x_tail, activation: quantize cat([activation(x), tail_activation(x_tail)], -1), read in
    place (and GELU'd as read) where the CUDA quantizer runs.

    The one place that calls the NVFP4 activation quantizer (the fused one-pass kernel
    ``solrl_kernels.nvfp4.quantize_to_fp8``).
    """
    return nvfp4.quantize_to_fp8(x, granularity=granularity, check_finite=check_finite,
                                 backend=_quant_backend(x), x_tail=x_tail,
                                 tail_activation=tail_activation, activation=activation)


def _quant_backend(x: torch.Tensor) -> str:
    """The NVFP4 quantizer's backend: its Triton kernels on GPU; on CPU the reference (the
    Triton interpreter is for testing kernels, not for running models)."""
    return "reference" if x.device.type == "cpu" else "auto"


def prepare_weight(
    weight: torch.Tensor,
    storage: WeightStorage = "fp8",
    scale_rule: ScaleRule = "fp8_exact",
    scale_search: bool = False,
    granularity: Granularity = "row",
) -> NVFP4Tensor | FP8Weight:
    """Quantize a dense weight (N, K) (float32/bfloat16/float16, K % 16 == 0, finite) into
    the given storage mode. The result carries no autograd history (a Parameter is detached).

    scale_search: the fp8_exact rule's per-block MSE search over 3 candidate scales (slower to
    quantize, ~5% less error). Raises ValueError for storage="fp8" with scale_rule="rn".
    """
    if storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight storage must be one of {WEIGHT_STORAGES}, got {storage!r}")
    check_input(weight, "weight", check_finite=True)  # the quantizers below skip it
    weight = weight.detach()
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    if storage == "fp8" and scale_rule != "fp8_exact":
        raise ValueError(
            f"weight_storage='fp8' needs scale_rule='fp8_exact' (got {scale_rule!r}): 'rn' "
            "products e2m1*scale are not E4M3 numbers; use weight_storage='packed'"
        )
    if storage == "fp8" and not scale_search:
        values, gs = quantize_to_fp8(weight, granularity=granularity, check_finite=False)
        return FP8Weight(values=values, global_scale=gs)
    t = nvfp4.quantize(weight, scale_rule=scale_rule, scale_search=scale_search,
                       granularity=granularity, check_finite=False,
                       backend=_quant_backend(weight))
    if storage == "fp8":
        values, gs = nvfp4.to_fp8_container(t)
        return FP8Weight(values=values, global_scale=gs)
    return t


def as_row_major(w: NVFP4Tensor) -> NVFP4Tensor:
    """w with row-major (N, K/16) block scales (the Hopper and emulated paths' layout)."""
    if w.scale_layout == "row_major":
        return w
    return replace(w, scales=row_major_scales(w), scale_layout="row_major")
