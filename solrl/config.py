"""Typed configuration of a Sol-RL run: dataclasses (each field documented once), YAML presets,
`--config FILE`, `key=value` overrides, and the type-driven CLI (tyro).

Precedence, lowest first: dataclass defaults (the official Sol-RL SANA values) < preset
(`--preset NAME`, solrl/configs/NAME.yaml; default "toy": toy-gpu with CUDA, else toy-cpu) <
`--config FILE` < command-line options (`--train.lr 1e-4` or `train.lr=1e-4`). `--resume DIR`
takes DIR's saved config instead of a preset and a file, and command-line options that leave the
trained model as it is (RESUME_FIXED lists those that cannot change). Mistakes raise ConfigError.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal

import tyro.conf
import yaml

from .selection import STRATEGIES, Strategy

Algorithm = Literal["sol_rl", "bf16", "bf16_pool", "naive_fp4"]
ALGORITHMS = typing.get_args(Algorithm)
Objective = Literal["nft", "grpo"]


class ConfigError(Exception):
    """A mistake in the command line, a config file or preset, or a run directory: the CLI prints
    it as one line, `solrl: error: <message>`, and exits with status 2."""


class RunExistsError(ConfigError, FileExistsError):
    """log.run_dir already holds a run (and --resume was not given)."""


def _positive(name: str, value, allow_zero: bool = False) -> None:
    bad = value < 0 if allow_zero else value <= 0
    if bad:
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_names(key: str, names, regex: bool = False) -> tuple[str, ...]:
    """A list option of module names (or regexes) as a tuple; an empty or blank entry (which would
    match every module) or an invalid regex is an error naming the key."""
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}: empty entry {name!r} in {list(names)} (it would match every "
                              f"module); to clear the list give an empty value: {key}=")  # fmt: skip
        if regex:
            try:
                re.compile(name)
            except re.error as e:
                raise ConfigError(f"{key}: bad regex {name!r}: {e}") from e
    return names


@dataclass
class ModelConfig:
    """The model to fine-tune."""

    kind: Literal["toy", "sd3", "flux", "sana"] = "toy"
    """Model family: the bundled toy model, or a local diffusers folder of SD3/SD3.5, FLUX.1, SANA."""
    path: str = ""
    """Local diffusers pipeline folder (with model_index.json); not used by kind=toy."""
    resolution: int = 1024
    """Image side in pixels (diffusers models; the toy model has a fixed size)."""
    dtype: Literal["bf16", "fp32"] = "bf16"
    """Weights of the frozen base model and the rollout copy (fp32 for CPU runs)."""
    shift: float = 0.0
    """Time shift of the sigma schedule; 0 = the model's own default (SD3 3.0, FLUX by resolution)."""
    max_sequence_length: int = 0
    """Text tokens; 0 = the model's default (SD3 256, FLUX 512, SANA 300)."""
    guidance_scale: float = 3.5
    """FLUX.1-dev embedded guidance (not CFG; rollouts and training are CFG-free as in Sol-RL)."""

    def __post_init__(self):
        _positive("model.resolution", self.resolution)
        _positive("model.shift", self.shift, allow_zero=True)
        _positive("model.max_sequence_length", self.max_sequence_length, allow_zero=True)


@dataclass
class RolloutConfig:
    """Stage one (preview / explore), selection, stage two (regeneration)."""

    prompts_per_iter: int = 48
    """Prompt groups per iteration (summed over ranks)."""
    pool: int = 96
    """N: candidates per prompt explored in stage one (sol_rl, bf16_pool, naive_fp4)."""
    select: int = 24
    """K: candidates per prompt kept for training (the N-in-N size of the bf16 baseline)."""
    selection: Strategy = "best_worst"
    """How K of N are chosen from the stage-one rewards."""
    preview_steps: int = 6
    """Sampler steps of the stage-one preview (sol_rl)."""
    steps: int = 10
    """Sampler steps of the full rollouts (stage two, and the baselines' rollouts)."""
    preview_linear: Literal["nvfp4", "bf16"] = "nvfp4"
    """Precision of the linear layers in FP4 rollouts (sol_rl preview, naive_fp4); "bf16" turns
    the FP4 path off (for debugging the pipeline without solrl_kernels)."""
    preview_attention: Literal["bf16", "fp8", "nvfp4", "nvfp4_pv"] = "bf16"
    """Attention precision in FP4 rollouts (official Sol-RL: bf16). "nvfp4_pv" keeps Q and K in
    FP8 and quantizes P and V to NVFP4: more accurate than "nvfp4" on peaky attention, with
    the same FP8 tensor-core MMAs on Hopper."""
    fp4_min_features: int = 256
    """NVFP4 swap skips linear layers with min(in, out) below this (rollout_mode's
    min_features; embedders, adaLN and the final layer are always kept, as in Sol-RL)."""
    fp4_exclude: tuple[str, ...] = ()
    """Extra regexes (re.search on module names) of layers kept in BF16 in FP4 rollouts, on top
    of rollout_mode's defaults (official Sol-RL: nvfp4_skip_modules). On the command line:
    `rollout.fp4_exclude='attn1\\.,attn2\\.to_q'` (or `[a,b]`, or space-separated); an empty
    value clears the list."""
    batch_size: int = 24
    """Images per sampler forward pass (and per reward call)."""
    noise_level: float = 0.7
    """Flow-GRPO SDE noise level a (objective=grpo)."""

    def __post_init__(self):
        for name in ("prompts_per_iter", "pool", "select", "preview_steps", "steps", "batch_size"):
            _positive(f"rollout.{name}", getattr(self, name))
        if self.selection not in STRATEGIES:
            raise ConfigError(f"rollout.selection {self.selection!r} not in {list(STRATEGIES)}")
        _positive("rollout.noise_level", self.noise_level)
        _positive("rollout.fp4_min_features", self.fp4_min_features, allow_zero=True)
        self.fp4_exclude = _check_names("rollout.fp4_exclude", self.fp4_exclude, regex=True)


@dataclass
class TrainConfig:
    """Policy, objective and optimiser."""

    objective: Objective = "nft"
    """DiffusionNFT (Sol-RL's objective) or Flow-GRPO."""
    finetune: Literal["lora", "full"] = "lora"
    """Train peft LoRA adapters, or all transformer weights."""
    lora_rank: int = 32
    """LoRA rank r."""
    lora_alpha: float = 64.0
    """LoRA alpha (scale alpha / r)."""
    lora_targets: tuple[str, ...] = ()
    """peft target_modules; empty = the model adapter's default list (`train.lora_targets=`
    restores it; `train.lora_targets=to_q,to_k` sets two)."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    micro_batch: int = 16
    """Samples per forward/backward pass."""
    grad_accum: int = 0
    """Micro-batches per optimiser step; 0 = all of an iteration's samples in one step (official)."""
    inner_epochs: int = 1
    """Passes over each iteration's samples."""
    timestep_fraction: float = 0.6
    """Fraction of the rollout's sampler steps trained on per sample (random subset)."""
    kl_beta: float = 1e-4
    """Weight of the KL term to the base model (0 = off: no reference forward)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to +-this (NFT's A_max)."""
    adv_std: Literal["global", "group"] = "global"
    """Advantage normaliser: std of all rewards of the iteration (official) or of the group."""
    nft_beta: float = 1.0
    """DiffusionNFT beta: v+ = beta v_theta + (1 - beta) v_old."""
    nft_weighting: Literal["adaptive", "velocity"] = "adaptive"
    """NFT loss weighting: the paper's adaptive x0-space weighting, or the plain velocity loss."""
    old_decay_rate: float = 0.001
    """Old-policy EMA: decay = min(rate * optimiser steps, max) (official decay_type 1)."""
    old_decay_max: float = 0.5
    """Old-policy EMA: the decay's ceiling."""
    grpo_clip: float = 1e-4
    """Flow-GRPO ratio clip range eps."""
    mixed_precision: Literal["bf16", "no"] = "bf16"
    """bf16 autocast for the policy's forwards (also on CPU, where "no" is much faster)."""
    compile: bool = False
    """torch.compile the rollout copy (on in the flux, sd35l and sana presets): BF16
    regeneration and pools, and the NVFP4 previews under rollout_mode (batch 4 at real widths,
    H200, against compiled BF16: FLUX.1 1.39-1.46x (1.22x eager), SD3.5-L 1.26x, SANA 1.18x;
    bench/RESULTS.md §7h, §7i). Dynamo keeps one graph per mode and shape: re-quantizing the
    weights each iteration does not recompile. The first iteration pays the compile time;
    should compiling fail, the run warns and samples eagerly from then on."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block in the backward pass instead of keeping its
    activations, with diffusers' enable_gradient_checkpointing: on in the flux, sd35l and sana
    presets. One full-depth FLUX.1 iteration at micro-batch 8 peaks at 54 GiB instead of 111
    GiB, for +25% of the training phase (H200, bench/RESULTS.md §8). Rollouts run without grad
    and are unaffected."""
    cudnn_attention: bool = True
    """Let the training passes use cuDNN's SDPA, the fastest backend at the presets' shapes
    (forward + backward in 0.55-0.90x FLASH's time on the H200, bench/RESULTS.md §8a), with the
    workaround for torch 2.11's cuDNN backward bug described in solrl.policy.training_attention.
    false: FLASH / memory-efficient / math only, should cuDNN fail on your torch and cuDNN."""

    def __post_init__(self):
        for name in ("lora_rank", "lora_alpha", "lr", "adam_eps", "max_grad_norm", "micro_batch",
                     "inner_epochs", "adv_clip_max", "nft_beta", "grpo_clip"):  # fmt: skip
            _positive(f"train.{name}", getattr(self, name))
        for name in ("weight_decay", "grad_accum", "kl_beta", "old_decay_rate", "old_decay_max"):
            _positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"train.timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if not self.old_decay_max < 1:
            raise ConfigError(f"train.old_decay_max must be < 1, got {self.old_decay_max}")
        self.lora_targets = _check_names("train.lora_targets", self.lora_targets)
        self.adam_betas = tuple(self.adam_betas)


@dataclass
class EvalConfig:
    """Periodic evaluation on fixed prompts and seeds (BF16, full steps)."""

    every: int = 0
    """Evaluate every this many iterations (and before the first and after the last); 0 = off."""
    num_prompts: int = 32
    """Evaluation prompts (the toy world's fixed set, or the first lines of eval.prompts)."""
    steps: int = 40
    """Sampler steps of evaluation images."""
    prompts: str = ""
    """Text file of evaluation prompts, one per line; empty = the toy set / the training file."""

    def __post_init__(self):
        _positive("eval.every", self.every, allow_zero=True)
        _positive("eval.num_prompts", self.num_prompts)
        _positive("eval.steps", self.steps)


@dataclass
class LogConfig:
    """Run directory, metrics, images, checkpoints."""

    run_dir: str = ""
    """Run directory; empty = runs/<timestamp>-<preset>."""
    image_every: int = 5
    """Write an FP4-vs-BF16 sample grid every this many iterations (0 = never)."""
    image_prompts: int = 4
    """Prompt groups shown in a sample grid."""
    ckpt_every: int = 5
    """Checkpoint every this many iterations (and at the end); 0 = only at the end."""
    keep_ckpts: int = 2
    """Checkpoints kept (oldest deleted)."""
    tensorboard: bool = True
    """Write TensorBoard events under <run_dir>/tb."""
    progress: bool = True
    """Progress bars (tqdm) with ETA when stderr is a terminal; otherwise (or false) one line
    per iteration: rewards, loss, evaluation, phase times."""

    def __post_init__(self):
        _positive("log.image_every", self.image_every, allow_zero=True)
        _positive("log.image_prompts", self.image_prompts)
        _positive("log.ckpt_every", self.ckpt_every, allow_zero=True)
        _positive("log.keep_ckpts", self.keep_ckpts)


@dataclass
class Config:
    """Sol-RL: explore in NVFP4, select, regenerate in BF16, train with DiffusionNFT/Flow-GRPO."""

    algorithm: Algorithm = "sol_rl"
    """sol_rl: N-candidate FP4 preview -> select K -> BF16 regeneration -> train.
    bf16: K-in-K BF16 rollouts. bf16_pool: K-in-N, all BF16. naive_fp4: K-in-N trained on the FP4
    rollouts themselves."""
    iterations: int = 300
    """Iterations (rollout + update rounds) to run in total."""
    seed: int = 42
    """Run seed: prompts, noise (counter-based), timesteps, LoRA init."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available."""
    reward: str = "geneval"
    """Reward name (solrl.rewards.build_reward): geneval, jpeg_compressibility, aesthetic."""
    prompts: str = "toy"
    """Training prompts: "toy" (the toy world's grammar) or a text file, one prompt per line."""
    # preset and resume are set by --preset and --resume only (not listed as options in --help)
    preset: Annotated[str, tyro.conf.Suppress] = ""
    """Preset this config started from (solrl/configs/<name>.yaml): toy (auto), toy-cpu, toy-gpu,
    flux, sd35l, sana."""
    resume: Annotated[str, tyro.conf.Suppress] = ""
    """Run directory to resume (its config.yaml and last checkpoint); not saved in config.yaml."""
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        _positive("iterations", self.iterations)
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2^63), got {self.seed}")
        r, t = self.rollout, self.train
        if self.algorithm != "bf16" and r.pool < r.select:
            raise ConfigError(
                f"rollout.pool ({r.pool}) is smaller than rollout.select ({r.select}): algorithm "
                f"{self.algorithm!r} selects {r.select} of {r.pool} candidates per prompt"
            )
        if r.select < 2:
            raise ConfigError(f"rollout.select must be >= 2 (advantages need a group), got {r.select}")
        if t.objective == "grpo" and r.steps < 2:
            raise ConfigError(f"objective grpo needs rollout.steps >= 2 (SDE steps), got {r.steps}")
        if self.model.kind != "toy" and not self.model.path:
            raise ConfigError(
                f"model.kind={self.model.kind!r} needs model.path=/local/diffusers/folder "
                "(no hub downloads here)"
            )
        if self.model.kind != "toy" and not os.path.isdir(os.path.expanduser(self.model.path)):
            raise ConfigError(f"model.path {self.model.path!r} does not exist")

    @property
    def uses_pool(self) -> bool:
        """Whether stage one explores N > K candidates per prompt."""
        return self.algorithm != "bf16"


# --- dicts, YAML, presets -----------------------------------------------------------------------

SECTIONS = ("model", "rollout", "train", "eval", "log")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. ['algorithm', ..., 'train.lr', ...]."""
    return list(_key_types(cls, prefix))


def _key_types(cls=Config, prefix: str = "") -> dict[str, type]:
    """{dotted key: its field type} for every settable key."""
    types = {}
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            types.update(_key_types(tp, f"{prefix}{name}."))
        else:
            types[prefix + name] = tp
    return types


def _suggestions(key: str) -> list[str]:
    """Valid keys an unknown one may mean: the same name, or the initials of its words, in
    another section (`lr` or `learning_rate` -> `train.lr`); else difflib's closest keys."""
    import difflib

    keys = valid_keys()
    leaf = key.rsplit(".", 1)[-1]
    names = {leaf, "".join(w[0] for w in leaf.split("_") if w) if "_" in leaf else leaf}
    same = [k for k in keys if k.rsplit(".", 1)[-1] in names]
    return same[:3] or difflib.get_close_matches(key, keys, n=3, cutoff=0.6)


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    """`unknown option 'train.learning_rate' [in FILE]; did you mean: train.lr?`"""
    close = _suggestions(key)
    hint = f"did you mean: {', '.join(close)}?" if close else "python -m solrl.train --help lists them"
    return ConfigError(f"unknown option {key!r}{f' in {where}' if where else ''}; {hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the field type (int -> float allowed, lists -> tuples)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    raise TypeError(f"{key}: unsupported field type {tp}")


def merge_dict(base: dict, override: dict, where: str, cls=Config, prefix: str = "") -> dict:
    """base (a full nested dict of cls) updated by a partial override, key-checked and typed."""
    types_ = _field_types(cls)
    out = dict(base)
    for k, v in override.items():
        key = prefix + str(k)
        if k not in types_:
            raise unknown_key_error(key, where)
        tp = types_[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{key} in {where} must be a mapping of {tp.__name__} fields")
            out[k] = merge_dict(base[k], v, where, tp, key + ".")
        else:
            out[k] = _coerce(v, tp, key)
    return out


def to_dict(cfg) -> dict:
    """Nested plain dict (tuples as lists: YAML-friendly)."""

    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))


def from_dict(d: dict, cls=Config):
    """Build (and validate) a config from a full or partial nested dict."""
    merged = merge_dict(to_dict(_defaults(cls)), d, "config", cls)
    return _build(cls, merged)


def _defaults(cls):
    # defaults without __post_init__ cross-checks (a partial config may be completed later)
    return _build(cls, None, check=False)


def _build(cls, d: dict | None, check: bool = True):
    kwargs = {}
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, None if d is None else d[name], check)
        elif d is not None:
            kwargs[name] = _coerce(d[name], tp, name)
    if check:
        return cls(**kwargs)
    obj = cls.__new__(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in defaults.items():
        if name in kwargs:
            val = kwargs[name]
        elif f.default is not dataclasses.MISSING:
            val = f.default
        else:
            val = f.default_factory()
        object.__setattr__(obj, name, val)
    return obj


def load_yaml(path: str | os.PathLike) -> dict:
    """A config file as a nested dict. Its `resume` key, if any, is dropped: config.yaml files of
    resumed runs from before it stopped being saved must not resume that run again."""
    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(d).__name__}")
    d.pop("resume", None)
    return d


def save_yaml(cfg: Config, path: str | os.PathLike) -> None:
    """Atomic write of the resolved config (without `resume`: the file describes the run, and
    `--config` of it starts a new one)."""
    d = to_dict(cfg)
    d.pop("resume")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(d, f, sort_keys=False)
    os.replace(tmp, path)


def preset_names() -> list[str]:
    files = resources.files("solrl") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def resolve_preset(name: str) -> str:
    """"toy" -> toy-gpu with CUDA, else toy-cpu; other names unchanged."""
    if name in ("", "toy"):
        import torch

        return "toy-gpu" if torch.cuda.is_available() else "toy-cpu"
    return name


def load_preset(name: str) -> dict:
    name = resolve_preset(name)
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid: toy, {', '.join(names)}")
    d = yaml.safe_load((resources.files("solrl") / "configs" / f"{name}.yaml").read_text()) or {}
    d["preset"] = name
    return d


# --- resume ------------------------------------------------------------------------------------

RESUME_FIXED = ("algorithm", "seed", "model.*", "train.objective", "train.finetune", "train.lora_*")
"""Keys a resumed run keeps from its checkpoint (fnmatch patterns; model.path may move): they
shape the trained weights or define the experiment. Everything else may be overridden."""
_RESUME_MOVABLE = ("model.path",)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def resume_fixed(key: str) -> bool:
    """Whether a dotted key cannot change when a run is resumed (RESUME_FIXED)."""
    import fnmatch

    return key not in _RESUME_MOVABLE and any(fnmatch.fnmatchcase(key, p) for p in RESUME_FIXED)


def check_resume(cfg: Config, state: dict) -> None:
    """Raise ConfigError where `cfg` cannot continue the run whose last checkpoint wrote `state`
    (its state.json: next_iteration, config): a RESUME_FIXED key differs, or `iterations` is not
    beyond the iterations already run."""
    saved, now = _flatten(state.get("config", {})), _flatten(to_dict(cfg))
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
               if resume_fixed(k) and k in saved and saved[k] != v]  # fmt: skip
    if changed:
        raise ConfigError(
            f"cannot change on resume: {'; '.join(changed)} (fixed: {', '.join(RESUME_FIXED)}); "
            f"start a new run instead: --config {os.path.join(cfg.resume, 'config.yaml')} "
            "log.run_dir=NEW_DIR ..."
        )
    done = int(state.get("next_iteration", 0))
    if cfg.iterations <= done:
        raise ConfigError(
            f"{cfg.resume} has already run {done} iterations: iterations={cfg.iterations} leaves "
            f"nothing to do (give iterations={done + 1} or more to continue it)"
        )


# --- command line -------------------------------------------------------------------------------

_META = ("preset", "config", "resume")
CLI_HELP = """Sol-RL: explore in NVFP4, select, regenerate in BF16, train (DiffusionNFT / Flow-GRPO).

usage: python -m solrl.train [--preset NAME] [--config FILE.yaml] [key=value ...] [--key value ...]
       python -m solrl.train --resume RUN_DIR [key=value ...]

  --preset NAME    toy (default: toy-gpu with CUDA, else toy-cpu), {presets}
  --config FILE    YAML file of overrides (nested like config.yaml), applied after the preset;
                   a run's config.yaml starts a new run with its settings (give log.run_dir)
  --resume DIR     continue the run in DIR from its last checkpoint with its saved config.yaml
                   (not with --preset or --config); overrides may raise iterations and change
                   eval.*, log.* but log.run_dir, rollout.*, train.lr and the like; these stay
                   fixed (model.path may move):
                   {fixed}
  key=value        any option below, e.g. train.lr=1e-4 rollout.pool=64 algorithm=bf16; lists
                   as train.adam_betas=0.9,0.95 or [0.9,0.95] or "0.9 0.95"; an empty value
                   (rollout.fp4_exclude=) clears a list

preset=NAME, config=FILE and resume=DIR mean the same as the flags.

Defaults shown are those of the chosen preset."""


def pop_flags(argv: list[str], names: tuple[str, ...] = _META) -> tuple[dict[str, str], list[str]]:
    """Extract the flags `names` (default --preset/--config/--resume), each written --name VALUE,
    --name=VALUE or name=VALUE: ({name: value}, the other items)."""
    meta, rest, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        key = name[2:] if name.startswith("--") else name
        if key not in names or not (name.startswith("--") or eq):
            rest.append(a)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            i += 1
            val = argv[i]
        if meta.get(key, val) != val:
            raise ConfigError(f"--{key} given twice ({meta[key]!r} and {val!r})")
        meta[key] = val
        i += 1
    return meta, rest


def _split_list(text: str) -> list[str]:
    """A list value on the command line: `[a,b]`, `a,b` or `a b` -> ['a', 'b']; '' and `[]` -> [].
    Commas and blanks inside (), [] or {} (regex groups, classes, `\\d{1,2}`) or after a backslash
    do not split; quotes around an item are removed."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items, cur, depth, escaped = [], "", 0, False
    for ch in text:
        if not escaped and depth == 0 and (ch == "," or ch.isspace()):
            items.append(cur)
            cur = ""
            continue
        if not escaped and ch in "([{":
            depth += 1
        elif not escaped and ch in ")]}":
            depth = max(depth - 1, 0)
        escaped = ch == "\\" and not escaped
        cur += ch
    items.append(cur)
    return [s for s in (item.strip("'\"") for item in items) if s]


def _is_override(arg: str, keys) -> bool:
    """Whether a command-line item is an option (`--x`) or a `key=value` of a known key."""
    return arg.startswith("--") or ("=" in arg and arg.split("=", 1)[0] in (*keys, *_META))


def _list_values(key: str, tp: Any, text: str) -> list[str]:
    """The values of a tuple-valued key from its command-line text (`_split_list`); a
    fixed-length tuple's count is checked."""
    values = _split_list(text)
    args = typing.get_args(tp)
    if args and args[-1] is not Ellipsis and len(values) != len(args):
        example = ",".join(str(v) for v in _get(_defaults(Config), key))
        raise ConfigError(f"{key} takes {len(args)} values, got {values}: write {key}={example} "
                          f"(or [{example}], or \"{example.replace(',', ' ')}\")")  # fmt: skip
    return values


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _expand_overrides(argv: list[str]) -> list[str]:
    """`train.lr=1e-4` -> `--train.lr 1e-4`, checking every key (and --key) against the config.
    A bool takes true/false in any case (`train.compile=true`, as YAML writes it); a list takes
    `k=a,b`, `k=[a,b]` or `k="a b"`, and `k=` is the empty list. The items after a list key
    that are not options belong to it (`--k [a,b]`, `k=a b` unquoted, `k=[a, b]` split by the
    shell)."""
    keys = _key_types()
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            key = name.replace("-", "_")
            if key in ("help", "h"):
                out.append(a)
                continue
            if key not in keys:
                raise unknown_key_error(key)
        elif "=" in a and not a.startswith("-"):
            key, val = a.split("=", 1)
            eq = "="
            if key not in keys:
                raise unknown_key_error(key)
        else:
            out.append(a)
            continue
        tp = keys[key]
        if typing.get_origin(tp) is tuple:
            following = []
            while i < len(argv) and not _is_override(argv[i], keys):
                following.append(argv[i])
                i += 1
            out += [f"--{key}", *_list_values(key, tp, " ".join([val, *following]))]
            continue
        if not eq:
            out.append(a)
            continue
        if tp is bool and val.lower() in ("true", "false"):
            val = val.capitalize()
        out += [f"--{key}", val]
    return out


def _join_docstring_lines(tyro) -> None:
    """--help text: tyro joins a field docstring's wrapped lines only where the next line starts
    with a letter, but ours are indented (a class body). Clean the indentation off first (tyro's
    private helper; left alone where a tyro release has no such function)."""
    strings = getattr(tyro, "_strings", None)
    join = getattr(strings, "remove_single_line_breaks", None)
    if join is None or getattr(join, "_solrl", False):
        return

    def cleaned_then_joined(text: str) -> str:
        return join(inspect.cleandoc(text))

    cleaned_then_joined._solrl = True
    strings.remove_single_line_breaks = cleaned_then_joined


def parse_args(argv: list[str] | None = None) -> Config:
    """The CLI: `[--preset NAME] [--config FILE] [key=value | --key value ...]`, or
    `--resume DIR [key=value ...]`. Mistakes raise ConfigError (tyro's own exit with status 2)."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    meta, rest = pop_flags(argv)
    base = to_dict(_defaults(Config))
    if "resume" in meta:
        run_dir = meta["resume"]
        if "preset" in meta or "config" in meta:
            given = " and ".join(f"--{k}" for k in ("preset", "config") if k in meta)
            raise ConfigError(f"--resume continues {run_dir!r} with its saved config; {given} cannot "
                              "be combined with it (key=value overrides can)")  # fmt: skip
        saved = os.path.join(run_dir, "config.yaml")
        if not os.path.isdir(run_dir):
            raise ConfigError(f"--resume {run_dir!r}: no such run directory")
        if not os.path.isfile(saved):
            raise ConfigError(f"--resume {run_dir!r}: no config.yaml there (not a run directory)")
        base = merge_dict(base, load_yaml(saved), saved)
        base["resume"] = run_dir
        base["log"]["run_dir"] = run_dir
    else:
        base = merge_dict(base, load_preset(meta.get("preset", "toy")), "preset")
        if "config" in meta:
            base = merge_dict(base, load_yaml(meta["config"]), meta["config"])
    default = _build(Config, base, check=False)
    args = _expand_overrides(rest)
    _join_docstring_lines(tyro)
    cfg = tyro.cli(
        Config,
        default=default,
        args=args,
        prog="python -m solrl.train",
        description=CLI_HELP.format(presets=", ".join(preset_names()), fixed=", ".join(RESUME_FIXED)),
        config=(tyro.conf.FlagConversionOff,),
        use_underscores=True,
    )
    if cfg.resume and os.path.normpath(cfg.log.run_dir) != os.path.normpath(cfg.resume):
        raise ConfigError(f"--resume continues {cfg.resume!r} in place: log.run_dir cannot change "
                          "(to branch off, copy the directory and resume the copy)")  # fmt: skip
    return cfg
