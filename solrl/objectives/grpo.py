"""Flow-GRPO (Liu et al., arXiv 2505.05470): PPO-style clipped policy gradient on SDE transitions.

For a stored transition x_k -> x_{k+1} of the rollout (log p_old from the sampling policy) and the
current policy's log p (solrl.sampling.sde_step_mean + sde_log_prob):
    ratio = exp(log p - log p_old)
    L_pg  = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)))     (DESIGN §4, eps ~ 1e-4)
    L_kl  = beta ||mu_theta - mu_ref||^2 / (2 sigma_t^2)              (optional)
A is the per-prompt normalised advantage clipped to +-A_max (5).
"""

from __future__ import annotations

import torch


def grpo_policy_loss(
    log_prob: torch.Tensor,
    log_prob_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log_prob: [B] (with grad); log_prob_old: [B]; advantages: [B]. fp32.

    Returns (per-sample loss [B], {"ratio": [B], "clipped": [B] bool} detached)."""
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    a = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob.float() - log_prob_old.float().detach())
    unclipped = -a * ratio
    clipped = -a * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    info = {"ratio": ratio.detach(), "clipped": (clipped > unclipped).detach()}
    return loss, info


def grpo_kl(mu: torch.Tensor, mu_ref: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """||mu - mu_ref||^2 / (2 sigma_t^2), the squared distance averaged over non-batch dims.

    mu, mu_ref: [B, C, H, W]; sigma_t: [B] (the SDE's a * sqrt(sigma / (1 - sigma))). -> [B]."""
    d = mu.float() - mu_ref.float().detach()
    sq = (d**2).mean(dim=tuple(range(1, d.ndim)))
    return sq / (2 * sigma_t.float() ** 2)
