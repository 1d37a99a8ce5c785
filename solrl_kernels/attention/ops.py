"""The public attention function and its torch.library op.

    out = attention(q, k, v, precision="nvfp4")          # (B, H, Sq, D), q.dtype

Paths (one function, the same math): "bf16" -> torch SDPA (cuDNN first where available);
"fp8"/"nvfp4"/"nvfp4_pv" -> torch.ops.solrl_kernels.quant_attention, which runs the Triton kernels
where they can (CUDA GPUs with FP8 tensor cores, sm_89+; CPU tensors under
TRITON_INTERPRET=1) and the plain-torch emulation (reference.py) elsewhere. The op has a
fake implementation, so torch.compile treats it as one opaque node.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .._backends import (
    cuda_fp8_capable,
    device_capability,
    triton_available,
    triton_interpreting,
    triton_unavailable_reason,
)
from .reference import (
    DEFAULT_CONFIG,
    LOG2E,
    OPERAND_FORMATS,
    AttentionQuantConfig,
    Precision,
    _softmax_scale,
    attention_reference,
    check_attention_inputs,
)

Backend = Literal["auto", "triton", "emulated"]
PAD_MULTIPLE = 128  # K/V are padded to a multiple of this many keys (any BLOCK_N divides it)
STATS_CHUNK = 512  # tokens per program of the statistics pre-pass (FLUX 1024 px: 864 programs)


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of attn_fwd_kernel (the function does not depend on them).

    block_m: queries per program (64 or 128). num_warps / num_stages: Triton's. The default
        won the H200 sweep (bench/attention_sweep.py, session 5) for fp8 and nvfp4_pv at
        D = 128 and 64: fp8 kernel at FLUX 1024 px 538 TFLOP/s vs 357 for (128, 8 warps, 2).
    fp_fusion: let the compiler contract mul+add into FMA in the attention kernel (faster;
        changes fp32 rounding only). The quantization pre-passes never fuse.
    """

    block_m: int = 64
    num_warps: int = 4
    num_stages: int = 3
    fp_fusion: bool = True

    def __post_init__(self):
        if self.block_m not in (64, 128):
            raise ValueError(f"block_m must be 64 or 128, got {self.block_m}")
        if self.num_warps not in (4, 8):
            raise ValueError(f"num_warps must be 4 or 8, got {self.num_warps}")
        if not 1 <= self.num_stages <= 4:
            raise ValueError(f"num_stages must be in 1..4, got {self.num_stages}")


DEFAULT_KERNEL_CONFIG = KernelConfig()


def kernel_path_available(device: torch.device | str) -> bool:
    """True where the Triton kernels can run on tensors of `device`."""
    dev = torch.device(device)
    if not triton_available(dev):
        return False
    if dev.type == "cpu":
        return triton_interpreting()
    return cuda_fp8_capable(dev)  # FP8 tensor cores


def kernel_unavailable_reason(device: torch.device | str) -> str:
    dev = torch.device(device)
    if not triton_available(dev):
        return triton_unavailable_reason()
    if dev.type == "cuda" and not cuda_fp8_capable(dev):
        cap = device_capability(dev)
        return f"GPU sm_{cap[0]}{cap[1]} has no FP8 tensor cores (needs sm_89 or newer)"
    return f"no Triton attention kernel for device {dev}"


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@dataclass
class QuantizedKV:
    """What the pre-passes hand to attn_fwd_kernel (kernels.py), for G = B*H heads.

    stats (G, 4, D) fp32: q_mean, k_mean, v_mean, V channel scale (see attn_stats_kernel);
    k8 (G, S_pad, D) e4m3; k_scale (G, S_pad) fp32; k_bias (G, S_pad) fp32 (-inf = padding);
    v8t (G, D, S_pad) e4m3. S_pad = Sk rounded up to a multiple of PAD_MULTIPLE; the
    attention kernel visits cdiv(Sk, BLOCK_N) key tiles (never an all-padding tile).
    """

    stats: torch.Tensor
    k8: torch.Tensor
    k_scale: torch.Tensor
    k_bias: torch.Tensor
    v8t: torch.Tensor
    S_pad: int
    Sk: int


def _kernel_formats(precision: str) -> tuple[bool, bool]:
    """The kernels' two format switches: (Q and K in NVFP4, P and V in NVFP4)."""
    q, k, p, v = OPERAND_FORMATS[precision]
    assert q == k and p == v, f"no kernel for operand formats {OPERAND_FORMATS[precision]}"
    return q == "nvfp4", p == "nvfp4"


def _device_guard(dev: torch.device):
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


def quantize_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, precision: str, tau: float,
    config: AttentionQuantConfig,
) -> QuantizedKV:
    """Launches the statistics and K/V quantization pre-passes (kernels.py; last dims must be
    contiguous)."""
    import triton

    from . import kernels

    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    G = B * H
    qk_nvfp4, pv_nvfp4 = _kernel_formats(precision)
    S_pad = triton.cdiv(Sk, PAD_MULTIPLE) * PAD_MULTIPLE
    dev = q.device
    kv = QuantizedKV(
        stats=torch.empty((G, 4, D), device=dev, dtype=torch.float32),
        k8=torch.empty((G, S_pad, D), device=dev, dtype=torch.float8_e4m3fn),
        k_scale=torch.empty((G, S_pad), device=dev, dtype=torch.float32),
        k_bias=torch.empty((G, S_pad), device=dev, dtype=torch.float32),
        v8t=torch.empty((G, D, S_pad), device=dev, dtype=torch.float8_e4m3fn),
        S_pad=S_pad,
        Sk=Sk,
    )
    block_d, block_s = 32, 64
    n_chunks = triton.cdiv(max(Sq, Sk), STATS_CHUNK)
    part = torch.empty((G, n_chunks, 5, D), device=dev, dtype=torch.float64)
    with _device_guard(dev):
        kernels.attn_stats_partial_kernel[(G, D // block_d, n_chunks)](
            q, k, v, part,
            H, Sq, Sk, STATS_CHUNK,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            SMOOTH_Q=config.smooth_q, SMOOTH_K=config.smooth_k,
            D=D, BLOCK_S=128, BLOCK_D=block_d, num_warps=4, enable_fp_fusion=False,
        )
        kernels.attn_stats_kernel[(G,)](
            part, kv.stats, Sq, Sk, n_chunks,
            PV_NVFP4=pv_nvfp4, SMOOTH_V=config.smooth_v, D=D, num_warps=4,
            enable_fp_fusion=False,
        )
        kernels.attn_quant_kv_kernel[(G, S_pad // block_s)](
            k, v, kv.stats, kv.k8, kv.k_scale, kv.k_bias, kv.v8t,
            H, Sk, S_pad, tau * LOG2E,
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            QK_NVFP4=qk_nvfp4, PV_NVFP4=pv_nvfp4, SEARCH=config.scale_search,
            SMOOTH_Q=config.smooth_q, SMOOTH_K=config.smooth_k,
            D=D, BLOCK_S=block_s, num_warps=8, enable_fp_fusion=False,
        )
    return kv


def attention_fwd(
    q: torch.Tensor, kv: QuantizedKV, out: torch.Tensor, precision: str, tau: float,
    config: AttentionQuantConfig, kernel_config: KernelConfig = DEFAULT_KERNEL_CONFIG,
    exact_dots: bool = False,
) -> torch.Tensor:
    """Launches attn_fwd_kernel: q (B, H, Sq, D) + quantized K/V -> out (written, returned).

    exact_dots: run QK^T and PV as fp32 dots of the (exact) FP8 values instead of FP8 MMAs
    (slow; for tests: separates Hopper's FP8 accumulation, which keeps fewer than fp32's 24
    mantissa bits, from the kernel's own arithmetic). Always on under the interpreter."""
    import triton

    from . import kernels

    B, H, Sq, D = q.shape
    qk_nvfp4, pv_nvfp4 = _kernel_formats(precision)
    dot_f32 = exact_dots or (triton_interpreting() and q.device.type == "cpu")
    kc = kernel_config
    with _device_guard(q.device):
        kernels.attn_fwd_kernel[(triton.cdiv(Sq, kc.block_m), B * H)](
            q, kv.k8, kv.k_scale, kv.k_bias, kv.v8t, kv.stats, out,
            H, Sq, kv.S_pad, triton.cdiv(kv.Sk, config.block_n), tau * LOG2E,
            q.stride(0), q.stride(1), q.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            QK_NVFP4=qk_nvfp4, PV_NVFP4=pv_nvfp4, SEARCH=config.scale_search,
            SMOOTH_Q=config.smooth_q, DOT_F32=dot_f32,
            D=D, BLOCK_M=kc.block_m, BLOCK_N=config.block_n,
            num_warps=kc.num_warps, num_stages=kc.num_stages, enable_fp_fusion=kc.fp_fusion,
        )
    return out


def quant_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    precision: Literal["fp8", "nvfp4", "nvfp4_pv"],
    scale: float | None = None,
    config: AttentionQuantConfig = DEFAULT_CONFIG,
    kernel_config: KernelConfig = DEFAULT_KERNEL_CONFIG,
    exact_dots: bool = False,
) -> torch.Tensor:
    """The three Triton launches (kernels.py) -> out (B, H, Sq, D) in q.dtype, q's layout.

    No input checks beyond shapes: callers go through :func:`attention`.
    """
    out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    if out.stride(-1) != 1:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tau = _softmax_scale(q.shape[-1], scale)
    kv = quantize_kv(q, k, v, precision, tau, config)
    return attention_fwd(q, kv, out, precision, tau, config, kernel_config, exact_dots)


@torch.library.custom_op("solrl_kernels::quant_attention", mutates_args=())
def quant_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    precision: str,
    scale: float,
    smooth_q: bool,
    smooth_k: bool,
    smooth_v: bool,
    scale_search: bool,
    block_n: int,
) -> torch.Tensor:
    """Quantized attention ("fp8" / "nvfp4" / "nvfp4_pv"): q (B, H, Sq, D), k/v (B, H, Sk, D)
    -> like q.

    Triton kernels where :func:`kernel_path_available`, else the fp32 emulation cast to
    q.dtype. The output has q's strides when q is dense (e.g. a (B, S, H, D) buffer viewed
    as (B, H, S, D)), else is contiguous.
    """
    cfg = AttentionQuantConfig(smooth_q, smooth_k, smooth_v, scale_search, block_n)
    if kernel_path_available(q.device):
        return quant_attention_triton(q, k, v, precision, scale, cfg)
    out = torch.empty_like(q)
    out.copy_(attention_reference(q, k, v, precision, scale, cfg))
    return out


@quant_attention.register_fake
def _(q, k, v, precision, scale, smooth_q, smooth_k, smooth_v, scale_search, block_n):
    torch._check(k.shape == v.shape)
    return torch.empty_like(q)


def _sdpa_bf16(q, k, v, scale):
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        ctx = sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6: no priorities; cuDNN is then chosen by torch's own order
        ctx = contextlib.nullcontext()
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    precision: Precision = "nvfp4",
    scale: float | None = None,
    config: AttentionQuantConfig = DEFAULT_CONFIG,
    backend: Backend = "auto",
) -> torch.Tensor:
    """softmax(q k^T * scale) v, non-causal, no mask, at the chosen precision.

    q: (B, H, Sq, D); k, v: (B, H, Sk, D); float32/bfloat16/float16, any strides (the last
    dimension is made contiguous if it is not). D must be 64 or 128 unless "bf16".
    precision: "bf16" (torch SDPA in the input dtype, cuDNN first on CUDA), "fp8", "nvfp4"
        or "nvfp4_pv" (FP8 Q/K, NVFP4 P/V); reference.py defines them; all run on FP8
        tensor cores on Hopper.
    scale: softmax scale (default 1/sqrt(D)).
    config: what the quantized attention computes (smoothing, scale search, P tile).
    backend: "auto" (Triton where available, else emulated), "triton" (error if
        unavailable) or "emulated" (the plain-torch reference).
    Returns (B, H, Sq, D) in q.dtype. Non-finite inputs give undefined outputs (with
    smoothing, for every query of the head that holds one).
    Quantized precisions are not differentiable ("auto"/"triton": a backward raises;
    "emulated": the output carries no autograd history); "bf16" is.
    """
    check_attention_inputs(q, k, v, precision, scale)
    if backend not in ("auto", "triton", "emulated"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'emulated', got {backend!r}")
    if not isinstance(config, AttentionQuantConfig):
        raise TypeError(f"config must be an AttentionQuantConfig, got {type(config).__name__}")
    if precision == "bf16":
        return _sdpa_bf16(q, k, v, scale)
    tau = _softmax_scale(q.shape[-1], scale)
    if backend == "emulated":
        return attention_reference(q, k, v, precision, tau, config).to(q.dtype)
    if backend == "triton" and not kernel_path_available(q.device):
        raise RuntimeError(
            f"backend='triton' requested but unavailable: {kernel_unavailable_reason(q.device)}"
        )
    return torch.ops.solrl_kernels.quant_attention(
        q, k, v, precision, tau, config.smooth_q, config.smooth_k, config.smooth_v,
        config.scale_search, config.block_n,
    )
