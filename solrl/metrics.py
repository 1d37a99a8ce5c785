"""Run-directory outputs: metrics.jsonl / eval.jsonl, TensorBoard, the reward-vs-time PNG,
FP4-vs-BF16 sample grids, atomic checkpoints, and the end-of-run summary table.

<run_dir>/
  config.yaml            the resolved config
  metrics.jsonl          one line per iteration (keys: METRIC_KEYS)
  eval.jsonl             one line per evaluation (after `updates` iterations)
  reward.png             reward vs wall-clock minutes
  samples/iter_XXXXXX.png  FP4 preview vs BF16 regeneration of the same seeds (sol_rl; the
                         other algorithms: their FP4 or BF16 rollouts)
  tb/                    TensorBoard events
  checkpoints/iter_XXXXXX/  policy.safetensors, optimizer.pt, state.json (last N kept)
  fp4_layers.txt         which layers the FP4 rollouts run in NVFP4, which stay high precision, why
  environment.txt        per session (start, resumes): versions, device, solrl commit

metrics.jsonl keys (null where not applicable to the algorithm):
  iteration, time_s (wall-clock since the run began, across resumes), iter_s, preview_s
  (stage one / the baselines' pool rollouts), regen_s (stage two / bf16 rollouts), train_s
  (advantages, update, old-policy EMA, rollout-copy refresh), eval_s;
  reward_fp4_mean/std: the FP4 pool (sol_rl, naive_fp4); reward_bf16_mean/std: the BF16
  rewards of the training set (sol_rl: the regenerated selected seeds; bf16: all rollouts;
  bf16_pool: the whole BF16 pool); spearman_fp4_bf16: mean over prompts of the rank
  correlation between the FP4 and BF16 rewards of the selected seeds (sol_rl);
  loss / policy_loss / kl: means over micro-batches; grad_norm (before clipping), lr,
  old_decay, clip_frac (Flow-GRPO); skipped_groups (a non-finite reward), skipped_losses
  (non-finite micro-batch losses, never backpropagated), skipped_steps (non-finite gradient,
  step dropped); images_per_s (rollout images / rollout seconds), mem_gb (peak CUDA memory),
  eval_reward (after this iteration's update, when evaluated).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import torch

METRIC_KEYS = (
    "iteration", "time_s", "iter_s", "preview_s", "regen_s", "train_s", "eval_s",
    "reward_fp4_mean", "reward_fp4_std", "reward_bf16_mean", "reward_bf16_std", "spearman_fp4_bf16",
    "loss", "policy_loss", "kl", "grad_norm", "lr", "old_decay", "clip_frac",
    "skipped_groups", "skipped_losses", "skipped_steps", "images_per_s", "mem_gb", "eval_reward",
)  # fmt: skip
TIMING_KEYS = ("time_s", "iter_s", "preview_s", "regen_s", "train_s", "eval_s", "images_per_s", "mem_gb")


def _clean(v: Any) -> Any:
    """JSON-safe: tensors -> floats, NaN/Inf -> None."""
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str | os.PathLike, key: str, below: int) -> None:
    """Keep only lines with line[key] < below (resume after a crash past the last checkpoint)."""
    rows = [r for r in read_jsonl(path) if r[key] < below]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


class RunLogger:
    """Writes metrics, plots and grids into the run directory (rank 0 only)."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, purge_step: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "samples").mkdir(exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.eval_path = self.dir / "eval.jsonl"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=purge_step)

    def log(self, row: dict) -> dict:
        row = {k: _clean(v) for k, v in row.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            it = row["iteration"]
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, it)
            self.tb.flush()
        return row

    def log_eval(self, row: dict) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        with open(self.eval_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("updates",) and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"eval/{k}", v, row["updates"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    # --- plots ----------------------------------------------------------------------------------
    def plot_rewards(self) -> Path:
        """reward.png: BF16-set and FP4-pool reward means and the eval reward vs minutes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows, evals = read_jsonl(self.metrics_path), read_jsonl(self.eval_path)
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for key, label, color in (
            ("reward_bf16_mean", "train set (BF16 rollouts)", "tab:blue"),
            ("reward_fp4_mean", "FP4 preview pool", "tab:orange"),
        ):
            pts = [(r["time_s"] / 60, r[key]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            t, v = zip(*pts)
            ax.plot(t, v, ".", ms=3, alpha=0.35, color=color)
            w = min(5, max(1, len(v) // 3))  # trailing mean: per-iteration values are noisy
            smooth = [sum(v[max(0, i - w + 1) : i + 1]) / len(v[max(0, i - w + 1) : i + 1])
                      for i in range(len(v))]  # fmt: skip
            ax.plot(t, smooth, "-", color=color, label=f"{label}, mean of last {w}")
        pts = [(r["time_s"] / 60, r["reward_mean"]) for r in evals if r.get("reward_mean") is not None]
        if pts:
            ax.plot(*zip(*pts), "-s", ms=5, lw=2, color="tab:green", label="eval (fixed prompts & seeds)")
        ax.set_xlabel("wall-clock (min)")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = self.dir / "reward.png"
        tmp = self.dir / "reward.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)
        return path

    def sample_grid(
        self,
        iteration: int,
        prompts: list[str],
        fp4: torch.Tensor | None,
        bf16: torch.Tensor | None,
        fp4_rewards: torch.Tensor | None,
        bf16_rewards: torch.Tensor | None,
        max_cols: int = 8,
    ) -> Path:
        """Rows per prompt: FP4 preview, then BF16 regeneration of the same seeds (or the one
        kind of images the algorithm has).

        fp4 / bf16: [G, K, 3, H, W] in [0, 1] (or None); rewards [G, K]."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = [(n, x, r) for n, x, r in (("FP4", fp4, fp4_rewards), ("BF16", bf16, bf16_rewards))
                 if x is not None]  # fmt: skip
        g = len(prompts)
        k = min(max_cols, kinds[0][1].shape[1])
        nrows = g * len(kinds)
        labels = [prompt_label(p) for p in prompts]
        # room left of the images for the prompt labels (fontsize 5), the rest 1.3 in per column
        label_in = max((_text_width_in(ln, 5) for lb in labels for ln in lb.split("\n")), default=0)
        width = 1.3 * k + label_in
        title = grid_title(iteration, fp4 is not None, bf16 is not None)
        title = "\n".join(textwrap.wrap(title, max(16, int(width / _text_width_in("x", 8)))))
        fig, axes = plt.subplots(nrows, k, figsize=(width, 1.45 * nrows + 0.15 * title.count("\n")),
                                 dpi=100, squeeze=False)  # fmt: skip
        for gi in range(g):
            for ki, (name, x, r) in enumerate(kinds):
                row = gi * len(kinds) + ki
                for c in range(k):
                    ax = axes[row][c]
                    ax.imshow(x[gi, c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r is not None:
                        ax.set_title(f"{name} {float(r[gi, c]):.2f}", fontsize=6, pad=1)
                if ki == 0:
                    axes[row][0].set_ylabel(labels[gi], fontsize=5, rotation=0, ha="right", va="center")
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        path = self.dir / "samples" / f"iter_{iteration:06d}.png"
        fig.savefig(path)
        plt.close(fig)
        return path


def grid_title(iteration: int, fp4: bool, bf16: bool) -> str:
    """A sample grid's title: what its rows show, FP4 previews beside their BF16 regenerations
    (sol_rl) or the one kind of rollout the algorithm makes (naive_fp4: FP4; bf16*: BF16)."""
    if fp4 and bf16:
        shown = "FP4 preview vs BF16 regeneration (same seeds)"
    elif fp4 or bf16:
        shown = f"{'FP4' if fp4 else 'BF16'} rollouts"
    else:
        raise ValueError("a sample grid needs FP4 or BF16 images")
    return f"iteration {iteration}: {shown}"


def prompt_label(prompt: str, width: int = 24, max_lines: int = 3) -> str:
    """A prompt as a row label: wrapped at word boundaries onto at most `max_lines` lines of
    `width` characters; a longer prompt cut at a word boundary, ending in an ellipsis."""
    lines = textwrap.wrap(prompt, width, max_lines=max_lines, placeholder=" \u2026")
    return "\n".join(lines)


def _text_width_in(text: str, fontsize: float) -> float:
    """A generous estimate of `text`'s width in inches at `fontsize` points: 0.6 em a
    character (DejaVu Sans, matplotlib's default, averages less)."""
    return len(text) * 0.6 * fontsize / 72


# --- environment --------------------------------------------------------------------------------


def environment(device: torch.device) -> list[str]:
    """What a run's numbers depend on beyond its config: package versions, the device (CPU model
    too: CPU kernels differ between machines), the solrl source commit when it is a git checkout."""
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    pkgs = ("triton", "diffusers", "transformers", "peft", "numpy")
    lines = [f"python {platform.python_version()}", f"torch {torch.__version__} (CUDA {torch.version.cuda})",
             *(f"{p} {version(p)}" for p in pkgs)]  # fmt: skip
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    lines.append(f"cpu {cpu} ({os.cpu_count()} cores)")
    if device.type == "cuda":
        lines.append(f"gpu {torch.cuda.get_device_name(device)}")
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "describe", "--always", "--dirty", "--abbrev=7"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    lines.append(f"solrl {commit or 'not a git checkout'} ({src})")
    return lines


def write_environment(run_dir: str, device: torch.device) -> None:
    """Append this session's environment to <run_dir>/environment.txt (a resume adds one)."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with open(os.path.join(run_dir, "environment.txt"), "a") as f:
        f.write("\n".join([f"# session started {stamp}", *environment(device), ""]) + "\n")


def spearman_per_group(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Mean over groups (rows) of the Spearman rank correlation between a and b, e.g. the FP4
    and BF16 rewards of the same seeds, [G, K]; groups with constant or non-finite values are
    skipped (None when none is left)."""
    from scipy.stats import spearmanr

    vals = []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if len(set(x)) > 1 and len(set(y)) > 1 and all(map(math.isfinite, x + y)):
            vals.append(float(spearmanr(x, y).statistic))
    return sum(vals) / len(vals) if vals else None


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike,
    iteration: int,
    policy_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    keep: int,
) -> Path:
    """Write checkpoints/iter_XXXXXX atomically (temp folder + rename); keep the last `keep`."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(policy_state, str(tmp / "policy.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    # safetensors writes through a temp file of mode 0600: give every file the mode open() gave
    # state.json (0666 less the process umask), like the run's other files
    mode = stat.S_IMODE((tmp / "state.json").stat().st_mode)
    for f in tmp.iterdir():
        f.chmod(mode)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("iter_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("iter_*") if (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def checkpoint_state(path: str | os.PathLike) -> dict:
    """A checkpoint's state.json: next_iteration, opt_steps, elapsed_s, config."""
    return json.loads((Path(path) / "state.json").read_text())


def load_checkpoint(path: str | os.PathLike, device) -> tuple[dict, dict]:
    """-> (policy tensors, optimizer state); its state.json: checkpoint_state."""
    from safetensors.torch import load_file

    path = Path(path)
    policy_state = load_file(str(path / "policy.safetensors"), device=str(device))
    optimizer_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    return policy_state, optimizer_state


# --- summary ------------------------------------------------------------------------------------


def summary_table(rows: list[dict], evals: list[dict], run_dir: str) -> str:
    """The end-of-run table (rich), returned as text and printed."""
    from rich.console import Console
    from rich.table import Table

    def mean(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    def first_last(key, src):
        vals = [r[key] for r in src if r.get(key) is not None]
        return (vals[0], vals[-1]) if vals else (float("nan"), float("nan"))

    t = Table(title=f"Sol-RL run summary — {run_dir}", show_header=True)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    it_s = mean("iter_s")
    t.add_row("iterations", str(len(rows)))
    t.add_row("wall-clock", f"{rows[-1]['time_s'] / 60:.1f} min" if rows else "-")
    t.add_row("seconds / iteration", f"{it_s:.2f}")
    for key, name in (("preview_s", "preview (stage one)"), ("regen_s", "regeneration"),
                      ("train_s", "training"), ("eval_s", "evaluation")):  # fmt: skip
        m = mean(key)
        t.add_row(f"  {name}", f"{m:.2f} s ({100 * m / it_s:.0f}%)" if it_s == it_s and it_s else "-")
    t.add_row("rollout images / s", f"{mean('images_per_s'):.1f}")
    a, b = first_last("reward_bf16_mean", rows)
    t.add_row("train-set reward (first -> last)", f"{a:.3f} -> {b:.3f}")
    a, b = first_last("reward_fp4_mean", rows)
    if a == a:
        t.add_row("FP4 pool reward (first -> last)", f"{a:.3f} -> {b:.3f}")
    a, b = first_last("reward_mean", evals)
    if a == a:
        t.add_row("eval reward (before -> after)", f"{a:.3f} -> {b:.3f}")
    sp = mean("spearman_fp4_bf16")
    if sp == sp:
        t.add_row("Spearman FP4 vs BF16 (mean)", f"{sp:.3f}")
    skipped = sum(int(r.get(k) or 0) for r in rows for k in ("skipped_groups", "skipped_losses", "skipped_steps"))
    t.add_row("skipped (groups + losses + steps)", str(skipped))
    mem = max((r.get("mem_gb") or 0.0) for r in rows) if rows else 0.0
    if mem:
        t.add_row("peak GPU memory", f"{mem:.1f} GB")
    console = Console(width=100, record=True)
    console.print(t)
    return console.export_text()
