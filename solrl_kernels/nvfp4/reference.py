"""Plain-torch reference of NVFP4 quantization: the source of truth for every kernel.

Standard NVFP4 ("rn", the TransformerEngine / torchao / cuBLAS recipe):
    global_scale = amax / (6 * 448)                       (fp32 decode scale)
    s_blk        = e4m3_rn(clamp(amax_blk / 6 / global_scale, 2^-9, 448))
    code         = e2m1_rn(clamp(x * (1 / (s_blk * global_scale)), -6, 6))
FP8-exact NVFP4 ("fp8_exact", DESIGN §3): the same layout, but
    global_scale = amax / (6 * 64)
    s_blk        = clamp(round_up_to_{1,1.5}*2^e(amax_blk / 6 / global_scale), 2^-7, 64)
so every e2m1 * s_blk is exactly representable in E4M3 (shift 2^0: the product itself),
and the tensor expands losslessly to FP8 values times one fp32 scale. With
``scale_search=True`` each block tries the rounded-up scale, then the next smaller and the
next larger {1, 1.5}*2^e value (within [2^-7, 64]), and keeps the first one with the least
squared error. Measured relative RMS error on N(0,1) data (4096x1024): rn 0.0951,
fp8_exact 0.1148 (round-up), 0.0984 (search); Student-t(3) data: rn 0.0870,
fp8_exact 0.1272 (round-up), 0.1040 (search). tests/test_nvfp4.py pins these levels.

All arithmetic is fp32 with correctly rounded operations, in the order written above,
which the kernels reproduce bit for bit on any device. Elements are scaled by the fp32
reciprocal of the block's total scale, as TransformerEngine does (torchao divides; the two
differ only where x / total lands within one ulp of an e2m1 rounding boundary).
Divisions by constants use true division (torch's CUDA kernels would otherwise multiply by
a rounded reciprocal), and the global scale is computed in float64 and rounded once.
"""

from __future__ import annotations

import torch

from .tensor import BLOCK_SIZE, Granularity, NVFP4Tensor, ScaleRule

F4_E2M1_MAX = 6.0
F8E4M3_MAX = 448.0
E4M3_MIN_SUBNORMAL = 2.0**-9
FP8_EXACT_SCALE_MAX = 64.0  # largest {1,1.5}*2^e with 6*s <= 448 exactly representable
FP8_EXACT_SCALE_MIN = 2.0**-7  # smallest s for which all e2m1*s are exact E4M3 values
GLOBAL_SCALE_MIN = 2.0**-116  # keeps s_blk * global_scale (>= 2^-9 * gs) a normal fp32 number

# e2m1 magnitude per 3-bit index; code bit 3 is the sign
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# round-to-nearest-even decision points between consecutive magnitudes: a magnitude
# exactly on a point goes to the even index (0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2.0,
# 2.5->2.0, 3.5->4.0, 5.0->4.0); ">" where the lower neighbour is even, ">=" where odd
E2M1_ROUND_UP_GT = (0.25, 1.25, 2.5, 5.0)
E2M1_ROUND_UP_GE = (0.75, 1.75, 3.5)


def rule_scale_max(rule: ScaleRule) -> float:
    return F8E4M3_MAX if rule == "rn" else FP8_EXACT_SCALE_MAX


def check_input(x: torch.Tensor, name: str = "x", check_finite: bool = True) -> None:
    """Raises the errors the public API promises (TypeError / ValueError)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (..., K), got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"{name}: the last dimension K must be positive, got shape "
                         f"{tuple(x.shape)}")
    if x.shape[-1] % BLOCK_SIZE != 0:
        raise ValueError(
            f"{name}: the last dimension K={x.shape[-1]} must be a multiple of {BLOCK_SIZE} "
            f"(NVFP4 block size); pad K, e.g. torch.nn.functional.pad({name}, (0, "
            f"{-x.shape[-1] % BLOCK_SIZE}))"
        )
    if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} Inf values; NVFP4 cannot represent them "
            "(pass check_finite=False to skip this check; non-finite inputs then give "
            "undefined codes)"
        )


def check_global_scale(global_scale: torch.Tensor | None, x: torch.Tensor,
                       granularity: Granularity, check_finite: bool = True) -> None:
    """Raises TypeError / ValueError unless global_scale is None or a tensor with one element
    ("tensor") or one per row of x ("row"); with check_finite, also unless it is positive and
    finite (a host sync, like check_input's)."""
    if global_scale is None:
        return
    if not isinstance(global_scale, torch.Tensor):
        raise TypeError(f"global_scale must be a torch.Tensor or None, got "
                        f"{type(global_scale).__name__}")
    rows = x.shape[:-1].numel()
    want = rows if granularity == "row" else 1
    if global_scale.numel() != want:
        shape = f"(..., 1) with {rows} rows" if granularity == "row" else "0-dim"
        raise ValueError(f"global_scale for granularity={granularity!r} must be {shape}, got "
                         f"shape {tuple(global_scale.shape)}")
    if check_finite and want and not bool(
            (torch.isfinite(global_scale) & (global_scale > 0)).all()):
        raise ValueError("global_scale must be positive and finite")


def check_options(scale_rule, scale_search, granularity, scale_layout="row_major") -> None:
    if not isinstance(scale_search, bool):
        raise TypeError(f"scale_search must be True or False, got {scale_search!r}")
    if scale_rule not in ("rn", "fp8_exact"):
        raise ValueError(f"scale_rule must be 'rn' or 'fp8_exact', got {scale_rule!r}")
    if scale_search and scale_rule != "fp8_exact":
        raise ValueError("scale_search=True is only defined for scale_rule='fp8_exact'")
    if granularity not in ("tensor", "row"):
        raise ValueError(f"granularity must be 'tensor' or 'row', got {granularity!r}")
    if scale_layout not in ("row_major", "blocked"):
        raise ValueError(f"scale_layout must be 'row_major' or 'blocked', got {scale_layout!r}")


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (any shape, values 0..15) -> float32 values."""
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    mag = lut[(codes & 0x7).long()]
    return torch.where((codes & 0x8) != 0, -mag, mag)


def float_to_e2m1(y: torch.Tensor) -> torch.Tensor:
    """float32 y -> uint8 e2m1 codes, round-to-nearest-even, saturating at +-6.

    The sign bit is the sign bit of y (so -0.0 and tiny negatives give code 8, "-0").
    """
    a = y.abs()
    idx = torch.zeros_like(a, dtype=torch.uint8)
    for t in E2M1_ROUND_UP_GT:
        idx += (a > t).to(torch.uint8)
    for t in E2M1_ROUND_UP_GE:
        idx += (a >= t).to(torch.uint8)
    return idx | (torch.signbit(y).to(torch.uint8) << 3)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., K) with K even -> uint8 (..., K/2); element 2j in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack needs an even last dimension, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(data: torch.Tensor) -> torch.Tensor:
    """uint8 (..., K/2) -> uint8 codes (..., K); inverse of :func:`pack`."""
    return torch.stack((data & 0xF, data >> 4), dim=-1).flatten(-2)


def round_up_one_bit(s: torch.Tensor) -> torch.Tensor:
    """Smallest value in {1, 1.5}·2^e that is >= s, for finite fp32 s >= 0 (0 stays 0).

    Works on the fp32 bits: mantissa 0 stays; mantissa <= .5 becomes .5; else the next
    power of two. Subnormal fp32 inputs round up to a normal value (never reached here).
    """
    bits = s.float().contiguous().view(torch.int32)
    mant = bits & 0x7FFFFF
    expo = bits & 0x7F800000
    half = 0x400000
    out = torch.where(mant == 0, bits, torch.where(mant <= half, expo | half, expo + 0x800000))
    return torch.where(s > 0, out.view(torch.float32), torch.zeros_like(s, dtype=torch.float32))


def round_down_one_bit_step(s: torch.Tensor) -> torch.Tensor:
    """The next smaller value of the {1, 1.5}·2^e grid, for s on that grid and s > 0."""
    bits = s.float().contiguous().view(torch.int32)
    mant = bits & 0x7FFFFF
    expo = bits & 0x7F800000
    # 1.5*2^e -> 1.0*2^e ; 1.0*2^e -> 1.5*2^(e-1)
    return torch.where(mant != 0, expo, (expo - 0x800000) | 0x400000).view(torch.float32)


def round_up_one_bit_step(s: torch.Tensor) -> torch.Tensor:
    """The next larger value of the {1, 1.5}·2^e grid, for s on that grid and s > 0."""
    bits = s.float().contiguous().view(torch.int32)
    mant = bits & 0x7FFFFF
    expo = bits & 0x7F800000
    # 1.0*2^e -> 1.5*2^e ; 1.5*2^e -> 1.0*2^(e+1)
    return torch.where(mant == 0, expo | 0x400000, expo + 0x800000).view(torch.float32)


def global_scale_from_amax(amax: torch.Tensor, rule: ScaleRule) -> torch.Tensor:
    """fp32 decode scale: amax / (6 * S_MAX) (S_MAX = 448 for "rn", 64 for "fp8_exact").

    amax == 0 (an all-zero tensor or row) gives 1.0; amax below ~3e-32 floors it at 2^-116 so
    that s_blk * global_scale stays a normal fp32 number (such tiny tensors lose precision).
    """
    # float64 quotient rounded once == the correctly rounded fp32 quotient
    gs = (amax.double() / (F4_E2M1_MAX * rule_scale_max(rule))).float()
    gs = torch.where(amax > 0, gs.clamp(min=GLOBAL_SCALE_MIN), torch.ones_like(gs))
    return gs


def _true_div(a: torch.Tensor, b: float) -> torch.Tensor:
    """a / b correctly rounded on every device (a 0-dim device tensor, not a host scalar,
    keeps torch's CUDA kernel from multiplying by 1/b)."""
    return a / torch.full((), b, dtype=a.dtype, device=a.device)


def block_scales(amax_blk: torch.Tensor, gs: torch.Tensor, rule: ScaleRule) -> torch.Tensor:
    """fp32 (exactly E4M3-representable) block scales before any scale search."""
    s = _true_div(amax_blk, F4_E2M1_MAX) / gs
    if rule == "rn":
        return s.clamp(E4M3_MIN_SUBNORMAL, F8E4M3_MAX).to(torch.float8_e4m3fn).float()
    return round_up_one_bit(s).clamp(FP8_EXACT_SCALE_MIN, FP8_EXACT_SCALE_MAX)


def quantize_blocks(xb: torch.Tensor, s: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """xb fp32 (R, nb, 16), s fp32 (R, nb), gs fp32 broadcastable to (R, 1) -> codes."""
    inv_total = 1.0 / (s * gs)  # tensor reciprocal: a true division on every device
    y = (xb * inv_total.unsqueeze(-1)).clamp(-F4_E2M1_MAX, F4_E2M1_MAX)
    return float_to_e2m1(y)


def _sse(xb, codes, s, gs):
    deq = e2m1_to_float(codes) * (s * gs).unsqueeze(-1)
    return ((xb - deq) ** 2).sum(-1)


def quantize(
    x: torch.Tensor,
    scale_rule: ScaleRule = "rn",
    scale_search: bool = False,
    granularity: Granularity = "tensor",
    check_finite: bool = True,
    global_scale: torch.Tensor | None = None,
) -> NVFP4Tensor:
    """Reference quantization of x (..., K) -> NVFP4Tensor with row-major scales.

    global_scale: optional precomputed fp32 decode scale (0-dim, or (..., 1) with
    granularity="row"); by default it is derived from amax as documented above.
    Not differentiable: the outputs carry no autograd history (a gradient would flow through
    the global scale's amax alone).
    """
    check_input(x, "x", check_finite)
    check_options(scale_rule, scale_search, granularity)
    check_global_scale(global_scale, x, granularity, check_finite)
    x = x.detach()
    shape = x.shape
    K = shape[-1]
    xb = x.reshape(-1, K // BLOCK_SIZE, BLOCK_SIZE).float()  # (R, nb, 16)
    amax_blk = xb.abs().amax(-1) if xb.numel() else xb.new_zeros(xb.shape[:2])  # (R, nb)
    if global_scale is not None:
        gs = global_scale.detach().float().to(x.device)
        gs_rows = gs.reshape(-1, 1) if granularity == "row" else gs.reshape(1, 1)
        gs = gs_rows.reshape(*shape[:-1], 1) if granularity == "row" else gs.reshape(())
    elif granularity == "row":
        amax_row = amax_blk.amax(-1, keepdim=True) if K else amax_blk.new_zeros(xb.shape[0], 1)
        gs_rows = global_scale_from_amax(amax_row, scale_rule)  # (R, 1)
        gs = gs_rows.reshape(*shape[:-1], 1)
    else:
        amax = amax_blk.max() if amax_blk.numel() else amax_blk.new_zeros(())
        gs = global_scale_from_amax(amax, scale_rule)
        gs_rows = gs.reshape(1, 1)

    s = block_scales(amax_blk, gs_rows, scale_rule)
    codes = quantize_blocks(xb, s, gs_rows)
    if scale_search:
        best_err = _sse(xb, codes, s, gs_rows)
        s_up = s
        for cand in (
            round_down_one_bit_step(s_up).clamp(min=FP8_EXACT_SCALE_MIN),
            round_up_one_bit_step(s_up).clamp(max=FP8_EXACT_SCALE_MAX),
        ):
            c_codes = quantize_blocks(xb, cand, gs_rows)
            err = _sse(xb, c_codes, cand, gs_rows)
            better = err < best_err
            s = torch.where(better, cand, s)
            codes = torch.where(better.unsqueeze(-1), c_codes, codes)
            best_err = torch.where(better, err, best_err)

    return NVFP4Tensor(
        data=pack(codes.reshape(*shape[:-1], K)),
        scales=s.to(torch.float8_e4m3fn).reshape(*shape[:-1], K // BLOCK_SIZE),
        global_scale=gs,
        shape=shape,
        scale_rule=scale_rule,
        granularity=granularity,
    )


def check_nvfp4_tensor(t, name: str = "t") -> None:
    """TypeError unless t is an NVFP4Tensor (e.g. a dense tensor passed by mistake)."""
    if not isinstance(t, NVFP4Tensor):
        raise TypeError(f"{name} must be an NVFP4Tensor (from quantize), got {type(t).__name__}")


def row_major_scales(t: NVFP4Tensor) -> torch.Tensor:
    """t.scales as (..., K/16) float8_e4m3fn whatever t.scale_layout is."""
    if t.scale_layout == "row_major":
        return t.scales
    from .layouts import from_blocked

    return from_blocked(t.scales, t.rows, t.K // BLOCK_SIZE).reshape(*t.shape[:-1], -1)


def dequantize(t: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NVFP4Tensor -> dense (..., K): (e2m1 * s_blk) * global_scale in fp32, then cast."""
    check_nvfp4_tensor(t)
    K = t.K
    codes = unpack(t.data).reshape(-1, K // BLOCK_SIZE, BLOCK_SIZE)
    s = row_major_scales(t).float().reshape(-1, K // BLOCK_SIZE, 1)
    gs = t.global_scale.float().reshape(-1, 1, 1)
    out = (e2m1_to_float(codes) * s) * gs
    return out.reshape(t.shape).to(dtype)


def to_fp8_container(t: NVFP4Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8-exact NVFP4 -> (values float8_e4m3fn (..., K), global_scale fp32).

    values * global_scale == dequantize(t) exactly: each value is the product e2m1 * s_blk,
    which the "fp8_exact" rule guarantees to be an E4M3 number (shift 2^0). This is what the
    Hopper FP8 GEMM / attention kernels consume. "rn" tensors raise: their products are in
    general not E4M3 numbers (requantize with scale_rule="fp8_exact", or use the emulated path).
    """
    check_nvfp4_tensor(t)
    if t.scale_rule != "fp8_exact":
        raise ValueError(
            f"to_fp8_container needs an 'fp8_exact' NVFP4 tensor, got scale_rule={t.scale_rule!r}; "
            "its e2m1*scale products are not all E4M3 numbers"
        )
    K = t.K
    codes = unpack(t.data).reshape(-1, K // BLOCK_SIZE, BLOCK_SIZE)
    s = row_major_scales(t).float().reshape(-1, K // BLOCK_SIZE, 1)
    values = (e2m1_to_float(codes) * s).to(torch.float8_e4m3fn)
    return values.reshape(t.shape), t.global_scale
