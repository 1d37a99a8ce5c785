"""FLUX.1 adapter: diffusers FluxTransformer2DModel (+ CLIP-L pooled, T5 sequence, VAE).

    model = FluxModel.from_pretrained("/models/FLUX.1-dev", device="cuda", resolution=512)

Latents in the DiffusionModel protocol are the VAE's [B, 16, H/8, W/8]; `velocity` packs them
into 2x2 patch tokens [B, (H/16)(W/16), 64] for the transformer and unpacks the prediction, as
FluxPipeline does. The transformer takes timestep = sigma (FluxPipeline passes t / 1000) and, for
guidance-distilled checkpoints (FLUX.1-dev), an embedded guidance scale (not CFG).
`default_shift` = exp(mu) of FluxPipeline's resolution-dependent shift, so `ode_sample` with it
reproduces FluxPipeline's schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Conditioning
from .common import DiffusersT2I, load_frozen_pipeline


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, (H/2)(W/2), 4C] -> [B, C, H, W] (FluxPipeline._unpack_latents)."""
    b, _, c4 = x.shape
    x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """[(H/2)(W/2), 3] positional ids of the packed latent tokens (FluxPipeline)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxModel(DiffusersT2I):
    """Conditioning: {"encoder_hidden_states": [B, L, 4096], "pooled_projections": [B, 768]}."""

    lora_target_modules = (
        "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
        "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    )  # fmt: skip

    def __init__(self, *args, guidance_scale: float = 3.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_scale = float(guidance_scale)

    def _forward(
        self,
        net: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        b, _, h, w = latents.shape
        emb = cond["encoder_hidden_states"].to(dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=latents.device)
        out = net(
            hidden_states=pack_latents(latents),
            timestep=sigma.to(dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"].to(dtype),
            encoder_hidden_states=emb,
            txt_ids=torch.zeros(emb.shape[1], 3, device=latents.device, dtype=dtype),
            img_ids=image_ids(h, w, latents.device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    @classmethod
    def from_pipeline(
        cls,
        pipe,
        resolution: int = 512,
        max_sequence_length: int = 512,
        guidance_scale: float = 3.5,
    ) -> FluxModel:
        """Wrap a loaded FluxPipeline (uses its encoders, VAE and transformer)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        tr = pipe.transformer
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if resolution % (vae_scale * 2):
            raise ValueError(f"resolution {resolution} must be a multiple of {vae_scale * 2}")
        side = resolution // vae_scale
        sc = pipe.scheduler.config
        if sc.get("use_dynamic_shifting", False):
            mu = calculate_shift(
                (side // 2) ** 2,
                sc.get("base_image_seq_len", 256),
                sc.get("max_image_seq_len", 4096),
                sc.get("base_shift", 0.5),
                sc.get("max_shift", 1.15),
            )
            shift = math.exp(mu)
        else:
            shift = sc.get("shift", 1.0)

        def encode(prompts: list[str]) -> Conditioning:
            emb, pooled, _ = pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                device=tr.device,
                max_sequence_length=max_sequence_length,
            )
            return {"encoder_hidden_states": emb, "pooled_projections": pooled}

        shape = (tr.config.in_channels // 4, side, side)
        return cls(
            tr, encode, shape, vae=pipe.vae, default_shift=shift, pipeline=pipe,
            guidance_scale=guidance_scale,
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "bf16",
        resolution: int = 512,
        max_sequence_length: int = 512,
        guidance_scale: float = 3.5,
    ) -> FluxModel:
        """Load a local FluxPipeline folder (no network)."""
        from diffusers import FluxPipeline

        optional = ("image_encoder", "feature_extractor")
        pipe = load_frozen_pipeline(FluxPipeline, path, "flux", device, dtype, optional)
        return cls.from_pipeline(pipe, resolution, max_sequence_length, guidance_scale)
