"""Plain-torch references of the NVFP4 linear layer and of the GEMMs the fast paths run.

Semantics (the source of truth for every backend of :func:`solrl_kernels.gemm.nvfp4_linear`):

    x_q = quantize(x, scale_rule=act_scale_rule, granularity="row")   # one fp32 scale per token
    y   = act(dequantize(x_q) @ dequantize(w)^T + bias)

computed here in float64 (the dequantized operands are exact in float64, so the only rounding
is the final cast). The Hopper paths compute the same function as an FP8 GEMM (DESIGN §3):
for "fp8_exact" tensors  dequantize(t) == values_e4m3 * global_scale  exactly, so

    y[m, n] = act(scale_a[m] * scale_b[n] * sum_k a[m, k] * b[n, k] + bias[n])

with a = x_q's E4M3 values (M, K), scale_a its per-row global scale (M,), b = w's E4M3 values
(N, K), scale_b its per-output-channel global scale (N,) (or one scale for a "tensor" granular
weight). :func:`fp8_gemm_reference` is that formula; :func:`nvfp4_gemm_packed_reference` the
same with b given packed (e2m1 codes + E4M3 block scales, expanded here).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..nvfp4.reference import BLOCK_SIZE, dequantize, e2m1_to_float, quantize, unpack
from ..nvfp4.tensor import NVFP4Tensor, ScaleRule

Activation = Literal["none", "gelu_tanh", "silu"]
ACTIVATIONS: tuple[str, ...] = ("none", "gelu_tanh", "silu")
OUT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_out_dtype(out_dtype, what: str = "") -> None:
    """TypeError unless out_dtype is one of OUT_DTYPES (what every GEMM backend writes)."""
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{what}out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    """y (any float dtype) -> act(y): "none", "gelu_tanh" (GELU, tanh approximation), "silu"."""
    check_activation(activation)
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    if activation == "silu":
        return torch.nn.functional.silu(y)
    return y


def expand_packed_to_fp8(data: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Packed FP8-exact NVFP4 (codes, block scales) -> E4M3 values e2m1 * s_blk.

    data: uint8 (N, K/2), element 2j in the low nibble. scales: float8_e4m3fn (N, K/16),
    row-major, every scale of the form {1, 1.5} * 2^e in [2^-7, 64] (the "fp8_exact" rule), so
    each product is an E4M3 number and the result is exact. Returns float8_e4m3fn (N, K).
    """
    N, K = data.shape[0], data.shape[-1] * 2
    codes = unpack(data).reshape(N, K // BLOCK_SIZE, BLOCK_SIZE)
    vals = e2m1_to_float(codes) * scales.float().reshape(N, K // BLOCK_SIZE, 1)
    return vals.reshape(N, K).to(torch.float8_e4m3fn)


def fp8_gemm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    out_dtype: torch.dtype = torch.bfloat16,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """act(scale_a[:, None] * scale_b[None, :] * (a @ b^T) + bias) in compute_dtype, then cast.

    a: float8_e4m3fn (M, K); b: float8_e4m3fn (N, K) (both K-major); scale_a: fp32 (M,) or (1,);
    scale_b: fp32 (N,) or (1,); bias: (N,) any float dtype or None. Returns out_dtype (M, N).
    """
    acc = a.to(compute_dtype) @ b.to(compute_dtype).T
    y = acc * scale_a.to(compute_dtype).reshape(-1, 1) * scale_b.to(compute_dtype).reshape(1, -1)
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return apply_activation(y, activation).to(out_dtype)


def nvfp4_gemm_packed_reference(
    a: torch.Tensor,
    b_data: torch.Tensor,
    b_scales: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    out_dtype: torch.dtype = torch.bfloat16,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """:func:`fp8_gemm_reference` with b given packed: b_data uint8 (N, K/2) + b_scales E4M3
    (N, K/16) in the "fp8_exact" rule (expanded by :func:`expand_packed_to_fp8`)."""
    b = expand_packed_to_fp8(b_data, b_scales)
    return fp8_gemm_reference(a, b, scale_a, scale_b, bias, activation, out_dtype, compute_dtype)


def quantize_activations(x: torch.Tensor, scale_rule: ScaleRule) -> NVFP4Tensor:
    """The activation quantization every backend applies: (..., K) -> NVFP4, one global
    scale per row (token), no scale search, no finiteness check (non-finite x gives
    undefined outputs, as in any GEMM)."""
    return quantize(x, scale_rule=scale_rule, granularity="row", check_finite=False)


def nvfp4_linear_reference(
    x: torch.Tensor,
    w: NVFP4Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    out_dtype: torch.dtype = torch.bfloat16,
    act_scale_rule: ScaleRule | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """act(dequant(quant(x)) @ dequant(w)^T + bias), computed in compute_dtype.

    x: float (..., K); w: NVFP4Tensor of logical shape (N, K), any scale rule / layout /
    granularity; bias: (N,) or None; act_scale_rule: rule for quantizing x (default: w's).
    Returns out_dtype (..., N).
    """
    rule = act_scale_rule or w.scale_rule
    xq = quantize_activations(x, rule)
    xd = dequantize(xq, torch.float32).to(compute_dtype).reshape(-1, w.K)
    wd = dequantize(w, torch.float32).to(compute_dtype)
    y = xd @ wd.T
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return apply_activation(y, activation).to(out_dtype).reshape(*x.shape[:-1], w.shape[0])


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in float64 (NaN if out has a non-finite value)."""
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        return math.nan
    den = r.norm().item()
    return (o - r).norm().item() / den if den > 0 else (o - r).norm().item()
