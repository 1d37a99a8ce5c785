"""Fake (meta) implementations of the C++ ops in solrl_kernels._C (csrc/ops.cpp).

Imported by :mod:`solrl_kernels._backends` right after ``solrl_kernels._C`` loads, so that
``torch.compile`` / FakeTensorMode / ``torch.library.opcheck`` can trace the ops without running
them. Each fake checks shapes and dtypes like the C++ op (same exception types: TypeError for a
wrong dtype, ValueError for a wrong shape or value) and returns an empty tensor of the output's
shape, dtype and device.

Ops (schemas in csrc/ops.cpp):

``torch.ops.solrl_kernels.fp8_gemm_sm90(a, b, scale_a, scale_b, bias, activation, out_dtype)``
    Hopper (sm_90a) CUTLASS FP8 GEMM with a fused epilogue::

        out[m, n] = act(scale_a[m] * scale_b[n] * sum_k a[m, k] * b[n, k] + bias[n])

    a: (M, K) float8_e4m3fn row-major; b: (N, K) float8_e4m3fn row-major (K-major, the layout of
    ``nn.Linear.weight``); K % 16 == 0, N % 8 == 0, a and b 16-byte aligned. scale_a: fp32 with
    M (per row / token) or 1 (per tensor) elements; scale_b: fp32 with N (per output channel) or
    1 elements. bias: (N,) fp32/bf16/fp16 or None. activation: "none", "gelu_tanh" (tanh
    approximation) or "silu". out_dtype: torch.bfloat16 or torch.float16. Accumulates in fp32
    with promotion every 256 elements of K (no FP8 "fast accumulation" over the whole K).

``torch.ops.solrl_kernels._fp8_gemm_sm90_tile(..., tile, swizzle=0, raster=0, promotion_interval=8)``
    The same with a forced tile configuration (0: 128x128x128 cooperative with a 1x2 cluster,
    1: 64x128x128 ping-pong, 2: 128x192x128 cooperative with a 1x2 cluster, 3: 64x192x128
    ping-pong with a 1x2 cluster, slower than 0 and 2 on the H200; -1: the heuristic),
    tile-scheduler swizzle (0: default, 1/2/4/8) and raster order (0: CUTLASS's heuristic,
    1: along M, 2: along N), and wgmma k-blocks between fp32 promotions (a multiple of 4) --
    for benchmarks and tuning (bench/gemm_schedule_sweep.py).

``torch.ops.solrl_kernels.nvfp4_gemm_sm100(a_data, a_scales_blocked, b_data, b_scales_blocked, alpha, bias, out_dtype)``
    Blackwell (sm_100a) block-scaled NVFP4 GEMM::

        out[m, n] = alpha * sum_k dq(a)[m, k] * dq(b)[n, k] + bias[n]

    a_data: (M, K/2) uint8 packed e2m1 (element 2j in the low nibble); b_data: (N, K/2);
    K % 32 == 0, N % 8 == 0. a/b_scales_blocked: float8_e4m3fn, the flat 128x4-blocked layout of
    :func:`solrl_kernels.nvfp4.to_blocked` of the (rows, K/16) block scales. alpha: fp32, one
    element (global_scale_a * global_scale_b). Compiled but never run on hardware here (no
    sm_100 GPU in this project).

``torch.ops.solrl_kernels.nvfp4_quantize_rows(x, global_scale, fp8_exact, blocked, write_packed, write_fp8, x_tail=None, activation="none", activation_start=0)``
    Hopper (sm_90a) NVFP4 quantization of bf16/fp16 rows, bit-exact with
    :mod:`solrl_kernels.nvfp4.reference` (rules "rn" / "fp8_exact", no scale search); each row
    is loaded once into registers, so a per-row global scale costs no second read::

        -> (data (R, K/2) uint8, scales uint8 (R, K/16) or the flat 128x4-blocked layout,
            gs (R,) fp32, fp8 (R, K) float8_e4m3fn)

    x: (R, K) bf16/fp16 with unit last stride, row stride a multiple of 8, 16-byte aligned;
    K % 16 == 0, K <= 32768. global_scale: fp32 decode scale(s), R (per row) or 1 (per tensor)
    elements, or None: computed per row (amax / (6 * S_MAX)) and returned as gs. Outputs not
    asked for (write_packed: data + scales; write_fp8: the E4M3 container, fp8_exact only; gs
    when a scale is given) are empty tensors. x_tail: (R, K2), x's dtype and layout rules, or
    None: the rows quantized are those of cat([x, x_tail], 1) (x's K then a multiple of 16),
    read from the two tensors without materializing the concatenation. activation "gelu_tanh":
    columns [activation_start, K) of those rows (activation_start a multiple of 16) go through
    torch's tanh-approximated GELU in fp32, with the hardware tanh (tanh.approx.f32), rounded
    back to x's dtype, before quantization; "none": as read.

``torch.ops.solrl_kernels.compiled_archs() -> list[str]``
    Kernel families in this build: a subset of ["sm90a", "sm100a"] (read it through
    :func:`solrl_kernels._backends.native_archs`, which asks once).

``torch.ops.solrl_kernels.stream_capture_id(device) -> int``
    The id of the CUDA stream capture (graph capture) in progress on the current stream of
    CUDA device `device`; 0 when that stream is not capturing.
"""

from __future__ import annotations

import torch

from ._backends import FP8_GEMM_SM90_TILES, NVFP4_QUANTIZE_ROWS_MAX_K
from .nvfp4.layouts import blocked_numel

ACTIVATIONS = ("none", "gelu_tanh", "silu")
OUT_DTYPES = (torch.bfloat16, torch.float16)


def _check_2d(t: torch.Tensor, op: str, name: str, dtype: torch.dtype, layout: str) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} {layout} must be contiguous (row-major), got strides "
                         f"{t.stride()}; call .contiguous()")


def _check_vector(t: torch.Tensor, op: str, name: str, n: int, allow_scalar: bool) -> None:
    if t.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32, got {t.dtype}")
    ok = t.numel() == n or (allow_scalar and t.numel() == 1)
    if not ok:
        what = f"{n} elements (one per row/column) or 1 (per tensor)" if allow_scalar else f"{n} elements"
        raise ValueError(f"{op}: {name} must have {what}, got shape {tuple(t.shape)}")


def _check_bias(bias: torch.Tensor | None, op: str, n: int) -> None:
    if bias is None:
        return
    if bias.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{op}: bias must be float32, bfloat16 or float16, got {bias.dtype}")
    if tuple(bias.shape) != (n,):
        raise ValueError(f"{op}: bias must have shape ({n},) (one per output column), got "
                         f"{tuple(bias.shape)}")


def _check_out_dtype(out_dtype: torch.dtype, op: str) -> None:
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"{op}: out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")


def check_fp8_gemm_sm90_args(a, b, scale_a, scale_b, bias, activation, out_dtype) -> tuple[int, int]:
    """The shape/dtype checks of csrc/ops.cpp's fp8_gemm_sm90; returns (M, N)."""
    op = "fp8_gemm_sm90"
    _check_2d(a, op, "a", torch.float8_e4m3fn, "(M, K)")
    _check_2d(b, op, "b", torch.float8_e4m3fn, "(N, K) (K-major, like nn.Linear.weight)")
    M, K = a.shape
    N = b.shape[0]
    if b.shape[1] != K:
        raise ValueError(f"{op}: a is (M, K) = {tuple(a.shape)} but b is (N, K) = "
                         f"{tuple(b.shape)}: K differs")
    if K <= 0 or K % 16:
        raise ValueError(f"{op}: K must be a positive multiple of 16, got K={K}; pad K with zeros")
    if N % 8:
        raise ValueError(f"{op}: N must be a multiple of 8 (16-byte output rows), got N={N}")
    _check_vector(scale_a, op, "scale_a", M, allow_scalar=True)
    _check_vector(scale_b, op, "scale_b", N, allow_scalar=True)
    _check_out_dtype(out_dtype, op)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be 'none', 'gelu_tanh' or 'silu', got "
                         f"'{activation}'")
    _check_bias(bias, op, N)
    return M, N


def check_nvfp4_gemm_sm100_args(a_data, a_scales_blocked, b_data, b_scales_blocked, alpha, bias,
                                out_dtype) -> tuple[int, int]:
    """The shape/dtype checks of csrc/ops.cpp's nvfp4_gemm_sm100; returns (M, N)."""
    op = "nvfp4_gemm_sm100"
    _check_2d(a_data, op, "a_data", torch.uint8, "(M, K/2) packed e2m1")
    _check_2d(b_data, op, "b_data", torch.uint8, "(N, K/2) packed e2m1 (K-major)")
    M, K = a_data.shape[0], 2 * a_data.shape[1]
    N = b_data.shape[0]
    if 2 * b_data.shape[1] != K:
        raise ValueError(f"{op}: a_data is (M, K/2) = {tuple(a_data.shape)} but b_data is "
                         f"(N, K/2) = {tuple(b_data.shape)}: K differs")
    if K <= 0 or K % 32:
        raise ValueError(f"{op}: K must be a positive multiple of 32 (16-byte packed rows), got K={K}")
    if N % 8:
        raise ValueError(f"{op}: N must be a multiple of 8 (16-byte output rows), got N={N}")
    for name, s, rows in (("a_scales_blocked", a_scales_blocked, M),
                          ("b_scales_blocked", b_scales_blocked, N)):
        if s.dtype != torch.float8_e4m3fn:
            raise TypeError(f"{op}: {name} must be float8_e4m3fn, got {s.dtype}")
        want = blocked_numel(rows, K // 16)
        if s.numel() != want:
            raise ValueError(f"{op}: {name} must hold the 128x4-blocked ({rows}, {K // 16}) "
                             f"scales = {want} elements (solrl_kernels.nvfp4.to_blocked), got "
                             f"shape {tuple(s.shape)}")
    if alpha.dtype != torch.float32:
        raise TypeError(f"{op}: alpha must be float32, got {alpha.dtype}")
    if alpha.numel() != 1:
        raise ValueError(f"{op}: alpha must hold one value (global_scale_a * global_scale_b), "
                         f"got shape {tuple(alpha.shape)}")
    _check_out_dtype(out_dtype, op)
    _check_bias(bias, op, N)
    return M, N


@torch.library.register_fake("solrl_kernels::fp8_gemm_sm90")
def _fp8_gemm_sm90_fake(a, b, scale_a, scale_b, bias, activation, out_dtype):
    M, N = check_fp8_gemm_sm90_args(a, b, scale_a, scale_b, bias, activation, out_dtype)
    return a.new_empty((M, N), dtype=out_dtype)


@torch.library.register_fake("solrl_kernels::_fp8_gemm_sm90_tile")
def _fp8_gemm_sm90_tile_fake(a, b, scale_a, scale_b, bias, activation, out_dtype, tile, swizzle=0,
                             raster=0, promotion_interval=8):
    M, N = check_fp8_gemm_sm90_args(a, b, scale_a, scale_b, bias, activation, out_dtype)
    if tile not in FP8_GEMM_SM90_TILES:
        raise ValueError(f"fp8_gemm_sm90: tile must be -1 (heuristic) or in "
                         f"[0, {len(FP8_GEMM_SM90_TILES) - 1}), got {tile}")
    return a.new_empty((M, N), dtype=out_dtype)


@torch.library.register_fake("solrl_kernels::nvfp4_gemm_sm100")
def _nvfp4_gemm_sm100_fake(a_data, a_scales_blocked, b_data, b_scales_blocked, alpha, bias,
                           out_dtype):
    M, N = check_nvfp4_gemm_sm100_args(a_data, a_scales_blocked, b_data, b_scales_blocked, alpha,
                                       bias, out_dtype)
    return a_data.new_empty((M, N), dtype=out_dtype)


def check_nvfp4_quantize_rows_args(x, global_scale, fp8_exact, blocked, write_packed,
                                   write_fp8, x_tail=None, activation="none",
                                   activation_start=0) -> tuple[int, int]:
    """The checks of csrc/ops.cpp's nvfp4_quantize_rows; returns (R, K) of cat([x, x_tail], 1)."""
    op = "nvfp4_quantize_rows"
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"{op}: x must be bfloat16 or float16, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D (R, K), got shape {tuple(x.shape)}")
    R, K = x.shape

    def check_rows(t, name):
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{op}: {name} must have unit last stride, got strides {t.stride()}")
        if t.shape[0] > 1 and t.stride(0) % 8:
            raise ValueError(f"{op}: {name}'s row stride must be a multiple of 8 elements "
                             f"(16-byte rows), got {t.stride(0)}")

    check_rows(x, "x")
    if x_tail is not None:
        if x_tail.dtype != x.dtype:
            raise TypeError(f"{op}: x_tail must have x's dtype ({x.dtype}), got {x_tail.dtype}")
        if x_tail.dim() != 2 or x_tail.shape[0] != R:
            raise ValueError(f"{op}: x_tail must be 2-D with x's {R} rows, got shape "
                             f"{tuple(x_tail.shape)}")
        if K % 16:
            raise ValueError(f"{op}: with x_tail, x's K must be a multiple of 16, got K={K}")
        check_rows(x_tail, "x_tail")
        K += x_tail.shape[1]
    if K % 16 or K > NVFP4_QUANTIZE_ROWS_MAX_K:
        raise ValueError(f"{op}: K must be a multiple of 16 up to {NVFP4_QUANTIZE_ROWS_MAX_K}, "
                         f"got K={K}")
    if activation not in ("none", "gelu_tanh"):
        raise ValueError(f"{op}: activation must be 'none' or 'gelu_tanh', got '{activation}'")
    if not (0 <= activation_start <= K and activation_start % 16 == 0):
        raise ValueError(f"{op}: activation_start must be a multiple of 16 in [0, K={K}], got "
                         f"{activation_start}")
    if not (write_packed or write_fp8):
        raise ValueError(f"{op}: nothing to write (write_packed and write_fp8 are both false)")
    if write_fp8 and not fp8_exact:
        raise ValueError(f"{op}: the E4M3 container (write_fp8) needs fp8_exact=True")
    if blocked and not write_packed:
        raise ValueError(f"{op}: blocked scales need write_packed=True")
    if global_scale is not None:
        _check_vector(global_scale, op, "global_scale", R, allow_scalar=True)
    return R, K


@torch.library.register_fake("solrl_kernels::nvfp4_quantize_rows")
def _nvfp4_quantize_rows_fake(x, global_scale, fp8_exact, blocked, write_packed, write_fp8,
                              x_tail=None, activation="none", activation_start=0):
    R, K = check_nvfp4_quantize_rows_args(x, global_scale, fp8_exact, blocked, write_packed,
                                          write_fp8, x_tail, activation, activation_start)
    u8 = torch.uint8
    data = x.new_empty((R, K // 2) if write_packed else (0,), dtype=u8)
    if not write_packed:
        scales = x.new_empty((0,), dtype=u8)
    elif blocked:
        scales = x.new_empty((blocked_numel(R, K // 16),), dtype=u8)
    else:
        scales = x.new_empty((R, K // 16), dtype=u8)
    gs = x.new_empty((0 if global_scale is not None else R,), dtype=torch.float32)
    fp8 = x.new_empty((R, K) if write_fp8 else (0,), dtype=torch.float8_e4m3fn)
    return data, scales, gs, fp8
