"""The reward interface: images + prompts -> one float per image (higher is better)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images: [B, 3, H, W] float in [0, 1] (any device); prompts: B strings.

        Returns float32 [B] on images' device. Deterministic; batched.
        """
        ...
