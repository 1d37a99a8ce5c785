"""NVFP4Linear: an nn.Linear whose GEMM runs in NVFP4 (weights quantized once, activations per
call), and its 1x1-Conv2d twin (SANA's feed-forward is built of pointwise convolutions)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..gemm import (
    BACKENDS,
    Backend,
    FP8Weight,
    _warn_rn,
    nvfp4_linear,
    plan_backend,
    prepare_weight,
    resolve_backend,
    run_planned,
)
from ..gemm.reference import ACTIVATIONS
from ..gemm.weight import WEIGHT_STORAGES, WeightStorage
from ..nvfp4.api import check_input_activation
from ..nvfp4.tensor import BLOCK_SIZE, NVFP4Tensor, ScaleRule


class NVFP4Linear(nn.Module):
    """y = act(dequant(quant(x)) @ dequant(W)^T + b) with W stored in NVFP4.

    Args:
      in_features, out_features: K and N (K must be a multiple of 16).
      bias: whether the layer has a bias (kept in its original dtype).
      scale_rule: "fp8_exact" (runs on Hopper FP8 tensor cores) or "rn" (standard NVFP4;
        emulated on Hopper, native on Blackwell).
      weight_storage: "fp8" (E4M3 values (N, K), 8 bits/element, the fastest on Hopper) or
        "packed" (4.5 bits/element). "fp8" needs scale_rule="fp8_exact".
      scale_search: per-block MSE search of the fp8_exact block scales when quantizing W.
      activation: "none" | "gelu_tanh" | "silu", fused into the GEMM epilogue.
      input_activation: "none" | "gelu_tanh": the layer computes on gelu(x), applied by the
        Hopper activation quantizer as it reads x (elsewhere by torch first); how
        :func:`~solrl_kernels.nn.quantize_model` fuses a feed-forward's GELU.
      backend: see :func:`solrl_kernels.gemm.resolve_backend`.

    Buffers ("fp8"): ``weight_fp8`` float8_e4m3fn (N, K), ``weight_global_scale`` fp32 (N, 1).
    Buffers ("packed"): ``weight_data`` uint8 (N, K/2), ``weight_scales`` float8_e4m3fn
    (N, K/16), ``weight_global_scale`` fp32 (N, 1). Plus ``bias`` (N,) when bias=True.
    The output has x's dtype. No gradients flow through it (rollouts only).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        scale_rule: ScaleRule = "fp8_exact",
        weight_storage: WeightStorage = "fp8",
        scale_search: bool = False,
        activation: Literal["none", "gelu_tanh", "silu"] = "none",
        input_activation: Literal["none", "gelu_tanh"] = "none",
        backend: Backend = "auto",
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        if in_features % BLOCK_SIZE:
            raise ValueError(f"in_features={in_features} must be a multiple of {BLOCK_SIZE}")
        if weight_storage not in WEIGHT_STORAGES:
            raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got "
                             f"{weight_storage!r}")
        if scale_rule not in ("rn", "fp8_exact"):
            raise ValueError(f"scale_rule must be 'rn' or 'fp8_exact', got {scale_rule!r}")
        if weight_storage == "fp8" and scale_rule != "fp8_exact":
            raise ValueError("weight_storage='fp8' needs scale_rule='fp8_exact', got "
                             f"{scale_rule!r}; use weight_storage='packed' for 'rn'")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        check_input_activation("input_activation", input_activation)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_features, self.out_features = in_features, out_features
        self.scale_rule, self.weight_storage = scale_rule, weight_storage
        self.scale_search, self.activation, self.backend = scale_search, activation, backend
        self.input_activation = input_activation
        N, K = out_features, in_features
        if weight_storage == "fp8":
            self.register_buffer("weight_fp8", torch.zeros(N, K, device=device,
                                                           dtype=torch.float8_e4m3fn))
        else:
            self.register_buffer("weight_data", torch.zeros(N, K // 2, device=device,
                                                            dtype=torch.uint8))
            self.register_buffer("weight_scales", torch.zeros(N, K // BLOCK_SIZE, device=device,
                                                              dtype=torch.float8_e4m3fn))
        self.register_buffer("weight_global_scale", torch.ones(N, 1, device=device))
        self.register_buffer("bias", torch.zeros(N, device=device, dtype=bias_dtype)
                             if bias else None)
        # (device, out dtype) -> plan_backend(...): filled eagerly, so forward under
        # torch.compile only looks it up
        self._plans: dict[tuple[torch.device, torch.dtype], tuple[str, bool]] = {}
        self._fill_plans()

    def _fill_plans(self) -> None:
        dev = self.weight_global_scale.device
        self._plans = {(dev, dt): plan_backend(self.quantized_weight, dev, self.backend, dt)
                       for dt in (torch.bfloat16, torch.float16, torch.float32)}
        if (self.scale_rule != "fp8_exact" and dev.type == "cuda"
                and self._plans[(dev, torch.bfloat16)][0] == "emulated"):
            _warn_rn(self)  # a GPU, but "rn" weights cannot take its FP8 path

    def _apply(self, fn, recurse=True):
        """.to() / .cuda() / .half(): buffers move, but only the bias changes dtype — the
        quantized buffers (E4M3 / uint8 / fp32 scales) keep theirs, which Module.to(dtype)
        would otherwise cast (float8 counts as floating point)."""
        for name, buf in list(self._buffers.items()):
            if buf is None:
                continue
            new = fn(buf)
            if name != "bias" and new.dtype != buf.dtype:
                new = buf.to(device=new.device)
            self._buffers[name] = new
        self._fill_plans()
        return self

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scale_rule: ScaleRule = "fp8_exact",
        weight_storage: WeightStorage = "fp8",
        scale_search: bool = False,
        activation: Literal["none", "gelu_tanh", "silu"] = "none",
        backend: Backend = "auto",
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        input_activation: Literal["none", "gelu_tanh"] = "none",
    ) -> NVFP4Linear:
        """Quantized copy of ``linear`` (its weight, or ``weight`` (N, K) if given, e.g. with
        LoRA merged; ``bias`` (N,) likewise). ``linear`` itself is left untouched."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear takes an nn.Linear, got {type(linear).__name__}"
                            + (" (see NVFP4PointwiseConv2d.from_conv)"
                               if isinstance(linear, nn.Conv2d) else ""))
        return cls._quantized(
            linear.weight if weight is None else weight, linear.bias if bias is None else bias,
            linear.in_features, linear.out_features, scale_rule=scale_rule,
            weight_storage=weight_storage, scale_search=scale_search, activation=activation,
            input_activation=input_activation, backend=backend)

    @classmethod
    def _quantized(cls, w: torch.Tensor, b: torch.Tensor | None, in_features: int,
                   out_features: int, **options):
        """A new module of this class holding w quantized (out_features, in_features; a 1x1
        conv's (C_out, C_in, 1, 1) too: set_weight flattens and checks it) and b."""
        mod = cls(in_features, out_features, bias=b is not None, device=w.device,
                  bias_dtype=b.dtype if b is not None else torch.bfloat16, **options)
        mod.set_weight(w, b)
        return mod

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """(Re-)quantize from a dense weight (N, K) (float32/bfloat16/float16); copy bias
        (N,) if given."""
        N, K = self.out_features, self.in_features
        weight = weight.detach().reshape(weight.shape[0], -1)
        if tuple(weight.shape) != (N, K):
            raise ValueError(f"weight must be ({N}, {K}), got {tuple(weight.shape)}")
        q = prepare_weight(weight, self.weight_storage, self.scale_rule, self.scale_search, "row")
        if isinstance(q, FP8Weight):
            self.weight_fp8 = q.values
        else:
            self.weight_data, self.weight_scales = q.data, q.scales
        self.weight_global_scale = q.global_scale.reshape(N, 1).float()
        if bias is not None:
            if self.bias is None:
                raise ValueError("this NVFP4Linear was built without a bias")
            if tuple(bias.shape) != (N,):
                raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
            self.bias = bias.detach().clone()

    @property
    def quantized_weight(self) -> NVFP4Tensor | FP8Weight:
        """The weight as the GEMM consumes it (views of the buffers)."""
        if self.weight_storage == "fp8":
            return FP8Weight(values=self.weight_fp8, global_scale=self.weight_global_scale)
        return NVFP4Tensor(
            data=self.weight_data, scales=self.weight_scales,
            global_scale=self.weight_global_scale,
            shape=torch.Size((self.out_features, self.in_features)),
            scale_rule=self.scale_rule, granularity="row",
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """dequant(W) (N, K) — what the layer multiplies by."""
        q = self.quantized_weight
        if isinstance(q, FP8Weight):
            return (q.values.float() * q.global_scale).to(dtype)
        from ..nvfp4 import dequantize

        return dequantize(q, dtype)

    def weight_nbytes(self) -> int:
        return self.quantized_weight.nbytes()

    def resolved_backend(self, device: torch.device | str | None = None) -> str:
        dev = device if device is not None else self.weight_global_scale.device
        return resolve_backend(self.quantized_weight, dev, self.backend)

    def forward(self, x: torch.Tensor, x_tail: torch.Tensor | None = None,
                x_tail_activation: str = "none") -> torch.Tensor:
        """x (..., in_features); or x (..., K1) and x_tail (..., K2) with K1 + K2 = in_features:
        the layer applied to cat([x, x_tail_activation(x_tail)], -1), read in place where the
        Hopper quantizer runs (:func:`~solrl_kernels.gemm.nvfp4_linear`)."""
        width = x.shape[-1] + (0 if x_tail is None else x_tail.shape[-1]) if x.dim() else 0
        if width != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}), got {tuple(x.shape)}"
                             + ("" if x_tail is None else f" + {tuple(x_tail.shape)}"))
        check_input_activation("x_tail_activation", x_tail_activation)
        plan = self._plans.get((x.device, x.dtype))
        if plan is None or x_tail is not None and x_tail.dtype != x.dtype:
            # another device or dtype than planned: the checked entry point
            return nvfp4_linear(x, self.quantized_weight, self.bias, out_dtype=x.dtype,
                                activation=self.activation, backend=self.backend, x_tail=x_tail,
                                x_tail_activation=x_tail_activation,
                                x_activation=self.input_activation)
        return run_planned(x, self.quantized_weight, self.bias, x.dtype, self.activation, plan,
                           x_tail, x_tail_activation, self.input_activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scale_rule={self.scale_rule}, "
                f"weight_storage={self.weight_storage}, activation={self.activation}, "
                + (f"input_activation={self.input_activation}, "
                   if self.input_activation != "none" else "")
                + f"backend={self.backend}")


def is_pointwise_conv(m: nn.Module) -> bool:
    """A Conv2d that is a GEMM over channels: 1x1 kernel, stride 1, no padding, no groups."""
    return (
        isinstance(m, nn.Conv2d)
        and tuple(m.kernel_size) == (1, 1)
        and tuple(m.stride) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and (m.padding == "valid" or tuple(m.padding) == (0, 0))
        and m.padding_mode == "zeros"
    )


class NVFP4PointwiseConv2d(NVFP4Linear):
    """A 1x1 Conv2d (C_in -> C_out) run as an NVFP4 GEMM over the channel dimension.

    Input (B, C_in, H, W) -> output (B, C_out, H, W) (a channels-last permuted view).
    """

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        scale_rule: ScaleRule = "fp8_exact",
        weight_storage: WeightStorage = "fp8",
        scale_search: bool = False,
        activation: Literal["none", "gelu_tanh", "silu"] = "none",
        backend: Backend = "auto",
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> NVFP4PointwiseConv2d:
        if not is_pointwise_conv(conv):
            raise ValueError(f"not a pointwise (1x1, stride 1, groups 1) Conv2d: {conv}")
        return cls._quantized(
            conv.weight if weight is None else weight, conv.bias if bias is None else bias,
            conv.in_channels, conv.out_channels, scale_rule=scale_rule,
            weight_storage=weight_storage, scale_search=scale_search, activation=activation,
            backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) input, got shape {tuple(x.shape)}")
        y = super().forward(x.permute(0, 2, 3, 1))  # (B, H, W, C_out)
        return y.permute(0, 3, 1, 2)
