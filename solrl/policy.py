"""The policy and its companions: trainable transformer (peft LoRA or full), old policy (EMA),
reference (base model, for the KL term), and the rollout copy.

    policy = Policy(model, cfg.train, rollout_dtype=torch.bfloat16)
    with policy.autocast():
        v = policy.velocity(model, x, sigma, cond)             # v_theta, with grad
    v_old = policy.velocity_old(model, x, sigma, cond)         # no grad
    ...optimiser step...
    policy.update_old(decay); policy.refresh_rollout()         # after each update

Who is who:
  net       the trainable module. LoRA: the peft-wrapped transformer, adapter "default" trained,
            adapter "old" holding the EMA of its weights (the official Sol-RL layout). Full: the
            transformer itself, fp32 master weights.
  old       LoRA: adapter "old" of net. Full: a separate fp32 copy.
  reference LoRA: net with adapters disabled. Full: a frozen copy of the initial weights (only
            built when kl_beta > 0).
  rollout   a plain (peft-free) copy of the transformer in the rollout dtype holding the *old*
            policy's merged weights: W = W_base + get_delta_weight("old") for LoRA, the old
            weights for full fine-tuning. Rollouts sample from it (as the official code samples
            from the old adapter), `solrl_kernels.nn.rollout_mode` re-quantizes it to NVFP4 on
            every entry, and torch.compile may wrap it. `refresh_rollout()` re-merges it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from .models.base import Conditioning, DiffusionModel

# diffusers attention projections (SD3 / FLUX joint blocks, SANA, the toy model): the fallback
# when neither the config nor the model adapter names LoRA targets
DEFAULT_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
)  # fmt: skip


@contextlib.contextmanager
def training_attention(cudnn: bool = True) -> Iterator[None]:
    """SDPA for the policy's forward and backward passes (activation recomputation included).

    cudnn=True: every backend stays allowed, so torch picks cuDNN where it can (at the presets'
    training shapes on the H200, its forward + backward takes 0.55-0.90x FLASH's time;
    bench/RESULTS.md §8a). Each SDPA output that needs a gradient gets a hook that hands its
    backward the gradient in the output's own strides. torch 2.11 keys its cached cuDNN backward
    graphs on the shapes and the q/k/v/o strides, not the gradient's: two calls of one shape
    whose gradients differ in stride (a FLUX.1 single block passes back a slice of a wider
    gradient, a double block a dense one) run the first call's graph on the second's memory, "an
    illegal memory access" or "mha_graph.execute(...).is_good()". The copy is one pass over the
    gradient. torch.nn.functional.scaled_dot_product_attention is wrapped for the duration of
    the block (diffusers looks it up at every call) and restored after.

    cudnn=False: FLASH, memory-efficient or math only (the flags are global, so the autograd
    engine's threads see them too): the escape hatch should another cuDNN bug appear."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not cudnn:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            yield
        return
    sdpa = F.scaled_dot_product_attention

    def sdpa_with_gradient_in_output_strides(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        if out.requires_grad:
            size, stride = out.shape, out.stride()
            out.register_hook(lambda g: g if g.stride() == stride else
                              torch.empty_strided(size, stride, dtype=g.dtype, device=g.device).copy_(g))
        return out

    F.scaled_dot_product_attention = sdpa_with_gradient_in_output_strides
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def old_decay(step: int, rate: float, max_decay: float) -> float:
    """Old-policy EMA decay after `step` optimiser steps: min(rate * step, max) (official
    decay_type 1: rate 0.001, max 0.5; 0 at the start, so the old policy first tracks the new)."""
    return min(rate * step, max_decay)


class Policy:
    def __init__(
        self,
        model: DiffusionModel,
        finetune: str = "lora",
        lora_rank: int = 32,
        lora_alpha: float = 64.0,
        lora_targets: tuple[str, ...] = (),
        need_reference: bool = True,
        rollout_dtype: torch.dtype = torch.bfloat16,
        mixed_precision: str = "bf16",
        init_seed: int = 0,
        gradient_checkpointing: bool = False,
    ):
        base = model.transformer
        self.finetune = finetune
        self.device = next(base.parameters()).device
        self.autocast_dtype = torch.bfloat16 if mixed_precision == "bf16" else None
        # the rollout copy is taken before peft injects LoRA layers into `base`
        self.rollout = copy.deepcopy(base).requires_grad_(False).eval()
        if next(base.parameters()).dtype != rollout_dtype:
            self.rollout.to(rollout_dtype)
        self._ref: nn.Module | None = None
        self._old: nn.Module | None = None
        if finetune == "lora":
            from peft import LoraConfig, get_peft_model

            targets = list(
                lora_targets or getattr(model, "lora_target_modules", ()) or DEFAULT_LORA_TARGETS
            )
            lcfg = LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha,
                init_lora_weights="gaussian",
                target_modules=targets,
            )
            base.requires_grad_(False)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)  # reproducible LoRA init (A gaussian, B zero)
                self.net = get_peft_model(base, lcfg)
                self.net.add_adapter("old", lcfg)
            self.net.set_adapter("default")
            self._lora_modules = self._find_lora_modules()
            if not self._lora_modules:
                raise ValueError(f"no module matched LoRA targets {targets}")
        elif finetune == "full":
            self.net = base.float().requires_grad_(True)
            self._old = copy.deepcopy(self.net).requires_grad_(False).eval()
            if need_reference:
                self._ref = copy.deepcopy(self.net).to(rollout_dtype).requires_grad_(False).eval()
        else:
            raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
        if gradient_checkpointing:  # after the copies: rollouts and old/reference run no_grad
            enable = getattr(base, "enable_gradient_checkpointing", None)
            if enable is None or not getattr(base, "_supports_gradient_checkpointing", False):
                raise ValueError(f"train.gradient_checkpointing: {type(base).__name__} does not "
                                 "support gradient checkpointing (a diffusers transformer does)")
            enable()  # diffusers: recompute each block in backward, only when grad is enabled
        self.copy_to_old()
        self.refresh_rollout()

    # --- parameters -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (LoRA: adapter "default" only)."""
        if self.finetune == "lora":
            return [p for n, p in self.net.named_parameters() if ".default." in n]
        return [p for p in self.net.parameters() if p.requires_grad]

    def _old_parameters(self) -> list[torch.Tensor]:
        if self.finetune == "lora":
            return [p for n, p in self.net.named_parameters() if ".old." in n]
        return list(self._old.parameters())

    def _find_lora_modules(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        inner = self.net.get_base_model()
        return [(n, m) for n, m in inner.named_modules() if isinstance(m, LoraLayer)]

    @torch.no_grad()
    def copy_to_old(self) -> None:
        for o, p in zip(self._old_parameters(), self.trainable_parameters(), strict=True):
            o.copy_(p)

    @torch.no_grad()
    def update_old(self, decay: float) -> None:
        """old <- decay * old + (1 - decay) * current."""
        for o, p in zip(self._old_parameters(), self.trainable_parameters(), strict=True):
            o.mul_(decay).add_(p.detach().to(o.dtype), alpha=1.0 - decay)

    @torch.no_grad()
    def refresh_rollout(self) -> None:
        """Re-merge the old policy into the rollout copy (NVFP4 rollouts re-quantize on entry)."""
        if self.finetune == "lora":
            for name, layer in self._lora_modules:
                target = self.rollout.get_submodule(name)
                w = layer.base_layer.weight.float() + layer.get_delta_weight("old").float()
                target.weight.copy_(w.to(target.weight.dtype))
        else:
            for t, o in zip(self.rollout.parameters(), self._old.parameters(), strict=True):
                t.copy_(o.to(t.dtype))

    # --- forwards -------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def velocity(
        self, model: DiffusionModel, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """v_theta of the current policy (grad flows to the trainable parameters)."""
        with self.autocast():
            return model.velocity(x, sigma, cond, transformer=self.net)

    @torch.no_grad()
    def velocity_old(
        self, model: DiffusionModel, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        with self.autocast(), self._as_old() as net:
            return model.velocity(x, sigma, cond, transformer=net)

    @torch.no_grad()
    def velocity_ref(
        self, model: DiffusionModel, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """The base (pre-RL) model's velocity, for the KL term."""
        with self.autocast(), self._as_reference() as net:
            return model.velocity(x, sigma, cond, transformer=net)

    @contextlib.contextmanager
    def _as_old(self) -> Iterator[nn.Module]:
        if self.finetune == "lora":
            self.net.set_adapter("old")
            try:
                yield self.net
            finally:
                self.net.set_adapter("default")  # also restores requires_grad of "default"
        else:
            yield self._old

    @contextlib.contextmanager
    def _as_reference(self) -> Iterator[nn.Module]:
        if self.finetune == "lora":
            with self.net.disable_adapter():
                yield self.net
        else:
            if self._ref is None:
                raise RuntimeError("no reference model: built only when kl_beta > 0")
            yield self._ref

    # --- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable and old-policy tensors (what a resume needs), CPU, contiguous."""
        out = {}
        for i, p in enumerate(self.trainable_parameters()):
            out[f"current.{i:05d}"] = p.detach().cpu().contiguous()
        for i, p in enumerate(self._old_parameters()):
            out[f"old.{i:05d}"] = p.detach().cpu().contiguous()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        cur, old = self.trainable_parameters(), self._old_parameters()
        n_cur = sum(k.startswith("current.") for k in state)
        n_old = sum(k.startswith("old.") for k in state)
        if (n_cur, n_old) != (len(cur), len(old)):
            raise ValueError(
                f"checkpoint holds {n_cur} current / {n_old} old tensors, the policy has "
                f"{len(cur)} / {len(old)} (different finetune mode, LoRA rank or targets?)"
            )
        for i, p in enumerate(cur):
            p.copy_(state[f"current.{i:05d}"])
        for i, p in enumerate(old):
            p.copy_(state[f"old.{i:05d}"])
        self.refresh_rollout()
