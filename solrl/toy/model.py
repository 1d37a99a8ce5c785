"""The toy text-to-image model: a small text encoder and a real diffusers SD3Transformer2DModel.

Pixel space, no VAE: latents are images scaled to [-1, 1], shape [B, 3, 64, 64]. The
transformer is a diffusers `SD3Transformer2DModel` (MMDiT) with a small config, so the same
peft LoRA targets (to_q/to_k/to_v/to_out.0, ff) and the NVFP4 layer swap act on it exactly as
on SD3.5. Every nn.Linear in it has in_features in {128, 256, 512} (multiples of 16).

The text encoder is trained jointly with the denoiser (token + position embeddings, a 2-layer
pre-norm transformer encoder): a fixed encoder (one-hot words) would leave all binding of
"red" to "circle" to the MMDiT's joint attention; a learned one is 0.4M parameters and costs
nothing at sampling time (prompts are encoded once per group). It produces
    encoder_hidden_states [B, L=16, 128]   (every token, PAD included: SD3 attends to all)
    pooled_projections    [B, 128]         (mean over non-PAD tokens, then a linear layer)

Files (`save_pretrained` / `load_pretrained`): model.safetensors (keys "transformer.*",
"text_encoder.*", stored fp16 by default: about 7 MB) and config.json ({"model": ToyModelConfig,
"vocab": [...], "meta": {...}}), each written to a temp file and renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..models.base import Conditioning
from . import world
from .text import ToyTokenizer, vocabulary

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_WEIGHTS_DIR = Path(__file__).with_name("weights")


@dataclass
class ToyModelConfig:
    """Architecture of the toy model (stored in config.json)."""

    image_size: int = world.IMAGE_SIZE
    """Side of the square RGB image / latent, pixels."""
    patch_size: int = 4
    """Transformer patch side: (64 / 4)^2 = 256 image tokens."""
    num_layers: int = 5
    """MMDiT blocks (5 keeps a 48-candidate, 6-step preview near 2.5 s on 2 CPU cores)."""
    num_attention_heads: int = 2
    attention_head_dim: int = 64
    """Hidden size = heads * head_dim = 128."""
    text_dim: int = 128
    """Text encoder width = SD3 joint_attention_dim."""
    pooled_dim: int = 128
    """SD3 pooled_projection_dim."""
    text_layers: int = 2
    text_heads: int = 2
    max_tokens: int = 16
    """Tokenizer length (BOS + words + EOS + PAD)."""
    default_shift: float = 1.0
    """Recommended sigma_schedule shift for sampling (pixel space, 64x64: no shift)."""

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        inner = self.num_attention_heads * self.attention_head_dim
        for name, v in (("hidden size", inner), ("text_dim", self.text_dim),
                        ("pooled_dim", self.pooled_dim)):
            if v % 16:
                raise ValueError(f"{name} must be a multiple of 16 (NVFP4 blocks), got {v}")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim {self.text_dim} not divisible by text_heads {self.text_heads}")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class ToyTextEncoder(nn.Module):
    """token ids [B, L] int64 -> (hidden [B, L, text_dim], pooled [B, pooled_dim]), float."""

    def __init__(self, cfg: ToyModelConfig, vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.tok_emb = nn.Embedding(vocab_size, cfg.text_dim)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_tokens, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_dim, cfg.text_heads, 4 * cfg.text_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.pool = nn.Linear(cfg.text_dim, cfg.pooled_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"ids must be [B, L] int64, got {tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.pos_emb.shape[0]:
            raise ValueError(f"at most {self.pos_emb.shape[0]} tokens, got {ids.shape[1]}")
        h = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        h = self.norm(self.encoder(h))  # all tokens attend to all (the same as SD3 does later)
        keep = (ids != self.pad_id).unsqueeze(-1).to(h.dtype)
        pooled = self.pool((h * keep).sum(1) / keep.sum(1).clamp_min(1))
        return h, pooled


def _first_float_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


class ToyT2I(nn.Module):
    """The bundled toy text-to-image flow model; implements solrl.models.DiffusionModel.

    transformer: diffusers SD3Transformer2DModel; text_encoder: ToyTextEncoder;
    latent_shape = (3, 64, 64); latents are pixels in [-1, 1].
    """

    def __init__(self, cfg: ToyModelConfig | None = None):
        super().__init__()
        from diffusers import SD3Transformer2DModel

        self.cfg = cfg = cfg or ToyModelConfig()
        self.tokenizer = ToyTokenizer(cfg.max_tokens)
        self.text_encoder = ToyTextEncoder(cfg, len(self.tokenizer), self.tokenizer.pad_id)
        self.transformer = SD3Transformer2DModel(
            sample_size=cfg.image_size,
            patch_size=cfg.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=cfg.num_layers,
            attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads,
            joint_attention_dim=cfg.text_dim,
            caption_projection_dim=cfg.hidden_size,
            pooled_projection_dim=cfg.pooled_dim,
            pos_embed_max_size=cfg.image_size // cfg.patch_size,
        )
        self.latent_shape = (3, cfg.image_size, cfg.image_size)

    # --- DiffusionModel protocol -------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompts -> {"encoder_hidden_states": [B, 16, 128], "pooled_projections": [B, 128]}
        in the text encoder's dtype, on its device."""
        return self.encode_tokens(self.tokenizer(prompts, device=self.device))

    def encode_tokens(self, ids: torch.Tensor) -> Conditioning:
        """Token ids [B, L] int64 -> conditioning (with gradients if enabled; pretraining)."""
        hidden, pooled = self.text_encoder(ids)
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        """v(x_sigma, sigma, c): latents [B, 3, H, W], sigma [B] in [0, 1] -> [B, 3, H, W] in
        latents' dtype. Inputs are cast to the transformer's parameter dtype; timestep =
        1000 * sigma as in diffusers' SD3 pipeline."""
        tr = self.transformer if transformer is None else transformer
        b = latents.shape[0]
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must be [B, *{self.latent_shape}], got {tuple(latents.shape)}")
        if sigma.shape != (b,):
            raise ValueError(f"sigma must be [B] = [{b}], got {tuple(sigma.shape)}")
        dt = _first_float_dtype(tr, latents.dtype)
        out = tr(
            hidden_states=latents.to(dt),
            timestep=sigma.to(dt) * 1000,
            encoder_hidden_states=cond["encoder_hidden_states"].to(dt),
            pooled_projections=cond["pooled_projections"].to(dt),
            return_dict=False,
        )[0]
        return out.to(latents.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> images [B, 3, H, W] float32 in [0, 1] (clamped)."""
        return ((latents.float() + 1) / 2).clamp(0, 1)

    # --- helpers -----------------------------------------------------------------------------
    @staticmethod
    def images_to_latents(images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> latents in [-1, 1] (same dtype)."""
        return images * 2 - 1

    @property
    def device(self) -> torch.device:
        return self.transformer.pos_embed.proj.weight.device

    def save_pretrained(self, out_dir: str | Path, dtype: torch.dtype = torch.float16,
                        meta: dict | None = None) -> Path:
        """Write model.safetensors (weights cast to `dtype`) and config.json into out_dir,
        each atomically (temp file in out_dir + os.replace). Returns out_dir."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            **{f"transformer.{k}": v for k, v in self.transformer.state_dict().items()},
            **{f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()},
        }
        state = {
            k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in state.items()
        }
        config = {"model": asdict(self.cfg), "vocab": list(self.tokenizer.vocab), "meta": meta or {}}
        _atomic_write(out / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        _atomic_write(
            out / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n")
        )
        return out


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; package data must be world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_config(weights_dir: str | Path) -> dict:
    path = Path(weights_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {weights_dir} (expected model.safetensors + "
                                f"config.json as written by `python -m solrl.toy.pretrain`)")
    return json.loads(path.read_text())


def load_pretrained(
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ToyT2I:
    """Load the toy model from weights_dir (default: the weights shipped in the package,
    solrl/toy/weights/) onto device in dtype, in eval mode. No network."""
    from safetensors.torch import load_file

    wdir = DEFAULT_WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    wfile = wdir / WEIGHTS_FILE
    if not wfile.is_file():
        hint = (" The shipped weights are missing: run `python -m solrl.toy.pretrain --out "
                "solrl/toy/weights` (about 4 minutes on one H200)." if weights_dir is None else "")
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {wdir}.{hint}")
    config = read_config(wdir)
    names = {f.name for f in fields(ToyModelConfig)}
    unknown = set(config["model"]) - names
    if unknown:
        raise ValueError(f"{wdir / CONFIG_FILE}: unknown model config keys {sorted(unknown)}")
    if list(config.get("vocab", [])) != list(vocabulary()):
        raise ValueError(
            f"{wdir / CONFIG_FILE}: the checkpoint's vocabulary differs from this version's "
            f"grammar ({len(config.get('vocab', []))} vs {len(vocabulary())} tokens)"
        )
    model = ToyT2I(ToyModelConfig(**config["model"]))
    state = load_file(str(wfile))
    groups: dict[str, dict[str, torch.Tensor]] = {"transformer": {}, "text_encoder": {}}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head not in groups:
            raise ValueError(f"{wfile}: unexpected tensor {k!r}")
        groups[head][rest] = v.float()
    model.transformer.load_state_dict(groups["transformer"], strict=True)
    model.text_encoder.load_state_dict(groups["text_encoder"], strict=True)
    return model.to(device=device, dtype=dtype).eval()
