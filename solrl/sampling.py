"""Samplers for rectified-flow models (DESIGN §4): sigma schedules, the Euler ODE sampler, and the
Flow-GRPO SDE sampler with per-step log-probs.

x_sigma = (1 - sigma) * x0 + sigma * eps; v = eps - x0; sampling runs sigma 1 -> 0:
    x_{k+1} = x_k + (sigma_{k+1} - sigma_k) * v_theta(x_k, sigma_k)
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


# --- Flow-GRPO SDE sampler (DESIGN §4; arXiv 2505.05470) ---------------------------------------
#
# a = noise level, sigma the current and sigma_next the next sigma (dt = sigma_next - sigma < 0):
#   sigma_t = a * sqrt(sigma / (1 - sigma))
#   mu      = x + [v + sigma_t^2 / (2 sigma) * (x + (1 - sigma) v)] * dt
#   x_next  = mu + sigma_t * sqrt(-dt) * eps
#   log p   = -|x_next - mu|^2 / (2 sigma_t^2 (-dt)) - log(sigma_t sqrt(-dt)) - log(2 pi) / 2,
#             averaged over the non-batch dims, in fp32.
# At sigma = 1 the ratio sigma / (1 - sigma) is infinite; as Flow-GRPO does, 1 - sigma then uses
# `sigma_max` (the schedule's second sigma) instead.


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] matching x's rank (fp32)."""
    return s.float().reshape(-1, *([1] * (x.ndim - 1)))


def sde_sigma_t(sigma: torch.Tensor, noise_level: float, sigma_max: float) -> torch.Tensor:
    """sigma_t = a * sqrt(sigma / (1 - sigma)), with 1 - sigma_max used where sigma == 1.

    sigma: [B] (or any shape) fp32 in (0, 1]; returns the same shape, fp32."""
    sigma = sigma.float()
    denom = 1.0 - torch.where(sigma >= 1.0, torch.full_like(sigma, sigma_max), sigma)
    return noise_level * torch.sqrt(sigma / denom)


def sde_step_mean(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float,
    sigma_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the SDE transition and its std: (mu [B, ...] fp32, std [B] = sigma_t * sqrt(-dt)).

    x, v: [B, C, H, W]; sigma, sigma_next: [B] with sigma_next < sigma."""
    x, v = x.float(), v.float()
    sig_t = sde_sigma_t(sigma, noise_level, sigma_max)  # [B]
    dt = sigma_next.float() - sigma.float()  # [B], < 0
    s, st, d = _bcast(sigma, x), _bcast(sig_t, x), _bcast(dt, x)
    mu = x + (v + st**2 / (2 * s) * (x + (1 - s) * v)) * d
    return mu, sig_t * torch.sqrt(-dt)


def sde_log_prob(x_next: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Gaussian log-density of x_next under N(mu, std^2 I), averaged over non-batch dims.

    x_next, mu: [B, ...]; std: [B] > 0. Returns [B] fp32."""
    x_next, mu = x_next.float(), mu.float()
    sd = _bcast(std, mu)
    lp = -((x_next - mu) ** 2) / (2 * sd**2) - torch.log(sd) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise: torch.Tensor,
    noise_level: float,
    sigma_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Flow-GRPO SDE step: (x_next [B, ...] fp32, log p(x_next | x) [B] fp32).

    noise: [B, ...] standard normal (from solrl.seeds for reproducible rollouts)."""
    mu, std = sde_step_mean(x, v, sigma, sigma_next, noise_level, sigma_max)
    x_next = mu + _bcast(std, mu) * noise.float()
    return x_next, sde_log_prob(x_next, mu, std)


@torch.no_grad()
def sde_sample(
    model: DiffusionModel,
    noise: torch.Tensor,
    cond: Conditioning,
    num_steps: int,
    step_noise: Callable[[int], torch.Tensor],
    noise_level: float = 0.7,
    shift: float = 1.0,
    transformer: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow-GRPO SDE sampling with per-step log-probs.

    noise: [B, C, H, W] initial latent; step_noise(k) -> [B, C, H, W] the noise of transition
    k -> k + 1 (k = 0 .. num_steps - 1). The last transition (to sigma = 0) is deterministic
    (Euler), as its variance is zero; its log-prob is reported as 0 and it is never trained on.
    Returns (x0 [B, C, H, W] fp32, trajectory [B, num_steps + 1, C, H, W] fp32,
    log_probs [B, num_steps] fp32).
    """
    sigmas = sigma_schedule(num_steps, shift, device=noise.device)
    sigma_max = float(sigmas[1]) if num_steps > 1 else 0.0
    x = noise.float()
    traj, logps = [x], []
    b = x.shape[0]
    for k in range(num_steps):
        s, s_next = sigmas[k].expand(b), sigmas[k + 1].expand(b)
        v = model.velocity(x, s, cond, transformer=transformer).float()
        if k == num_steps - 1:
            x = x + (sigmas[k + 1] - sigmas[k]) * v
            logps.append(torch.zeros(b, device=x.device))
        else:
            x, lp = sde_step(x, v, s, s_next, step_noise(k), noise_level, sigma_max)
            logps.append(lp)
        traj.append(x)
    return x, torch.stack(traj, dim=1), torch.stack(logps, dim=1)
