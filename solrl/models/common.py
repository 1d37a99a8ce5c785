"""What the diffusers adapters (sd3, flux, sana) share: path checks, dtypes, text encoding through
the pipeline, VAE decoding, and the velocity call convention of the DiffusionModel protocol."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from .base import Conditioning

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"bf16" | "fp16" | "fp32" | torch.dtype -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
    return DTYPES[dtype]


def check_model_dir(path: str | os.PathLike | None, kind: str) -> str:
    """A local diffusers pipeline folder (model_index.json inside), or a clear error."""
    if path is None or str(path) == "":
        raise FileNotFoundError(
            f"model kind {kind!r} needs a local diffusers folder: set model.path=/path/to/{kind} "
            "(a folder with model_index.json, e.g. from `huggingface-cli download` on a machine "
            "with network access)"
        )
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.path {path!r} (kind {kind!r}) does not exist or is not a folder")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"model.path {path!r} has no model_index.json: expected a diffusers pipeline folder "
            f"for {kind!r}; found {sorted(os.listdir(path))[:20]}"
        )
    return path


def load_pipeline(cls, path: str, dtype: str | torch.dtype, **kwargs):
    """cls.from_pretrained(path) from local files only, in `dtype`."""
    import warnings

    with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated")
        return cls.from_pretrained(
            path, torch_dtype=resolve_dtype(dtype), local_files_only=True, **kwargs
        )


def load_frozen_pipeline(
    cls, path: str, kind: str, device, dtype: str | torch.dtype, optional: tuple[str, ...] = ()
):
    """A local diffusers pipeline folder -> pipeline on `device`, progress bars off, every
    component except the transformer frozen (text encoders and VAE are never trained)."""
    path = check_model_dir(path, kind)
    pipe = load_pipeline(cls, path, dtype, **missing_components(path, optional))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for name, m in pipe.components.items():
        if isinstance(m, nn.Module) and name != "transformer":
            m.requires_grad_(False)
    return pipe


def missing_components(path: str, optional: tuple[str, ...]) -> dict[str, None]:
    """{name: None} for the optional pipeline components absent from path's model_index.json, so
    from_pretrained accepts folders saved without them (e.g. SD3 without T5)."""
    import json

    with open(os.path.join(path, "model_index.json")) as f:
        index = json.load(f)
    return {k: None for k in optional if index.get(k) in (None, [None, None])}


def module_dtype(module: nn.Module) -> torch.dtype:
    """dtype of the first floating-point parameter."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class DiffusersT2I:
    """Base of the adapters: a diffusers transformer, a text-encoding callable, an optional VAE.

    Latents follow DESIGN §4 (x_sigma = (1 - sigma) x0 + sigma eps, v = eps - x0); with no VAE the
    latents are pixels in [-1, 1] (the toy setting). Subclasses implement `_forward`.
    """

    default_shift: float = 1.0
    """Time shift of the sigma schedule this model was trained with."""
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """peft target modules used when the config leaves them unset."""

    def __init__(
        self,
        transformer: nn.Module,
        encode_text: Callable[[list[str]], Conditioning],
        latent_shape: tuple[int, int, int],
        vae: nn.Module | None = None,
        default_shift: float | None = None,
        pipeline=None,
    ):
        self.transformer = transformer
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.vae = vae
        self.pipeline = pipeline
        self._encode_text = encode_text
        self.dtype = module_dtype(transformer)
        if default_shift is not None:
            self.default_shift = float(default_shift)

    @property
    def device(self) -> torch.device:
        return module_device(self.transformer)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of str, got {type(prompts).__name__}")
        return self._encode_text(list(prompts))

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        """latents [B, C, H, W], sigma [B] -> v [B, C, H, W] in latents' dtype."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"latents must be [B, *{self.latent_shape}], got {tuple(latents.shape)}"
            )
        b = latents.shape[0]
        if sigma.shape != (b,):
            raise ValueError(f"sigma must be [{b}], got {tuple(sigma.shape)}")
        net = self.transformer if transformer is None else transformer
        dtype = module_dtype(net)  # the module run may differ (fp32 master vs bf16 rollout copy)
        out = self._forward(net, latents.to(dtype), sigma.float(), cond, dtype)
        return out.to(latents.dtype)

    def _forward(
        self,
        net: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Run `net` on latents (already in `dtype`, the module's weight dtype)."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> images [B, 3, H', W'] fp32 in [0, 1]."""
        if self.vae is None:
            return ((latents.float() + 1) / 2).clamp(0, 1)
        cfg = self.vae.config
        z = latents.to(module_dtype(self.vae)) / cfg.scaling_factor
        shift = getattr(cfg, "shift_factor", None)
        if shift is not None:
            z = z + shift
        img = self.vae.decode(z, return_dict=False)[0]
        return ((img.float() + 1) / 2).clamp(0, 1)
