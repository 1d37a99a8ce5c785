"""Swap a diffusion transformer's linear layers for NVFP4 ones: permanently
(:func:`quantize_model`) or for the duration of a rollout (:func:`rollout_mode`).

What is swapped: every ``nn.Linear`` and pointwise (1x1) ``nn.Conv2d`` whose qualified name
passes the include / exclude regexes and that is large enough, including layers wrapped by peft
(LoRA): there the whole wrapper is replaced by one NVFP4Linear of the merged weight
(base + active adapters' deltas), and put back unchanged afterwards. A diffusers ``GELU``
module with ``approximate="tanh"`` (FLUX / SD3 feed-forward) is replaced as a whole by an
NVFP4Linear: where the next layer of the feed-forward is swapped too, that layer applies the
GELU as its activation quantizer reads its input (``input_activation``; no pass of its own, no
GEMM epilogue), else the GELU is fused into the first layer's GEMM epilogue.

Default skip rules (after the Sol-RL paper: embedders, final layer, small layers), all
configurable through :class:`QuantizeConfig`:
  * embedders: x/context/caption/patch/pos/time/guidance embedders and projections;
  * the final layer: top-level ``norm_out`` and ``proj_out``;
  * adaLN modulation linears (``norm*.linear``): their GEMM has M = batch size (one
    conditioning vector per sample), so they gain nothing and their error hits every token;
  * layers with min(in_features, out_features) < min_features (256);
  * layers whose in_features is not a multiple of 16 (NVFP4's block size) — always.
Module names are matched after stripping peft's ``base_model.model.`` and torch.compile's
``_orig_mod.`` prefixes, e.g. ``transformer_blocks.0.attn.to_q``.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..gemm import BACKENDS, Backend
from ..gemm.weight import WEIGHT_STORAGES, WeightStorage
from ..nvfp4.tensor import BLOCK_SIZE, ScaleRule
from .flux_single import fuse_single_blocks
from .linear import NVFP4Linear, NVFP4PointwiseConv2d, is_pointwise_conv

# the default skip rules, each with the reason a QuantizationReport gives for it
_DEFAULT_EXCLUDE_REASONS: dict[str, str] = {
    r"(^|\.)(x_embedder|context_embedder|time_text_embed|time_embed|timestep_embedder|"
    r"text_embedder|guidance_embedder|pos_embed|patch_embed|caption_projection|"
    r"caption_norm|time_proj)(\.|$)": "embedder / input projection",
    r"^(norm_out|proj_out)(\.|$)": "final layer",
    r"(^|\.)norm\w*\.linear$": "adaLN modulation (M = batch size)",
}
DEFAULT_EXCLUDE: tuple[str, ...] = tuple(_DEFAULT_EXCLUDE_REASONS)
_NAME_PREFIXES = ("base_model.model.", "_orig_mod.")


@dataclass
class QuantizeConfig:
    """Which layers to swap and how to quantize them.

    scale_rule: "fp8_exact" (Hopper FP8 path) or "rn" (standard NVFP4).
    weight_storage: "fp8" (E4M3-expanded, fastest on Hopper) or "packed" (4.5 bits).
    scale_search: MSE search of fp8_exact block scales for the weights.
    backend: GEMM backend of the swapped layers ("auto" picks per device).
    include: regexes (re.search on the module name); None = every eligible layer.
    exclude: regexes of layers to keep in high precision (default: :data:`DEFAULT_EXCLUDE`).
    min_features: skip layers with min(in_features, out_features) below this.
    fuse_activations: fuse diffusers GELU(approximate="tanh") blocks into the NVFP4 layers:
        into the next layer's input quantization, or else the GEMM epilogue (module doc);
        FLUX single-stream blocks get a proj_out that reads [attention, GELU(MLP)] without
        concatenating them or a GELU pass (:mod:`.flux_single`).
    swap_conv1x1: swap pointwise Conv2d layers too.
    """

    scale_rule: ScaleRule = "fp8_exact"
    weight_storage: WeightStorage = "fp8"
    scale_search: bool = False
    backend: Backend = "auto"
    include: Sequence[str] | None = None
    exclude: Sequence[str] = DEFAULT_EXCLUDE
    min_features: int = 256
    fuse_activations: bool = True
    swap_conv1x1: bool = True

    def __post_init__(self):
        if self.scale_rule not in ("rn", "fp8_exact"):
            raise ValueError(f"scale_rule must be 'rn' or 'fp8_exact', got {self.scale_rule!r}")
        if self.weight_storage not in WEIGHT_STORAGES:
            raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got "
                             f"{self.weight_storage!r}")
        if self.weight_storage == "fp8" and self.scale_rule != "fp8_exact":
            raise ValueError("weight_storage='fp8' needs scale_rule='fp8_exact', got "
                             f"{self.scale_rule!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.min_features, int) or isinstance(self.min_features, bool):
            raise TypeError(f"min_features must be an int, got {self.min_features!r}")
        if self.min_features < 0:
            raise ValueError(f"min_features must be >= 0, got {self.min_features}")
        if not isinstance(self.scale_search, bool):
            raise TypeError(f"scale_search must be True or False, got {self.scale_search!r}")
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise TypeError("include / exclude are sequences of regexes, not one string")
        self._inc = _compile(self.include, "include") if self.include is not None else None
        self._exc = _compile(self.exclude, "exclude")

    def skip_reason(self, name: str, in_features: int, out_features: int) -> str | None:
        """Why the layer `name` stays in high precision (None: it is swapped)."""
        if in_features % BLOCK_SIZE:
            return f"in_features={in_features} is not a multiple of {BLOCK_SIZE}"
        if self._inc is not None and not any(p.search(name) for p in self._inc):
            return "not matched by include"
        for p in self._exc:
            if p.search(name):
                default = _DEFAULT_EXCLUDE_REASONS.get(p.pattern)
                return f"excluded: {default} (default rule)" if default else f"excluded by {p.pattern!r}"
        if min(in_features, out_features) < self.min_features:
            return (f"small: min(in, out) = {min(in_features, out_features)} < "
                    f"min_features={self.min_features}")
        return None


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern]:
    """The regexes of include / exclude; ValueError naming the one that does not compile."""
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{what}: {p!r} is not a valid regex ({e})") from None
    return out


@dataclass
class QuantizationReport:
    """swapped: module names now NVFP4; skipped: name -> reason; bytes_before / bytes_after:
    weight storage of the swapped layers (dense vs NVFP4); seconds: wall time of quantizing;
    cat_free_blocks: FLUX single-stream blocks whose proj_out reads its two inputs without
    concatenating them (:mod:`solrl_kernels.nn.flux_single`)."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    cat_free_blocks: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        head = f"NVFP4: {len(self.swapped)} layers swapped, {len(self.skipped)} kept"
        if not self.bytes_before:
            return head + " (no weights quantized)"
        unit, div = next((u, d) for u, d in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))
                         if self.bytes_before >= d or d == 1)
        return (f"{head}; weights {self.bytes_before / div:.3f} -> {self.bytes_after / div:.3f} "
                f"{unit} ({self.bytes_after / self.bytes_before:.3f}x) in "
                f"{self.seconds * 1e3:.1f} ms")


@dataclass
class _Site:
    parent: nn.Module
    attr: str
    name: str  # normalized name of the linear / conv itself
    module: nn.Module  # what is replaced (Linear, Conv2d, peft wrapper or diffusers GELU)
    layer: nn.Module  # the Linear / Conv2d / peft wrapper holding the weight
    kind: Literal["linear", "conv"]
    activation: Literal["none", "gelu_tanh"]  # in the GEMM epilogue
    input_activation: Literal["none", "gelu_tanh"] = "none"  # applied to the layer's input


def _normalize(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _NAME_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name.replace("._orig_mod.", ".")


def _peft_base(m: nn.Module) -> nn.Module | None:
    """The wrapped layer of a peft tuner layer (LoRA etc.), else None."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    return m.get_base_layer() if isinstance(m, BaseTunerLayer) else None


def _layer_kind(m: nn.Module) -> Literal["linear", "conv"] | None:
    base = _peft_base(m) or m
    if isinstance(base, nn.Linear):
        return "linear"
    if is_pointwise_conv(base):
        return "conv"
    return None


def _features(layer: nn.Module) -> tuple[int, int]:
    base = _peft_base(layer) or layer
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    return base.in_channels, base.out_channels


def _is_tanh_gelu(m: nn.Module) -> bool:
    try:
        from diffusers.models.activations import GELU
    except ImportError:
        return False
    return type(m) is GELU and m.approximate == "tanh"


def _runs_in_order(parent: nn.Module, attr: str, child: nn.Module) -> bool:
    """Whether child's children run one after another, each on the previous one's output:
    an nn.Sequential, or the ``net`` of a diffusers FeedForward."""
    if isinstance(child, nn.Sequential):
        return True
    try:
        from diffusers.models.attention import FeedForward
    except ImportError:
        return False
    return attr == "net" and isinstance(child, nn.ModuleList) and type(parent) is FeedForward


def _gelu_readers(seq: nn.Module, swapped: Callable[[str, nn.Module], bool]) -> dict[str, str]:
    """In a module whose children run in order: {attr of a tanh-GELU block whose proj is
    swapped: attr of the swapped Linear that reads its output}, with only identities (dropout
    with p = 0) between them."""
    children = list(seq.named_children())
    readers = {}
    for i, (attr, m) in enumerate(children):
        if not (_is_tanh_gelu(m) and _layer_kind(m.proj) == "linear"
                and swapped(f"{attr}.proj", m.proj)):
            continue
        for nxt_attr, nxt in children[i + 1:]:
            if isinstance(nxt, nn.Identity) or isinstance(nxt, nn.Dropout) and nxt.p == 0:
                continue
            if _layer_kind(nxt) == "linear" and swapped(nxt_attr, nxt):
                readers[attr] = nxt_attr
            break
    return readers


def collect_sites(model: nn.Module, cfg: QuantizeConfig) -> tuple[list[_Site], dict[str, str]]:
    """Walk the module tree; returns (layers to swap, {skipped name: reason})."""
    sites: list[_Site] = []
    skipped: dict[str, str] = {}

    def visit(parent: nn.Module, prefix: str, in_order: bool = False) -> None:
        readers = {}  # GELU block -> the next layer, which applies the GELU as it reads
        if in_order and cfg.fuse_activations:
            readers = _gelu_readers(parent, lambda attr, layer: cfg.skip_reason(
                _normalize(f"{prefix}{attr}"), *_features(layer)) is None)
        for attr, child in parent.named_children():
            full = f"{prefix}{attr}"
            if isinstance(child, NVFP4Linear):
                skipped[_normalize(full)] = "already NVFP4"
                continue
            if cfg.fuse_activations and _is_tanh_gelu(child) and _layer_kind(child.proj):
                name = _normalize(f"{full}.proj")
                reason = cfg.skip_reason(name, *_features(child.proj))
                if reason is None and _layer_kind(child.proj) == "linear":
                    act = "none" if attr in readers else "gelu_tanh"
                    sites.append(_Site(parent, attr, name, child, child.proj, "linear", act))
                    continue
            kind = _layer_kind(child)
            if kind is not None and isinstance(parent, nn.MultiheadAttention):
                skipped[_normalize(full)] = "inside nn.MultiheadAttention (reads .weight)"
                continue
            if kind is not None:
                name = _normalize(full)
                if kind == "conv" and not cfg.swap_conv1x1:
                    skipped[name] = "pointwise Conv2d (swap_conv1x1=False)"
                    continue
                reason = cfg.skip_reason(name, *_features(child))
                if reason is None:
                    read = "gelu_tanh" if attr in readers.values() else "none"
                    sites.append(_Site(parent, attr, name, child, child, kind, "none", read))
                else:
                    skipped[name] = reason
                continue
            if _peft_base(child) is None:
                visit(child, f"{full}.", _runs_in_order(parent, attr, child))

    visit(model, "")
    return sites, skipped


@torch.no_grad()
def effective_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (N, K...), bias) that ``layer`` applies: for a peft tuner layer, the base weight
    plus the active, unmerged adapters' deltas (what ``merge()`` would write), else its own."""
    base = _peft_base(layer)
    if base is None:
        return layer.weight, layer.bias
    weight, bias = base.weight, base.bias
    if getattr(layer, "disable_adapters", False):
        return weight, bias
    merged = set(getattr(layer, "merged_adapters", []))
    pending = [a for a in layer.active_adapters if a not in merged
               and a in getattr(layer, "lora_A", {})]
    if not pending:
        return weight, bias
    plain_lora = hasattr(layer, "get_delta_weight") and not any(
        getattr(layer, "use_dora", {}).get(a, False) for a in pending)
    if not plain_lora:  # DoRA or another tuner: let peft merge a throwaway copy
        tmp = copy.deepcopy(layer)
        tmp.merge(adapter_names=pending)
        return tmp.get_base_layer().weight, tmp.get_base_layer().bias
    weight = weight.clone()
    for a in pending:
        weight += layer.get_delta_weight(a).to(weight.dtype)
        if getattr(layer, "lora_bias", {}).get(a, False):
            bias = bias + layer.lora_B[a].bias * layer.scaling[a]
    return weight, bias


def _quantize_site(site: _Site, cfg: QuantizeConfig) -> NVFP4Linear:
    weight, bias = effective_weight(site.layer)
    kw = dict(scale_rule=cfg.scale_rule, weight_storage=cfg.weight_storage,
              scale_search=cfg.scale_search, activation=site.activation, backend=cfg.backend,
              weight=weight, bias=bias)
    base = _peft_base(site.layer) or site.layer
    if site.kind == "conv":
        return NVFP4PointwiseConv2d.from_conv(base, **kw)
    return NVFP4Linear.from_linear(base, input_activation=site.input_activation, **kw)


def _dense_bytes(layer: nn.Module) -> int:
    base = _peft_base(layer) or layer
    return base.weight.numel() * base.weight.element_size()


def _sync(model: nn.Module) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.is_cuda:
        torch.cuda.synchronize(p.device)


def _swap_in(model: nn.Module, cfg: QuantizeConfig) -> tuple[QuantizationReport, Callable[[], None]]:
    """Quantize every selected layer, then swap them all in. Returns (report, restore)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    t0 = time.perf_counter()
    sites, skipped = collect_sites(model, cfg)
    new_modules = [_quantize_site(s, cfg) for s in sites]  # nothing swapped if this raises
    _sync(model)
    report = QuantizationReport(
        swapped=[s.name for s in sites], skipped=skipped,
        bytes_before=sum(_dense_bytes(s.layer) for s in sites),
        bytes_after=sum(m.weight_nbytes() for m in new_modules),
        seconds=time.perf_counter() - t0,
    )
    for s, m in zip(sites, new_modules):
        setattr(s.parent, s.attr, m)
    undo_fusion = lambda: None  # noqa: E731
    if cfg.fuse_activations:
        report.cat_free_blocks, undo_fusion = fuse_single_blocks(model)

    def restore() -> None:
        undo_fusion()
        for s in reversed(sites):
            setattr(s.parent, s.attr, s.module)

    return report, restore


def _config(config: QuantizeConfig | None, overrides: dict) -> QuantizeConfig:
    if config is not None and not isinstance(config, QuantizeConfig):
        raise TypeError(f"config must be a QuantizeConfig or None, got {type(config).__name__}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is None:
        return QuantizeConfig(**overrides)
    if overrides:
        fields = {k: getattr(config, k) for k in QuantizeConfig.__dataclass_fields__}
        return QuantizeConfig(**{**fields, **overrides})
    return config


def quantize_model(
    model: nn.Module,
    config: QuantizeConfig | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    scale_rule: ScaleRule | None = None,
    weight_storage: WeightStorage | None = None,
    min_features: int | None = None,
    backend: Backend | None = None,
    scale_search: bool | None = None,
) -> QuantizationReport:
    """Swap model's eligible linear layers for NVFP4 ones, in place, permanently.

    Keyword arguments override the fields of ``config`` (default :class:`QuantizeConfig`).
    Returns a :class:`QuantizationReport`. peft wrappers are replaced as a whole by the
    quantized merged weight (use :func:`rollout_mode` to keep training the adapters).
    """
    cfg = _config(config, dict(include=include, exclude=exclude, scale_rule=scale_rule,
                               weight_storage=weight_storage, min_features=min_features,
                               backend=backend, scale_search=scale_search))
    report, _ = _swap_in(model, cfg)
    return report


def _check_keywords_match(config: QuantizeConfig, keywords: dict) -> None:
    """ValueError where a keyword moved off its default (QuantizeConfig's) says otherwise than
    config, whose fields would silently win."""
    defaults = QuantizeConfig.__dataclass_fields__
    for name, value in keywords.items():
        if value != defaults[name].default and value != getattr(config, name, value):
            raise ValueError(f"rollout_mode: {name}={value!r} contradicts config.{name}="
                             f"{getattr(config, name)!r}; set it in config")


@contextlib.contextmanager
def rollout_mode(
    transformer: nn.Module,
    linear: Literal["nvfp4", "bf16"] = "nvfp4",
    attention: Literal["bf16", "fp8", "nvfp4", "nvfp4_pv"] = "bf16",
    scale_rule: ScaleRule = "fp8_exact",
    weight_storage: WeightStorage = "fp8",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_features: int | None = None,
    backend: Backend = "auto",
    scale_search: bool = False,
    config: QuantizeConfig | None = None,
) -> Iterator[QuantizationReport]:
    """Run ``transformer`` in NVFP4 inside the block; restore it exactly on exit.

        with rollout_mode(transformer, linear="nvfp4", attention="bf16") as report:
            previews = sample(transformer, ...)

    On entry the current weights are quantized (peft LoRA adapters merged into the quantized
    copy: effective weight = base + delta), so every entry sees the latest policy; attention
    processors are set to ``attention`` precision (``"bf16"`` leaves them untouched). On exit
    the original modules and processors are put back: parameters, requires_grad, train/eval
    mode and the peft wrapping are never modified. ``config`` gives every quantization
    option at once (its fields override the keyword defaults; explicit include / exclude /
    min_features still win; a scale_rule / weight_storage / backend / scale_search keyword
    set away from its default and contradicting ``config`` raises ValueError). Yields the
    :class:`QuantizationReport` (empty for linear="bf16").
    """
    if linear not in ("nvfp4", "bf16"):
        raise ValueError(f"linear must be 'nvfp4' or 'bf16', got {linear!r}")
    if attention not in ("bf16", "fp8", "nvfp4", "nvfp4_pv"):
        raise ValueError(f"attention must be 'bf16', 'fp8', 'nvfp4' or 'nvfp4_pv', got {attention!r}")
    keywords = dict(scale_rule=scale_rule, weight_storage=weight_storage, backend=backend,
                    scale_search=scale_search)
    if config is None:
        config = QuantizeConfig(**keywords)
    else:
        _check_keywords_match(config, keywords)
    cfg = _config(config, dict(include=include, exclude=exclude, min_features=min_features))
    restores: list[Callable[[], None]] = []
    report = QuantizationReport()
    try:
        if linear == "nvfp4":
            report, restore_linear = _swap_in(transformer, cfg)
            restores.append(restore_linear)
        if attention != "bf16":
            try:
                from ..attention.processors import set_attention_precision
            except ImportError as e:
                raise RuntimeError(
                    f"attention={attention!r} needs solrl_kernels.attention.processors ({e})"
                ) from e
            restores.append(set_attention_precision(transformer, attention))
        yield report
    finally:
        for restore in reversed(restores):
            restore()
