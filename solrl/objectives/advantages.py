"""Per-prompt advantages (Flow-GRPO / DiffusionNFT "per-prompt stat tracking").

A[g, i] = (R[g, i] - mean_i R[g, :]) / (std + eps), where std is the std of the group's rewards
("group") or of all rewards of the iteration ("global", the official Sol-RL / DiffusionNFT
setting `global_std=True`); std is the population std (numpy's default, as upstream).
"""

from __future__ import annotations

from typing import Literal

import torch


def group_advantages(
    rewards: torch.Tensor,
    std: Literal["group", "global"] = "global",
    eps: float = 1e-4,
    global_std: float | None = None,
) -> torch.Tensor:
    """rewards: [G, K] (G prompt groups of K samples), finite; returns [G, K] fp32.

    global_std: use this value for "global" instead of the std of `rewards` (e.g. gathered over
    all ranks)."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [G, K], got shape {tuple(rewards.shape)}")
    r = rewards.double()
    centred = r - r.mean(dim=1, keepdim=True)
    if std == "group":
        s = r.std(dim=1, unbiased=False, keepdim=True)
    elif std == "global":
        s = torch.tensor(global_std if global_std is not None else float(r.std(unbiased=False)))
    else:
        raise ValueError(f"std must be 'group' or 'global', got {std!r}")
    return (centred / (s + eps)).float()
