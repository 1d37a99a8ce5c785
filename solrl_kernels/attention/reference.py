"""Plain-torch emulated quantized attention: the source of truth for the Triton kernels.

    out = attention_reference(q, k, v, precision="nvfp4")    # fp32 (B, H, Sq, D)

The function (all arithmetic fp32; tau = scale or 1/sqrt(D); log2 domain, as the kernel):

 1. Smoothing (each optional, :class:`AttentionQuantConfig`; means: :func:`token_mean`):
      K: k <- k - mean_S(k)                     exact: softmax is shift-invariant per row
      Q: q <- q - q_mean, and every score gets the per-key bias  tau * (q_mean . k_j),
         computed from the unquantized (smoothed) k in fp32
      V: v <- v - v_mean, added back after normalization (exact: P's rows sum to 1)
 2. Q and K rows (one token's D channels) -> :func:`quant.quantize_rows`: FP8 values times
    one fp32 scale per token; V^T rows (one channel over the keys, padded with zeros to a
    multiple of 16) -> the same, so the V scale is per channel and the "nvfp4" blocks are
    16 consecutive tokens. Formats (OPERAND_FORMATS): "fp8" all FP8, "nvfp4" all FP8-exact
    NVFP4, "nvfp4_pv" FP8 Q and K, NVFP4 P and V.
 3. t = (q8 @ k8^T) * (gq * tau * log2 e) * gk^T + bias * log2 e.
 4. Keys are cut into tiles of ``block_n``; per (query row, tile j) a reference max mt_j:
    "nvfp4" P: the tile's own max(t) (level 1 of its two-level scale: r's largest is 1);
    "fp8" P: the running max over tiles 0..j, as the online softmax has it (FlashAttention-3's
    FP8 recipe: no extra per-tile rescaling of the P·V product).
    r = exp2(t - mt_j), p8 = :func:`quant.quantize_p`(r) (FP8 values, r ~ p8 / P_SCALE).
 5. w = exp2(mt_j - m) with m the row max over all tiles; P = p8 * w / P_SCALE;
    l = sum(P) for "nvfp4" P (the weights of the quantized P sum to exactly 1), and
    sum(r * w), the unrounded numerators, for "fp8" P (one fp32 add per score in the kernel
    instead of converting the FP8 values back); out = (P @ v8) * gv / l + v_mean.

The kernel computes the same with an online softmax (running max, rescaled accumulator);
that changes only fp32 rounding. ``block_n`` is part of the definition (the P reference max
is per tile): the kernel uses BLOCK_N == block_n.

:func:`naive_nvfp4_attention_reference` is the baseline the design is judged against:
standard NVFP4 ("rn", one tensor scale) for Q, K and V, no smoothing, P = exp(s - rowmax)
quantized per 16 keys with one fixed global scale 1/(6*448), fp32 softmax denominator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..nvfp4.reference import F4_E2M1_MAX, F8E4M3_MAX, dequantize
from ..nvfp4.reference import quantize as nvfp4_quantize
from .quant import P_SCALE, QuantFormat, quantize_p, quantize_rows

Precision = Literal["bf16", "fp8", "nvfp4", "nvfp4_pv"]
PRECISIONS = ("bf16", "fp8", "nvfp4", "nvfp4_pv")
# Formats of the operands (Q, K, P, V); None leaves an operand unquantized (emulation only:
# the ablation in accuracy.py). The kernels compute the three quantized precisions.
OperandFormats = tuple[QuantFormat | None, QuantFormat | None, QuantFormat | None,
                       QuantFormat | None]
# "nvfp4_pv" keeps the logits in FP8: peaky attention is most sensitive to Q/K error
# (emulated cosine vs fp32 SDPA, B1 H2 S2048 D128: flat 0.980 -> 0.989, peaky 0.950 -> 0.991).
OPERAND_FORMATS: dict[str, OperandFormats] = {
    "fp8": ("fp8", "fp8", "fp8", "fp8"),
    "nvfp4": ("nvfp4", "nvfp4", "nvfp4", "nvfp4"),
    "nvfp4_pv": ("fp8", "fp8", "nvfp4", "nvfp4"),
}
HEAD_DIMS = (64, 128)
LOG2E = 1.4426950408889634
_CHUNK_ELEMS = 1 << 26  # scores per emulation chunk (fp32: 256 MB per temporary)


@dataclass(frozen=True)
class AttentionQuantConfig:
    """What the quantized attention computes; shared by the reference and the kernels.

    smooth_q: subtract the per-head mean of Q over the query tokens before quantizing and
        add the exact per-key correction tau * (q_mean . k_j) to the scores.
    smooth_k: subtract the per-head mean of K over the keys (free: softmax-invariant).
    smooth_v: subtract the per-head mean of V over the keys, add it back to the output.
    scale_search: "nvfp4" Q, K and V block scales by a 3-candidate MSE search (quant.py)
        rather than plain round-up; relative RMS error 0.097 instead of 0.111 on Gaussian rows.
    block_n: keys per P tile (64 or 128); the level-1 P scale is per (query, tile), and the
        kernel's BLOCK_N equals it.
    """

    smooth_q: bool = True
    smooth_k: bool = True
    smooth_v: bool = True
    scale_search: bool = True
    block_n: int = 128

    def __post_init__(self):
        if self.block_n not in (64, 128):
            raise ValueError(f"block_n must be 64 or 128, got {self.block_n}")
        for name in ("smooth_q", "smooth_k", "smooth_v", "scale_search"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


DEFAULT_CONFIG = AttentionQuantConfig()


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, precision: str, scale: float | None
) -> None:
    """Raises the TypeError / ValueError the public API promises, with the actual values."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, S, D), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, Sq, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(
            f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
            "(expected q (B, H, Sq, D), k and v (B, H, Sk, D))"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "bf16" and D not in HEAD_DIMS:
        raise ValueError(f"quantized attention supports head dim D in {HEAD_DIMS}, got D={D}")
    if k.shape[2] == 0:
        raise ValueError(f"attention needs at least one key, got k of shape {tuple(k.shape)}")
    if scale is None:
        return
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")


def _softmax_scale(D: int, scale: float | None) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(D)


def token_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the token axis (-2), summed in float64 and rounded once to fp32.

    The float64 sum of bf16/fp32 activations is exact in practice (its summation order then
    does not matter), so the kernel's mean is bit-identical to this one and the quantizers
    downstream see the same inputs.
    """
    return (x.double().sum(-2, keepdim=True) / x.shape[-2]).float()


def _emulate_chunk(q, k, v, formats: OperandFormats, tau: float, cfg: AttentionQuantConfig):
    """q (G, Sq, D), k/v (G, Sk, D) fp32 -> out (G, Sq, D) fp32."""
    q_fmt, k_fmt, p_fmt, v_fmt = formats

    def rows(x, fmt):  # quantized values and per-row scales; unquantized: (x, 1)
        return quantize_rows(x, fmt, cfg.scale_search) if fmt else (x, x.new_ones(x.shape[:-1] + (1,)))

    G, Sq, D = q.shape
    Sk = k.shape[1]
    if cfg.smooth_k:
        k = k - token_mean(k)
    bias = q.new_zeros(G, 1, Sk)
    if cfg.smooth_q:
        q_mean = token_mean(q)  # (G, 1, D)
        q = q - q_mean
        bias = (q_mean @ k.transpose(-1, -2)) * (tau * LOG2E)  # (G, 1, Sk)
    v_mean = token_mean(v) if cfg.smooth_v else v.new_zeros(G, 1, D)
    v = v - v_mean

    q8, gq = rows(q, q_fmt)  # (G, Sq, D), (G, Sq, 1)
    k8, gk = rows(k, k_fmt)  # (G, Sk, D), (G, Sk, 1)
    n_tiles = -(-Sk // cfg.block_n)
    Sk_pad = n_tiles * cfg.block_n  # a multiple of 16: V^T rows quantize in whole blocks
    vt = F.pad(v, (0, 0, 0, Sk_pad - Sk)).transpose(-1, -2)  # (G, D, Sk_pad)
    v8t, gv = rows(vt, v_fmt)  # (G, D, Sk_pad), (G, D, 1)

    t = (q8 @ k8.transpose(-1, -2)) * (gq * (tau * LOG2E)) * gk.transpose(-1, -2) + bias
    t = F.pad(t, (0, Sk_pad - Sk), value=-math.inf).reshape(G, Sq, n_tiles, cfg.block_n)
    mt = t.amax(-1, keepdim=True)  # finite: every tile holds at least one key
    if p_fmt == "fp8":  # relative to the running max; l from the unrounded r (module doc)
        mt = torch.cummax(mt, dim=-2).values
    r = torch.exp2(t - mt)
    p8 = quantize_p(r, p_fmt) if p_fmt else r
    w = torch.exp2(mt - mt.amax(-2, keepdim=True))
    p = (p8 * (w / (P_SCALE[p_fmt] if p_fmt else 1.0))).reshape(G, Sq, Sk_pad)
    l = (r * w if p_fmt == "fp8" else p).reshape(G, Sq, Sk_pad).sum(-1, keepdim=True)
    return (p @ v8t.transpose(-1, -2)) * gv.transpose(-1, -2) / l + v_mean


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    precision: Precision = "nvfp4",
    scale: float | None = None,
    config: AttentionQuantConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Emulated attention softmax(q k^T * scale) v with quantized operands, in fp32.

    q: (B, H, Sq, D), k and v: (B, H, Sk, D); float32/bfloat16/float16, any strides.
    precision: "bf16" (unquantized: fp32 SDPA of the inputs), "fp8", "nvfp4" or "nvfp4_pv"
        (FP8 Q and K, NVFP4 P and V; module doc).
    scale: softmax scale, default 1/sqrt(D). Returns float32 (B, H, Sq, D). Non-causal,
    no mask. Computed in chunks of heads to bound memory (~1 GB of fp32 temporaries).
    The quantized precisions are not differentiable: their output carries no autograd history
    (rounding has no useful gradient); "bf16" is torch's SDPA and is.
    """
    check_attention_inputs(q, k, v, precision, scale)
    if precision == "bf16":
        tau = _softmax_scale(q.shape[-1], scale)
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=tau)
    return emulate_operands(q, k, v, OPERAND_FORMATS[precision], scale, config)


def emulate_operands(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    formats: OperandFormats,
    scale: float | None = None,
    config: AttentionQuantConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """The emulated attention with each operand's format chosen: formats = (Q, K, P, V),
    each "fp8", "nvfp4" or None (unquantized). attention_reference's precisions are
    OPERAND_FORMATS; other combinations are for accuracy studies (no kernel computes them).
    Shapes as attention_reference (inputs are not checked here). No autograd history."""
    q, k, v = q.detach(), k.detach(), v.detach()
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    tau = _softmax_scale(D, scale)
    qf = q.reshape(B * H, Sq, D)
    kf = k.reshape(B * H, Sk, D)
    vf = v.reshape(B * H, Sk, D)
    out = torch.empty(B * H, Sq, D, dtype=torch.float32, device=q.device)
    chunk = max(1, _CHUNK_ELEMS // max(1, Sq * (Sk + config.block_n)))
    for g in range(0, B * H, chunk):
        sl = slice(g, g + chunk)
        out[sl] = _emulate_chunk(qf[sl].float(), kf[sl].float(), vf[sl].float(), formats, tau, config)
    return out.reshape(B, H, Sq, D)


def naive_nvfp4_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The naive NVFP4 emulation (module doc): a baseline for accuracy studies, fp32 out."""
    check_attention_inputs(q, k, v, "nvfp4", scale)
    D = q.shape[-1]
    tau = _softmax_scale(D, scale)

    def rt(x):  # standard NVFP4 round trip, one tensor scale, blocks of 16 along the last dim
        return dequantize(nvfp4_quantize(x.float().contiguous(), scale_rule="rn", check_finite=False))

    Sk = k.shape[2]
    pad = -Sk % 16
    qh, kh = rt(q), rt(k)
    vh = rt(F.pad(v.float(), (0, 0, 0, pad)).transpose(-1, -2)).transpose(-1, -2)[..., :Sk, :]
    s = (qh @ kh.transpose(-1, -2)) * tau
    p = torch.exp(s - s.amax(-1, keepdim=True))
    l = p.sum(-1, keepdim=True)
    gs = torch.tensor(1.0 / (F4_E2M1_MAX * F8E4M3_MAX))  # one global scale: P in [0, 1]
    ph = dequantize(nvfp4_quantize(F.pad(p, (0, pad)), scale_rule="rn", global_scale=gs, check_finite=False))
    return (ph[..., :Sk] @ vh) / l
