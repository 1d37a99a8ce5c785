"""Samplers for rectified-flow models (DESIGN §4): sigma schedules, the Euler ODE sampler.

x_sigma = (1 - sigma) * x0 + sigma * eps; v = eps - x0; sampling runs sigma 1 -> 0:
    x_{k+1} = x_k + (sigma_{k+1} - sigma_k) * v_theta(x_k, sigma_k)
"""

from __future__ import annotations

import torch
from torch import nn

from .models.base import Conditioning, DiffusionModel


def sigma_schedule(num_steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """num_steps + 1 sigmas from 1 to 0 (fp32), time-shifted as SD3/FLUX do:
    sigma = shift * t / (1 + (shift - 1) * t) for t = linspace(1, 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=torch.float32)
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def ode_sample(
    model: DiffusionModel,
    noise: torch.Tensor,
    cond: Conditioning,
    num_steps: int,
    shift: float = 1.0,
    transformer: nn.Module | None = None,
) -> torch.Tensor:
    """Deterministic Euler sampling. noise: [B, C, H, W] -> x0 estimate [B, C, H, W] (fp32)."""
    sigmas = sigma_schedule(num_steps, shift, device=noise.device)
    x = noise.float()
    for k in range(num_steps):
        sigma = sigmas[k].expand(x.shape[0])
        v = model.velocity(x, sigma, cond, transformer=transformer).float()
        x = x + (sigmas[k + 1] - sigmas[k]) * v
    return x
