"""Per-skill accuracy of a toy checkpoint over the fixed evaluation prompts.

    python -m solrl.toy.eval                                  # the shipped weights
    python -m solrl.toy.eval --weights runs/toy-pretrain --out runs/toy-eval --steps 6 10 40

For each step count: samples_per_prompt images for each of world.eval_prompts() (120
prompts, 24 per category) with the deterministic Euler sampler (solrl.sampling.ode_sample),
scored by the GenEval-like detector. Prints one table (rows: steps x category; columns: the
share of images whose count / colour / shape / position skill is exactly right, GenEval's
all-correct accuracy, the mean dense reward) and writes eval.json and samples_<steps>.png
(one image per prompt for the first 48 prompts, GenEval-correct ones framed green) into out.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.base import repeat_cond
from ..rewards.geneval import SKILLS, GenEvalReward
from ..sampling import ode_sample
from . import world
from .model import ToyT2I, load_pretrained


@dataclass
class EvalConfig:
    """Evaluate a toy checkpoint."""

    weights: Path | None = None
    """Directory with model.safetensors + config.json (default: the shipped weights)."""
    out: Path = Path("runs/toy-eval")
    """Where eval.json and the sample grids go."""
    steps: tuple[int, ...] = (6, 10, 40)
    """Euler step counts to evaluate (the Sol-RL preview, regeneration and eval counts)."""
    samples_per_prompt: int = 4
    seed: int = 0
    device: str = "auto"
    """"auto" = cuda if available, else cpu."""
    batch_size: int = 480
    shift: float | None = None
    """sigma_schedule shift (None: the model's default_shift)."""
    max_prompts: int | None = None
    """Evaluate only the first N prompts of each category (smoke tests)."""

    def __post_init__(self):
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.samples_per_prompt < 1 or self.batch_size < 1:
            raise ValueError(
                f"samples_per_prompt and batch_size must be >= 1, got "
                f"{self.samples_per_prompt}, {self.batch_size}"
            )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def generate(
    model: ToyT2I,
    prompts: list[str],
    num_steps: int,
    seed: int = 0,
    samples_per_prompt: int = 1,
    shift: float | None = None,
    batch_size: int = 480,
) -> torch.Tensor:
    """Images [len(prompts) * samples_per_prompt, 3, H, W] float32 in [0, 1], prompt-major
    (image i shows prompts[i // samples_per_prompt]). Noise: one generator seeded with
    `seed` on the model's device, drawn in that order (independent of batch_size)."""
    dev = model.device
    shift = model.cfg.default_shift if shift is None else shift
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = len(prompts) * samples_per_prompt
    noise = torch.randn(n, *model.latent_shape, generator=gen, device=dev)
    cond = repeat_cond(model.encode_prompts(prompts), samples_per_prompt)
    out = []
    for s in range(0, n, batch_size):
        part = {k: v[s : s + batch_size] for k, v in cond.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            x0 = ode_sample(model, noise[s : s + batch_size], part, num_steps, shift=shift)
        out.append(model.decode(x0))
    return torch.cat(out)


def select_prompts(max_per_category: int | None = None) -> list[str]:
    prompts = world.eval_prompts()
    if max_per_category is None:
        return prompts
    per = world.EVAL_PER_CATEGORY
    return [p for i, p in enumerate(prompts) if i % per < max_per_category]


def score_table(result, categories: list[str]) -> dict[str, dict[str, float]]:
    """GenEvalResult -> {category or "all": {skill accuracy..., "correct", "reward", "n"}}."""
    rows: dict[str, dict[str, float]] = {}
    for cat in [*world.CATEGORIES, "all"]:
        idx = [i for i, c in enumerate(categories) if cat in (c, "all")]
        if not idx:
            continue
        sel = torch.tensor(idx)
        row = {}
        for skill in SKILLS:
            v = getattr(result, skill).cpu()[sel]
            if skill == "position":
                app = result.position_applicable.cpu()[sel] > 0
                row[skill] = float((v[app] == 1).float().mean()) if app.any() else float("nan")
            else:
                row[skill] = float((v == 1).float().mean())
        row["correct"] = float(result.correct.cpu()[sel].mean())
        row["reward"] = float(result.reward.cpu()[sel].mean())
        row["n"] = len(idx)
        rows[cat] = row
    return rows


def evaluate(model: ToyT2I, cfg: EvalConfig) -> dict:
    """Run the evaluation; returns {"config", "results": {steps: table}, "seconds"}."""
    prompts = select_prompts(cfg.max_prompts)
    reward = GenEvalReward()
    results, images_by_steps = {}, {}
    t0 = time.perf_counter()
    for steps in cfg.steps:
        images = generate(model, prompts, steps, cfg.seed, cfg.samples_per_prompt, cfg.shift,
                          cfg.batch_size)
        rep = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        res = reward.evaluate(images, rep)
        results[str(steps)] = score_table(res, res.category)
        images_by_steps[steps] = (images, res.correct)
    seconds = time.perf_counter() - t0
    cfg_d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    return {"config": cfg_d, "n_prompts": len(prompts), "results": results, "seconds": seconds,
            "_images": images_by_steps}


def print_table(results: dict[str, dict[str, dict[str, float]]], title: str = "toy eval") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("steps", "category", "n", *SKILLS, "correct", "reward"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for steps, rows in results.items():
        for cat, row in rows.items():
            cells = [f"{row[s]:.3f}" if not math.isnan(row[s]) else "-" for s in SKILLS]
            table.add_row(steps, cat, str(row["n"]), *cells, f"{row['correct']:.3f}",
                          f"{row['reward']:.3f}", end_section=cat == "all")
    Console(width=120).print(table)


def save_grid(images: torch.Tensor, titles: list[str], path: Path, ncols: int = 8,
              ok: torch.Tensor | None = None) -> None:
    """images [N, 3, H, W] in [0, 1] -> a titled PNG grid (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.9, nrows * 2.1), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i].permute(1, 2, 0).float().cpu().numpy(), interpolation="nearest")
        words = titles[i].split()
        ax.set_title("\n".join([" ".join(words[:4]), " ".join(words[4:])]), fontsize=6.5)
        if ok is not None:
            for s in ax.spines.values():
                s.set_color("limegreen" if ok[i] else "red")
                s.set_linewidth(2.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def main(cfg: EvalConfig) -> dict:
    device = resolve_device(cfg.device)
    model = load_pretrained(cfg.weights, device=device)
    out = evaluate(model, cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    prompts = select_prompts(cfg.max_prompts)
    k = cfg.samples_per_prompt
    for steps, (images, correct) in out.pop("_images").items():
        first = list(range(0, min(len(prompts), 48) * k, k))  # sample 0 of the first prompts
        save_grid(images[first], [prompts[i // k] for i in first],
                  cfg.out / f"samples_{steps}.png", ok=correct[first].cpu())
    out["weights"] = str(cfg.weights or "shipped")
    out["device"] = str(device)
    tmp = cfg.out / ".eval.json.tmp"
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(cfg.out / "eval.json")
    print_table(out["results"], title=f"toy eval: {out['weights']} ({out['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    import tyro

    main(tyro.cli(EvalConfig))
