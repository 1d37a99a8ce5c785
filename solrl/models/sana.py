"""SANA adapter: diffusers SanaTransformer2DModel (+ Gemma-2 text encoder, DC-AE).

    model = SanaModel.from_pretrained("/models/Sana_1600M_1024px_BF16_diffusers", device="cuda")

The transformer takes timestep = 1000 * sigma * timestep_scale and predicts v = eps - x0
(flow prediction, as SanaPipeline). Prompts are encoded without SanaPipeline's
"complex human instruction" prefix (as the official Sol-RL code), with the attention mask kept
in the conditioning. SanaPipeline samples with DPM-Solver; our samplers are Euler / Flow-GRPO SDE
on the same flow-matching ODE, with `default_shift` = the scheduler's flow_shift.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Conditioning
from .common import DiffusersT2I, load_frozen_pipeline


class SanaModel(DiffusersT2I):
    """Conditioning: {"encoder_hidden_states": [B, L, D], "encoder_attention_mask": [B, L]}."""

    default_shift = 3.0
    lora_target_modules = (
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    )  # fmt: skip

    def _forward(
        self,
        net: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        scale = getattr(self.transformer.config, "timestep_scale", 1.0)
        out = net(
            latents,
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=sigma * 1000.0 * scale,
            return_dict=False,
        )[0]
        c = latents.shape[1]
        if out.shape[1] == 2 * c:  # learned sigma: keep the flow prediction half
            out = out[:, :c]
        return out

    @classmethod
    def from_pipeline(cls, pipe, resolution: int = 1024, max_sequence_length: int = 300) -> SanaModel:
        """Wrap a loaded SanaPipeline (uses its encoder, VAE and transformer)."""
        tr = pipe.transformer
        vae_scale = getattr(pipe, "vae_scale_factor", None) or 32
        if resolution % vae_scale:
            raise ValueError(f"resolution {resolution} must be a multiple of {vae_scale}")
        side = resolution // vae_scale
        sc = pipe.scheduler.config
        shift = sc.get("flow_shift", None) or sc.get("shift", None) or cls.default_shift

        def encode(prompts: list[str]) -> Conditioning:
            emb, mask, _, _ = pipe.encode_prompt(
                prompts,
                do_classifier_free_guidance=False,
                device=tr.device,
                max_sequence_length=max_sequence_length,
                complex_human_instruction=None,
            )
            return {"encoder_hidden_states": emb, "encoder_attention_mask": mask}

        shape = (tr.config.in_channels, side, side)
        return cls(tr, encode, shape, vae=pipe.vae, default_shift=shift, pipeline=pipe)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "bf16",
        resolution: int = 1024,
        max_sequence_length: int = 300,
    ) -> SanaModel:
        """Load a local SanaPipeline folder (no network)."""
        from diffusers import SanaPipeline

        pipe = load_frozen_pipeline(SanaPipeline, path, "sana", device, dtype)
        return cls.from_pipeline(pipe, resolution, max_sequence_length)
