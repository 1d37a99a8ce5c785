"""Quantize an activation once for every linear layer that reads it.

Attention's q, k and v projections read the same hidden-state tensor, and so do the MLP
and q/k/v projections of a FLUX single-stream block. On the Hopper paths ``nvfp4_linear``
quantizes its input to the FP8-exact E4M3 container with one scale per row; the result
depends on the input alone, so the siblings can share it. This module keeps the last one:

    entry = (weak reference to x, x._version, a, scale_a)

A call with the same tensor object and version counter reuses (a, scale_a); another tensor,
or an in-place write to x (which bumps its version), quantizes anew. The entry goes when x
is garbage-collected (weak-reference callback), so no activation outlives its tensor. The
cache is per thread. It is off while torch.compile traces (a compiled graph quantizes each
call; compiler CSE may merge them), while a CUDA graph is captured (the graph must contain
every quantization it replays: a warm-up's entry for the static input would otherwise keep
its quantization out of the graph), and for inference-mode tensors (they have no version
counter, so an in-place write could not be seen). ``set_activation_reuse(False)`` turns it off.
"""

from __future__ import annotations

import threading
import weakref

import torch

from .weight import quantize_to_fp8

_STATE = threading.local()
_ENABLED = True


def set_activation_reuse(enabled: bool) -> None:
    """Turn the reuse of a quantized activation across sibling layers on (default) or off."""
    global _ENABLED
    _ENABLED = bool(enabled)
    _STATE.entry = None


def _forget(ref: weakref.ref) -> None:
    entry = getattr(_STATE, "entry", None)
    if entry is not None and entry[0] is ref:
        _STATE.entry = None


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def quantize_activation(x: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 = x.reshape(-1, K) -> (E4M3 values (M, K), fp32 scales (M, 1)), as
    ``quantize_to_fp8(x2, granularity="row")``, reused for the same x at the same version."""
    if not _ENABLED or torch.compiler.is_compiling() or x.is_inference() or _capturing(x):
        return quantize_to_fp8(x2, granularity="row")
    entry = getattr(_STATE, "entry", None)
    if entry is not None and entry[0]() is x and entry[1] == x._version:
        return entry[2], entry[3]
    a, sa = quantize_to_fp8(x2, granularity="row")
    _STATE.entry = (weakref.ref(x, _forget), x._version, a, sa)
    return a, sa
