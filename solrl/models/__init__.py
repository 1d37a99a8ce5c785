"""Model adapters: one interface over diffusers transformers (toy, SD3.5, FLUX.1, SANA)."""

from .base import Conditioning, DiffusionModel, index_cond, repeat_cond

__all__ = ["Conditioning", "DiffusionModel", "index_cond", "repeat_cond"]
