"""Preview fidelity: does stage one rank the candidates as the full BF16 rollouts do?

    python -m solrl.fidelity                                  # the bundled toy model (toy preset)
    python -m solrl.fidelity --preset flux model.path=/models/FLUX.1-dev --rounds 4
    python -m solrl.fidelity --resume runs/RUN                # that run's current rollout policy
    python -m solrl.fidelity --preset toy-gpu rollout.preview_steps=8 --out fidelity/steps8

Sol-RL trains on K of N candidates per prompt, chosen by their stage-one (preview) rewards, and
regenerates those seeds in BF16 at full steps: the selection is only as good as the preview's
ranking. This draws the prompts of the run's first `--rounds` iterations (rollout.prompts_per_iter
each) with rollout.pool seeds per prompt, and generates every seed from the same initial noise
in up to four ways (any that would repeat another are left out):

  reference            BF16 at rollout.steps: what stage two computes, the truth here
  preview              rollout.preview_linear / preview_attention at rollout.preview_steps
  bf16, preview steps  BF16 at preview_steps: what the fewer steps alone cost
  fp4, full steps      the preview's precision at rollout.steps: what NVFP4 alone costs

Each against the reference, means over prompts:

  spearman   rank correlation of the N rewards
  agreement  fraction of the K seeds that rollout.selection picks from these rewards that it
             also picks from the reference's (a random pick agrees on K/N of them)
  contrast   the reference-reward gap between the better and the worse half of the picked seeds
             (ranked by these rewards), as a fraction of the gap of the reference's own pick:
             1 is an oracle's pick, about 0 a random one. The advantages are made of this gap.
  s/image    wall-clock per generated image (a configuration's first batch includes any
             torch.compile compilation: train.compile=false, or more rounds, for steady state)
  NVFP4 layers  how many linear layers the variant runs in NVFP4 (0: the skip rules kept all)

The reference is the ODE sample (DiffusionNFT's stage two; Flow-GRPO adds SDE noise on top).
Every key=value of `python -m solrl.train --help` applies (--preset, --config, --resume too;
--resume reads a run's config and latest checkpoint and changes nothing in the run). Writes
fidelity.json (per variant: the measures and all rewards) and fidelity.png into --out (default
fidelity/<time>-<preset>), and prints the table.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .config import Config, ConfigError, parse_args, pop_flags, to_dict
from .metrics import environment, latest_checkpoint, load_checkpoint, spearman_per_group
from .rollout import candidate_grid, fp4_rollouts, generate
from .seeds import derive_seed
from .selection import select
from .train import (
    TAG_PROMPTS,
    TAG_SELECT,
    build_policy,
    default_run_dir,
    init_distributed,
    load_model,
    load_reward,
    prompt_source,
    sync,
)


@dataclass(frozen=True)
class Variant:
    """One way of generating the candidates: linear / attention precision and sampler steps."""

    name: str
    linear: str
    attention: str
    steps: int

    @property
    def label(self) -> str:
        return f"{self.name}: linear {self.linear}, attention {self.attention}, {self.steps} steps"


def variants(cfg: Config) -> list[Variant]:
    """The reference first, then the preview and the two half-way variants that differ from
    everything before them (a BF16 preview, or preview_steps == steps, makes some repeat)."""
    r = cfg.rollout
    candidates = [
        Variant("reference", "bf16", "bf16", r.steps),
        Variant("preview", r.preview_linear, r.preview_attention, r.preview_steps),
        Variant("bf16, preview steps", "bf16", "bf16", r.preview_steps),
        Variant("fp4, full steps", r.preview_linear, r.preview_attention, r.steps),
    ]
    out: list[Variant] = []
    for v in candidates:
        if all((v.linear, v.attention, v.steps) != (u.linear, u.attention, u.steps) for u in out):
            out.append(v)
    return out


def _half_gap(rank_by: torch.Tensor, value: torch.Tensor, pick: torch.Tensor) -> float:
    """Mean `value` of the better half of `pick` (by rank_by) minus that of the worse half."""
    order = pick[torch.argsort(rank_by[pick], descending=True, stable=True)]
    top = order[: len(order) // 2]
    return float(value[top].mean() - value[order[len(order) // 2 :]].mean())


def compare(rewards: torch.Tensor, reference: torch.Tensor, k: int, strategy: str,
            seed: int = 0) -> dict[str, float | None]:
    """spearman, agreement, contrast (module doc) of rewards against reference, both [P, N];
    prompts with a non-finite reward are left out (None where no prompt is left; contrast also
    where K < 2 or the reference's own pick has no gap)."""
    finite = torch.isfinite(rewards).all(1) & torch.isfinite(reference).all(1)
    agreement, gap, oracle_gap = [], 0.0, 0.0
    for g in torch.nonzero(finite).flatten().tolist():
        a, b = rewards[g], reference[g]
        # the same generator state for both picks ("random" then picks the same seeds)
        pick = select(a, k, strategy, torch.Generator().manual_seed(seed + g))
        best = select(b, k, strategy, torch.Generator().manual_seed(seed + g))
        agreement.append(len(set(pick.tolist()) & set(best.tolist())) / k)
        if k >= 2:
            gap += _half_gap(a, b, pick)
            oracle_gap += _half_gap(b, b, best)
    return {
        "spearman": spearman_per_group(rewards[finite], reference[finite]),
        "agreement": sum(agreement) / len(agreement) if agreement else None,
        "contrast": gap / oracle_gap if agreement and oracle_gap > 0 else None,
    }


def fidelity(cfg: Config, out_dir: str, rounds: int = 1, model=None, reward_fn=None,
             prompt_fn=None) -> dict:
    """Generate, compare, write fidelity.json and fidelity.png into out_dir (module doc); returns
    the report. model / reward_fn / prompt_fn may be injected as in solrl.train.setup."""
    from tqdm.auto import tqdm

    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("solrl.fidelity runs in one process: start it with python -m, not torchrun")
    ckpt = None
    if cfg.resume:
        ckpt = latest_checkpoint(cfg.resume)
        if ckpt is None:
            raise ConfigError(f"--resume {cfg.resume!r}: no checkpoint there yet")
    report_path = os.path.join(out_dir, "fidelity.json")
    if os.path.exists(report_path):
        raise ConfigError(f"{out_dir} already holds a fidelity report; choose another --out")
    os.makedirs(out_dir, exist_ok=True)  # before the generation: an unwritable --out fails now
    device = init_distributed(cfg)[0]
    model = model if model is not None else load_model(cfg, device)
    reward_fn = reward_fn if reward_fn is not None else load_reward(cfg, device)
    prompt_fn = prompt_fn if prompt_fn is not None else prompt_source(cfg)[0]
    policy = build_policy(cfg, model, need_reference=False)
    if ckpt is not None:
        policy.load_state_dict(load_checkpoint(ckpt, device)[0])  # refreshes the rollout copy
    net = torch.compile(policy.rollout) if cfg.train.compile else policy.rollout
    shift = cfg.model.shift or float(getattr(model, "default_shift", 1.0))
    r = cfg.rollout
    todo = variants(cfg)
    rewards = {v.name: [] for v in todo}
    seconds = {v.name: 0.0 for v in todo}
    swapped: dict[str, int | None] = {}  # layers the variant runs in NVFP4 (None: no swap)
    prompts_all = []
    bar = tqdm(total=rounds * r.prompts_per_iter * r.pool * len(todo), desc="fidelity", unit="img",
               disable=not (cfg.log.progress and sys.stderr.isatty()), dynamic_ncols=True)
    for it in range(rounds):  # the prompts and noise of the run's iteration `it`
        prompts = prompt_fn(r.prompts_per_iter, derive_seed(cfg.seed, TAG_PROMPTS, it) % 2**31)
        uids = torch.arange(it * len(prompts), (it + 1) * len(prompts), dtype=torch.int64)
        cond = model.encode_prompts(prompts)
        pidx, cand = candidate_grid(len(prompts), r.pool)
        prompts_all += prompts
        for v in todo:
            with fp4_rollouts(net, v.linear, v.attention, r.fp4_min_features, r.fp4_exclude) as rep:
                swapped[v.name] = None if rep is None else len(rep.swapped)
                sync(device)
                t0 = time.perf_counter()
                out = generate(model, net, cond, prompts, pidx, cand, uids, seed=cfg.seed,
                               steps=v.steps, shift=shift, batch_size=r.batch_size,
                               reward_fn=reward_fn, progress=bar)  # fmt: skip
                sync(device)
                seconds[v.name] += time.perf_counter() - t0
            rewards[v.name].append(out.rewards.view(len(prompts), r.pool))
    bar.close()
    reference = torch.cat(rewards[todo[0].name])
    n_images = reference.numel()
    seed = derive_seed(cfg.seed, TAG_SELECT)
    rows = []
    for v in todo:
        got = torch.cat(rewards[v.name])
        finite = got[torch.isfinite(got)]
        rows.append({**asdict(v), "label": v.label, **compare(got, reference, r.select, r.selection, seed),
                     "reward_mean": float(finite.mean()) if finite.numel() else None,
                     "s_per_image": seconds[v.name] / n_images, "layers_nvfp4": swapped[v.name],
                     "rewards": [[x if math.isfinite(x) else None for x in row] for row in got.tolist()]})  # fmt: skip
    report = {"pool": r.pool, "select": r.select, "selection": r.selection, "rounds": rounds,
              "prompts": prompts_all, "resume": cfg.resume, "variants": rows,
              "environment": environment(device), "config": to_dict(cfg)}  # fmt: skip
    with open(report_path + ".tmp", "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    os.replace(report_path + ".tmp", report_path)
    plot(report, os.path.join(out_dir, "fidelity.png"))
    return report


def table(report: dict) -> str:
    """The variants' measures as aligned text (None as '-')."""

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    chance = report["select"] / report["pool"]
    head = (f"{len(report['prompts'])} prompts x {report['pool']} seeds, pick {report['select']} "
            f"({report['selection']}); against the reference (by chance: spearman 0, agreement "
            f"{chance:.2f}, contrast 0):")  # fmt: skip
    lines = [head, f"  {'variant':62} {'spearman':>8} {'agreement':>9} {'contrast':>8} "
                   f"{'reward':>7} {'s/image':>8} {'NVFP4 layers':>12}"]  # fmt: skip
    for v in report["variants"]:
        lines.append(f"  {v['label']:62} {f(v['spearman']):>8} {f(v['agreement']):>9} "
                     f"{f(v['contrast']):>8} {f(v['reward_mean']):>7} "
                     f"{f(v['s_per_image'], '{:.4f}'):>8} {f(v['layers_nvfp4'], '{}'):>12}")  # fmt: skip
    if any(v["linear"] == "nvfp4" and v["layers_nvfp4"] == 0 for v in report["variants"]):
        lines.append("  note: a variant with linear nvfp4 swapped no layer (rollout.fp4_min_features, "
                     "rollout.fp4_exclude and the default skip rules kept them all): it is BF16")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """fidelity.png: the preview's reward against the reference's, seed by seed (one colour per
    prompt), and the three measures per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, *others = report["variants"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    if others:
        preview = others[0]
        for g, (a, b) in enumerate(zip(preview["rewards"], ref["rewards"], strict=True)):
            ax.plot(b, a, ".", ms=5, alpha=0.7, color=plt.cm.tab20(g % 20))
        ax.set_xlabel(f"reference reward ({ref['steps']} steps, BF16)")
        ax.set_ylabel(f"preview reward ({preview['steps']} steps, {preview['linear']})")
        sp = "-" if preview["spearman"] is None else f"{preview['spearman']:.3f}"
        ax.set_title(f"one point per seed, one colour per prompt; mean spearman {sp}", fontsize=9)
        ax.grid(alpha=0.3)
    names = ("spearman", "agreement", "contrast")
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [v[name] if v[name] is not None else 0.0 for v in others]
        bx.bar([j + i * width for j in range(len(others))], vals, width, label=name)
    bx.set_xticks([j + width for j in range(len(others))])
    bx.set_xticklabels([v["name"] for v in others], fontsize=8)
    bx.axhline(0, color="k", lw=0.6)
    bx.axhline(report["select"] / report["pool"], color="tab:orange", lw=1, ls="--",
               label="agreement of a random pick")
    bx.set_ylim(min(-0.1, *(v[n] or 0 for v in others for n in names)) - 0.05, 1.05)
    bx.set_title("against the reference (1 = same ranking / picks)", fontsize=9)
    bx.legend(fontsize=8, loc="upper right")
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv: list[str] | None = None) -> int:
    """The command line (module doc). Exit status 0, or 2 with `solrl: error: ...` for a
    user's mistake."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        flags, argv = pop_flags(argv, ("out", "rounds"))
        out, rounds_text = flags.get("out"), flags.get("rounds", "1")
        if not rounds_text.isdigit():
            raise ConfigError(f"--rounds must be a positive integer, got {rounds_text!r}")
        cfg = parse_args(argv)
        out = out or default_run_dir(cfg, root="fidelity")
        report = fidelity(cfg, out, int(rounds_text))
    except ConfigError as e:
        print(f"solrl: error: {e}", file=sys.stderr)
        return 2
    print(table(report))
    print(f"report: {os.path.join(out, 'fidelity.json')}, plot: {os.path.join(out, 'fidelity.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
