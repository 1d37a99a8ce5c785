"""torch.library ops of the NVFP4 linear layer; each has its fake (meta) implementation beside it.

Namespace ``solrl_kernels`` (shared with the C++ ops of csrc/: ``fp8_gemm_sm90``,
``nvfp4_gemm_sm100``, which this module does not define). The FP8 GEMM
ops share fp8_gemm_sm90's schema:

    fp8_gemm_{triton,cublas,emulated}(a, b, scale_a, scale_b, bias, activation, out_dtype)
        a float8_e4m3fn (M, K), b float8_e4m3fn (N, K), scale_a fp32 (M,)|(1,),
        scale_b fp32 (N,)|(1,), bias (N,)|None, activation "none"|"gelu_tanh"|"silu"
        -> out_dtype (M, N) = act(scale_a[:, None] * scale_b[None, :] * (a @ b^T) + bias)
    nvfp4_gemm_packed_triton(a, b_data, b_scales, scale_a, scale_b, bias, activation, out_dtype)
        the same with b packed: b_data uint8 (N, K/2), b_scales float8_e4m3fn (N, K/16)
        (row-major, fp8_exact rule)

and two whole-layer emulated ops that quantize the activations themselves (any scale rule):

    nvfp4_linear_emulated(x, w_data, w_scales, w_global_scale, bias, activation,
                          act_scale_rule, out_dtype)
        x (M, K) float; w packed NVFP4 (N, K/2) + (N, K/16) + global scale (N, 1) or ()
    fp8_linear_emulated(x, w_fp8, w_global_scale, bias, activation, out_dtype)
        x (M, K) float; w E4M3 values (N, K) + global scale (N, 1) or ()

Emulated ops compute in fp32 on the operands' device: the quantized operands (e2m1 x E4M3
scale products, E4M3 values) are exact in fp32 (and TF32), and the global scales are applied
to the fp32 product, so they differ from the float64 reference only by fp32 accumulation.
"""

from __future__ import annotations

import torch

from ..nvfp4.reference import BLOCK_SIZE, e2m1_to_float, unpack
from . import triton_launch
from .reference import apply_activation, check_activation, quantize_activations

Tensor = torch.Tensor


def _out_like(x: Tensor, M: int, N: int, out_dtype: torch.dtype) -> Tensor:
    return x.new_empty((M, N), dtype=out_dtype)


def _epilogue_torch(acc: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None,
                    activation: str, out_dtype: torch.dtype) -> Tensor:
    """fp32 acc (M, N) -> act(acc * scale_a[:, None] * scale_b[None, :] + bias) in out_dtype."""
    y = acc * scale_a.float().reshape(-1, 1) * scale_b.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return apply_activation(y, activation).to(out_dtype)


# ---------------------------------------------------------------------------- FP8 GEMM ops
@torch.library.custom_op("solrl_kernels::fp8_gemm_triton", mutates_args=())
def fp8_gemm_triton(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None,
                    activation: str, out_dtype: torch.dtype) -> Tensor:
    """Triton FP8 GEMM (triton_kernels.fp8_gemm_tma_kernel on Hopper)."""
    return triton_launch.fp8_gemm(a, b, scale_a, scale_b, bias, activation, out_dtype)


@fp8_gemm_triton.register_fake
def _(a, b, scale_a, scale_b, bias, activation, out_dtype):
    return _out_like(a, a.shape[0], b.shape[0], out_dtype)


@torch.library.custom_op("solrl_kernels::fp8_gemm_cublas", mutates_args=())
def fp8_gemm_cublas(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None,
                    activation: str, out_dtype: torch.dtype) -> Tensor:
    """torch._scaled_mm with row-wise scales (bf16 output), then bias + activation in torch.

    Needs a CUDA GPU with FP8 tensor cores (sm_89+). cuBLAS wants N % 16 == 0: other N are
    padded with zero weight rows (a copy per call) and the output is sliced.
    """
    M, N, _ = triton_launch.check_gemm_args(a, b.shape[0], b.shape[1], scale_a, scale_b, bias,
                                            activation, out_dtype, "fp8_gemm_cublas")
    if not a.is_cuda:
        raise ValueError(f"fp8_gemm_cublas needs CUDA tensors, got device {a.device}")
    sa = scale_a.float().reshape(-1, 1).expand(M, 1).contiguous()
    sb = scale_b.float().reshape(1, -1).expand(1, N).contiguous()
    pad = -N % 16
    if pad:
        b = torch.nn.functional.pad(b.contiguous().view(torch.uint8), (0, 0, 0, pad)).view(b.dtype)
        sb = torch.nn.functional.pad(sb, (0, pad), value=1.0)
    y = torch._scaled_mm(a.contiguous(), b.contiguous().t(), scale_a=sa, scale_b=sb,
                         out_dtype=torch.bfloat16)
    if pad:
        y = y[:, :N]
    if bias is None and activation == "none" and out_dtype == torch.bfloat16:
        return y.contiguous()
    y = y.float()
    if bias is not None:
        y = y + bias.float()
    return apply_activation(y, activation).to(out_dtype)


@fp8_gemm_cublas.register_fake
def _(a, b, scale_a, scale_b, bias, activation, out_dtype):
    return _out_like(a, a.shape[0], b.shape[0], out_dtype)


@torch.library.custom_op("solrl_kernels::fp8_gemm_emulated", mutates_args=())
def fp8_gemm_emulated(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Tensor | None,
                      activation: str, out_dtype: torch.dtype) -> Tensor:
    """Plain torch, fp32, any device."""
    triton_launch.check_gemm_args(a, b.shape[0], b.shape[1], scale_a, scale_b, bias, activation,
                                  out_dtype, "fp8_gemm_emulated")
    acc = a.float() @ b.float().T
    return _epilogue_torch(acc, scale_a, scale_b, bias, activation, out_dtype)


@fp8_gemm_emulated.register_fake
def _(a, b, scale_a, scale_b, bias, activation, out_dtype):
    return _out_like(a, a.shape[0], b.shape[0], out_dtype)


@torch.library.custom_op("solrl_kernels::nvfp4_gemm_packed_triton", mutates_args=())
def nvfp4_gemm_packed_triton(a: Tensor, b_data: Tensor, b_scales: Tensor, scale_a: Tensor,
                             scale_b: Tensor, bias: Tensor | None, activation: str,
                             out_dtype: torch.dtype) -> Tensor:
    """Triton GEMM against a packed FP8-exact NVFP4 weight (triton_launch.nvfp4_gemm_packed)."""
    return triton_launch.nvfp4_gemm_packed(a, b_data, b_scales, scale_a, scale_b, bias,
                                           activation, out_dtype)


@nvfp4_gemm_packed_triton.register_fake
def _(a, b_data, b_scales, scale_a, scale_b, bias, activation, out_dtype):
    return _out_like(a, a.shape[0], b_data.shape[0], out_dtype)


# ------------------------------------------------------------------- whole-layer emulated ops
def _check_x(x: Tensor, K: int, what: str) -> None:
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{what}: x must be float32/bfloat16/float16, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != K:
        raise ValueError(f"{what}: x must be (M, {K}), got {tuple(x.shape)}")


def _weight_values_packed(w_data: Tensor, w_scales: Tensor) -> Tensor:
    """uint8 (N, K/2) + E4M3 (N, K/16) -> fp32 (N, K) = e2m1 * s_blk (exact)."""
    N, K = w_data.shape[0], w_data.shape[1] * 2
    codes = unpack(w_data).reshape(N, K // BLOCK_SIZE, BLOCK_SIZE)
    vals = e2m1_to_float(codes) * w_scales.float().reshape(N, K // BLOCK_SIZE, 1)
    return vals.reshape(N, K)


def _act_values(x: Tensor, act_scale_rule: str) -> tuple[Tensor, Tensor]:
    """x (M, K) -> (fp32 values e2m1 * s_blk (M, K), fp32 row scales (M, 1))."""
    xq = quantize_activations(x, act_scale_rule)  # type: ignore[arg-type]
    return _weight_values_packed(xq.data, xq.scales), xq.global_scale.reshape(-1, 1)


@torch.library.custom_op("solrl_kernels::nvfp4_linear_emulated", mutates_args=())
def nvfp4_linear_emulated(x: Tensor, w_data: Tensor, w_scales: Tensor, w_global_scale: Tensor,
                          bias: Tensor | None, activation: str, act_scale_rule: str,
                          out_dtype: torch.dtype) -> Tensor:
    """act(dequant(quant(x)) @ dequant(w)^T + bias) for a packed NVFP4 weight of any rule."""
    N, K = triton_launch.check_packed_weight(w_data, w_scales, "nvfp4_linear_emulated")
    _check_x(x, K, "nvfp4_linear_emulated")
    check_activation(activation)
    if act_scale_rule not in ("rn", "fp8_exact"):
        raise ValueError(f"act_scale_rule must be 'rn' or 'fp8_exact', got {act_scale_rule!r}")
    xv, gs_x = _act_values(x, act_scale_rule)
    acc = xv @ _weight_values_packed(w_data, w_scales).T
    return _epilogue_torch(acc, gs_x, w_global_scale, bias, activation, out_dtype)


@nvfp4_linear_emulated.register_fake
def _(x, w_data, w_scales, w_global_scale, bias, activation, act_scale_rule, out_dtype):
    return _out_like(x, x.shape[0], w_data.shape[0], out_dtype)


@torch.library.custom_op("solrl_kernels::fp8_linear_emulated", mutates_args=())
def fp8_linear_emulated(x: Tensor, w_fp8: Tensor, w_global_scale: Tensor, bias: Tensor | None,
                        activation: str, out_dtype: torch.dtype) -> Tensor:
    """The "fp8" storage mode, emulated: x quantized FP8-exact per row, weight E4M3 values."""
    if w_fp8.dtype != torch.float8_e4m3fn or w_fp8.dim() != 2:
        raise TypeError(f"fp8_linear_emulated: w_fp8 must be 2-D float8_e4m3fn, got "
                        f"{w_fp8.dtype} {tuple(w_fp8.shape)}")
    _check_x(x, w_fp8.shape[1], "fp8_linear_emulated")
    check_activation(activation)
    xv, gs_x = _act_values(x, "fp8_exact")
    acc = xv @ w_fp8.float().T
    return _epilogue_torch(acc, gs_x, w_global_scale, bias, activation, out_dtype)


@fp8_linear_emulated.register_fake
def _(x, w_fp8, w_global_scale, bias, activation, out_dtype):
    return _out_like(x, x.shape[0], w_fp8.shape[0], out_dtype)
