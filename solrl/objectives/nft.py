"""DiffusionNFT (Zheng et al., arXiv 2509.16117): negative-aware fine-tuning on the forward process.

For a clean regenerated sample x0 with advantage A, a timestep sigma and fresh noise eps:
    x_t = (1 - sigma) x0 + sigma eps,      v = eps - x0 (the flow-matching target)
    r   = clip(A, -A_max, A_max) / A_max / 2 + 1/2                 in [0, 1]  (optimality prob.)
    v+  = beta v_theta + (1 - beta) v_old                          implicit positive policy
    v-  = (1 + beta) v_old - beta v_theta                          implicit negative policy
    L   = r ||v+ - v||^2 + (1 - r) ||v- - v||^2                    (DESIGN §4)

Weighting ("adaptive", the paper's and the official Sol-RL code's): each term is measured in
x0-space, x0± = x_t - sigma v± (so ||x0± - x0||^2 = sigma^2 ||v± - v||^2), and divided by its own
detached mean absolute error mean|x0± - x0| (clamped at 1e-5); the sum is scaled by A_max / beta:
    L = A_max / beta * [r mean((x0+ - x0)^2) / w+ + (1 - r) mean((x0- - x0)^2) / w-].
"velocity" weighting is the plain formula with means over the non-batch dims.
"""

from __future__ import annotations

from typing import Literal

import torch


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.reshape(-1, *([1] * (x.ndim - 1)))


def nft_optimality(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """r = clip(A, +-A_max) / A_max / 2 + 1/2. advantages: [B] -> [B] fp32 in [0, 1]."""
    if adv_clip_max <= 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    a = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    return a / adv_clip_max / 2 + 0.5


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    advantages: torch.Tensor,
    beta: float = 1.0,
    adv_clip_max: float = 5.0,
    weighting: Literal["adaptive", "velocity"] = "adaptive",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample DiffusionNFT loss.

    v_theta: [B, C, H, W] policy velocity (with grad); v_old: [B, C, H, W] old-policy velocity
    (no grad); x0: [B, C, H, W] clean sample; x_t: [B, C, H, W] its noised version at sigma;
    sigma: [B] in (0, 1]; advantages: [B]. All computed in fp32.
    Returns (loss [B], {"r": [B], "pos": [B], "neg": [B]} detached).
    """
    if beta <= 0:
        raise ValueError(f"NFT beta must be > 0, got {beta}")
    vt, vo = v_theta.float(), v_old.float().detach()
    x0, x_t = x0.float(), x_t.float()
    r = nft_optimality(advantages, adv_clip_max)
    v_pos = beta * vt + (1 - beta) * vo
    v_neg = (1 + beta) * vo - beta * vt
    dims = tuple(range(1, x0.ndim))
    if weighting == "adaptive":
        s = _bcast(sigma.float(), x0)
        err_pos = x_t - s * v_pos - x0  # x0-prediction errors
        err_neg = x_t - s * v_neg - x0
        w_pos = err_pos.detach().abs().mean(dim=dims).clamp(min=1e-5)
        w_neg = err_neg.detach().abs().mean(dim=dims).clamp(min=1e-5)
        pos = (err_pos**2).mean(dim=dims) / w_pos
        neg = (err_neg**2).mean(dim=dims) / w_neg
        loss = adv_clip_max / beta * (r * pos + (1 - r) * neg)
    elif weighting == "velocity":
        s = _bcast(sigma.float(), x0)
        v = (x_t - x0) / s  # = eps - x0
        pos = ((v_pos - v) ** 2).mean(dim=dims)
        neg = ((v_neg - v) ** 2).mean(dim=dims)
        loss = r * pos + (1 - r) * neg
    else:
        raise ValueError(f"weighting must be 'adaptive' or 'velocity', got {weighting!r}")
    return loss, {"r": r.detach(), "pos": pos.detach(), "neg": neg.detach()}


def nft_kl(v_theta: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """KL surrogate to the reference (base) model: mean over non-batch dims of
    (v_theta - v_ref)^2, as the official code. [B, ...] x2 -> [B] fp32."""
    d = v_theta.float() - v_ref.float().detach()
    return (d**2).mean(dim=tuple(range(1, d.ndim)))
