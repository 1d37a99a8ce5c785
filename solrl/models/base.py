"""The interface every model adapter implements, and helpers for its conditioning.

Conventions (DESIGN §4): rectified flow, x_t = (1 - sigma) * x0 + sigma * eps, the model
predicts the velocity v = eps - x0, sampling runs sigma from 1 to 0.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

# Batch-first tensors produced by the text side (e.g. {"encoder_hidden_states": [B, L, D],
# "pooled_projections": [B, P]}); row i conditions latent i.
Conditioning = dict[str, torch.Tensor]


@runtime_checkable
class DiffusionModel(Protocol):
    """A text-to-image flow model as the RL driver sees it."""

    transformer: nn.Module
    """The denoiser. LoRA adapters and the NVFP4 layer swap act on this module."""

    latent_shape: tuple[int, int, int]
    """(C, H, W) of one latent."""

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Prompts -> conditioning with batch dimension len(prompts); no gradients needed."""
        ...

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        """v_theta(x_sigma, sigma, c).

        latents: [B, C, H, W]; sigma: [B] float in [0, 1]; cond: batch B.
        transformer: run this module instead of self.transformer (old/reference policy, or a
        quantized rollout copy); same architecture. Returns [B, C, H, W] in latents' dtype.
        """
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] latents -> images [B, 3, H', W'] float32 in [0, 1]."""
        ...


def index_cond(cond: Conditioning, idx: torch.Tensor | slice | list[int]) -> Conditioning:
    """Rows idx of every conditioning tensor."""
    return {k: v[idx] for k, v in cond.items()}


def repeat_cond(cond: Conditioning, n: int) -> Conditioning:
    """Each row repeated n times consecutively: [B, ...] -> [B * n, ...]."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in cond.items()}
