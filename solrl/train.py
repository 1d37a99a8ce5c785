"""Sol-RL training driver: explore in NVFP4, select, regenerate in BF16, train.

    python -m solrl.train                                    # toy model + toy reward (GPU if any)
    python -m solrl.train --preset toy-gpu log.run_dir=runs/toy-h200
    python -m solrl.train --preset flux model.path=/models/FLUX.1-dev algorithm=bf16_pool
    python -m solrl.train --preset sana model.path=/models/Sana_1600M_1024px_BF16_diffusers
    python -m solrl.train --resume runs/20250101-120000-toy-cpu iterations=30
    torchrun --nproc_per_node 8 -m solrl.train --preset sana model.path=...
    python -m solrl.train --help                             # every option
    python -m solrl.fidelity --preset flux model.path=...    # does the preview rank like BF16?

One iteration, top to bottom (`train` below):
    draw_prompts -> explore   (stage one: N candidates / prompt, NVFP4 linear layers, few steps)
                 -> select    (K of N per prompt from the FP4 rewards)
                 -> regenerate (stage two: the same seeds, BF16, full steps; rewards recomputed)
                 -> advantages -> update (DiffusionNFT or Flow-GRPO, BF16 autocast)
                 -> old-policy EMA + rollout copy re-merged (re-quantized at the next preview)
                 -> evaluate / log / checkpoint
Baselines change only explore/regenerate: bf16 (K-in-K BF16), bf16_pool (K-in-N BF16),
naive_fp4 (K-in-N FP4, trained on the FP4 rollouts).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import (
    Config,
    ConfigError,
    RunExistsError,
    check_resume,
    parse_args,
    save_yaml,
    to_dict,
)
from .metrics import (
    RunLogger,
    checkpoint_state,
    latest_checkpoint,
    load_checkpoint,
    read_jsonl,
    save_checkpoint,
    spearman_per_group,
    summary_table,
    truncate_jsonl,
    write_environment,
)
from .models.base import Conditioning, DiffusionModel, index_cond
from .objectives import (
    group_advantages,
    grpo_kl,
    grpo_policy_loss,
    nft_kl,
    nft_loss,
)
from .policy import Policy, old_decay, training_attention
from .rollout import Rollouts, candidate_grid, fp4_rollouts, generate, select_per_prompt
from .sampling import sde_log_prob, sde_sigma_t, sde_step_mean, sigma_schedule
from .seeds import STREAM_EVAL, derive_seed

# derive_seed tags: independent streams per purpose
TAG_PROMPTS, TAG_TRAIN, TAG_SELECT, TAG_INIT = 1, 2, 3, 4

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]
PromptFn = Callable[[int, int], list[str]]  # (n, seed) -> n prompts


# --- setup --------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the loop needs; built once by `setup`."""

    cfg: Config
    device: torch.device
    rank: int
    world: int
    model: DiffusionModel
    reward_fn: RewardFn
    prompt_fn: PromptFn
    eval_prompts: list[str]
    policy: Policy
    optimizer: torch.optim.Optimizer
    logger: RunLogger | None  # rank 0 only
    run_dir: str
    shift: float
    start_iteration: int = 0
    opt_steps: int = 0
    elapsed_before: float = 0.0  # wall-clock of earlier sessions (resume)
    t_start: float = 0.0
    rollout_fast: torch.nn.Module | None = None  # the BF16 rollout copy, maybe torch.compile'd
    fp4_layers_written: bool = False  # fp4_layers.txt, once per session

    @property
    def main(self) -> bool:
        return self.rank == 0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start


def init_distributed(cfg: Config) -> tuple[torch.device, int, int]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    if want == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def load_model(cfg: Config, device: torch.device) -> DiffusionModel:
    """The configured model on `device` (no network: local folders or the bundled toy)."""
    m = cfg.model
    dtype = torch.bfloat16 if m.dtype == "bf16" else torch.float32
    if m.kind == "toy":
        try:
            from .toy import load_pretrained
        except ImportError as e:
            raise RuntimeError(f"the bundled toy model (solrl.toy) is not available: {e}") from e
        return load_pretrained(device=device, dtype=dtype)
    kw = {"device": device, "dtype": dtype, "resolution": m.resolution}
    if m.max_sequence_length:
        kw["max_sequence_length"] = m.max_sequence_length
    if m.kind == "sd3":
        from .models.sd3 import SD3Model

        return SD3Model.from_pretrained(m.path, **kw)
    if m.kind == "flux":
        from .models.flux import FluxModel

        return FluxModel.from_pretrained(m.path, guidance_scale=m.guidance_scale, **kw)
    if m.kind == "sana":
        from .models.sana import SanaModel

        return SanaModel.from_pretrained(m.path, **kw)
    raise ValueError(f"unknown model.kind {m.kind!r}")


def load_reward(cfg: Config, device: torch.device) -> RewardFn:
    try:
        from .rewards import build_reward
    except ImportError as e:
        raise RuntimeError(f"solrl.rewards is not available: {e}") from e
    try:
        return build_reward(cfg.reward, device=device)
    except TypeError:  # a reward without a device argument
        return build_reward(cfg.reward)


def prompt_source(cfg: Config) -> tuple[PromptFn, list[str]]:
    """(prompt_fn(n, seed) -> n training prompts, evaluation prompts)."""
    if cfg.prompts == "toy":
        from .toy import world

        train_fn = lambda n, seed: list(world.sample_prompts(n, seed))
        evals = list(world.eval_prompts())
    else:
        lines = _read_prompt_file(cfg.prompts)

        def train_fn(n: int, seed: int) -> list[str]:
            g = torch.Generator().manual_seed(seed)
            if n <= len(lines):
                idx = torch.randperm(len(lines), generator=g)[:n]
            else:
                idx = torch.randint(len(lines), (n,), generator=g)
            return [lines[i] for i in idx.tolist()]

        evals = lines
    if cfg.eval.prompts:
        evals = _read_prompt_file(cfg.eval.prompts)
    return train_fn, spread(evals, cfg.eval.num_prompts)


def spread(items: list[str], n: int) -> list[str]:
    """n items evenly spaced through the list (the toy eval set is ordered by category)."""
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def _read_prompt_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise ConfigError(f"prompt file {path!r} does not exist")
    with open(path) as f:
        lines = [s.strip() for s in f if s.strip()]
    if not lines:
        raise ConfigError(f"prompt file {path!r} holds no prompts")
    return lines


def build_policy(cfg: Config, model: DiffusionModel, need_reference: bool | None = None) -> Policy:
    """The trainable policy and its rollout copy, as configured (train.finetune, train.lora_*);
    need_reference defaults to train.kl_beta > 0. LoRA targets matching no module raise
    ConfigError."""
    tc = cfg.train
    try:
        return Policy(
            model,
            finetune=tc.finetune,
            lora_rank=tc.lora_rank,
            lora_alpha=tc.lora_alpha,
            lora_targets=tc.lora_targets,
            need_reference=tc.kl_beta > 0 if need_reference is None else need_reference,
            rollout_dtype=torch.bfloat16 if cfg.model.dtype == "bf16" else torch.float32,
            mixed_precision=tc.mixed_precision,
            init_seed=derive_seed(cfg.seed, TAG_INIT),
            gradient_checkpointing=tc.gradient_checkpointing,
        )
    except ValueError as e:  # peft: no module matches the given target_modules
        if tc.finetune != "lora" or not tc.lora_targets:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"train.lora_targets {list(tc.lora_targets)}: {first} (empty = the "
                          "model adapter's defaults: train.lora_targets=)") from e  # fmt: skip


def default_run_dir(cfg: Config, root: str = "runs") -> str:
    """root/<time>-<preset>: a new folder name for a run (or solrl.fidelity's report)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{stamp}-{cfg.preset or 'custom'}")


def setup(
    cfg: Config,
    model: DiffusionModel | None = None,
    reward_fn: RewardFn | None = None,
    prompt_fn: PromptFn | None = None,
    eval_prompts: list[str] | None = None,
) -> Run:
    """Build the run; model / reward / prompts may be injected (tests, library use). Mistakes
    found before any loading (no GPU, no run to resume or one it cannot continue, a run already
    in log.run_dir, a model folder without model_index.json) raise ConfigError."""
    ckpt = state = None
    if cfg.resume:
        if not os.path.isdir(cfg.resume):
            raise ConfigError(f"--resume {cfg.resume!r}: no such run directory")
        ckpt = latest_checkpoint(cfg.resume)
        if ckpt is not None:  # before any loading: the checkpoint must fit this config
            state = checkpoint_state(ckpt)
            check_resume(cfg, state)
    if model is None and cfg.model.kind != "toy":
        index = os.path.join(os.path.expanduser(cfg.model.path), "model_index.json")
        if not os.path.isfile(index):
            raise ConfigError(f"model.path {cfg.model.path!r} is not a diffusers pipeline folder "
                              "(no model_index.json)")  # fmt: skip
    device, rank, world = init_distributed(cfg)
    run_dir = cfg.resume or cfg.log.run_dir or default_run_dir(cfg)
    if world > 1:  # one run dir for all ranks (rank 0's timestamp)
        box = [run_dir]
        dist.broadcast_object_list(box, src=0)
        run_dir = box[0]
    cfg.log.run_dir = run_dir
    if not cfg.resume and os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        raise RunExistsError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
            "or choose another log.run_dir"
        )

    # all fallible loading first, before any rollout work
    if model is None:
        model = load_model(cfg, device)
    if reward_fn is None:
        reward_fn = load_reward(cfg, device)
    if prompt_fn is None:
        prompt_fn, default_evals = prompt_source(cfg)
        eval_prompts = default_evals if eval_prompts is None else eval_prompts
    eval_prompts = spread(list(eval_prompts or []), cfg.eval.num_prompts)
    if cfg.eval.every and not eval_prompts:
        raise ValueError("eval.every > 0 but there are no evaluation prompts")

    tc = cfg.train
    policy = build_policy(cfg, model)
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(),
        lr=tc.lr,
        betas=tc.adam_betas,
        eps=tc.adam_eps,
        weight_decay=tc.weight_decay,
    )
    shift = cfg.model.shift or float(getattr(model, "default_shift", 1.0))
    run = Run(cfg, device, rank, world, model, reward_fn, prompt_fn, eval_prompts, policy,
              optimizer, None, run_dir, shift)  # fmt: skip

    if ckpt is not None:
        pstate, ostate = load_checkpoint(ckpt, device)
        policy.load_state_dict(pstate)
        optimizer.load_state_dict(ostate)
        for group in optimizer.param_groups:  # the config's (maybe overridden) hyperparameters
            group.update(lr=tc.lr, betas=tc.adam_betas, eps=tc.adam_eps,
                         weight_decay=tc.weight_decay)  # fmt: skip
        run.start_iteration = state["next_iteration"]
        run.opt_steps = state["opt_steps"]
        run.elapsed_before = state["elapsed_s"]
    if run.main:
        os.makedirs(run_dir, exist_ok=True)
        if cfg.resume:
            for name, key in (("metrics.jsonl", "iteration"), ("eval.jsonl", "updates")):
                path = os.path.join(run_dir, name)
                if os.path.exists(path):  # drop lines written after the last checkpoint
                    # (evaluation "updates" u is written at iteration u - 1; with no checkpoint
                    # the loop starts over, initial evaluation included)
                    bound = run.start_iteration + (key == "updates" and run.start_iteration > 0)
                    truncate_jsonl(path, key, bound)
        save_yaml(cfg, os.path.join(run_dir, "config.yaml"))
        write_environment(run_dir, device)
        run.logger = RunLogger(run_dir, cfg.log.tensorboard, purge_step=run.start_iteration)
    policy.net.eval()
    run.rollout_fast = torch.compile(policy.rollout) if tc.compile else policy.rollout
    run.t_start = time.perf_counter()
    return run


# --- one iteration ------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # syncs: phase timings measure finished GPU work


def show_bars(run: Run) -> bool:
    """Progress bars on the main rank when log.progress is on and stderr is a terminal (redirected
    to a file, tqdm's redraws would fill it with escape codes: one line per iteration instead)."""
    return run.main and run.cfg.log.progress and sys.stderr.isatty()


def progress_bar(run: Run, total: int, desc: str, unit: str = "img"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=not show_bars(run))  # fmt: skip


def iteration_line(row: dict, iterations: int) -> str:
    """One line per iteration where no progress bar shows it."""

    def num(key: str, fmt: str = ".3f") -> str:
        return "-" if row.get(key) is None else format(row[key], fmt)

    line = (f"iteration {row['iteration'] + 1}/{iterations}: reward fp4 {num('reward_fp4_mean')} "
            f"bf16 {num('reward_bf16_mean')}, loss {num('loss', '.3g')}")  # fmt: skip
    if row.get("eval_reward") is not None:
        line += f", eval {num('eval_reward')}"
    return (line + f", {row['iter_s']:.1f} s (preview {row['preview_s']:.1f}, regenerate "
            f"{row['regen_s']:.1f}, train {row['train_s']:.1f})")  # fmt: skip


def draw_prompts(run: Run, it: int) -> tuple[list[str], torch.Tensor]:
    """This rank's prompts of iteration `it` and their global uids (noise keys).

    The iteration draws P prompts from a seed derived from (run seed, it); prompt p has uid
    it * P + p and rank r takes p = r, r + world, ... (noise is independent of the world size)."""
    p = run.cfg.rollout.prompts_per_iter
    prompts = run.prompt_fn(p, derive_seed(run.cfg.seed, TAG_PROMPTS, it) % 2**31)
    if len(prompts) != p:
        raise ValueError(f"prompt source returned {len(prompts)} prompts, wanted {p}")
    mine = list(range(run.rank, p, run.world))
    uids = torch.tensor([it * p + i for i in mine], dtype=torch.int64)
    return [prompts[i] for i in mine], uids


def eager_if_compile_fails(run: Run, sample: Callable[[torch.nn.Module], Rollouts],
                           net: torch.nn.Module) -> Rollouts:
    """sample(net). Where net is the compiled rollout copy and torch.compile fails on it (an
    error of Dynamo or Inductor, raised at the first call), warn once, run eagerly from then on
    and sample again: the seeds are per candidate, so the samples are the same."""
    if net is not run.rollout_fast or net is run.policy.rollout:
        return sample(net)
    from torch._dynamo.exc import TorchDynamoException  # Inductor's errors derive from it

    try:
        return sample(net)
    except TorchDynamoException as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"solrl: warning: torch.compile failed on the rollout copy ({type(e).__name__}: "
              f"{first_line[:300]}); running it eagerly from now on (train.compile=false skips "
              "the attempt)", file=sys.stderr, flush=True)
        run.rollout_fast = run.policy.rollout
        return sample(run.rollout_fast)


def explore(run: Run, prompts, uids, cond, show: int) -> Rollouts | None:
    """Stage one: N candidates per prompt. sol_rl: NVFP4 preview at preview_steps (ODE).
    bf16_pool: BF16 at full steps. naive_fp4: NVFP4 at full steps. bf16: none."""
    cfg, r = run.cfg, run.cfg.rollout
    if cfg.algorithm == "bf16":
        return None
    fp4 = cfg.algorithm in ("sol_rl", "naive_fp4")
    steps = r.preview_steps if cfg.algorithm == "sol_rl" else r.steps
    full = cfg.algorithm != "sol_rl"  # these pools are trained on directly
    sde = r.noise_level if full and cfg.train.objective == "grpo" else None
    pidx, cand = candidate_grid(len(prompts), r.pool)
    # pools sample the rollout copy (compiled with train.compile), under rollout_mode for FP4;
    # BF16 pools for Flow-GRPO sample the policy itself (log-probs must match the training numerics)
    net = run.rollout_fast if sde is None else run.policy.net
    autocast = run.policy.autocast if net is run.policy.net else contextlib.nullcontext

    def sample(net):
        ctx = (fp4_rollouts(net, r.preview_linear, r.preview_attention, r.fp4_min_features,
                            r.fp4_exclude) if fp4 else contextlib.nullcontext())  # fmt: skip
        with ctx as report, progress_bar(run, len(pidx), "preview" if cfg.algorithm == "sol_rl" else "rollout") as bar:
            if report is not None and not run.fp4_layers_written:
                write_fp4_layers(run, report)
            return generate(
                run.model, net, cond, prompts, pidx, cand, uids,
                seed=cfg.seed, steps=steps, shift=run.shift, batch_size=r.batch_size,
                reward_fn=run.reward_fn, sde_noise_level=sde, keep_images=pidx < show,
                autocast=autocast, progress=bar,
            )  # fmt: skip

    return eager_if_compile_fails(run, sample, net)


def write_fp4_layers(run: Run, report) -> None:
    """At the first FP4 rollout: which layers run in NVFP4 and which stay high precision (with
    the reason), in the run directory's fp4_layers.txt; the one-line summary on stdout."""
    run.fp4_layers_written = True
    if not run.main:
        return
    path = os.path.join(run.run_dir, "fp4_layers.txt")
    lines = [report.summary(), "", f"NVFP4 ({len(report.swapped)}):", *report.swapped, "",
             f"kept in high precision ({len(report.skipped)}):",
             *(f"{name}: {why}" for name, why in report.skipped.items())]  # fmt: skip
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"solrl: {report.summary()} (list: {path})", flush=True)


def choose(run: Run, it: int, pool: Rollouts | None, n_prompts: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Selection: (prompt_idx [S], candidate [S], skipped groups). bf16: candidates 0..K-1."""
    r = run.cfg.rollout
    if pool is None:
        pidx, cand = candidate_grid(n_prompts, r.select)
        return pidx, cand, 0
    g = torch.Generator().manual_seed(derive_seed(run.cfg.seed, TAG_SELECT, it, run.rank))
    chosen, valid = select_per_prompt(pool.rewards.view(n_prompts, r.pool), r.select, r.selection, g)
    pidx = torch.nonzero(valid).flatten().repeat_interleave(r.select)
    return pidx, chosen.flatten(), int((~valid).sum())


def regenerate(run: Run, prompts, uids, cond, pool, pidx, cand, show: int) -> Rollouts:
    """Stage two: the chosen seeds at full steps in BF16 (sol_rl, bf16), rewards recomputed.
    bf16_pool / naive_fp4 train on the pool's own samples (no regeneration)."""
    cfg, r = run.cfg, run.cfg.rollout
    if cfg.algorithm in ("bf16_pool", "naive_fp4"):
        return pool.index(pidx * r.pool + cand)
    grpo = cfg.train.objective == "grpo"
    # Flow-GRPO's ratio needs log-probs under the very numerics it trains with (policy.net);
    # DiffusionNFT samples from the old policy's merged BF16 copy (optionally compiled).
    net = run.policy.net if grpo else run.rollout_fast
    autocast = run.policy.autocast if grpo else contextlib.nullcontext

    def sample(net):
        with progress_bar(run, len(pidx), "regenerate") as bar:
            return generate(
                run.model, net, cond, prompts, pidx, cand, uids,
                seed=cfg.seed, steps=r.steps, shift=run.shift, batch_size=r.batch_size,
                reward_fn=run.reward_fn, sde_noise_level=r.noise_level if grpo else None,
                keep_images=pidx < show, autocast=autocast, progress=bar,
            )  # fmt: skip

    return eager_if_compile_fails(run, sample, net)


def advantages(run: Run, data: Rollouts) -> tuple[Rollouts, torch.Tensor, int]:
    """Per-prompt normalised advantages on the training set; groups with a non-finite reward are
    dropped (and counted). Returns (kept data, advantages [S'] on device, skipped groups)."""
    k = run.cfg.rollout.select
    rewards = data.rewards.view(-1, k)
    finite = torch.isfinite(rewards).all(dim=1)
    rows = torch.nonzero(finite.repeat_interleave(k)).flatten()
    data = data.index(rows)
    kept = rewards[finite]
    global_std = None
    if run.cfg.train.adv_std == "global":
        everything = _all_gather_cat(kept.flatten())
        global_std = float(everything.double().std(unbiased=False)) if everything.numel() else 0.0
    adv = group_advantages(kept, run.cfg.train.adv_std, global_std=global_std).flatten()
    return data, adv.to(run.device), int((~finite).sum())


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


def _micro_batches(run: Run, n: int, gen: torch.Generator) -> list[list[torch.Tensor]]:
    """Shuffled micro-batches of [0, n), grouped into optimiser steps (grad_accum per step).

    With several ranks the step count is the maximum over ranks (ranks with fewer samples,
    e.g. after skipped groups, take empty steps) so every rank joins every all-reduce."""
    tc = run.cfg.train
    perm = torch.randperm(n, generator=gen)
    mbs = list(perm.split(tc.micro_batch))
    per_step = tc.grad_accum or max(1, len(mbs))
    steps = [mbs[i : i + per_step] for i in range(0, len(mbs), per_step)]
    if run.world > 1:
        count = torch.tensor([len(steps)], device=run.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        steps += [[] for _ in range(int(count) - len(steps))]
    return steps


def _global_count(run: Run, n: int) -> int:
    """Sum of n over ranks."""
    if run.world == 1:
        return n
    t = torch.tensor([n], device=run.device)
    dist.all_reduce(t)
    return int(t)


def update(run: Run, it: int, data: Rollouts, adv: torch.Tensor, cond: Conditioning) -> dict:
    """The policy update on the training set (DiffusionNFT or Flow-GRPO), one or more
    optimiser steps. Non-finite losses are skipped (never backpropagated) and counted; a step
    whose gradient is non-finite is dropped and counted."""
    cfg, tc, policy = run.cfg, run.cfg.train, run.policy
    grpo = tc.objective == "grpo"
    n = len(data)
    stats = {"loss": [], "policy_loss": [], "kl": [], "grad_norm": [], "clip_frac": []}
    skipped_losses = skipped_steps = 0
    if n == 0 and run.world == 1:
        return {"skipped_losses": 0, "skipped_steps": 0}
    steps = cfg.rollout.steps
    sigmas = sigma_schedule(steps, run.shift, device=run.device)
    n_t = steps - 1 if grpo else steps  # trainable transitions / timesteps per sample
    t_train = max(1, int(n_t * tc.timestep_fraction))
    cpu_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, TAG_TRAIN, it, run.rank))
    dev_gen = torch.Generator(run.device).manual_seed(derive_seed(cfg.seed, TAG_TRAIN, it, run.rank, 1))
    params = policy.trainable_parameters()
    policy.net.train()
    with progress_bar(run, tc.inner_epochs * n * t_train, "train", unit="sample") as bar, \
            training_attention(tc.cudnn_attention):
        for _ in range(tc.inner_epochs):
            # per sample, a random subset of the rollout's timesteps (Flow-GRPO / official NFT)
            t_idx = torch.zeros(n, t_train, dtype=torch.int64)  # [S, t_train]
            for i in range(n):
                t_idx[i] = torch.randperm(n_t, generator=cpu_gen)[:t_train]
            for step_mbs in _micro_batches(run, n, cpu_gen):
                # the loss is a mean over every (sample, timestep) of the step on all ranks
                n_step = _global_count(run, sum(len(mb) for mb in step_mbs))
                if n_step == 0:
                    continue
                for mb in step_mbs:
                    c = index_cond(cond, data.prompt_idx[mb].to(run.device))
                    a = adv[mb.to(run.device)]
                    for j in range(t_train):
                        k = t_idx[mb, j].to(run.device)
                        if grpo:
                            loss_s, pl, kl, info = _grpo_terms(run, data, mb, k, sigmas, c, a)
                        else:
                            loss_s, pl, kl, info = _nft_terms(run, data, mb, k, sigmas, c, a, dev_gen)
                        total = loss_s.sum() / (n_step * t_train)
                        if not bool(torch.isfinite(total)):  # syncs: one flag per micro-batch
                            skipped_losses += 1
                            continue
                        total.backward()
                        stats["loss"].append(float(loss_s.detach().mean()))
                        stats["policy_loss"].append(float(pl.mean()))
                        stats["kl"].append(float(kl.mean()))
                        if "clipped" in info:
                            stats["clip_frac"].append(float(info["clipped"].float().mean()))
                        bar.update(len(mb))
                gn, ok = _optimizer_step(run, params)
                stats["grad_norm"].append(gn)
                skipped_steps += not ok
    policy.net.eval()
    out = {k: (sum(v) / len(v) if v else None) for k, v in stats.items()}
    out.update(skipped_losses=skipped_losses, skipped_steps=skipped_steps)
    return out


def _nft_terms(run, data, mb, k, sigmas, c, a, gen):
    """DiffusionNFT on the forward process of the clean regenerated samples at sigmas[k]."""
    tc, policy, model = run.cfg.train, run.policy, run.model
    x0 = data.x0[mb.to(data.x0.device)]
    sigma = sigmas[k]  # [B]
    eps = torch.randn(x0.shape, generator=gen, device=x0.device)
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    v_old = policy.velocity_old(model, x_t, sigma, c)
    v = policy.velocity(model, x_t, sigma, c)
    pl, info = nft_loss(v, v_old, x0, x_t, sigma, a, tc.nft_beta, tc.adv_clip_max, tc.nft_weighting)
    kl = torch.zeros_like(pl)
    if tc.kl_beta > 0:
        kl = nft_kl(v, policy.velocity_ref(model, x_t, sigma, c))
    return pl + tc.kl_beta * kl, pl.detach(), kl.detach(), info


def _grpo_terms(run, data, mb, k, sigmas, c, a):
    """Flow-GRPO on stored SDE transitions x_k -> x_{k+1} of the rollout."""
    tc, policy, model, r = run.cfg.train, run.policy, run.model, run.cfg.rollout
    rows = mb.to(data.traj.device)
    x = data.traj[rows, k]
    x_next = data.traj[rows, k + 1]
    s, s_next = sigmas[k], sigmas[k + 1]
    sigma_max = float(sigmas[1])
    v = policy.velocity(model, x, s, c)
    mu, std = sde_step_mean(x, v, s, s_next, r.noise_level, sigma_max)
    logp = sde_log_prob(x_next, mu, std)
    pl, info = grpo_policy_loss(logp, data.logp[rows, k], a, tc.grpo_clip, tc.adv_clip_max)
    kl = torch.zeros_like(pl)
    if tc.kl_beta > 0:
        v_ref = policy.velocity_ref(model, x, s, c)
        mu_ref, _ = sde_step_mean(x, v_ref, s, s_next, r.noise_level, sigma_max)
        kl = grpo_kl(mu, mu_ref, sde_sigma_t(s, r.noise_level, sigma_max))
    return pl + tc.kl_beta * kl, pl.detach(), kl.detach(), info


def _optimizer_step(run: Run, params: list[torch.nn.Parameter]) -> tuple[float, bool]:
    """All-reduce (sum of per-rank shares of the global mean), clip, step. A non-finite
    gradient drops the step (on every rank: the reduced norm is the same everywhere)."""
    if run.world > 1:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)  # losses are normalised by the global sample count
    gn = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.train.max_grad_norm))  # syncs
    if not math.isfinite(gn):
        run.optimizer.zero_grad(set_to_none=True)
        return gn, False
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.opt_steps += 1
    return gn, True


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """The current policy on the fixed evaluation prompts and seeds (BF16, eval.steps)."""
    ev = run.cfg.eval
    mine = list(range(run.rank, len(run.eval_prompts), run.world))
    prompts = [run.eval_prompts[i] for i in mine]
    cond = run.model.encode_prompts(prompts)
    pidx = torch.arange(len(prompts))
    uids = torch.tensor(mine, dtype=torch.int64)
    with progress_bar(run, len(pidx), "eval") as bar:
        out = generate(
            run.model, run.policy.net, cond, prompts, pidx, torch.zeros_like(pidx), uids,
            seed=run.cfg.seed, steps=ev.steps, shift=run.shift,
            batch_size=run.cfg.rollout.batch_size, reward_fn=run.reward_fn,
            autocast=run.policy.autocast, stream=STREAM_EVAL, progress=bar,
        )  # fmt: skip
    rewards = _all_gather_cat(out.rewards)
    finite = rewards[torch.isfinite(rewards)]
    row = {"reward_mean": float(finite.mean()) if finite.numel() else None}
    skills = getattr(run.reward_fn, "score_skills", None)
    if skills is not None and run.world == 1:
        images = run.model.decode(out.x0)
        for name, val in skills(images, prompts).items():
            row[f"skill_{name}"] = float(val.float().mean())
    return row


def _moments(x: torch.Tensor | None) -> tuple[float | None, float | None]:
    if x is None:
        return None, None
    x = _all_gather_cat(x)
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return None, None
    return float(x.mean()), float(x.std(unbiased=False))


def write_grid(run: Run, it: int, prompts, pool, data, show: int) -> None:
    """FP4 preview and BF16 regeneration of the same (selected) seeds, first `show` prompts."""
    k = run.cfg.rollout.select
    rows = torch.nonzero(data.prompt_idx < show).flatten()
    if rows.numel() == 0:
        return
    sub = data.index(rows)
    g = sub.prompt_idx.unique()
    g = g[torch.bincount(sub.prompt_idx)[g] == k]  # complete groups only
    if g.numel() == 0:
        return
    sel = torch.cat([torch.nonzero(sub.prompt_idx == p).flatten() for p in g])
    sub = sub.index(sel)
    fp4 = fp4_r = bf16 = bf16_r = None
    algo = run.cfg.algorithm
    if algo == "sol_rl":
        pre = pool.index(sub.prompt_idx * run.cfg.rollout.pool + sub.candidate)
        fp4, fp4_r = pre.images, pre.rewards
        bf16, bf16_r = sub.images, sub.rewards
    elif algo == "naive_fp4":
        fp4, fp4_r = sub.images, sub.rewards
    else:
        bf16, bf16_r = sub.images, sub.rewards
    shape = (len(g), k)

    def arrange(x):
        return None if x is None else x.view(*shape, *x.shape[1:])

    run.logger.sample_grid(it, [prompts[i] for i in g.tolist()], arrange(fp4), arrange(bf16),
                           arrange(fp4_r), arrange(bf16_r))  # fmt: skip


def checkpoint(run: Run, it: int) -> None:
    if not run.main:
        return
    state = {"next_iteration": it + 1, "opt_steps": run.opt_steps, "elapsed_s": run.elapsed(),
             "config": to_dict(run.cfg)}  # fmt: skip
    save_checkpoint(run.run_dir, it, run.policy.state_dict(), run.optimizer.state_dict(), state,
                    run.cfg.log.keep_ckpts)  # fmt: skip


# --- the loop -----------------------------------------------------------------------------------


def train(
    cfg: Config,
    model: DiffusionModel | None = None,
    reward_fn: RewardFn | None = None,
    prompt_fn: PromptFn | None = None,
    eval_prompts: list[str] | None = None,
) -> str:
    """Run (or resume) training; returns the run directory."""
    run = setup(cfg, model, reward_fn, prompt_fn, eval_prompts)
    r, tc = cfg.rollout, cfg.train
    if run.main:
        print(f"solrl: {cfg.algorithm}/{tc.objective} on {cfg.model.kind} ({run.device}, world "
              f"{run.world}), {cfg.iterations} iterations -> {run.run_dir}", flush=True)  # fmt: skip
    if cfg.eval.every and run.start_iteration == 0:
        t0 = time.perf_counter()
        row = evaluate(run)
        if run.main:
            run.logger.log_eval({"updates": 0, "time_s": run.elapsed(), **row,
                                 "eval_s": time.perf_counter() - t0})  # fmt: skip

    from tqdm.auto import tqdm

    outer = tqdm(range(run.start_iteration, cfg.iterations), desc="iterations", unit="it",
                 initial=run.start_iteration, total=cfg.iterations, dynamic_ncols=True,
                 disable=not show_bars(run))  # fmt: skip
    for it in outer:
        t_iter = time.perf_counter()
        show = cfg.log.image_prompts if (run.main and cfg.log.image_every
                                         and it % cfg.log.image_every == 0) else 0  # fmt: skip
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)

        # 1. prompts
        prompts, uids = draw_prompts(run, it)
        cond = run.model.encode_prompts(prompts)

        # 2. stage one: explore the pool (NVFP4 preview for sol_rl)
        t0 = time.perf_counter()
        pool = explore(run, prompts, uids, cond, show)
        sync(run.device)
        preview_s = time.perf_counter() - t0 if pool is not None else 0.0

        # 3. select K of N per prompt
        pidx, cand, skipped_sel = choose(run, it, pool, len(prompts))

        # 4. stage two: regenerate the chosen seeds in BF16, rewards recomputed
        t0 = time.perf_counter()
        data = regenerate(run, prompts, uids, cond, pool, pidx, cand, show)
        sync(run.device)
        regen_s = time.perf_counter() - t0

        # 5. advantages + update
        t0 = time.perf_counter()
        train_set, adv, skipped_adv = advantages(run, data)
        upd = update(run, it, train_set, adv, cond)
        decay = 0.0 if tc.objective == "grpo" else old_decay(run.opt_steps, tc.old_decay_rate,
                                                               tc.old_decay_max)  # fmt: skip
        run.policy.update_old(decay)
        run.policy.refresh_rollout()  # the next preview re-quantizes these weights
        sync(run.device)
        train_s = time.perf_counter() - t0

        # 6. evaluate
        eval_row, eval_s = {}, 0.0
        last = it == cfg.iterations - 1
        if cfg.eval.every and ((it + 1) % cfg.eval.every == 0 or last):
            t0 = time.perf_counter()
            eval_row = evaluate(run)
            eval_s = time.perf_counter() - t0

        # 7. log
        n_images = (len(pool) if pool is not None else 0) + (
            len(data) if cfg.algorithm in ("sol_rl", "bf16") else 0)  # fmt: skip
        fp4_rewards = pool.rewards if pool is not None and cfg.algorithm != "bf16_pool" else None
        bf16_rewards = None if cfg.algorithm == "naive_fp4" else data.rewards
        spearman = None
        if cfg.algorithm == "sol_rl" and len(data):
            pre = pool.rewards[pidx * r.pool + cand]
            spearman = spearman_per_group(pre.view(-1, r.select), data.rewards.view(-1, r.select))
        if cfg.algorithm == "bf16_pool":
            bf16_rewards = pool.rewards
        fp4_m, fp4_s = _moments(fp4_rewards)
        bf16_m, bf16_s = _moments(bf16_rewards)
        row = {
            "iteration": it,
            "time_s": run.elapsed(),
            "iter_s": time.perf_counter() - t_iter,
            "preview_s": preview_s,
            "regen_s": regen_s,
            "train_s": train_s,
            "eval_s": eval_s,
            "reward_fp4_mean": fp4_m,
            "reward_fp4_std": fp4_s,
            "reward_bf16_mean": bf16_m,
            "reward_bf16_std": bf16_s,
            "spearman_fp4_bf16": spearman,
            "loss": upd.get("loss"),
            "policy_loss": upd.get("policy_loss"),
            "kl": upd.get("kl"),
            "grad_norm": upd.get("grad_norm"),
            "lr": run.optimizer.param_groups[0]["lr"],
            "old_decay": decay,
            "clip_frac": upd.get("clip_frac"),
            "skipped_groups": skipped_sel + skipped_adv,
            "skipped_losses": upd["skipped_losses"],
            "skipped_steps": upd["skipped_steps"],
            "images_per_s": n_images / max(preview_s + regen_s, 1e-9),
            "mem_gb": (torch.cuda.max_memory_allocated(run.device) / 2**30
                       if run.device.type == "cuda" else None),  # fmt: skip
            "eval_reward": eval_row.get("reward_mean"),
        }
        if run.main:
            run.logger.log(row)
            if eval_row:
                run.logger.log_eval({"updates": it + 1, "time_s": row["time_s"], **eval_row,
                                     "eval_s": eval_s})  # fmt: skip
            if show:
                write_grid(run, it, prompts, pool, data, show)
            run.logger.plot_rewards()
            if show_bars(run):
                shown = bf16_m if bf16_m is not None else fp4_m
                outer.set_postfix(reward="-" if shown is None else f"{shown:.3f}",
                                  loss="-" if row["loss"] is None else f"{row['loss']:.3g}")  # fmt: skip
            else:
                print(iteration_line(row, cfg.iterations), flush=True)

        # 8. checkpoint
        every = cfg.log.ckpt_every
        if last or (every and (it + 1) % every == 0):
            checkpoint(run, it)
    outer.close()

    if run.main:
        run.logger.close()
        table = summary_table(read_jsonl(run.logger.metrics_path), read_jsonl(run.logger.eval_path),
                              run.run_dir)  # fmt: skip
        with open(os.path.join(run.run_dir, "summary.txt"), "w") as f:
            f.write(table)
    if run.world > 1:
        dist.barrier()
    return run.run_dir


def main(argv: list[str] | None = None) -> int:
    """The command line. Returns the exit status: 0, 2 for a user's mistake (ConfigError: one
    line `solrl: error: ...` on stderr, as tyro's own errors), 130 for Ctrl-C (with the command
    that continues the run); other exceptions keep their traceback."""
    import shlex

    cfg = None
    try:
        cfg = parse_args(argv)
        train(cfg)
    except ConfigError as e:
        print(f"solrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # setup() stores the run directory in cfg.log.run_dir; it is resumable once config.yaml is in it
        run_dir = cfg.log.run_dir if cfg is not None else ""
        resumable = run_dir and os.path.isfile(os.path.join(run_dir, "config.yaml"))
        hint = f"; continue with: python -m solrl.train --resume {shlex.quote(run_dir)}" if resumable else ""
        print(f"solrl: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
