"""Public NVFP4 functions: one entry point each, choosing Triton or the reference.

``backend="auto"`` runs the Triton kernels where they can run (CUDA tensors; CPU tensors
under TRITON_INTERPRET=1) and the plain-torch reference elsewhere; both give the same bits.
"""

from __future__ import annotations

from typing import Literal

import torch

from .._backends import (
    cuda_fp8_capable,
    plain_eager,
    triton_available,
    triton_unavailable_reason,
)
from . import reference as ref
from .layouts import to_blocked
from .tensor import BLOCK_SIZE, Granularity, NVFP4Tensor, ScaleLayout, ScaleRule

try:  # the Triton kernels' functions; registers torch.ops.solrl_kernels.nvfp4_{quantize,...}
    from . import ops
except ImportError:  # no triton: triton_available() is False and the reference runs
    pass

Backend = Literal["auto", "triton", "reference"]


def _use_triton(backend: Backend, device: torch.device) -> bool:
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "reference":
        return False
    why = None
    if not triton_available(device):
        why = triton_unavailable_reason()
    elif (device.type == "cuda" and not torch.compiler.is_compiling()
          and not cuda_fp8_capable(device)):  # the kernels cast to E4M3
        cap = torch.cuda.get_device_capability(device)
        why = (f"GPU sm_{cap[0]}{cap[1]} has no FP8 support (the Triton quantizer needs sm_89 "
               "or newer); backend='reference' runs anywhere")
    if backend == "triton" and why:
        raise RuntimeError(f"backend='triton' requested but unavailable: {why}")
    return why is None


def _tensor_amax(x2d: torch.Tensor) -> torch.Tensor:
    x2d = x2d.contiguous()
    return (ops.absmax if plain_eager(x2d) else torch.ops.solrl_kernels.absmax)(x2d)


def _run_kernel(x, scale_rule, scale_search, granularity, global_scale, blocked, packed, fp8):
    shape = x.shape
    K = shape[-1]
    x2d = x.reshape(-1, K)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    per_row = granularity == "row"
    compute_gs = per_row and global_scale is None
    if global_scale is not None:
        gs = global_scale.to(device=x.device, dtype=torch.float32).reshape(-1).contiguous()
    elif per_row:
        gs = x2d.new_empty((0,), dtype=torch.float32)  # computed in the kernel
    else:
        gs = ref.global_scale_from_amax(_tensor_amax(x2d), scale_rule).reshape(1)
    quantize_rows = (ops.quantize_rows if plain_eager(x2d, gs)
                     else torch.ops.solrl_kernels.nvfp4_quantize)
    data, scales, gs_out, values = quantize_rows(
        x2d, gs, scale_rule == "fp8_exact", scale_search, per_row, compute_gs, blocked, packed, fp8
    )
    if compute_gs:
        gs = gs_out
    gs = gs.reshape(*shape[:-1], 1) if per_row else gs.reshape(())
    return data, scales, gs, values


def quantize(
    x: torch.Tensor,
    scale_rule: ScaleRule = "rn",
    scale_search: bool = False,
    granularity: Granularity = "tensor",
    check_finite: bool = True,
    global_scale: torch.Tensor | None = None,
    scale_layout: ScaleLayout = "row_major",
    backend: Backend = "auto",
) -> NVFP4Tensor:
    """Quantize x (..., K) (float32/bfloat16/float16, K % 16 == 0) to NVFP4.

    scale_rule:   "rn" — standard NVFP4 (TransformerEngine/torchao/cuBLAS recipe);
                  "fp8_exact" — block scales in {1,1.5}·2^e (DESIGN §3), expandable to FP8.
    scale_search: fp8_exact only: per-block minimum-squared-error choice among 3 scales.
    granularity:  "tensor" — one fp32 global scale (0-dim); "row" — one per row, (..., 1).
    check_finite: raise ValueError on NaN/Inf (costs one pass; turn off on hot paths).
    global_scale: use this decode scale instead of amax/(6·S_MAX).
    scale_layout: "row_major" (..., K/16) or "blocked" (the 128x4 swizzle, flat).
    Empty inputs give empty outputs; non-contiguous inputs are copied.
    """
    ref.check_input(x, "x", check_finite)
    ref.check_options(scale_rule, scale_search, granularity, scale_layout)
    blocked = scale_layout == "blocked"
    if not _use_triton(backend, x.device):
        t = ref.quantize(x, scale_rule, scale_search, granularity, False, global_scale)
        if blocked:
            scales2d = t.scales.reshape(-1, x.shape[-1] // BLOCK_SIZE)
            t = NVFP4Tensor(t.data, to_blocked(scales2d), t.global_scale, t.shape,
                            scale_rule, "blocked", granularity)
        return t
    data, scales, gs, _ = _run_kernel(
        x, scale_rule, scale_search, granularity, global_scale, blocked, True, False
    )
    K = x.shape[-1]
    lead = x.shape[:-1]
    return NVFP4Tensor(
        data=data.reshape(*lead, K // 2),
        scales=(scales if blocked else scales.reshape(*lead, K // BLOCK_SIZE)).view(
            torch.float8_e4m3fn
        ),
        global_scale=gs,
        shape=x.shape,
        scale_rule=scale_rule,
        scale_layout=scale_layout,
        granularity=granularity,
    )


def quantize_to_fp8(
    x: torch.Tensor,
    granularity: Granularity = "row",
    scale_search: bool = False,
    check_finite: bool = False,
    global_scale: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> FP8-exact NVFP4 expanded to E4M3, in one pass (the Hopper GEMM's input).

    Returns (values float8_e4m3fn (..., K), global_scale fp32: (..., 1) for "row", 0-dim for
    "tensor"), with values * global_scale == dequantize(quantize(x, "fp8_exact", ...)) exactly,
    i.e. the same as to_fp8_container(quantize(x, scale_rule="fp8_exact", ...)).
    """
    ref.check_input(x, "x", check_finite)
    ref.check_options("fp8_exact", scale_search, granularity)
    if not _use_triton(backend, x.device):
        t = ref.quantize(x, "fp8_exact", scale_search, granularity, False, global_scale)
        return ref.to_fp8_container(t)
    _, _, gs, values = _run_kernel(
        x, "fp8_exact", scale_search, granularity, global_scale, False, False, True
    )
    return values.reshape(x.shape), gs


def dequantize(
    t: NVFP4Tensor, dtype: torch.dtype = torch.float32, backend: Backend = "auto"
) -> torch.Tensor:
    """NVFP4Tensor -> dense (..., K) in dtype: (e2m1 · s_blk) · global_scale in fp32, then cast."""
    if not _use_triton(backend, t.device):
        return ref.dequantize(t, dtype)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return dequantize(t, torch.float32, backend).to(dtype)
    K = t.K
    args = (t.data.reshape(-1, K // 2), t.scales.view(torch.uint8).reshape(-1),
            t.global_scale.float().reshape(-1).contiguous())
    dequantize_rows = (ops.dequantize_rows if plain_eager(*args)
                       else torch.ops.solrl_kernels.nvfp4_dequantize)
    out = dequantize_rows(*args, K, t.granularity == "row", t.scale_layout == "blocked", dtype)
    return out.reshape(t.shape)
