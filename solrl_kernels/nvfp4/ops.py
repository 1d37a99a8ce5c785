"""torch.library ops over the Triton quantization kernels (traceable by torch.compile).

    torch.ops.solrl_kernels.nvfp4_quantize(x2d, global_scale, fp8_exact, scale_search,
        per_row, compute_gs, blocked, write_packed, write_fp8) -> (data, scales, gs, fp8)
    torch.ops.solrl_kernels.nvfp4_dequantize(data, scales, global_scale, K, per_row,
        blocked, dtype) -> out

Shapes: x2d (R, K) with K % 16 == 0; data (R, K/2) uint8; scales (R, K/16) uint8 bits of
E4M3, or the flat blocked layout; gs (R,) or (1,) fp32; fp8 (R, K) float8_e4m3fn. Outputs
that were not asked for are returned empty; gs is returned only when computed
(compute_gs), else empty (an op's output may not alias its input). `triton_op` derives the fake (meta)
implementation by running this function on fake tensors. In plain eager mode the callers
(nvfp4/api.py) run the Python functions directly (quantize_rows, dequantize_rows, absmax):
the same code without the dispatcher.
"""

from __future__ import annotations

import torch
import triton
from torch._subclasses.fake_tensor import is_fake

from .._backends import plain_eager, triton_interpreting
from . import kernels
from .layouts import blocked_numel


def launch(kernel, grid, *args, **meta) -> None:
    """kernel[grid](*args, **meta): a plain launch in plain eager mode (the functions below
    called directly, or run by their op in eager), else through wrap_triton, which
    torch.compile traces (outside a triton_op's eager call, wrap_triton would dispatch a
    higher-order op on every launch: ~1 ms of host time).

    The tensors decide too, not only the active modes: a FakeTensor (one kept after its
    mode exited, say) must never reach a real launch; wrap_triton knows not to launch it.

    Under TRITON_INTERPRET=1 kernels are plain interpreted callables: call them directly,
    and not at all on fake/meta tensors (shape propagation needs no launch).
    """
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if triton_interpreting():
        if not any(is_fake(a) or a.device.type == "meta" for a in tensors):
            kernel[grid](*args, **meta)
    elif plain_eager(*tensors):
        kernel[grid](*args, **meta)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, **meta)


_KIND = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
_WORD = {torch.bfloat16: torch.int32, torch.float16: torch.int32, torch.float32: torch.int64}


def _as_words(x: torch.Tensor) -> torch.Tensor:
    """(R, K) with unit last stride -> (R, K/2) words holding element pairs (no copy)."""
    try:
        return x.view(_WORD[x.dtype])
    except RuntimeError:  # an odd row stride or storage offset: copy once
        return x.contiguous().view(_WORD[x.dtype])


ONE_TILE_MAX_K = 16384  # rows up to this long are quantized from registers in one load


def _tiles(K: int, blocked_one_pass: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps), from the H200 sweeps (bench/quantize_sweep.py, GPU time).

    A row whose length is a power of two (or short) is one chunk, loaded once: its amax and
    its blocks come from registers. Other lengths (3072, 5120, 2432, ...) walk the row in
    1024-wide chunks; a per-row amax then reads the row twice, the second time from L2.
    Measured at K = 5120 (2026-11-30): the walk beat a power-of-two tile with idle lanes
    (0.73 vs 0.59 of copy for the E4M3 container) and also two exact chunks (4096 + 1024
    in registers: 0.68).

    blocked_one_pass (blocked scales, global scale given: one read whatever the tiling):
    one 16-element block per thread, in 2048-wide chunks where K allows. Two blocks per
    thread cost a fifth of the bandwidth with blocked scales (K = 8192, session 9: one tile
    of 8 warps 0.66x copy, 2048-wide chunks of 4 warps 0.84x, 1024-wide of 2 warps 0.82x)."""
    if blocked_one_pass and K > 1024:
        return (1, 2048, 4) if K % 2048 == 0 else (1, 1024, 2)
    if K <= 1024 or (K & (K - 1) == 0 and K <= ONE_TILE_MAX_K):
        block_k = max(triton.next_power_of_2(K), 16)
        return 1, block_k, max(1, min(8, block_k // 1024))
    return 1, 1024, 2


def quantize_rows(
    x: torch.Tensor,
    global_scale: torch.Tensor,
    fp8_exact: bool,
    scale_search: bool,
    per_row: bool,
    compute_gs: bool,
    blocked: bool,
    write_packed: bool,
    write_fp8: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    R, K = x.shape
    dev = x.device
    data = x.new_empty((R, K // 2) if write_packed else (0,), dtype=torch.uint8)
    if not write_packed:
        scales = x.new_empty((0,), dtype=torch.uint8)
    elif blocked and R % 128 == 0 and (K // 16) % 4 == 0:  # no padding: the kernel writes all
        scales = x.new_empty((blocked_numel(R, K // 16),), dtype=torch.uint8)
    elif blocked:
        scales = x.new_zeros((blocked_numel(R, K // 16),), dtype=torch.uint8)  # zero padding
    else:
        scales = x.new_empty((R, K // 16), dtype=torch.uint8)
    fp8 = x.new_empty((R, K) if write_fp8 else (0,), dtype=torch.float8_e4m3fn)
    gs_out = torch.empty((R if compute_gs else 0,), device=dev, dtype=torch.float32)
    if R == 0 or K == 0:
        return data, scales, gs_out.fill_(1.0), fp8
    block_m, block_k, warps = _tiles(K, blocked and not compute_gs)
    xw = _as_words(x)
    # 16-bit inputs store the codes as int32 words of 8 (kernels._pack_codes), fp32 as bytes
    data_w = data.view(torch.int32) if write_packed and x.dtype != torch.float32 else data
    launch(
        kernels.nvfp4_quantize_kernel, (triton.cdiv(R, block_m),),
        xw, data_w, scales, gs_out if compute_gs else global_scale, fp8.view(torch.int16),
        R, K, xw.stride(0),
        IN_KIND=_KIND[x.dtype], FP8_EXACT=fp8_exact, SEARCH=scale_search, GS_PER_ROW=per_row,
        COMPUTE_GS=compute_gs, BLOCKED=blocked, WRITE_PACKED=write_packed, WRITE_FP8=write_fp8,
        BLOCK_M=block_m, BLOCK_K=block_k, ONE_TILE=block_k >= K, INTERPRET=triton_interpreting(),
        num_warps=warps, enable_fp_fusion=False,
    )
    return data, scales, gs_out, fp8


def dequantize_rows(
    data: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    K: int,
    per_row: bool,
    blocked: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    R = data.shape[0]
    out = torch.empty((R, K), device=data.device, dtype=dtype)
    if R == 0 or K == 0:
        return out
    block_m, block_k = 8, 256
    launch(
        kernels.nvfp4_dequantize_kernel, (triton.cdiv(R, block_m),),
        data, scales, global_scale, out.view(_WORD[dtype]), R, K,
        OUT_KIND=_KIND[dtype], GS_PER_ROW=per_row, BLOCKED=blocked, BLOCK_M=block_m,
        BLOCK_K=block_k, num_warps=4, enable_fp_fusion=False,
    )
    return out


def absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over all elements as a 0-dim fp32 tensor (one read of x; 0 for empty x)."""
    out = torch.zeros((), device=x.device, dtype=torch.int32)
    n = x.numel()
    if n:
        block = 8192
        launch(kernels.absmax_kernel, (triton.cdiv(n, block),), x.reshape(-1), out, n,
               BLOCK=block, num_warps=8)
    return out.view(torch.float32)


# The ops (what torch.compile traces); in plain eager mode the callers run the functions above
# directly (_backends.plain_eager), skipping the dispatcher's host time.
nvfp4_quantize_op = torch.library.triton_op("solrl_kernels::nvfp4_quantize",
                                            mutates_args=())(quantize_rows)
nvfp4_dequantize_op = torch.library.triton_op("solrl_kernels::nvfp4_dequantize",
                                              mutates_args=())(dequantize_rows)
absmax_op = torch.library.triton_op("solrl_kernels::absmax", mutates_args=())(absmax)
