"""diffusers attention processors that run their SDPA at "bf16" / "fp8" / "nvfp4" / "nvfp4_pv".

    restore = set_attention_precision(transformer, "nvfp4")   # Flux / SD3 / SANA transformer
    ...                                                       # rollouts
    restore()                                                 # the original processors, exactly

How: every attention module's processor is wrapped by :class:`QuantizedAttnProcessor`, which
runs the original processor unchanged inside a ``TorchFunctionMode`` that replaces its calls
of ``torch.nn.functional.scaled_dot_product_attention`` by
:func:`solrl_kernels.attention.attention`. Everything else is diffusers' own code, for
whatever diffusers version is installed: projections (fused or not), q/k RMSNorms, the
joint text+image concatenation, and Flux's RoPE, which is applied before the SDPA call and
hence before quantization. Flux (``FluxAttnProcessor`` via ``dispatch_attention_fn`` with the
native backend, which calls SDPA on (B, H, S, D) views of (B, S, H, D) tensors: the kernel
reads those strides and writes the output in the same layout) and SD3
(``JointAttnProcessor2_0``) are covered this way.

An SDPA call is quantized when it is plain attention: no attn_mask, no dropout, not causal,
no GQA, 4-D, head dim 64 or 128. Any other call (and every call when precision is "bf16")
goes to SDPA unchanged; :attr:`QuantizedAttnProcessor.stats` counts both kinds.

SANA (``SanaTransformer2DModel``): what applies and what does not.
  * Self-attention is ReLU *linear* attention (``SanaLinearAttnProcessor2_0``): no softmax,
    no S x S matrix; its work is K^T V and Q (K^T V), (D x S)(S x D) products per head with
    D = 32, done in fp32 by diffusers for stability. There is no attention GEMM for this
    kernel to replace, and its cost is a few percent of the block: it is left untouched
    (not wrapped), and its Q/K/V projections are linear layers (the linear swap's job).
  * Cross-attention to the caption (``SanaAttnProcessor2_0``, SDPA) is wrapped: it is
    quantized when called without a mask; SANA's pipeline passes the caption padding mask,
    and masked calls fall back to SDPA (the kernel has no mask support). Its cost is small
    (image tokens x ~300 caption tokens), so little is lost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .ops import attention
from .reference import DEFAULT_CONFIG, HEAD_DIMS, PRECISIONS, AttentionQuantConfig, Precision

_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                "enable_gqa")
# processors without an SDPA call (SANA's linear attention): never wrapped
_NO_SDPA_PROCESSORS = ("SanaLinearAttnProcessor2_0", "PAGCFGSanaLinearAttnProcessor2_0",
                       "PAGIdentitySanaLinearAttnProcessor2_0", "SanaMultiscaleAttnProcessor2_0")


@dataclass
class SDPAStats:
    """Counts of SDPA calls seen by a processor: ``quantized`` ran our kernel (or, for
    "bf16", cuDNN-first SDPA); ``fallback`` went to SDPA unchanged (mask, dropout, ...).
    Eager calls only: under torch.compile nothing is counted (a Python int bumped while
    tracing is a guard that fails at the next call, so every call recompiled)."""

    quantized: int = 0
    fallback: int = 0


class _SDPAOverride(TorchFunctionMode):
    def __init__(self, precision: Precision, config: AttentionQuantConfig, stats: SDPAStats):
        super().__init__()
        self.precision = precision
        self.config = config
        self.stats = stats

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.unflatten:
            # torch.compile before torch 2.14 cannot trace Tensor.unflatten's Python body (its
            # super().unflatten call) under a mode: the graph broke in every attention (Flux's
            # processor calls it), and the compiled model ran 2.4x slower than eager
            func = torch.unflatten
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        a = dict(zip(_SDPA_PARAMS, args))
        a.update(kwargs)
        q, k, v = a.get("query"), a.get("key"), a.get("value")
        plain = (
            a.get("attn_mask") is None
            and not a.get("dropout_p")
            and not a.get("is_causal")
            and not a.get("enable_gqa")
            and q.dim() == 4
            and k.shape == v.shape
            and q.shape[:2] == k.shape[:2]
            and q.shape[-1] == k.shape[-1]
            and (self.precision == "bf16" or q.shape[-1] in HEAD_DIMS)
            and q.dtype == k.dtype == v.dtype
        )
        counting = not torch.compiler.is_compiling()
        if not plain:
            if counting:
                self.stats.fallback += 1
            return func(*args, **kwargs)
        if counting:
            self.stats.quantized += 1
        return attention(q, k, v, self.precision, scale=a.get("scale"), config=self.config)


class QuantizedAttnProcessor:
    """Wraps a diffusers attention processor; its SDPA calls run at ``precision``.

    processor: the original processor (kept as ``.processor``; restored by the function
        :func:`set_attention_precision` returns).
    precision: "bf16" | "fp8" | "nvfp4" | "nvfp4_pv". config: what the quantized attention
        computes.
    The wrapper reports the original ``__call__``'s signature (diffusers' FluxAttention
    filters keyword arguments by it) and forwards unknown attributes to the original. For
    that, an instance is of a subclass made per original processor class, whose ``__call__``
    carries the original's signature: a class attribute, so torch.compile traces the call
    (Dynamo cannot call an object whose ``__call__`` is an instance attribute).
    """

    def __new__(cls, processor, *args, **kwargs):
        if cls is QuantizedAttnProcessor:
            inner = processor.processor if isinstance(processor, QuantizedAttnProcessor) else processor
            cls = _wrapper_class(type(inner))
        return super().__new__(cls)

    def __reduce__(self):  # copy / pickle through the constructor: the subclass is made anew
        return QuantizedAttnProcessor, (self.processor, self.precision, self.config), {
            "stats": self.stats}

    def __init__(
        self, processor, precision: Precision, config: AttentionQuantConfig = DEFAULT_CONFIG
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if isinstance(processor, QuantizedAttnProcessor):
            processor = processor.processor
        self.processor = processor
        self.precision = precision
        self.config = config
        self.stats = SDPAStats()

    def __call__(self, attn, *args, **kwargs):
        with _SDPAOverride(self.precision, self.config, self.stats):
            return self.processor(attn, *args, **kwargs)

    def __getattr__(self, name):  # only reached for attributes not found on the wrapper
        if name == "processor":
            raise AttributeError(name)
        return getattr(self.processor, name)

    def __repr__(self) -> str:
        return f"QuantizedAttnProcessor({type(self.processor).__name__}, {self.precision!r})"


@functools.cache
def _wrapper_class(processor_cls: type) -> type:
    """The QuantizedAttnProcessor subclass for processors of ``processor_cls``: its __call__
    has the signature of ``processor_cls.__call__`` (inspect follows ``__wrapped__``)."""

    def __call__(self, attn, *args, **kwargs):
        return QuantizedAttnProcessor.__call__(self, attn, *args, **kwargs)

    __call__.__wrapped__ = processor_cls.__call__
    return type(f"Quantized{processor_cls.__name__}", (QuantizedAttnProcessor,),
                {"__call__": __call__, "__module__": __name__})


def _attention_modules(model: torch.nn.Module):
    """(name, module) of every diffusers attention module (Attention, FluxAttention, ...)."""
    for name, module in model.named_modules():
        if hasattr(module, "set_processor") and hasattr(module, "processor"):
            yield name, module


def set_attention_precision(
    transformer: torch.nn.Module,
    precision: Precision,
    config: AttentionQuantConfig = DEFAULT_CONFIG,
) -> Callable[[], None]:
    """Installs :class:`QuantizedAttnProcessor` on every attention module of a diffusers
    transformer (FluxTransformer2DModel, SD3Transformer2DModel, SanaTransformer2DModel —
    see the module doc for SANA — or anything built from diffusers attention modules,
    also under peft or torch.compile wrappers).

    Returns ``restore()``, which puts the original processor objects back exactly
    (idempotent). Processors already wrapped are re-wrapped at the new precision, and
    restore() then brings back the processors found at this call.
    Raises ValueError for an unknown precision, TypeError for a non-module, and ValueError
    when the model has no attention module at all.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"transformer must be a torch.nn.Module, got {type(transformer).__name__}")
    if not isinstance(config, AttentionQuantConfig):
        raise TypeError(f"config must be an AttentionQuantConfig, got {type(config).__name__}")
    found = list(_attention_modules(transformer))
    if not found:
        raise ValueError(
            f"{type(transformer).__name__} has no diffusers attention modules "
            "(modules with set_processor / processor)"
        )
    originals = []
    for _, module in found:
        proc = module.processor
        base = proc.processor if isinstance(proc, QuantizedAttnProcessor) else proc
        if type(base).__name__ in _NO_SDPA_PROCESSORS:
            continue
        originals.append((module, proc))
        module.set_processor(QuantizedAttnProcessor(base, precision, config))

    def restore() -> None:
        for module, proc in originals:
            module.set_processor(proc)

    return restore


def attention_stats(transformer: torch.nn.Module) -> SDPAStats:
    """Sum of the SDPA call counts of the installed :class:`QuantizedAttnProcessor` s."""
    total = SDPAStats()
    for _, module in _attention_modules(transformer):
        if isinstance(module.processor, QuantizedAttnProcessor):
            total.quantized += module.processor.stats.quantized
            total.fallback += module.processor.stats.fallback
    return total
