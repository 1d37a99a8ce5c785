"""FLUX single-stream blocks without the concatenated copy of proj_out's input.

diffusers' ``FluxSingleTransformerBlock`` computes, per block,

    mlp = act_mlp(proj_mlp(norm));  attn = attn(norm);  out = proj_out(cat([attn, mlp], -1))

The concatenation copies a (tokens, 15360) activation, the largest element-wise kernel of a
compiled FLUX.1 forward (bench/RESULTS.md §7d), which proj_out's NVFP4 quantizer then reads
again. Where proj_out is an NVFP4Linear layer, :func:`fuse_single_blocks` gives
each such block a forward that

* calls ``proj_out(attn, x_tail=mlp, x_tail_activation="gelu_tanh")``: the Hopper quantizer
  reads both halves in place and applies act_mlp (GELU, tanh approximation) to the MLP half as
  it reads it (elsewhere GELU and concatenation run as torch ops, as in diffusers).

Compiled FLUX.1 widths, batch 4, H200: 37.1-37.5 ms per forward against 38.4-38.7 ms with the
concatenation (bench/RESULTS.md §7h). A first version put GELU in proj_mlp's GEMM epilogue
instead; that epilogue cost as much as the concatenation saved (§7g).

Everything else is diffusers' forward line for line. It is copied from one diffusers release,
so a block whose class forward has different source (another release) is left alone.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from .linear import NVFP4Linear

# sha256 (first 16 hex digits) of FluxSingleTransformerBlock.forward's source that
# _forward_cat_free reproduces: diffusers 0.42.1.
KNOWN_FORWARD_SOURCES = frozenset({"57350a6dab842b40"})


def _single_block_class() -> type | None:
    try:
        from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
    except ImportError:
        return None
    return FluxSingleTransformerBlock


@cache
def _forward_is_known(cls: type) -> bool:
    src = inspect.getsource(cls.forward)
    return hashlib.sha256(src.encode()).hexdigest()[:16] in KNOWN_FORWARD_SOURCES


def _forward_cat_free(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                      joint_attention_kwargs=None):
    """FluxSingleTransformerBlock.forward (diffusers 0.42.1) with proj_out reading
    [attn_output, act_mlp(mlp_hidden_states)] without concatenating them or running act_mlp."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_hidden_states = self.proj_mlp(norm_hidden_states)  # act_mlp: in proj_out's quantizer
    joint_attention_kwargs = joint_attention_kwargs or {}
    attn_output = self.attn(
        hidden_states=norm_hidden_states,
        image_rotary_emb=image_rotary_emb,
        **joint_attention_kwargs,
    )

    gate = gate.unsqueeze(1)
    hidden_states = gate * self.proj_out(attn_output, x_tail=mlp_hidden_states,
                                         x_tail_activation="gelu_tanh")
    hidden_states = residual + hidden_states
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)

    encoder_hidden_states, hidden_states = hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]
    return encoder_hidden_states, hidden_states


def _fusable(block: nn.Module) -> bool:
    act = getattr(block, "act_mlp", None)
    return (isinstance(getattr(block, "proj_out", None), NVFP4Linear)
            and type(act) is nn.GELU and act.approximate == "tanh"
            and "forward" not in vars(block))


def fuse_single_blocks(model: nn.Module) -> tuple[list[str], Callable[[], None]]:
    """Give every FLUX single-stream block of ``model`` whose proj_out is an NVFP4Linear the
    concatenation-free forward. Returns (names of the blocks, undo)."""
    cls = _single_block_class()
    if cls is None:
        return [], lambda: None
    blocks = [(name, m) for name, m in model.named_modules()
              if type(m) is cls and _forward_is_known(cls) and _fusable(m)]
    for _, m in blocks:
        m.forward = types.MethodType(_forward_cat_free, m)

    def undo() -> None:
        for _, m in blocks:
            del m.forward

    return [name for name, _ in blocks], undo
