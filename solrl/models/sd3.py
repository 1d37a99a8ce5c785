"""Stable Diffusion 3 / 3.5 adapter: diffusers SD3Transformer2DModel (+ CLIP-L, CLIP-G, T5, VAE).

    model = SD3Model.from_pretrained("/models/stable-diffusion-3.5-large", device="cuda")

The transformer takes timestep = 1000 * sigma and predicts v = eps - x0 (diffusers'
FlowMatchEulerDiscreteScheduler convention), so `ode_sample` with `shift=model.default_shift`
reproduces StableDiffusion3Pipeline at guidance_scale=1.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Conditioning
from .common import DiffusersT2I, load_frozen_pipeline


class SD3Model(DiffusersT2I):
    """Conditioning: {"encoder_hidden_states": [B, L, D], "pooled_projections": [B, P]}."""

    default_shift = 3.0
    lora_target_modules = (
        "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
        "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
    )  # fmt: skip  (Flow-GRPO / DiffusionNFT SD3.5 targets)

    def _forward(
        self,
        net: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        return net(
            hidden_states=latents,
            timestep=sigma * 1000.0,
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            pooled_projections=cond["pooled_projections"].to(dtype),
            return_dict=False,
        )[0]

    @classmethod
    def from_pipeline(cls, pipe, resolution: int = 512, max_sequence_length: int = 256) -> SD3Model:
        """Wrap a loaded StableDiffusion3Pipeline (uses its encoders, VAE and transformer)."""
        tr = pipe.transformer
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if resolution % (vae_scale * tr.config.patch_size):
            raise ValueError(
                f"resolution {resolution} must be a multiple of {vae_scale * tr.config.patch_size}"
            )
        side = resolution // vae_scale
        shift = getattr(pipe.scheduler.config, "shift", cls.default_shift)

        def encode(prompts: list[str]) -> Conditioning:
            emb, _, pooled, _ = pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=tr.device,
                do_classifier_free_guidance=False,
                max_sequence_length=max_sequence_length,
            )
            return {"encoder_hidden_states": emb, "pooled_projections": pooled}

        shape = (tr.config.in_channels, side, side)
        return cls(tr, encode, shape, vae=pipe.vae, default_shift=shift, pipeline=pipe)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "bf16",
        resolution: int = 512,
        max_sequence_length: int = 256,
    ) -> SD3Model:
        """Load a local StableDiffusion3Pipeline folder (no network)."""
        from diffusers import StableDiffusion3Pipeline

        optional = ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor")
        pipe = load_frozen_pipeline(StableDiffusion3Pipeline, path, "sd3", device, dtype, optional)
        return cls.from_pipeline(pipe, resolution, max_sequence_length)
