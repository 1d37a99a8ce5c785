"""Public NVFP4 functions: one entry point each, choosing a kernel or the reference.

``backend="auto"`` runs, in this order of preference: the CUDA row quantizer of csrc/
(Hopper, bf16/fp16 input, no scale search: torch.ops.solrl_kernels.nvfp4_quantize_rows) for
the E4M3 container (:func:`quantize_to_fp8`) and for packed outputs with per-row scales; then
the Triton kernels where they can run (CUDA tensors; CPU tensors under TRITON_INTERPRET=1);
then the plain-torch reference. All give the same bits. "cuda", "triton" and "reference"
force one path (an unavailable one raises RuntimeError saying why).

Why that split, measured on the H200 (bench/RESULTS.md §2, session 8; x copy bandwidth at
K = 8192 / 5120 / 3072): the container, CUDA 0.94 / 0.90 / 0.89 against Triton 0.91 / 0.73 /
0.78, with a third of the host time; packed fp8_exact with per-row scales, CUDA 0.83 / 0.80 /
0.82 against Triton 0.79 / 0.62 / 0.65 (Triton's power-of-two tiles walk other rows twice);
packed with a given scale, Triton 0.83 / 0.88 / 0.88 against CUDA 0.84 / 0.82 / 0.84.
"""

from __future__ import annotations

from typing import Literal

import torch

from .._backends import (
    NVFP4_QUANTIZE_ROWS_MAX_K,
    cuda_fp8_capable,
    device_capability,
    native_archs,
    native_ops_available,
    native_unavailable_reason,
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

Backend = Literal["auto", "cuda", "triton", "reference"]
BACKENDS = ("auto", "cuda", "triton", "reference")


def _check_backend(backend: Backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _cuda_unavailable_reason(x2d: torch.Tensor, scale_search: bool) -> str | None:
    """None where csrc's row quantizer takes x2d (R, K), else why it does not."""
    if x2d.device.type != "cuda":
        return f"it runs on CUDA tensors, x is on {x2d.device}"
    return _cuda_limits_reason(x2d, scale_search, x2d.device)


def _cuda_limits_reason(x2d: torch.Tensor, scale_search: bool, device: torch.device) -> str | None:
    """The build, GPU and input checks of _cuda_unavailable_reason (traced by torch.compile:
    no host-only queries of x2d)."""
    if not native_ops_available():
        return native_unavailable_reason()
    if "sm90a" not in native_archs():
        return "solrl_kernels._C was built without the Hopper (9.0a) kernels"
    cap = device_capability(device)
    if cap[0] != 9:
        return f"it is a Hopper (sm_90) kernel; this GPU is sm_{cap[0]}{cap[1]}"
    if x2d.dtype not in (torch.bfloat16, torch.float16):
        return f"it reads bfloat16/float16, x is {x2d.dtype}"
    if scale_search:
        return "it has no scale search (the Triton kernel does)"
    if x2d.shape[1] > NVFP4_QUANTIZE_ROWS_MAX_K:
        return f"rows longer than {NVFP4_QUANTIZE_ROWS_MAX_K} elements (K={x2d.shape[1]})"
    # under torch.compile neither the data pointer nor the storage offset can be read (the op
    # itself raises a ValueError for a misaligned view; fresh allocations are aligned)
    misaligned = not torch.compiler.is_compiling() and x2d.data_ptr() % 16
    if misaligned or (x2d.shape[0] > 1 and x2d.stride(0) % 8):
        return "rows are not 16-byte aligned"
    return None


def _path(backend: Backend, x2d: torch.Tensor, scale_search: bool, container: bool,
          row_scale: bool = False) -> str:
    """"cuda", "triton" or "reference" for quantizing x2d (R, K) with unit last stride;
    container: the output is the E4M3 container (else the packed format); row_scale: the
    packed format with per-row scales computed from the rows.

    "auto" takes the CUDA kernel where it was measured faster (bench/RESULTS.md §2): for the
    container and for per-row scales computed from the rows (one read of each row at any K);
    Triton for a given global scale, row-major or blocked (blocked: 0.85x copy against the
    CUDA kernel's 0.72x, sessions 8-9)."""
    _check_backend(backend)
    cuda_first = container or row_scale
    if backend == "cuda" or (backend == "auto" and cuda_first):
        why = _cuda_unavailable_reason(x2d, scale_search)
        if why is None:
            return "cuda"
        if backend == "cuda":
            raise RuntimeError(f"backend='cuda' requested but unavailable: {why}")
    return "triton" if _use_triton(backend, x2d.device) else "reference"


def _use_triton(backend: Backend, device: torch.device) -> bool:
    _check_backend(backend)
    if backend == "reference":
        return False
    why = None
    if not triton_available(device):
        why = triton_unavailable_reason()
    elif (device.type == "cuda" and not torch.compiler.is_compiling()
          and not cuda_fp8_capable(device)):  # the kernels cast to E4M3
        cap = device_capability(device)
        why = (f"GPU sm_{cap[0]}{cap[1]} has no FP8 support (the Triton quantizer needs sm_89 "
               "or newer); backend='reference' runs anywhere")
    if backend == "triton" and why:
        raise RuntimeError(f"backend='triton' requested but unavailable: {why}")
    return why is None


def _tensor_amax(x2d: torch.Tensor) -> torch.Tensor:
    x2d = x2d.contiguous()
    return (ops.absmax if plain_eager(x2d) else torch.ops.solrl_kernels.absmax)(x2d)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) as (R, K) with unit last stride (a view where possible)."""
    x2d = x.reshape(-1, x.shape[-1])
    return x2d if x2d.stride(-1) == 1 else x2d.contiguous()


def _run_kernel(x2d, path, scale_rule, scale_search, granularity, global_scale, blocked, packed,
                fp8, lead, tail2d=None, activation="none", activation_start=0):
    """Quantize x2d (R, K) with the "cuda" or "triton" kernel -> (data, scales, gs, values);
    gs shaped (*lead, 1) per row or () per tensor. The "cuda" path only: tail2d (R, K2) makes
    the rows those of cat([x2d, tail2d], 1); activation applies to their columns from
    activation_start on."""
    per_row = granularity == "row"
    compute_gs = per_row and global_scale is None
    if global_scale is not None:
        gs = global_scale.to(device=x2d.device, dtype=torch.float32).reshape(-1).contiguous()
    elif per_row:
        gs = None  # computed in the kernel
    else:
        gs = ref.global_scale_from_amax(_tensor_amax(x2d), scale_rule).reshape(1)
    fp8_exact = scale_rule == "fp8_exact"
    if path == "cuda":
        data, scales, gs_out, values = torch.ops.solrl_kernels.nvfp4_quantize_rows(
            x2d, gs, fp8_exact, blocked, packed, fp8, tail2d, activation, activation_start)
    else:
        gs_arg = x2d.new_empty((0,), dtype=torch.float32) if gs is None else gs
        quantize_rows = (ops.quantize_rows if plain_eager(x2d, gs_arg)
                         else torch.ops.solrl_kernels.nvfp4_quantize)
        data, scales, gs_out, values = quantize_rows(
            x2d, gs_arg, fp8_exact, scale_search, per_row, compute_gs, blocked, packed, fp8)
    if compute_gs:
        gs = gs_out
    gs = gs.reshape(*lead, 1) if per_row else gs.reshape(())
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
    check_finite: raise ValueError on NaN/Inf in x (and on a global_scale that is not
                  positive and finite); costs one pass; turn off on hot paths.
    global_scale: use this fp32 decode scale instead of amax/(6·S_MAX): 0-dim for "tensor",
                  one per row, (..., 1), for "row" (any device; moved to x's).
    scale_layout: "row_major" (..., K/16) or "blocked" (the 128x4 swizzle, flat).
    backend:      "auto" | "cuda" | "triton" | "reference" (see the module docstring).
    Inputs without rows (0, K) give empty outputs; K must be positive. Non-contiguous inputs
    are copied. Not differentiable: no gradient flows back to x.
    """
    ref.check_input(x, "x", check_finite)
    ref.check_options(scale_rule, scale_search, granularity, scale_layout)
    ref.check_global_scale(global_scale, x, granularity, check_finite)
    blocked = scale_layout == "blocked"
    x2d = _rows(x)
    row_scale = granularity == "row" and global_scale is None
    path = _path(backend, x2d, scale_search, container=False, row_scale=row_scale)
    if path == "reference":
        t = ref.quantize(x, scale_rule, scale_search, granularity, False, global_scale)
        if blocked:
            scales2d = t.scales.reshape(-1, x.shape[-1] // BLOCK_SIZE)
            t = NVFP4Tensor(t.data, to_blocked(scales2d), t.global_scale, t.shape,
                            scale_rule, "blocked", granularity)
        return t
    K = x.shape[-1]
    lead = x.shape[:-1]
    data, scales, gs, _ = _run_kernel(
        x2d, path, scale_rule, scale_search, granularity, global_scale, blocked, True, False, lead
    )
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


INPUT_ACTIVATIONS = ("none", "gelu_tanh")  # what the CUDA row quantizer applies as it reads


def check_tail_type(x: torch.Tensor, x_tail) -> None:
    """TypeError unless x_tail is a tensor of x's dtype (quantize_to_fp8, nvfp4_linear)."""
    if not isinstance(x_tail, torch.Tensor) or x_tail.dtype != x.dtype:
        raise TypeError(f"x_tail must be a tensor of x's dtype {getattr(x, 'dtype', None)}, "
                        f"got {getattr(x_tail, 'dtype', type(x_tail).__name__)}")


def check_input_activation(arg: str, act: str) -> None:
    """ValueError unless act (the argument named arg) is one of INPUT_ACTIVATIONS."""
    if act not in INPUT_ACTIVATIONS:
        raise ValueError(f"{arg} must be 'none' or 'gelu_tanh', got {act!r}")


def activated_input(x: torch.Tensor, x_tail: torch.Tensor | None = None,
                    activation: str = "none", tail_activation: str = "none") -> torch.Tensor:
    """cat([activation(x), tail_activation(x_tail)], -1) (x alone without x_tail) as torch ops:
    what the CUDA row quantizer reads in place, for the paths that cannot."""
    def act(t, name):
        return torch.nn.functional.gelu(t, approximate="tanh") if name == "gelu_tanh" else t

    x = act(x, activation)
    return x if x_tail is None else torch.cat([x, act(x_tail, tail_activation)], dim=-1)


def quantize_to_fp8(
    x: torch.Tensor,
    granularity: Granularity = "row",
    scale_search: bool = False,
    check_finite: bool = False,
    global_scale: torch.Tensor | None = None,
    backend: Backend = "auto",
    x_tail: torch.Tensor | None = None,
    tail_activation: str = "none",
    activation: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> FP8-exact NVFP4 expanded to E4M3, in one pass (the Hopper GEMM's input).

    Returns (values float8_e4m3fn (..., K), global_scale fp32: (..., 1) for "row", 0-dim for
    "tensor"), with values * global_scale == dequantize(quantize(x, "fp8_exact", ...)) exactly,
    i.e. the same as to_fp8_container(quantize(x, scale_rule="fp8_exact", ...)).
    x: float32/bfloat16/float16 (..., K), K % 16 == 0 (of the whole row with x_tail).
    granularity, scale_search, global_scale, backend: as :func:`quantize`.
    check_finite: off by default (the GEMM's activation path): NaN/Inf in x then give
    undefined values and scales (for their rows alone with granularity="row"); True raises
    ValueError, at the cost of one pass.

    x_tail: (..., K2) with x's leading dims, or None. Quantizes cat([x, x_tail], -1) (values
    (..., K + K2)); the CUDA row quantizer reads the two tensors in place (per-row scales
    computed from the rows, K % 16 == 0), every other path concatenates first. Same bits.
    tail_activation: "gelu_tanh" quantizes cat([x, gelu(x_tail)], -1), gelu as
    ``F.gelu(x_tail, approximate="tanh")``; the CUDA quantizer applies it as it reads, with
    the hardware tanh (a GELU'd value may differ from torch's by one unit in the last place).
    activation: the same for x ("gelu_tanh": quantizes gelu(x), or cat([gelu(x), ...]) with
    x_tail); the CUDA quantizer applies it as it reads where the GELU'd columns end the row
    (no x_tail, or tail_activation too), elsewhere torch's GELU runs first.
    """
    check_input_activation("activation", activation)
    check_input_activation("tail_activation", tail_activation)
    if x_tail is not None:
        check_tail_type(x, x_tail)
        if x_tail.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"x_tail must have x's leading dims: x {tuple(x.shape)}, x_tail "
                             f"{tuple(x_tail.shape)}")
    if activation != "none" or x_tail is not None:
        # the CUDA row quantizer reads x and x_tail in place, and applies GELU to the columns
        # [start, K) of the row as it reads them
        x2d, tail2d = _rows(x), None if x_tail is None else _rows(x_tail)
        K = x.shape[-1] + (0 if x_tail is None else x_tail.shape[-1])
        if activation == "none":
            read_activation, start = tail_activation, x.shape[-1]
        elif x_tail is None or tail_activation != "none":
            read_activation, start = activation, 0
        else:  # GELU on x but not on x_tail: not a suffix of the row
            read_activation, start = None, 0
        if (read_activation is not None and granularity == "row" and global_scale is None
                and (x_tail is None or x.shape[-1] % BLOCK_SIZE == 0)
                and backend in ("auto", "cuda") and not check_finite
                and _cuda_unavailable_reason(x2d, scale_search) is None
                and (tail2d is None or _cuda_unavailable_reason(tail2d, scale_search) is None)
                and K % BLOCK_SIZE == 0 and K <= NVFP4_QUANTIZE_ROWS_MAX_K):
            ref.check_options("fp8_exact", scale_search, granularity)
            _, _, gs, values = _run_kernel(x2d, "cuda", "fp8_exact", scale_search, granularity,
                                           None, False, False, True, x.shape[:-1], tail2d,
                                           read_activation, start)
            return values.reshape(*x.shape[:-1], K), gs
        x = activated_input(x, x_tail, activation, tail_activation)
    ref.check_input(x, "x", check_finite)
    ref.check_options("fp8_exact", scale_search, granularity)
    ref.check_global_scale(global_scale, x, granularity, check_finite)
    x2d = _rows(x)
    path = _path(backend, x2d, scale_search, container=True)
    if path == "reference":
        t = ref.quantize(x, "fp8_exact", scale_search, granularity, False, global_scale)
        return ref.to_fp8_container(t)
    _, _, gs, values = _run_kernel(
        x2d, path, "fp8_exact", scale_search, granularity, global_scale, False, False, True,
        x.shape[:-1]
    )
    return values.reshape(x.shape), gs


def dequantize(
    t: NVFP4Tensor, dtype: torch.dtype = torch.float32, backend: Backend = "auto"
) -> torch.Tensor:
    """NVFP4Tensor -> dense (..., K) in dtype: (e2m1 · s_blk) · global_scale in fp32, then cast.
    dtype: a floating-point dtype (TypeError otherwise).
    (No CUDA kernel: backend "cuda" raises; "auto" takes Triton or the reference.)"""
    ref.check_nvfp4_tensor(t)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    if backend == "cuda":
        raise RuntimeError("backend='cuda' requested but unavailable: dequantize has no CUDA "
                           "kernel (backend='auto' runs the Triton one)")
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
