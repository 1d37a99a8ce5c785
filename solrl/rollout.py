"""Rollouts: generate candidates from counter-based noise, score them, select per prompt.

    with fp4_rollouts(policy.rollout, "nvfp4", "bf16"):       # stage one, NVFP4 linear layers
        pool = generate(model, policy.rollout, cond, ..., steps=6)
    keep = select_per_prompt(pool.rewards.view(P, N), K, "best_worst")
    chosen = generate(model, policy.rollout, cond, ..., steps=10)   # stage two, same seeds, BF16

A sample is named by (prompt uid, candidate); its initial latent is
`gaussian_noise(seed, uid, candidate, step_word(stream, 0))`, so stage two rebuilds stage one's
latent exactly, whatever the batch it lands in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn

from .models.base import Conditioning, DiffusionModel, index_cond
from .sampling import ode_sample, sde_sample
from .seeds import STREAM_ROLLOUT, gaussian_noise, step_word
from .selection import Strategy, select

if TYPE_CHECKING:
    from solrl_kernels.nn import QuantizationReport

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


@contextlib.contextmanager
def fp4_rollouts(
    module: nn.Module,
    linear: str = "nvfp4",
    attention: str = "bf16",
    min_features: int = 256,
    exclude: tuple[str, ...] = (),
) -> Iterator[QuantizationReport | None]:
    """Run `module`'s linear layers (and attention) in low precision inside the block, through
    solrl_kernels.nn.rollout_mode (quantized on entry: the current weights, restored on exit).
    exclude: regexes of layers kept in high precision, added to rollout_mode's defaults
    (embedders, adaLN, final layer). linear="bf16" and attention="bf16" is a no-op.
    Yields rollout_mode's QuantizationReport (which layers were swapped, which kept and why),
    or None for the no-op."""
    if linear == "bf16" and attention == "bf16":
        yield None
        return
    try:
        from solrl_kernels.nn import DEFAULT_EXCLUDE, rollout_mode
    except ImportError as e:
        raise RuntimeError(
            f"FP4 rollouts (linear={linear!r}, attention={attention!r}) need "
            f"solrl_kernels.nn.rollout_mode, which is not importable ({e}). Install solrl_kernels, "
            "or set rollout.preview_linear=bf16 rollout.preview_attention=bf16 to run without FP4."
        ) from e
    skip = tuple(DEFAULT_EXCLUDE) + tuple(exclude)
    with rollout_mode(module, linear=linear, attention=attention, min_features=min_features,
                      exclude=skip) as report:  # fmt: skip
        yield report


@dataclass
class Rollouts:
    """S generated samples. Tensors on the model's device unless noted."""

    prompt_idx: torch.Tensor
    """[S] int64 index into the iteration's (local) prompt list."""
    candidate: torch.Tensor
    """[S] int64 candidate number within its prompt group."""
    x0: torch.Tensor
    """[S, C, H, W] fp32 final latents."""
    rewards: torch.Tensor
    """[S] fp32 (CPU); may hold NaN/Inf from a faulty reward."""
    images: torch.Tensor | None = None
    """[S, 3, H, W] fp32 CPU images of the rows asked for (others zero), or None."""
    traj: torch.Tensor | None = None
    """[S, T + 1, C, H, W] fp32 SDE trajectory (Flow-GRPO), else None."""
    logp: torch.Tensor | None = None
    """[S, T] fp32 per-step log-probs under the sampling policy (Flow-GRPO), else None."""

    def __len__(self) -> int:
        return self.prompt_idx.shape[0]

    def index(self, idx: torch.Tensor) -> Rollouts:
        """Rows idx (int64 [S'], any device)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v[idx.to(v.device)]
        return Rollouts(**out)

    @staticmethod
    def empty(latent_shape: tuple[int, ...], device=None) -> Rollouts:
        """No samples (every group of an iteration skipped)."""
        i64 = torch.zeros(0, dtype=torch.int64)
        return Rollouts(i64, i64.clone(), torch.zeros(0, *latent_shape, device=device), torch.zeros(0))

    @staticmethod
    def cat(parts: list[Rollouts]) -> Rollouts:
        out = {}
        for f in fields(Rollouts):
            vs = [getattr(p, f.name) for p in parts]
            out[f.name] = None if vs[0] is None else torch.cat(vs)
        return Rollouts(**out)


def candidate_grid(n_prompts: int, per_prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_idx, candidate), each [n_prompts * per_prompt] int64, prompt-major."""
    pidx = torch.arange(n_prompts).repeat_interleave(per_prompt)
    cand = torch.arange(per_prompt).repeat(n_prompts)
    return pidx, cand


def initial_noise(
    seed: int,
    uids: torch.Tensor,
    candidates: torch.Tensor,
    shape: tuple[int, ...],
    device,
    stream: int = STREAM_ROLLOUT,
) -> torch.Tensor:
    """[S, *shape] fp32: the initial latents of samples (uid, candidate)."""
    return gaussian_noise(seed, uids, candidates, step_word(stream, 0), shape, device=device)


@torch.no_grad()
def generate(
    model: DiffusionModel,
    transformer: nn.Module,
    cond: Conditioning,
    prompts: list[str],
    prompt_idx: torch.Tensor,
    candidates: torch.Tensor,
    prompt_uids: torch.Tensor,
    *,
    seed: int,
    steps: int,
    shift: float,
    batch_size: int,
    reward_fn: RewardFn,
    sde_noise_level: float | None = None,
    keep_images: torch.Tensor | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    stream: int = STREAM_ROLLOUT,
    progress=None,
) -> Rollouts:
    """Sample, decode and score S = len(prompt_idx) samples in batches of `batch_size`.

    cond: conditioning of all prompts (batch len(prompts)); prompt_idx [S] rows of it;
    candidates [S]; prompt_uids [len(prompts)] global ids (noise keys). sde_noise_level: None =
    Euler ODE; a float = Flow-GRPO SDE (trajectory and log-probs kept). keep_images: [S] bool,
    rows whose decoded images are kept on the CPU. progress: a tqdm bar advanced per image.
    """
    device = next(transformer.parameters()).device
    s_total = prompt_idx.shape[0]
    if s_total == 0:
        return Rollouts.empty(model.latent_shape, device)
    parts = []
    for start in range(0, s_total, batch_size):
        sl = slice(start, min(start + batch_size, s_total))
        p_idx, cand = prompt_idx[sl], candidates[sl]
        uids = prompt_uids[p_idx.cpu()]
        noise = initial_noise(seed, uids, cand.cpu(), model.latent_shape, device, stream)
        c = index_cond(cond, p_idx.to(next(iter(cond.values())).device))
        traj = logp = None
        with autocast():
            if sde_noise_level is None:
                x0 = ode_sample(model, noise, c, steps, shift=shift, transformer=transformer)
            else:

                def step_noise(k: int, uids=uids, cand=cand) -> torch.Tensor:
                    word = step_word(stream, k + 1)
                    return gaussian_noise(seed, uids, cand.cpu(), word, model.latent_shape, device)

                x0, traj, logp = sde_sample(
                    model, noise, c, steps, step_noise, sde_noise_level, shift, transformer
                )
        images = model.decode(x0)
        batch_prompts = [prompts[i] for i in p_idx.tolist()]
        rewards = reward_fn(images, batch_prompts).float().cpu()  # syncs: rewards to host
        kept = None
        if keep_images is not None:
            kept = torch.zeros(images.shape, dtype=torch.float32)
            mask = keep_images[sl].cpu()
            kept[mask] = images[mask.to(images.device)].float().cpu()
        parts.append(Rollouts(p_idx, cand, x0.float(), rewards, kept, traj, logp))
        if progress is not None:
            progress.update(sl.stop - sl.start)
    return Rollouts.cat(parts)


def select_per_prompt(
    rewards: torch.Tensor,
    k: int,
    strategy: Strategy,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group selection. rewards: [P, N] (CPU). Groups with a non-finite reward are skipped.

    Returns (chosen [P', K] int64 candidate indices, valid [P] bool) where P' = valid.sum()."""
    finite = torch.isfinite(rewards).all(dim=1)
    chosen = [select(rewards[p], k, strategy, generator) for p in range(rewards.shape[0]) if finite[p]]
    if not chosen:
        return torch.empty(0, k, dtype=torch.int64), finite
    return torch.stack(chosen), finite
