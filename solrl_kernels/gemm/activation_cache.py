"""Quantize an activation once for every linear layer that reads it.

Attention's q, k and v projections read the same hidden-state tensor, and so do the MLP
and q/k/v projections of a FLUX single-stream block. On the Hopper paths ``nvfp4_linear``
quantizes its input to the FP8-exact E4M3 container with one scale per row; the result
depends on the input alone, so the siblings can share it. This module keeps the last one:

    entry = (weak reference to x, x._version, capture id, a, scale_a)

A call with the same tensor object and version counter reuses (a, scale_a); another tensor,
or an in-place write to x (which bumps its version), quantizes anew. The entry goes when x
is garbage-collected (weak-reference callback), so no activation outlives its tensor. The
cache is per thread. It is off while torch.compile traces (a compiled graph quantizes each
call; compiler CSE may merge them) and for inference-mode tensors (they have no version
counter, so an in-place write could not be seen). ``set_activation_reuse(False)`` turns it off.

CUDA graphs: an entry also records the id of the stream capture it was made in (0: none),
and is reused only under the same id. Inside one capture the siblings share the quantization
the graph itself contains (its buffers live in the graph's pool and are rewritten by every
replay); an eager warm-up's entry never leaks into a capture (the graph must contain every
quantization it replays), nor a capture's into later eager calls or another graph. The id
comes from ``torch.ops.solrl_kernels.stream_capture_id`` (solrl_kernels._C); without _C
there is no reuse while capturing.
"""

from __future__ import annotations

import threading
import weakref

import torch

from .._backends import native_ops_available
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


def _capture_id(x: torch.Tensor) -> int | None:
    """0 outside stream capture; the capture's id inside one; None if capturing and the id
    cannot be read (no solrl_kernels._C): then nothing may be reused."""
    if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        return 0
    if not native_ops_available():
        return None
    return int(torch.ops.solrl_kernels.stream_capture_id(x.device.index))


def quantize_activation(x: torch.Tensor, x2: torch.Tensor, x2_tail: torch.Tensor | None = None,
                        tail_activation: str = "none", activation: str = "none"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 = x.reshape(-1, K) -> (E4M3 values (M, K), fp32 scales (M, 1)), as
    ``quantize_to_fp8(x2, granularity="row")``, reused for the same x at the same version
    (and in the same CUDA-graph capture, or outside any). x2_tail (M, K2) and the activations:
    the input is cat([activation(x2), tail_activation(x2_tail)], 1) (never reused: the cache
    knows plain x alone)."""
    if x2_tail is not None or activation != "none":
        return quantize_to_fp8(x2, granularity="row", x_tail=x2_tail,
                               tail_activation=tail_activation, activation=activation)
    if (not _ENABLED or torch.compiler.is_compiling() or x.is_inference()
            or (capture := _capture_id(x)) is None):
        return quantize_to_fp8(x2, granularity="row")
    entry = getattr(_STATE, "entry", None)
    if (entry is not None and entry[0]() is x and entry[1] == x._version
            and entry[2] == capture):
        return entry[3], entry[4]
    a, sa = quantize_to_fp8(x2, granularity="row")
    _STATE.entry = (weakref.ref(x, _forget), x._version, capture, a, sa)
    return a, sa
