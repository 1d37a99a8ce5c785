"""NVFP4 format: the reference against independent brute-force oracles, and the Triton
kernels (interpreter on CPU, compiled on GPU) against the reference, bit for bit."""

import itertools

import pytest
import torch
import triton
import triton.language as tl

from solrl_kernels import nvfp4
from solrl_kernels._backends import triton_interpreting
from solrl_kernels.nvfp4 import reference as ref
from solrl_kernels.nvfp4.kernels import _e2m1_codes, _e2m1_round
from solrl_kernels.nvfp4.ops import launch
from solrl_kernels.nvfp4.testing import assert_same_fp8_container, assert_same_nvfp4


@triton.jit
def _codes_kernel(y_ptr, out_ptr, val_ptr, N, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    y = tl.load(y_ptr + offs, mask=offs < N)
    tl.store(out_ptr + offs, _e2m1_codes(y, INTERPRET), mask=offs < N)
    tl.store(val_ptr + offs, _e2m1_round(y), mask=offs < N)

E2M1 = torch.tensor(ref.E2M1_VALUES, dtype=torch.float64)
# every positive finite E4M3 value, from the bit patterns
E4M3_POS = torch.arange(1, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
ONE_BIT_GRID = torch.tensor(
    sorted({m * 2.0**e for m in (1.0, 1.5) for e in range(-7, 7) if 2**-7 <= m * 2.0**e <= 64}),
    dtype=torch.float64,
)


def _nearest_even(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest grid point (float64 brute force), ties to the even index."""
    d = (values.double().unsqueeze(-1) - grid).abs()
    best = d.min(-1, keepdim=True).values
    ties = d == best
    idx = torch.arange(grid.numel())
    cand = torch.where(ties, idx, grid.numel() + 1)
    even = torch.where(ties & (idx % 2 == 0), idx, grid.numel() + 1)
    return torch.where(ties.sum(-1) > 1, even.min(-1).values, cand.min(-1).values)


def _oracle_rn(x: torch.Tensor):
    """Standard NVFP4 from first principles: brute-force nearest E4M3 / e2m1 values."""
    K = x.shape[-1]
    xb = x.double().reshape(-1, K // 16, 16)
    gs = torch.tensor(float(torch.tensor(x.abs().max().item() / 2688.0, dtype=torch.float32)))
    s_ideal = (xb.abs().amax(-1) / 6).float() / gs.float()  # fp32 as the recipe specifies
    s_ideal = s_ideal.double().clamp(2.0**-9, 448.0)
    s = E4M3_POS[_nearest_even(s_ideal, E4M3_POS)]
    total = (s.float() * gs.float()).double()
    y = (xb.float() * (1.0 / total.float()).unsqueeze(-1)).double().clamp(-6, 6)  # x * (1/total)
    mag = _nearest_even(y.abs(), E2M1)
    codes = mag | (torch.signbit(y).long() << 3)
    return codes.reshape(x.shape), s.reshape(*x.shape[:-1], K // 16), gs


def _rand(shape, dtype=torch.float32, kind="normal", seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    if kind == "normal":
        x = torch.randn(shape, generator=g)
    elif kind == "heavy":  # Student-t(2): outliers
        x = torch.randn(shape, generator=g) / torch.randn(shape, generator=g).abs().clamp(min=0.05)
    elif kind == "wide":  # rows spanning 16 decades
        x = torch.randn(shape, generator=g) * torch.logspace(-8, 8, shape[0])[:, None]
    return x.to(dtype)


# ----------------------------------------------------------------------------- primitives
def test_e2m1_rounding_table():
    y = torch.tensor([0.0, 0.24, 0.25, 0.26, 0.74, 0.75, 1.25, 1.26, 1.75, 2.49, 2.5, 2.51,
                      3.49, 3.5, 4.99, 5.0, 5.01, 6.0, -0.1, -0.0, -6.0, -2.5])
    want = [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 3.0,
            3.0, 4.0, 4.0, 4.0, 6.0, 6.0, -0.0, -0.0, -6.0, -2.0]
    got = ref.e2m1_to_float(ref.float_to_e2m1(y))
    assert got.tolist() == want
    assert torch.signbit(got[-4:-2]).all(), "negative zero keeps its sign bit (code 8)"


def test_e2m1_matches_bruteforce_nearest_even():
    y = torch.linspace(-6, 6, 24001)
    codes = ref.float_to_e2m1(y)
    mag = _nearest_even(y.abs(), E2M1)
    assert torch.equal((codes & 7).long(), mag)


def test_pack_low_nibble_first_and_roundtrip():
    codes = torch.randint(0, 16, (3, 5, 34), dtype=torch.uint8)
    packed = ref.pack(codes)
    assert packed.shape == (3, 5, 17)
    assert torch.equal(packed[..., 0] & 0xF, codes[..., 0])
    assert torch.equal(packed[..., 0] >> 4, codes[..., 1])
    assert torch.equal(ref.unpack(packed), codes)
    with pytest.raises(ValueError, match="even"):
        ref.pack(codes[..., :3])


@pytest.mark.parametrize("rows,cols", [(1, 1), (128, 4), (130, 7), (300, 12), (5, 200)])
def test_to_blocked_index_formula_and_inverse(rows, cols):
    s = torch.randint(1, 120, (rows, cols), dtype=torch.uint8).view(torch.float8_e4m3fn)
    b = nvfp4.to_blocked(s)
    assert b.numel() == nvfp4.blocked_numel(rows, cols)
    ncb = -(-cols // 4)
    flat = b.view(torch.uint8)
    for r, c in itertools.product(range(rows), range(cols)):
        off = ((r // 128) * ncb + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
        if (r * cols + c) % 7 == 0:  # spot-check a seventh of the entries
            assert flat[off] == s.view(torch.uint8)[r, c]
    assert torch.equal(nvfp4.from_blocked(b, rows, cols).view(torch.uint8), s.view(torch.uint8))
    # padding is zeros
    assert int(flat.sum()) == int(s.view(torch.uint8).long().sum())


def test_one_bit_grid_products_are_exact_e4m3():
    """The fp8_exact promise: every e2m1 * s for s on the grid is an E4M3 number."""
    prod = (E2M1[1:, None] * ONE_BIT_GRID[None, :]).float()
    assert torch.equal(prod.to(torch.float8_e4m3fn).float(), prod)
    # and the grid cannot go lower: its next value below 2^-7, 1.5 * 2^-8, breaks exactness
    below = (E2M1[1:] * 1.5 * 2**-8).float()
    assert not torch.equal(below.to(torch.float8_e4m3fn).float(), below)


def test_round_up_one_bit():
    s = torch.rand(10000) * 100 + 1e-3
    up = ref.round_up_one_bit(s)
    assert (up >= s).all()
    idx = torch.searchsorted(ONE_BIT_GRID.float(), s)
    in_grid = (idx < len(ONE_BIT_GRID)) & (s >= 2**-7)
    assert torch.equal(up[in_grid], ONE_BIT_GRID.float()[idx[in_grid]])
    g = ONE_BIT_GRID.float()
    assert torch.equal(ref.round_down_one_bit_step(g[1:]), g[:-1])
    assert torch.equal(ref.round_up_one_bit_step(g[:-1]), g[1:])


# ----------------------------------------------------------------------------- reference
@pytest.mark.parametrize("kind", ["normal", "heavy", "wide"])
def test_rn_matches_first_principles_oracle(kind):
    x = _rand((33, 96), kind=kind)
    t = ref.quantize(x, "rn")
    codes, s, gs = _oracle_rn(x)
    assert t.global_scale.item() == gs.item()
    assert torch.equal(t.scales.double(), s)
    assert torch.equal(ref.unpack(t.data).long(), codes)


@pytest.mark.parametrize("search", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_fp8_exact_scales_on_grid_and_container_exact(search, granularity):
    x = _rand((40, 128), kind="heavy")
    t = ref.quantize(x, "fp8_exact", scale_search=search, granularity=granularity)
    s = t.scales.double().flatten()
    assert torch.isin(s, ONE_BIT_GRID).all()
    values, gs = nvfp4.to_fp8_container(t)
    assert values.dtype == torch.float8_e4m3fn
    assert torch.equal(values.float() * gs, ref.dequantize(t))
    if not search:  # rounding the scale up never saturates
        deq_scale = t.scales.float().repeat_interleave(16, -1) * t.global_scale
        assert (x.abs() <= 6 * deq_scale * (1 + 1e-6)).all()


def test_scale_search_never_worse_per_block():
    x = _rand((64, 256))
    up = ref.quantize(x, "fp8_exact")
    srch = ref.quantize(x, "fp8_exact", scale_search=True)
    e_up = ((ref.dequantize(up) - x) ** 2).reshape(64, 16, 16).sum(-1)
    e_s = ((ref.dequantize(srch) - x) ** 2).reshape(64, 16, 16).sum(-1)
    assert (e_s <= e_up * (1 + 1e-6)).all()
    assert e_s.sum() < 0.9 * e_up.sum()


@pytest.mark.parametrize(
    "kind,rule,search,lo,hi",
    [
        # documented in reference.py: measured on 4096x1024 N(0,1): rn .0951, up .1148, search .0984
        ("normal", "rn", False, 0.090, 0.100),
        ("normal", "fp8_exact", False, 0.108, 0.121),
        ("normal", "fp8_exact", True, 0.093, 0.104),
        ("heavy", "rn", False, 0.05, 0.12),
        ("heavy", "fp8_exact", True, 0.06, 0.15),
    ],
)
def test_relative_error_levels(kind, rule, search, lo, hi):
    x = _rand((512, 512), kind=kind)
    t = ref.quantize(x, rule, scale_search=search)
    err = ((ref.dequantize(t) - x).norm() / x.norm()).item()
    assert lo <= err <= hi, err


def test_zero_tensor_zero_blocks_and_empty():
    z = torch.zeros(4, 32)
    t = ref.quantize(z)
    assert t.global_scale.item() == 1.0 and torch.equal(ref.dequantize(t), z)
    x = _rand((4, 64))
    x[1, 16:32] = 0
    x[3] = 0
    deq = ref.dequantize(ref.quantize(x, "fp8_exact", granularity="row"))
    assert (deq[1, 16:32] == 0).all() and (deq[3] == 0).all()
    e = ref.quantize(torch.empty(0, 48))
    assert e.data.shape == (0, 24) and e.scales.shape == (0, 3)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="K=40 must be a multiple of 16"):
        nvfp4.quantize(torch.randn(3, 40))
    with pytest.raises(TypeError, match="int64"):
        nvfp4.quantize(torch.ones(3, 32, dtype=torch.int64))
    x = torch.randn(3, 32)
    x[0, 3] = float("nan")
    x[2, 5] = float("inf")
    with pytest.raises(ValueError, match="x contains 1 NaN and 1 Inf"):
        nvfp4.quantize(x)
    with pytest.raises(ValueError, match="scale_rule"):
        nvfp4.quantize(torch.randn(3, 32), scale_rule="rz")
    with pytest.raises(ValueError, match="scale_search"):
        nvfp4.quantize(torch.randn(3, 32), scale_search=True)
    with pytest.raises(ValueError, match="fp8_exact"):
        nvfp4.to_fp8_container(nvfp4.quantize(torch.randn(3, 32)))


def test_zero_width_rows_are_a_clear_error():
    """K = 0 is a multiple of 16 but no NVFP4 row: a ValueError, not a reshape crash."""
    for quantizer in (nvfp4.quantize, nvfp4.quantize_to_fp8):
        with pytest.raises(ValueError, match="K must be positive, got shape \\(4, 0\\)"):
            quantizer(_rand((4, 0)))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_given_global_scale_is_checked_and_shaped_as_documented(backend, device):
    """A given global_scale comes back as NVFP4Tensor documents it ((..., 1) per row, 0-dim per
    tensor) on every path, with the same bits; a wrong one is a clear error."""
    x = _rand((2, 4, 64)).to(device)
    amax_rows = x.abs().amax(-1).reshape(-1).cpu()  # (8,): one scale per row, flat
    for granularity, gs, want in (("row", amax_rows / 384, (2, 4, 1)),
                                  ("tensor", amax_rows.max().reshape(1) / 384, ())):
        t = nvfp4.quantize(x, "fp8_exact", granularity=granularity, global_scale=gs,
                           backend=backend)
        assert t.global_scale.shape == want
        assert_same_nvfp4(t, ref.quantize(x.cpu(), "fp8_exact", granularity=granularity,
                                          global_scale=gs.reshape(want)))
        _, gs_fp8 = nvfp4.quantize_to_fp8(x, granularity, global_scale=gs, backend=backend)
        assert gs_fp8.shape == want
    with pytest.raises(ValueError, match=r"'row' must be \(\.\.\., 1\) with 8 rows, got shape"):
        nvfp4.quantize(x, granularity="row", global_scale=amax_rows[:3], backend=backend)
    with pytest.raises(ValueError, match="'tensor' must be 0-dim, got shape \\(8,\\)"):
        nvfp4.quantize(x, global_scale=amax_rows, backend=backend)
    with pytest.raises(TypeError, match="global_scale must be a torch.Tensor or None, got float"):
        nvfp4.quantize(x, global_scale=0.01, backend=backend)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="global_scale must be positive and finite"):
            nvfp4.quantize(x, global_scale=torch.tensor(bad), backend=backend)


def test_reference_quantizers_carry_no_autograd_history():
    """Quantization has no gradient: before, the reference path let one flow through the
    global scale's amax alone (a few non-zero entries of x.grad, all wrong)."""
    x = _rand((4, 64)).requires_grad_()
    t = nvfp4.quantize(x, backend="reference")
    assert not t.global_scale.requires_grad
    assert not nvfp4.dequantize(t).requires_grad
    values, gs = nvfp4.quantize_to_fp8(x, backend="reference")
    assert not values.requires_grad and not gs.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        nvfp4.dequantize(t).sum().backward()
    assert x.grad is None


def test_scale_search_must_be_a_bool():
    """A string (any non-empty one is truthy) used to switch the search on silently."""
    with pytest.raises(TypeError, match="scale_search must be True or False, got 'no'"):
        nvfp4.quantize(_rand((4, 32)), "fp8_exact", scale_search="no")


def test_container_arguments_are_type_checked():
    x = _rand((8, 64))
    t = nvfp4.quantize(x, "fp8_exact")
    with pytest.raises(TypeError, match="t must be an NVFP4Tensor \\(from quantize\\), got Tensor"):
        nvfp4.dequantize(x)
    with pytest.raises(TypeError, match="must be an NVFP4Tensor"):
        nvfp4.to_fp8_container(x)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype, got "
                                        "torch.int32"):
        nvfp4.dequantize(t, torch.int32)
    assert nvfp4.dequantize(t, torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="takes a device, not a dtype"):
        t.to(torch.float16)  # would cast the uint8 codes and E4M3 scales into garbage
    moved = t.to("cpu")
    assert moved.data.dtype == torch.uint8 and moved.scales.dtype == torch.float8_e4m3fn
    assert torch.equal(nvfp4.dequantize(moved), nvfp4.dequantize(t))


def test_quantize_to_fp8_x_tail_errors_follow_the_convention():
    """A wrong type or dtype of x_tail is a TypeError (as in nvfp4_linear), a wrong shape a
    ValueError."""
    x = _rand((4, 32))
    with pytest.raises(TypeError, match="x_tail must be a tensor of x's dtype torch.float32, "
                                        "got torch.float64"):
        nvfp4.quantize_to_fp8(x, x_tail=_rand((4, 16), dtype=torch.float64))
    with pytest.raises(TypeError, match="got list"):
        nvfp4.quantize_to_fp8(x, x_tail=[0.0] * 16)
    with pytest.raises(ValueError, match="x_tail must have x's leading dims"):
        nvfp4.quantize_to_fp8(x, x_tail=_rand((3, 16)))


def test_huge_and_tiny_magnitudes():
    for mag in (1e30, 1e-25):
        x = _rand((8, 64)) * mag
        err = ((ref.dequantize(ref.quantize(x)).double() - x.double()).norm() / x.double().norm()).item()
        assert err < 0.11, (mag, err)


# ----------------------------------------------------------------------------- kernels
# K: one power-of-two chunk (up to 512), and the chunked walk with ragged tails (1040 ...)
SHAPES = [(1, 16), (7, 48), (33, 96), (2, 3, 272), (130, 512), (3, 1040), (3, 1536), (2, 1552)]
CASES = [("rn", False), ("fp8_exact", False), ("fp8_exact", True)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("rule,search", CASES, ids=["rn", "fp8_exact", "fp8_exact-search"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_triton_quantize_bit_exact(shape, rule, search, granularity, device):
    dtype = torch.bfloat16 if shape[-1] % 32 == 0 else torch.float32
    x = _rand(shape, dtype, kind="wide" if len(shape) == 2 and shape[0] > 1 else "heavy").to(device)
    a = nvfp4.quantize(x, rule, search, granularity, backend="triton")
    b = ref.quantize(x.cpu(), rule, search, granularity)
    assert_same_nvfp4(a, b, x if search else None)
    assert torch.equal(nvfp4.dequantize(a, torch.float32, backend="triton").cpu(), ref.dequantize(a.to("cpu")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_blocked_layout_and_fp8_container(dtype, device):
    x = _rand((150, 80), dtype).to(device)
    a = nvfp4.quantize(x, "fp8_exact", granularity="row", scale_layout="blocked", backend="triton")
    b = nvfp4.quantize(x.cpu(), "fp8_exact", granularity="row", scale_layout="blocked",
                       backend="reference")
    assert_same_nvfp4(a, b)
    assert torch.equal(nvfp4.dequantize(a, dtype, backend="triton").cpu(), ref.dequantize(b, dtype))
    for gran in ("row", "tensor"):
        v, gs = nvfp4.quantize_to_fp8(x, granularity=gran, backend="triton")
        v_ref, gs_ref = ref.to_fp8_container(ref.quantize(x.cpu(), "fp8_exact", granularity=gran))
        assert torch.equal(v.view(torch.uint8).cpu(), v_ref.view(torch.uint8))
        assert torch.equal(gs.cpu(), gs_ref)


@pytest.mark.parametrize("walk", [False, True], ids=["one-tile", "walk"])
def test_triton_blocked_without_padding_writes_every_byte(walk, device, monkeypatch):
    """R % 128 == 0 and (K/16) % 4 == 0: ops.quantize_rows allocates the blocked scales
    without a memset, so every byte must come from the kernel (new_empty poisoned here).
    walk: the row in 32-wide chunks, as the one-pass blocked tiles walk long rows (here a
    chunk ends inside a 4-scale group; the real tiles run in test_gpu_triton_blocked_...)."""
    from solrl_kernels.nvfp4 import ops

    if walk:
        monkeypatch.setattr(ops, "_tiles", lambda K, blocked_one_pass=False: (1, 32, 1))
    new_empty = torch.Tensor.new_empty

    def poisoned(self, *args, **kwargs):
        t = new_empty(self, *args, **kwargs)
        return t.fill_(0xA5) if t.dtype == torch.uint8 else t

    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned)
    x = _rand((128, 64), torch.bfloat16, kind="wide", seed=7).to(device)
    x[3, 16:48] = 0  # zero blocks: scale bytes that are legitimately small
    for rule, gran in (("fp8_exact", "row"), ("rn", "tensor")):
        a = nvfp4.quantize(x, rule, granularity=gran, scale_layout="blocked", backend="triton")
        b = nvfp4.quantize(x.cpu(), rule, granularity=gran, scale_layout="blocked",
                           backend="reference")
        assert torch.equal(a.scales.view(torch.uint8).cpu(), b.scales.view(torch.uint8))
        assert_same_nvfp4(a, b)


def test_triton_noncontiguous_empty_and_given_scale(device):
    x = _rand((64, 96)).to(device)
    xt = x.t().contiguous().t()[:, :64]  # non-contiguous (..., K) view
    assert_same_nvfp4(nvfp4.quantize(xt, backend="triton"), ref.quantize(xt.cpu().contiguous()))
    e = nvfp4.quantize(torch.empty(0, 32, device=device), backend="triton")
    assert e.data.shape == (0, 16)
    gs = torch.tensor(0.01)
    assert_same_nvfp4(nvfp4.quantize(x, global_scale=gs.to(device), backend="triton"),
                 ref.quantize(x.cpu(), global_scale=gs))


# "auto": the CUDA row quantizer where nvfp4.api's routing takes it (Hopper, no scale search:
# the E4M3 container and per-row scales), else Triton
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "auto"])
@pytest.mark.parametrize("rule,search", CASES, ids=["rn", "fp8_exact", "fp8_exact-search"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_gpu_large_bit_exact(rule, search, granularity, backend):
    x = _rand((4096, 3072), torch.bfloat16, kind="heavy")
    x[7, :16] = 0
    x[9] *= 1e4
    a = nvfp4.quantize(x.cuda(), rule, search, granularity, backend=backend)
    b = ref.quantize(x, rule, search, granularity)
    assert_same_nvfp4(a, b, x if search else None)
    assert torch.equal(nvfp4.dequantize(a, torch.bfloat16).cpu(),
                       ref.dequantize(a.to("cpu"), torch.bfloat16))
    v, gs = nvfp4.quantize_to_fp8(x.cuda(), granularity=granularity, scale_search=search,
                                  backend=backend)
    # the container is exactly the expansion of the kernel's own quantization
    a = nvfp4.quantize(x.cuda(), "fp8_exact", search, granularity, backend=backend)
    v_ref, gs_ref = ref.to_fp8_container(a.to("cpu"))
    assert_same_fp8_container(v, gs, v_ref, gs_ref, x if search else None)


@pytest.mark.gpu
@pytest.mark.parametrize("K", [2432, 5120, 20480], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("rule,search", CASES, ids=["rn", "fp8_exact", "fp8_exact-search"])
def test_gpu_row_tilings_bit_exact(K, rule, search):
    """Row lengths of the Triton kernel's chunked walk (ops._tiles): a ragged last chunk
    (2432), whole chunks (5120), and a row longer than the one-chunk limit (20480)."""
    x = _rand((256, K), torch.bfloat16, kind="heavy")
    for gran in ("tensor", "row"):
        assert_same_nvfp4(nvfp4.quantize(x.cuda(), rule, search, gran, backend="triton"),
                          ref.quantize(x, rule, search, gran), x if search else None)


@pytest.mark.gpu
@pytest.mark.parametrize("R,K", [(256, 8192), (300, 5120), (129, 6144), (128, 1040)])
def test_gpu_triton_blocked_scales_bit_exact(R, K):
    """Blocked scales through Triton (what backend="auto" takes for them): the one-pass
    walk (a given scale) and the per-row scale, against the reference swizzled by to_blocked."""
    x = _rand((R, K), torch.bfloat16, kind="heavy")
    for rule, gran in (("rn", "tensor"), ("fp8_exact", "row")):
        a = nvfp4.quantize(x.cuda(), rule, granularity=gran, scale_layout="blocked",
                           backend="triton")
        b = nvfp4.quantize(x, rule, granularity=gran, scale_layout="blocked",
                           backend="reference")
        assert torch.equal(a.scales.view(torch.uint8).cpu(), b.scales.view(torch.uint8))
        assert_same_nvfp4(a, b)


def test_quantize_op_traces_under_compile():
    """The Triton op has a fake impl: shapes propagate without running the kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(10, 64)
        data, scales, gs, fp8 = torch.ops.solrl_kernels.nvfp4_quantize(
            x, torch.empty(0), True, False, True, True, False, True, True
        )
        assert data.shape == (10, 32) and scales.shape == (10, 4) and gs.shape == (10,)
        assert fp8.shape == (10, 64) and fp8.dtype == torch.float8_e4m3fn


def test_plain_eager_decides_when_the_dispatcher_may_be_skipped():
    """_backends.plain_eager: the ops' Python code may run directly only in plain eager mode;
    tracing (fake tensors, torch.compile), tensor subclasses and autograd need the op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from solrl_kernels._backends import plain_eager

    x = torch.randn(4, 32)
    assert plain_eager(x, None, torch.nn.Parameter(x.clone(), requires_grad=False))
    assert not plain_eager(x.requires_grad_())
    with torch.no_grad():
        assert plain_eager(x)
    with FakeTensorMode():
        assert not plain_eager(torch.empty(4, 32))
    seen = []
    torch.compile(lambda t: seen.append(plain_eager(t)) or t + 1, backend="eager",
                  fullgraph=True)(torch.randn(3))
    assert seen == [False]


def test_launch_wraps_fake_tensors_even_with_no_mode_active(monkeypatch):
    """launch(): FakeTensors with no mode active (kept after their mode exited) must still
    go through wrap_triton (which knows not to launch them); plain tensors launch directly."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from solrl_kernels.nvfp4 import ops as nvfp4_ops

    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *a, **k: calls.append("plain")

    def wrap(kernel):
        calls.append("wrapped")
        return kernel

    monkeypatch.setattr(nvfp4_ops, "triton_interpreting", lambda: False)
    monkeypatch.setattr(torch.library, "wrap_triton", wrap)
    with FakeTensorMode():
        fake = torch.empty(4, 32)
    launch(Kernel(), (1,), fake, 7, BLOCK=16)
    assert calls == ["wrapped", "plain"]
    calls.clear()
    launch(Kernel(), (1,), torch.randn(4, 32), 7, BLOCK=16)
    assert calls == ["plain"]


def test_api_under_fake_tensors_takes_the_op():
    """nvfp4.quantize_to_fp8 on fake tensors propagates shapes through the op's fake
    implementation (the eager shortcut would launch the kernel on fake data)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        values, gs = nvfp4.quantize_to_fp8(torch.empty(6, 64), backend="triton")
    assert values.shape == (6, 64) and values.dtype == torch.float8_e4m3fn
    assert gs.shape == (6, 1)


def test_triton_e2m1_codes_exhaustive(device):
    """The kernel's bit-trick e2m1 roundings (to codes, and to values) == the reference
    threshold table on a dense grid of values including every rounding boundary and its fp32
    neighbours; signed zeros included."""
    bounds = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0,
                           5.0, 6.0, 7.0, 1e30])
    nb = torch.cat([torch.nextafter(bounds, torch.tensor(-1.0)), bounds,
                    torch.nextafter(bounds, torch.tensor(1e38))])
    y = torch.cat([torch.linspace(-8, 8, 4001), nb, -nb, torch.tensor([float("inf"), -0.0])])
    y = y.to(device)
    out = torch.empty_like(y, dtype=torch.int32)
    val = torch.empty_like(y)
    launch(_codes_kernel, (triton.cdiv(y.numel(), 1024),), y, out, val, y.numel(), BLOCK=1024,
           INTERPRET=triton_interpreting())
    want = ref.float_to_e2m1(y.cpu().clamp(-6, 6))
    assert torch.equal(out.cpu(), want.to(torch.int32))
    want_val = ref.e2m1_to_float(want)
    assert torch.equal(val.cpu().view(torch.int32), want_val.float().view(torch.int32))


def test_absmax_op(device):
    x = _rand((37, 100), kind="heavy").to(device)
    assert torch.ops.solrl_kernels.absmax(x).item() == x.abs().max().item()
    assert torch.ops.solrl_kernels.absmax(x[:0]).item() == 0.0


def test_quantize_to_fp8_compiles_fullgraph(device):
    """The public wrapper (checks, dispatch, op call) traces without graph breaks."""

    def f(x):
        values, gs = nvfp4.quantize_to_fp8(x)
        return values.float() * gs

    x = _rand((8, 64)).to(device)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), f(x))


def test_assert_same_accepts_only_ties():
    """The tie-aware equality (nvfp4.testing) passes identical quantizations and rejects a
    block that differs without a tie, with or without the input given."""
    x = _rand((8, 64))
    a = ref.quantize(x, "fp8_exact", True, "row")
    assert_same_nvfp4(a, ref.quantize(x, "fp8_exact", True, "row"), x)
    codes = ref.unpack(a.data)
    codes[3, 5] ^= 1  # one element one e2m1 step away: a different block, no tie
    b = nvfp4.NVFP4Tensor(ref.pack(codes), a.scales, a.global_scale, a.shape, a.scale_rule,
                          a.scale_layout, a.granularity)
    for given in (None, x):
        with pytest.raises(AssertionError):
            assert_same_nvfp4(a, b, given)
    v, gs = ref.to_fp8_container(a)
    assert_same_fp8_container(v, gs, v.clone(), gs.clone(), x)
    with pytest.raises(AssertionError):
        assert_same_fp8_container(v, gs, *ref.to_fp8_container(b), x)



def test_pre_ada_gpu_takes_the_reference(monkeypatch):
    """The Triton quantizer casts to E4M3 (sm_89+): on an older GPU "auto" takes the
    reference and "triton" says why it cannot run."""
    from solrl_kernels.nvfp4 import api

    monkeypatch.setattr(api, "triton_available", lambda device: True)
    cuda = torch.device("cuda")
    monkeypatch.setattr(api, "cuda_fp8_capable", lambda device: False)
    monkeypatch.setattr(api, "device_capability", lambda device: (8, 0))
    assert not api._use_triton("auto", cuda)
    with pytest.raises(RuntimeError, match="sm_80 has no FP8 support"):
        api._use_triton("triton", cuda)
    monkeypatch.setattr(api, "cuda_fp8_capable", lambda device: True)
    assert api._use_triton("auto", cuda)
