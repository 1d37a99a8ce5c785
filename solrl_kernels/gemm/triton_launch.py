"""Launchers of the Triton GEMM kernels: input checks, tile configs, grids.

These are plain functions (the torch.library ops in :mod:`.ops` wrap them); the GEMM sweep
(bench/gemm_sweep.py) calls them directly with explicit configs to compare variants.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .._backends import triton_interpreting
from ..nvfp4.tensor import BLOCK_SIZE
from . import triton_kernels as tk
from .reference import ACTIVATIONS, check_activation, check_out_dtype

FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class FP8GemmConfig:
    """Tile config of the FP8 GEMM.

    kernel: "tma" (persistent, TMA descriptors; Hopper+) or "ptr" (pointer loads, any GPU).
    block_m/n/k: tile sizes (powers of two, >= 16; block_k >= 32 for FP8 wgmma).
    group_m: row tiles swept together (L2 reuse of b). num_warps/num_stages: Triton's.
    promote_k: promote wgmma partial sums into fp32 every promote_k K-elements (0 = never;
      must divide block_k). flatten: let Triton pipeline across the persistent tile loop.
    """

    kernel: Literal["tma", "ptr"] = "tma"
    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3
    promote_k: int = 0
    flatten: bool = True

    def __post_init__(self):
        if self.kernel not in ("tma", "ptr"):
            raise ValueError(f"kernel must be 'tma' or 'ptr', got {self.kernel!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v}")
        if self.promote_k and (self.promote_k > self.block_k or self.block_k % self.promote_k):
            raise ValueError(
                f"promote_k={self.promote_k} must divide block_k={self.block_k} (or be 0)"
            )


@dataclass(frozen=True)
class PackedGemmConfig:
    """Config of the packed-NVFP4 GEMM (weights at 4.5 bits).

    variant: "expand" — a pre-pass expands the weight to an E4M3 scratch (N, K) and the FP8
      GEMM (``fp8``) runs on it; "fused" — the weight is expanded in registers inside the GEMM
      (nvfp4_gemm_fused_kernel: weight = left wgmma operand, out^T = W X^T).
    block_m/n/k, group, num_warps, num_stages, promote_k: the fused kernel's tiles (block_n
      weight rows x block_m tokens; group = weight tiles swept together).
    expand_block_n/k: tiles of the expansion pre-pass.
    """

    variant: Literal["expand", "fused"] = "expand"
    fp8: FP8GemmConfig | None = None
    block_m: int = 128
    block_n: int = 128
    block_k: int = 128
    group: int = 8
    num_warps: int = 8
    num_stages: int = 3
    promote_k: int = 0
    expand_block_n: int = 32
    expand_block_k: int = 256

    def __post_init__(self):
        if self.variant not in ("expand", "fused"):
            raise ValueError(f"variant must be 'expand' or 'fused', got {self.variant!r}")
        for name in ("block_m", "block_n", "block_k", "expand_block_n", "expand_block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v}")
        if self.promote_k and (self.promote_k > self.block_k or self.block_k % self.promote_k):
            raise ValueError(
                f"promote_k={self.promote_k} must divide block_k={self.block_k} (or be 0)"
            )


# Default accumulation promotion on Hopper: every 128 elements of K (one tl.dot of BLOCK_K =
# 128). Hopper's FP8 wgmma keeps ~14 bits of its running sum (DeepSeek-V3 report, sec. 3.3.2:
# ~2% max relative error at K = 4096 without promotion); at K = 15360 that is ~1e-2, ten
# times the 1e-3 budget, while promotion every 128 elements leaves ~1e-4. cuBLAS
# (torch._scaled_mm, use_fast_accum=False) promotes too. bench/gemm_sweep.py measures both.
DEFAULT_PROMOTE_K = 128


# the CompiledKernel of the last launch of each kernel (for SASS / PTX inspection by the sweep)
LAST_COMPILED: dict[str, object] = {}


@functools.lru_cache(maxsize=16)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _interp_fp8_config() -> FP8GemmConfig:
    return FP8GemmConfig(kernel="tma", block_m=32, block_n=32, block_k=64, group_m=2,
                         num_warps=4, num_stages=1, promote_k=0, flatten=False)


def default_fp8_config(M: int, N: int, K: int, device: torch.device) -> FP8GemmConfig:
    """The tile config the op uses for an (M, N, K) problem (chosen by bench/gemm_sweep.py)."""
    if device.type != "cuda":
        return _interp_fp8_config()
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (9, 0):
        return FP8GemmConfig(kernel="ptr", block_m=128, block_n=128, block_k=64, group_m=8,
                             num_warps=4, num_stages=3)
    # With promotion every tl.dot keeps a second (partial) accumulator in registers: a warpgroup
    # tile of 64 x 128 (64 + 64 fp32 registers per thread) is the largest that does not spill
    # (64 x 256 would need 256). Hence 128 x 128 tiles with 2 warpgroups.
    if M <= 64:
        return FP8GemmConfig(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=4,
                             promote_k=DEFAULT_PROMOTE_K)
    return FP8GemmConfig(block_m=128, block_n=128, block_k=128, group_m=8, num_warps=8,
                         num_stages=4, promote_k=DEFAULT_PROMOTE_K)


def default_packed_config(M: int, N: int, K: int, device: torch.device) -> PackedGemmConfig:
    if device.type != "cuda":
        return PackedGemmConfig(variant="expand", fp8=_interp_fp8_config(), block_m=32,
                                block_n=32, block_k=64, group=2, num_warps=4, num_stages=1,
                                expand_block_n=16, expand_block_k=64)
    return PackedGemmConfig(variant="expand", fp8=default_fp8_config(M, N, K, device))


def _check_scales(scale_a, scale_b, M, N):
    for name, s, n in (("scale_a", scale_a, M), ("scale_b", scale_b, N)):
        if s.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {s.dtype}")
        if s.numel() not in (1, n) or s.dim() > 2:
            raise ValueError(f"{name} must have 1 or {n} elements, got shape {tuple(s.shape)}")


def check_gemm_args(a, b_rows, K_b, scale_a, scale_b, bias, activation, out_dtype, what):
    """Shared checks of the FP8 / packed GEMM ops. Returns (M, N, K)."""
    if a.dtype != FP8:
        raise TypeError(f"{what}: a must be float8_e4m3fn, got {a.dtype}")
    if a.dim() != 2:
        raise ValueError(f"{what}: a must be 2-D (M, K), got shape {tuple(a.shape)}")
    M, K = a.shape
    if K != K_b:
        raise ValueError(f"{what}: a has K={K} but the weight has K={K_b}")
    if K % BLOCK_SIZE:
        raise ValueError(f"{what}: K={K} must be a multiple of {BLOCK_SIZE}")
    _check_scales(scale_a, scale_b, M, b_rows)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != b_rows):
        raise ValueError(f"{what}: bias must have shape ({b_rows},), got {tuple(bias.shape)}")
    check_activation(activation)
    check_out_dtype(out_dtype, f"{what}: ")
    return M, b_rows, K


def _common_meta(scale_a, scale_b, bias, activation):
    return dict(
        SA_PER_ROW=scale_a.numel() > 1,
        SB_PER_COL=scale_b.numel() > 1,
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS.index(activation),
        UPCAST=triton_interpreting(),
    )


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _tma_ok(*ts: torch.Tensor) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in ts)


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    out_dtype: torch.dtype = torch.bfloat16,
    config: FP8GemmConfig | None = None,
) -> torch.Tensor:
    """Triton FP8 GEMM: act(scale_a[:, None] * scale_b[None, :] * (a @ b^T) + bias).

    a: float8_e4m3fn (M, K); b: float8_e4m3fn (N, K); scale_a fp32 (M,) or (1,); scale_b fp32
    (N,) or (1,); bias (N,) float or None; activation "none" | "gelu_tanh" | "silu".
    Returns out_dtype (M, N), row-major.
    """
    if b.dtype != FP8 or b.dim() != 2:
        raise TypeError(f"fp8_gemm: b must be 2-D float8_e4m3fn (N, K), got {b.dtype} {tuple(b.shape)}")
    M, N, K = check_gemm_args(a, b.shape[0], b.shape[1], scale_a, scale_b, bias, activation,
                              out_dtype, "fp8_gemm")
    a, b = _contig(a), _contig(b)
    scale_a, scale_b = _contig(scale_a.reshape(-1)), _contig(scale_b.reshape(-1))
    out = torch.empty((M, N), device=a.device, dtype=out_dtype)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(_empty_k_result(M, N, bias, activation, a.device))
    cfg = config or default_fp8_config(M, N, K, a.device)
    meta = _common_meta(scale_a, scale_b, bias, activation)
    bias_arg = bias if bias is not None else scale_b  # dummy pointer, never read
    if cfg.kernel == "tma" and _tma_ok(a, b):
        from triton.tools.tensor_descriptor import TensorDescriptor

        a_desc = TensorDescriptor.from_tensor(a, [cfg.block_m, cfg.block_k])
        b_desc = TensorDescriptor.from_tensor(b, [cfg.block_n, cfg.block_k])
        num_tiles = -(-M // cfg.block_m) * -(-N // cfg.block_n)
        num_sms = _num_sms(a.device.index or 0) if a.is_cuda else 4
        grid = (min(num_sms, num_tiles),)
        LAST_COMPILED["fp8_gemm_tma_kernel"] = tk.fp8_gemm_tma_kernel[grid](
            a_desc, b_desc, scale_a, scale_b, bias_arg, out, M, N, K, out.stride(0),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            NUM_SMS=grid[0], PROMOTE_K=cfg.promote_k, FLATTEN=cfg.flatten,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
        )
    else:
        grid = (-(-M // cfg.block_m) * -(-N // cfg.block_n),)
        LAST_COMPILED["fp8_gemm_ptr_kernel"] = tk.fp8_gemm_ptr_kernel[grid](
            a, b, scale_a, scale_b, bias_arg, out, M, N, K, a.stride(0), b.stride(0),
            out.stride(0),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            PROMOTE_K=cfg.promote_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
        )
    return out


def _empty_k_result(M, N, bias, activation, device):
    from .reference import apply_activation

    y = torch.zeros((M, N), device=device, dtype=torch.float32)
    if bias is not None:
        y = y + bias.float()
    return apply_activation(y, activation)


def check_packed_weight(b_data: torch.Tensor, b_scales: torch.Tensor, what: str) -> tuple[int, int]:
    """Packed weight checks; returns (N, K)."""
    if b_data.dtype != torch.uint8 or b_data.dim() != 2:
        raise TypeError(f"{what}: b_data must be 2-D uint8 (N, K/2), got {b_data.dtype} "
                        f"{tuple(b_data.shape)}")
    N, K = b_data.shape[0], b_data.shape[1] * 2
    if b_scales.dtype != FP8 or tuple(b_scales.shape) != (N, K // BLOCK_SIZE):
        raise ValueError(f"{what}: b_scales must be float8_e4m3fn ({N}, {K // BLOCK_SIZE}) "
                         f"(row-major block scales), got {b_scales.dtype} {tuple(b_scales.shape)}")
    return N, K


def expand_nvfp4(b_data: torch.Tensor, b_scales: torch.Tensor, block_n: int = 32,
                 block_k: int = 256) -> torch.Tensor:
    """Packed FP8-exact NVFP4 (uint8 (N, K/2), E4M3 (N, K/16)) -> E4M3 values (N, K), by Triton.

    Exact for the fp8_exact rule (the reference is reference.expand_packed_to_fp8).
    """
    N, K = check_packed_weight(b_data, b_scales, "expand_nvfp4")
    out = torch.empty((N, K), device=b_data.device, dtype=FP8)
    if N == 0 or K == 0:
        return out
    b_data, b_scales = _contig(b_data), _contig(b_scales)
    grid = (-(-N // block_n), -(-K // block_k))
    LAST_COMPILED["expand_nvfp4_kernel"] = tk.expand_nvfp4_kernel[grid](
        b_data, b_scales, out, N, K, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out


def nvfp4_gemm_packed(
    a: torch.Tensor,
    b_data: torch.Tensor,
    b_scales: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    out_dtype: torch.dtype = torch.bfloat16,
    config: PackedGemmConfig | None = None,
) -> torch.Tensor:
    """FP8 GEMM against a packed FP8-exact NVFP4 weight (4.5 bits per element at rest).

    a: float8_e4m3fn (M, K); b_data uint8 (N, K/2) (element 2j in the low nibble); b_scales
    float8_e4m3fn (N, K/16) row-major, fp8_exact rule; scale_a fp32 (M,)/(1,); scale_b fp32
    (N,)/(1,) (the weight's global scale); bias (N,) or None. Returns out_dtype (M, N).
    """
    N, K = check_packed_weight(b_data, b_scales, "nvfp4_gemm_packed")
    M, N, K = check_gemm_args(a, N, K, scale_a, scale_b, bias, activation, out_dtype,
                              "nvfp4_gemm_packed")
    cfg = config or default_packed_config(M, N, K, a.device)
    if cfg.variant == "expand" or M == 0 or N == 0 or K == 0:
        b = expand_nvfp4(b_data, b_scales, cfg.expand_block_n, cfg.expand_block_k)
        return fp8_gemm(a, b, scale_a, scale_b, bias, activation, out_dtype, cfg.fp8)
    from triton.tools.tensor_descriptor import TensorDescriptor

    a = _contig(a)
    if not _tma_ok(a):
        a = a.clone()
    b_data, b_scales = _contig(b_data), _contig(b_scales)
    scale_a, scale_b = _contig(scale_a.reshape(-1)), _contig(scale_b.reshape(-1))
    out = torch.empty((M, N), device=a.device, dtype=out_dtype)
    meta = _common_meta(scale_a, scale_b, bias, activation)
    a_desc = TensorDescriptor.from_tensor(a, [cfg.block_m, cfg.block_k])
    grid = (-(-M // cfg.block_m) * -(-N // cfg.block_n),)
    LAST_COMPILED["nvfp4_gemm_fused_kernel"] = tk.nvfp4_gemm_fused_kernel[grid](
        a_desc, b_data, b_scales, scale_a, scale_b, bias if bias is not None else scale_b, out,
        M, N, K, out.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_N=cfg.group,
        PROMOTE_K=cfg.promote_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
    )
    return out


def with_promotion(cfg: FP8GemmConfig, promote_k: int) -> FP8GemmConfig:
    return replace(cfg, promote_k=promote_k)
