"""NVFP4 linear layer: y = act(dequant(quant(x)) @ dequant(w)^T + bias), on every GPU we have.

    from solrl_kernels.gemm import nvfp4_linear, prepare_weight
    w = prepare_weight(linear.weight, storage="fp8")        # or storage="packed"
    y = nvfp4_linear(x, w, linear.bias)                      # x (..., K) bf16 -> (..., N) bf16

Execution paths (DESIGN §3), chosen per call by :func:`resolve_backend`:

| backend    | where                 | what runs                                                   |
|------------|-----------------------|-------------------------------------------------------------|
| "native"   | Hopper, _C built      | CUTLASS sm90a FP8 GEMM (packed storage: the weight expanded |
|            |                       | to E4M3 by Triton first, per call)                          |
|            | Blackwell, _C built   | CUTLASS sm100a block-scaled NVFP4 GEMM (packed storage)     |
| "triton"   | sm_89+ GPU            | our Triton FP8 GEMM (fp8 storage) / packed-weight GEMM      |
| "cublas"   | sm_89+ GPU            | torch._scaled_mm FP8 row-wise (packed: weight expanded by   |
|            | Blackwell             | Triton first); on sm_100 torch's NVFP4 _scaled_mm            |
| "emulated" | anywhere              | plain torch in fp32 (reference semantics, any scale rule)   |

"auto" picks native > triton on Hopper (for packed weights too: expand + CUTLASS measured
1.11-1.23x the Triton packed GEMM), the NVFP4 kernels on Blackwell, emulated on CPU and
pre-Ada GPUs; ``SOLRL_GEMM_BACKEND`` overrides "auto". The activations are quantized per row
(one fp32 global scale per token) with the weight's scale rule. The FP8 paths need the
"fp8_exact" rule; "rn" weights on Hopper run on the exact emulated path, with a warning
(never silently). The Blackwell paths were compiled but NOT run on hardware here.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import torch

from .. import nvfp4
from .._backends import (
    cuda_fp8_capable,
    device_capability,
    native_ops_available,
    native_unavailable_reason,
    plain_eager,
    triton_available,
)
from ..nvfp4.api import activated_input, check_input_activation, check_tail_type
from ..nvfp4.tensor import NVFP4Tensor
from . import ops, triton_launch
from .activation_cache import quantize_activation, set_activation_reuse
from .reference import (
    ACTIVATIONS,
    check_activation,
    check_out_dtype,
    fp8_gemm_reference,
    nvfp4_gemm_packed_reference,
    nvfp4_linear_reference,
)
from .triton_launch import FP8GemmConfig, PackedGemmConfig
from .weight import (
    FP8Weight,
    WeightStorage,
    _quant_backend,
    as_row_major,
    prepare_weight,
    quantize_to_fp8,
)

Backend = Literal["auto", "triton", "native", "cublas", "emulated"]
BACKENDS = ("auto", "triton", "native", "cublas", "emulated")
# "auto" on Hopper takes the first available of these (bench/gemm_sweep.py compares them)
HOPPER_AUTO_ORDER: tuple[str, ...] = ("native", "triton")

__all__ = [
    "ACTIVATIONS", "BACKENDS", "FP8GemmConfig", "FP8Weight", "PackedGemmConfig",
    "WeightStorage", "fp8_gemm", "fp8_gemm_reference", "nvfp4_gemm_packed_reference",
    "nvfp4_linear", "nvfp4_linear_reference", "plan_backend", "prepare_weight",
    "quantize_to_fp8", "resolve_backend", "run_planned", "set_activation_reuse",
]


def _native_has(name: str) -> bool:
    return native_ops_available() and hasattr(torch.ops.solrl_kernels, name)


def _capability(device: torch.device) -> tuple[int, int] | None:
    return device_capability(device) if device.type == "cuda" else None


def _sm100_native_available() -> bool:
    return _native_has("nvfp4_gemm_sm100")


def _sm100_cublas_available() -> bool:
    return hasattr(torch, "float4_e2m1fn_x2")


def resolve_backend(
    w: NVFP4Tensor | FP8Weight, device: torch.device | str, backend: Backend = "auto",
    out_dtype: torch.dtype = torch.bfloat16,
) -> str:
    """The backend that :func:`nvfp4_linear` runs for weight w on device (never "auto").

    Raises ValueError when an explicitly requested backend cannot run here, saying why.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("SOLRL_GEMM_BACKEND", "auto")  # type: ignore[assignment]
        if backend not in BACKENDS:
            raise ValueError(f"SOLRL_GEMM_BACKEND must be one of {BACKENDS}, got {backend!r}")
    packed = isinstance(w, NVFP4Tensor)
    cap = _capability(device)
    blackwell = cap is not None and cap[0] == 10
    if backend == "auto":
        if cap is None or not cuda_fp8_capable(device):
            return "emulated"
        N, K = w.shape
        if blackwell and packed:
            if _sm100_native_available() and N % 8 == 0 and K % 32 == 0:  # csrc's limits
                return "native"
            if _sm100_cublas_available():
                return "cublas"
        if w.scale_rule != "fp8_exact":
            return "emulated"  # _warn_rn() tells the user, once
        for name in HOPPER_AUTO_ORDER if cap[0] == 9 else ("triton",):
            # packed weights too (expanded to E4M3 per call; bench/RESULTS.md 1b')
            if name == "native" and not (
                    _native_has("fp8_gemm_sm90") and out_dtype != torch.float32
                    and N % 8 == 0):  # csrc: 16-byte output rows
                continue
            return name
        return "triton"
    if backend == "emulated":
        return backend
    if w.scale_rule != "fp8_exact" and not (blackwell and packed
                                             and backend in ("native", "cublas")):
        raise ValueError(
            f"backend={backend!r} runs FP8 GEMMs, which need scale_rule='fp8_exact' weights "
            f"(got {w.scale_rule!r}); use backend='emulated' or re-quantize with 'fp8_exact'"
        )
    if backend == "triton" and device.type == "cpu":
        if not triton_available(device):
            raise ValueError("backend='triton' on CPU needs the Triton interpreter "
                             "(TRITON_INTERPRET=1, set before importing triton)")
        return backend
    if cap is None:
        raise ValueError(f"backend={backend!r} needs a CUDA GPU; tensors are on {device}")
    if blackwell and packed and backend in ("native", "cublas"):
        ok = _sm100_native_available() if backend == "native" else _sm100_cublas_available()
        if not ok:
            raise ValueError(f"backend={backend!r} on sm_100: " + (
                native_unavailable_reason() if backend == "native"
                else f"torch {torch.__version__} has no float4_e2m1fn_x2"))
        return backend
    if not cuda_fp8_capable(device):
        raise ValueError(f"backend={backend!r} needs FP8 tensor cores (sm_89+), this GPU is "
                         f"sm_{cap[0]}{cap[1]}; use backend='emulated'")
    if backend == "native":
        op = "fp8_gemm_sm90"  # packed weights are expanded to E4M3 for it
        if cap[0] != 9 or not _native_has(op):
            why = native_unavailable_reason() if not native_ops_available() else (
                f"torch.ops.solrl_kernels.{op} is not registered" if cap[0] == 9
                else f"the sm90a kernels do not run on sm_{cap[0]}{cap[1]}")
            raise ValueError(f"backend='native' unavailable: {why}")
        if out_dtype == torch.float32:
            raise ValueError("backend='native' (CUTLASS sm90) writes bf16/fp16, not float32")
    if backend == "triton" and not triton_available(device):
        raise ValueError("backend='triton' unavailable: triton cannot run on " + str(device))
    return backend


_RN_WARNED = False


def _warn_rn(w) -> None:
    """Warn, once per process, that "rn" weights take the emulated path on this GPU."""
    global _RN_WARNED
    if not _RN_WARNED and not torch.compiler.is_compiling():
        _RN_WARNED = True
        warnings.warn(
            f"nvfp4_linear: weight quantized with scale_rule={w.scale_rule!r} runs on the exact "
            "emulated path (fp32 matmul of dequantized operands), not the FP8 tensor-core path: "
            "'rn' block scales do not expand exactly to E4M3. Quantize with "
            "scale_rule='fp8_exact' for speed.",
            stacklevel=3,
        )


def fp8_gemm(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
    bias: torch.Tensor | None = None, activation: str = "none",
    out_dtype: torch.dtype = torch.bfloat16, backend: Backend = "auto",
) -> torch.Tensor:
    """act(scale_a[:, None] * scale_b[None, :] * (a @ b^T) + bias) on the chosen backend.

    a float8_e4m3fn (M, K), b float8_e4m3fn (N, K), scale_a fp32 (M,)|(1,), scale_b fp32
    (N,)|(1,), bias (N,)|None. Returns out_dtype (M, N).
    """
    dummy = FP8Weight(values=b, global_scale=scale_b)
    name = resolve_backend(dummy, a.device, backend, out_dtype)
    args = (a, b, scale_a.reshape(-1), scale_b.reshape(-1), bias, activation, out_dtype)
    if name == "native":
        return torch.ops.solrl_kernels.fp8_gemm_sm90(*args)
    return getattr(ops, f"fp8_gemm_{name}")(*args)


def nvfp4_linear(
    x: torch.Tensor,
    w: NVFP4Tensor | FP8Weight,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    activation: str = "none",
    backend: Backend = "auto",
    x_tail: torch.Tensor | None = None,
    x_tail_activation: str = "none",
    x_activation: str = "none",
) -> torch.Tensor:
    """act(dequant(quant(x)) @ dequant(w)^T + bias).

    x: float32/bf16/fp16 (..., K), quantized on the fly to NVFP4 with one fp32 global scale
    per row (token) and w's scale rule. w: NVFP4Tensor (N, K) ("packed" storage, any scale
    layout / granularity) or FP8Weight ("fp8" storage). bias: (N,) or None. activation: "none",
    "gelu_tanh" or "silu", fused into the GEMM epilogue. Returns out_dtype (..., N).
    x_tail: (..., K2) or None: the layer's input is then cat([x, x_tail], -1), of width K.
    Where the Hopper quantizer runs it reads both in place (no concatenated copy; FLUX's
    single-stream proj_out), elsewhere they are concatenated first; the result is the same.
    x_tail_activation: "gelu_tanh" makes the input cat([x, gelu(x_tail)], -1), gelu as
    ``F.gelu(approximate="tanh")``: the Hopper quantizer applies it as it reads x_tail (with
    the hardware tanh: a GELU'd value may differ from torch's in its last place).
    x_activation: the same for x: "gelu_tanh" makes the input gelu(x) (or cat([gelu(x), ...])),
    applied by the Hopper quantizer as it reads x, so that a feed-forward's GELU needs neither
    a pass of its own nor the previous GEMM's epilogue (:mod:`solrl_kernels.nn.swap`).
    x, x_tail, w and bias must be on one device (ValueError otherwise); out_dtype is bfloat16,
    float16 or float32 (TypeError otherwise). x is not checked for NaN/Inf: a row holding one
    gives undefined values in its output row (not necessarily NaN); other rows are unaffected.
    Not differentiable (rollouts): a backward through the result raises.
    """
    if not isinstance(w, (NVFP4Tensor, FP8Weight)):
        raise TypeError(f"w must be an NVFP4Tensor or FP8Weight, got {type(w).__name__}")
    if len(w.shape) != 2:
        raise ValueError(f"w must be 2-D (N, K), got logical shape {tuple(w.shape)}")
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.bfloat16,
                                                          torch.float16):
        raise TypeError(f"x must be a float32/bfloat16/float16 tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    N, K = w.shape
    if x_tail is not None:
        check_tail_type(x, x_tail)
        if x.dim() == 0 or x.shape[:-1] != x_tail.shape[:-1] or (
                x.shape[-1] + x_tail.shape[-1] != K):
            raise ValueError(f"x and x_tail must be (..., K1) and (..., K2) with K1 + K2 = {K}, "
                             f"got {tuple(x.shape)} and {tuple(x_tail.shape)}")
    elif x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(f"x must have shape (..., {K}), got {tuple(x.shape)}")
    check_input_activation("x_activation", x_activation)
    check_input_activation("x_tail_activation", x_tail_activation)
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    check_activation(activation)
    check_out_dtype(out_dtype)
    for name, t in (("w", w), ("bias", bias), ("x_tail", x_tail)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; nvfp4_linear "
                             "needs its operands on one device")
    plan = plan_backend(w, x.device, backend, out_dtype)
    if plan[0] == "emulated" and w.scale_rule != "fp8_exact" and x.is_cuda:
        _warn_rn(w)
    return run_planned(x, w, bias, out_dtype, activation, plan, x_tail, x_tail_activation,
                       x_activation)


def plan_backend(w: NVFP4Tensor | FP8Weight, device: torch.device | str, backend: Backend,
                 out_dtype: torch.dtype) -> tuple[str, bool]:
    """(backend name, Blackwell block-scaled path?) for :func:`run_planned`. NVFP4Linear
    computes this once per device/dtype, so its forward does no device queries (which
    torch.compile would have to trace)."""
    device = torch.device(device)
    name = resolve_backend(w, device, backend, out_dtype)
    cap = _capability(device)
    blackwell = (isinstance(w, NVFP4Tensor) and name in ("native", "cublas")
                 and cap is not None and cap[0] == 10)
    return name, blackwell


def run_planned(x: torch.Tensor, w: NVFP4Tensor | FP8Weight, bias: torch.Tensor | None,
                out_dtype: torch.dtype, activation: str, plan: tuple[str, bool],
                x_tail: torch.Tensor | None = None, x_tail_activation: str = "none",
                x_activation: str = "none") -> torch.Tensor:
    """:func:`nvfp4_linear` after its checks, on a plan from :func:`plan_backend`."""
    name, blackwell = plan
    N, K = w.shape
    lead = x.shape[:-1]
    if blackwell or name == "emulated":  # no activation quantizer to read the input
        x = activated_input(x, x_tail, x_activation, x_tail_activation)
        x_tail, x_activation = None, "none"
    x2 = x.reshape(-1, x.shape[-1])
    # how the activation quantizer reads the input: (x2_tail, x_tail_activation, x_activation)
    read = (None if x_tail is None else x_tail.reshape(-1, x_tail.shape[-1]), x_tail_activation,
            x_activation)
    if isinstance(w, FP8Weight):
        y = _linear_fp8_storage(x, x2, read, w, bias, activation, out_dtype, name)
    elif blackwell:  # reads either scale layout
        y = _linear_sm100(x2, w, bias, activation, out_dtype, name)
    else:
        y = _linear_packed(x, x2, read, as_row_major(w), bias, activation, out_dtype, name)
    return y.reshape(*lead, N)


def _weight_scale(gs: torch.Tensor) -> torch.Tensor:
    return gs.float().reshape(-1)


def _linear_fp8_storage(x, x2, read, w: FP8Weight, bias, activation, out_dtype, name):
    if name == "emulated":
        return ops.fp8_linear_emulated(x2, w.values, w.global_scale.float(), bias, activation,
                                       out_dtype)
    a, sa = quantize_activation(x, x2, *read)
    args = (a, w.values, sa.reshape(-1), _weight_scale(w.global_scale), bias, activation,
            out_dtype)
    if name == "native":
        return torch.ops.solrl_kernels.fp8_gemm_sm90(*args)
    if name == "triton" and plain_eager(*args[:5]):  # the op's code, without the dispatcher
        return triton_launch.fp8_gemm(*args)
    return getattr(ops, f"fp8_gemm_{name}")(*args)


def _linear_packed(x, x2, read, w: NVFP4Tensor, bias, activation, out_dtype, name):
    if name == "emulated":
        return ops.nvfp4_linear_emulated(x2, w.data, w.scales, w.global_scale.float(), bias,
                                         activation, w.scale_rule, out_dtype)
    a, sa = quantize_activation(x, x2, *read)
    sa, sb = sa.reshape(-1), _weight_scale(w.global_scale)
    if name in ("native", "cublas"):  # the weight expanded to E4M3 (transient), then FP8 GEMM
        b = triton_launch.expand_nvfp4(w.data, w.scales)
        if name == "native":
            return torch.ops.solrl_kernels.fp8_gemm_sm90(a, b, sa, sb, bias, activation,
                                                         out_dtype)
        return ops.fp8_gemm_cublas(a, b, sa, sb, bias, activation, out_dtype)
    args = (a, w.data, w.scales, sa, sb, bias, activation, out_dtype)
    if plain_eager(*args[:6]):  # the op's code, without the dispatcher
        return triton_launch.nvfp4_gemm_packed(*args)
    return ops.nvfp4_gemm_packed_triton(*args)


_SM100_F32_OUT_FAILED = False


def _sm100_op():
    """torch.ops.solrl_kernels.nvfp4_gemm_sm100 (csrc): (a_data (M, K/2) uint8, a_scales blocked,
    b_data (N, K/2), b_scales blocked, alpha fp32 0-dim, bias, out_dtype) -> (M, N)."""
    return torch.ops.solrl_kernels.nvfp4_gemm_sm100


def _linear_sm100(x2, w: NVFP4Tensor, bias, activation, out_dtype, name):
    """Blackwell: block-scaled NVFP4 MMA on x quantized per row with w's rule.

    NOT RUN ON HARDWARE HERE (we have Hopper only); its glue is tested on CPU with an emulated
    kernel. The per-row (token) and per-column (channel) global scales are applied after the
    block-scaled product (alpha = 1): in fp32 where the kernel writes fp32 (torch's NVFP4
    _scaled_mm), else to its bf16 output (csrc's op: one extra bf16 rounding, ~1e-3 relative).
    """
    global _SM100_F32_OUT_FAILED
    from ..nvfp4 import to_blocked

    xq = nvfp4.quantize(x2, scale_rule=w.scale_rule, granularity="row", check_finite=False,
                        backend=_quant_backend(x2))
    M, K = x2.shape
    N = w.shape[0]
    a_sf = to_blocked(xq.scales.reshape(M, K // 16))
    b_sf = w.scales if w.scale_layout == "blocked" else to_blocked(w.scales.reshape(N, K // 16))
    one = torch.ones((), device=x2.device, dtype=torch.float32)
    # csrc's nvfp4_gemm_sm100 writes bf16/fp16 only; torch's NVFP4 _scaled_mm is tried in fp32
    acc_dtype = (torch.bfloat16 if _SM100_F32_OUT_FAILED or name == "native"
                 else torch.float32)
    try:
        if name == "native":
            acc = _sm100_op()(xq.data, a_sf, w.data, b_sf, one, None, acc_dtype)
        else:
            f4 = torch.float4_e2m1fn_x2
            acc = torch._scaled_mm(xq.data.view(f4), w.data.view(f4).t(), a_sf, b_sf,
                                   out_dtype=acc_dtype)
    except (RuntimeError, ValueError):
        if acc_dtype == torch.bfloat16:
            raise
        _SM100_F32_OUT_FAILED = True
        warnings.warn("sm100 NVFP4 GEMM cannot write float32; scaling its bf16 output instead "
                      "(one extra bf16 rounding)", stacklevel=3)
        return _linear_sm100(x2, w, bias, activation, out_dtype, name)
    return ops._epilogue_torch(acc.float(), xq.global_scale, w.global_scale, bias, activation,
                               out_dtype)
