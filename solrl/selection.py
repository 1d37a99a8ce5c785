"""Choosing the K candidates of a prompt group that are regenerated and trained on (Sol-RL stage 1).

All strategies take the N preview rewards of one prompt and return K distinct indices into them,
sorted ascending (so the regenerated batch does not depend on the order a strategy found them).
Ties are broken by index (stable sorts), so results are deterministic.

  best_worst    the K // 2 best and the K - K // 2 worst ("24-in-96" = 12 + 12, the official
                Sol-RL split)
  top           the K best
  random        K uniformly at random (from a seeded generator: reproducible on resume)
  max_variance  the K-subset with the largest reward variance; for a fixed size this is always
                some a best + (K - a) worst, so all K + 1 splits are scored exactly
  stratified    K ranks evenly spaced from the best to the worst (the whole reward range)
"""

from __future__ import annotations

from typing import Literal

import torch

Strategy = Literal["best_worst", "random", "top", "max_variance", "stratified"]
STRATEGIES: tuple[str, ...] = ("best_worst", "random", "top", "max_variance", "stratified")


def _check(rewards: torch.Tensor, k: int) -> None:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} candidates (need 1 <= k <= N)")
    if not bool(torch.isfinite(rewards).all()):  # syncs: a host-side check per prompt group
        raise ValueError(f"rewards must be finite to select, got {rewards.tolist()}")


def _order(rewards: torch.Tensor) -> torch.Tensor:
    """Indices by descending reward, ties by ascending index."""
    return torch.sort(-rewards.float(), stable=True).indices


def select(
    rewards: torch.Tensor,
    k: int,
    strategy: Strategy = "best_worst",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """rewards: [N] finite floats; returns int64 [K] distinct ascending indices into rewards.

    generator: CPU torch.Generator for "random" (required there, ignored otherwise).
    """
    _check(rewards, k)
    n = rewards.shape[0]
    if strategy == "top":
        idx = _order(rewards)[:k]
    elif strategy == "best_worst":
        order = _order(rewards)
        n_best = k // 2
        idx = torch.cat([order[:n_best], order[n - (k - n_best) :]])
    elif strategy == "random":
        if generator is None:
            raise ValueError("strategy 'random' needs a generator (reproducibility)")
        idx = torch.randperm(n, generator=generator)[:k].to(rewards.device)
    elif strategy == "max_variance":
        order = _order(rewards)
        r = rewards.double()[order]  # descending
        best_var, best_a = None, 0
        for a in range(k + 1):  # a best + (k - a) worst
            sub = torch.cat([r[:a], r[n - (k - a) :]])
            var = float(sub.var(unbiased=False))
            if best_var is None or var > best_var + 1e-15:
                best_var, best_a = var, a
        idx = torch.cat([order[:best_a], order[n - (k - best_a) :]])
    elif strategy == "stratified":
        order = _order(rewards)
        if k == 1:
            idx = order[(n - 1) // 2 : (n - 1) // 2 + 1]
        else:  # rank positions round(i (N - 1) / (K - 1)): spacing >= 1, so distinct
            pos = [round(i * (n - 1) / (k - 1)) for i in range(k)]
            idx = order[torch.tensor(pos)]
    else:
        raise ValueError(f"unknown selection strategy {strategy!r}; valid: {list(STRATEGIES)}")
    return torch.sort(idx).values
