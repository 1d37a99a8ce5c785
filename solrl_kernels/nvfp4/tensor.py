"""The NVFP4 container: packed e2m1 codes + E4M3 block scales + fp32 global scale."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

ScaleRule = Literal["rn", "fp8_exact"]
ScaleLayout = Literal["row_major", "blocked"]
Granularity = Literal["tensor", "row"]

BLOCK_SIZE = 16  # elements per E4M3 block scale, along the last (K) dimension


def as_device(device, owner: str) -> torch.device:
    """device for ``owner.to(device)``; TypeError for a dtype, which would cast the codes and
    scales into garbage (their dtypes are the format)."""
    if isinstance(device, torch.dtype):
        raise TypeError(f"{owner}.to() takes a device, not a dtype ({device}): its storage "
                        "dtypes are fixed; dequantize it for another dtype")
    return torch.device(device)


@dataclass(frozen=True)
class NVFP4Tensor:
    """A tensor of logical shape ``shape == (..., K)`` stored in NVFP4.

    value[..., k] = e2m1(code[..., k]) * float(scales[..., k // 16]) * global_scale[..., 0]

    Fields:
      data:          uint8 (..., K/2). Two e2m1 codes per byte, element 2j in the LOW nibble,
                     2j+1 in the high nibble. A code is sign(bit 3) | magnitude index (bits 0-2)
                     into {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
      scales:        float8_e4m3fn. ``scale_layout == "row_major"``: (..., K/16), one per 16
                     consecutive elements along K. ``"blocked"``: the flat 128x4 swizzle of
                     :func:`solrl_kernels.nvfp4.to_blocked` over the 2-D (rows, K/16) view.
      global_scale:  float32 decode scale. ``granularity == "tensor"``: 0-dim; ``"row"``:
                     (..., 1), one per row (token or output channel).
      shape:         logical shape (..., K).
      scale_rule:    "rn" (standard NVFP4) or "fp8_exact" (block scales in {1, 1.5}·2^e with
                     2^-7 <= s <= 64, so every e2m1 * s is an exact E4M3 value; DESIGN §3).
    """

    data: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor
    shape: torch.Size
    scale_rule: ScaleRule = "rn"
    scale_layout: ScaleLayout = "row_major"
    granularity: Granularity = "tensor"

    @property
    def K(self) -> int:
        return self.shape[-1]

    @property
    def rows(self) -> int:
        return self.shape[:-1].numel()

    @property
    def device(self) -> torch.device:
        return self.data.device

    def nbytes(self) -> int:
        """Storage bytes (codes + block scales + global scales)."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales, self.global_scale))

    def to(self, device) -> NVFP4Tensor:
        """A copy on ``device`` (a device only: the storage dtypes are fixed)."""
        device = as_device(device, "NVFP4Tensor")
        return replace(
            self,
            data=self.data.to(device),
            scales=self.scales.to(device),
            global_scale=self.global_scale.to(device),
        )

    def __repr__(self) -> str:
        return (
            f"NVFP4Tensor(shape={tuple(self.shape)}, rule={self.scale_rule}, "
            f"layout={self.scale_layout}, granularity={self.granularity}, device={self.device})"
        )
