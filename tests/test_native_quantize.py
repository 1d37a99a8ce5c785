"""The CUDA row quantizer of csrc/nvfp4_quantize (torch.ops.solrl_kernels.nvfp4_quantize_rows)
against solrl_kernels.nvfp4.reference, bit for bit.

CPU (whenever _C is built): schema, fake implementation, argument errors of the C++ op and of
its fake, the public API's answer to backend="cuda" where the kernel cannot run, and
torch.compile(fullgraph=True) tracing of the CUDA route and of its eligibility checks. CPU
(always): the launcher's plan and the kernel's indexing, mirrored in Python, for every K
(every block of every row quantized once, every byte of the blocked scales written once), and
the exactness of the kernel's division-free arithmetic. GPU (@pytest.mark.gpu, Hopper): every
row tiling (rows sharing a warp, one CTA per row, 4 or 8 rows per CTA for blocked scales,
ragged unit counts), both rules, per-row / per-tensor / given scales, row-major and blocked
scales (byte for byte, padding included, in memory left dirty), the E4M3 container; awkward
values (zero blocks and rows, signed zeros, subnormal inputs, huge and tiny rows and blocks);
torch.compile and opcheck.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from solrl_kernels import _backends, nvfp4
from solrl_kernels.nvfp4 import api
from solrl_kernels.nvfp4 import reference as ref
from solrl_kernels.nvfp4.layouts import blocked_numel
from solrl_kernels.nvfp4.testing import assert_same_fp8_container, assert_same_nvfp4

# the tests of the op (the arithmetic mirrors at the end run without _C)
needs_native = pytest.mark.skipif(
    not _backends.native_ops_available(), reason=_backends.native_unavailable_reason()
)

if _backends.native_ops_available():
    from solrl_kernels import _native_ops


def op():
    return torch.ops.solrl_kernels.nvfp4_quantize_rows


def _cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return api._cuda_unavailable_reason(
        torch.empty(2, 16, device="cuda", dtype=torch.bfloat16), False)


needs_cuda_quantizer = pytest.mark.skipif(
    _cuda_reason() is not None, reason=f"the CUDA quantizer cannot run: {_cuda_reason()}")


# ---------------------------------------------------------------------------------- CPU tests
@needs_native
def test_schema():
    assert str(op().default._schema) == (
        "solrl_kernels::nvfp4_quantize_rows(Tensor x, Tensor? global_scale, bool fp8_exact, "
        "bool blocked, bool write_packed, bool write_fp8, Tensor? x_tail=None, "
        "str activation=\"none\", int activation_start=0) -> (Tensor, Tensor, Tensor, Tensor)")


@needs_native
def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(10, 64, dtype=torch.bfloat16)
        data, scales, gs, fp8 = op()(x, None, True, False, True, True)
        assert data.shape == (10, 32) and scales.shape == (10, 4) and gs.shape == (10,)
        assert fp8.shape == (10, 64) and fp8.dtype == torch.float8_e4m3fn
        data, scales, gs, fp8 = op()(x.half(), torch.ones(1), False, True, True, False)
        assert scales.shape == (blocked_numel(10, 4),) and gs.shape == (0,) and fp8.shape == (0,)
        tail = torch.empty(10, 48, dtype=torch.bfloat16)
        data, scales, gs, fp8 = op()(x, None, True, False, True, True, tail)
        assert data.shape == (10, 56) and scales.shape == (10, 7) and fp8.shape == (10, 112)


def _bad_cases():
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    return [
        pytest.param(dict(x=x.float()), TypeError, "bfloat16 or float16", id="dtype"),
        pytest.param(dict(x=x[None]), ValueError, "2-D", id="3d"),
        pytest.param(dict(x=torch.randn(8, 40, dtype=torch.bfloat16)), ValueError, "K=40",
                     id="k-mod-16"),
        pytest.param(dict(x=torch.randn(2, 32784, dtype=torch.bfloat16)), ValueError,
                     "up to 32768", id="k-too-long"),
        pytest.param(dict(x=torch.randn(64, 8, dtype=torch.bfloat16).T), ValueError,
                     "unit last stride", id="column-major"),
        pytest.param(dict(x=torch.randn(8, 68, dtype=torch.bfloat16)[:, :64]), ValueError,
                     "row stride", id="row-stride"),
        pytest.param(dict(write_packed=False, write_fp8=False), ValueError, "nothing to write",
                     id="no-output"),
        pytest.param(dict(fp8_exact=False), ValueError, "needs fp8_exact", id="container-rn"),
        pytest.param(dict(write_packed=False, blocked=True), ValueError, "blocked", id="blocked"),
        pytest.param(dict(global_scale=torch.ones(3)), ValueError, r"8 elements", id="gs-numel"),
        pytest.param(dict(global_scale=torch.ones(8).half()), TypeError, "float32|Float",
                     id="gs-dtype"),
        pytest.param(dict(x_tail=x.half()), TypeError, "x_tail must have x's dtype",
                     id="tail-dtype"),
        pytest.param(dict(x_tail=x[:4]), ValueError, "x's 8 rows", id="tail-rows"),
        pytest.param(dict(x_tail=x[:, :1, None]), ValueError, "x's 8 rows", id="tail-3d"),
        pytest.param(dict(x=torch.randn(8, 24, dtype=torch.bfloat16), x_tail=x[:, :8]),
                     ValueError, "x's K must be a multiple of 16", id="head-k-mod-16"),
        pytest.param(dict(x_tail=torch.randn(8, 68, dtype=torch.bfloat16)[:, :64]), ValueError,
                     "x_tail's row stride", id="tail-row-stride"),
        pytest.param(dict(x_tail=torch.randn(8, 32760, dtype=torch.bfloat16)[:, :32720]),
                     ValueError, "up to 32768", id="cat-too-long"),
        pytest.param(dict(activation="silu"), ValueError, "'none' or 'gelu_tanh'", id="act"),
        pytest.param(dict(activation="gelu_tanh", activation_start=8), ValueError,
                     r"multiple of 16 in \[0, K=64\], got 8", id="act-start-mod-16"),
        pytest.param(dict(activation="gelu_tanh", activation_start=80), ValueError,
                     "activation_start must be", id="act-start-past-k"),
    ]


@needs_native
@pytest.mark.parametrize("kw, exc, match", _bad_cases())
@pytest.mark.parametrize("impl", ["cpp", "fake"])
def test_bad_inputs(kw, exc, match, impl):
    args = dict(x=torch.randn(8, 64, dtype=torch.bfloat16), global_scale=None, fp8_exact=True,
                blocked=False, write_packed=True, write_fp8=True, x_tail=None,
                activation="none", activation_start=0)
    args.update(kw)
    with pytest.raises(exc, match=match):
        if impl == "fake":
            _native_ops.check_nvfp4_quantize_rows_args(**args)
        else:  # the C++ checks run on CPU tensors too
            op()(*args.values())


@needs_native
def test_valid_cpu_inputs_say_cuda_or_arch():
    match = "CUDA tensors only" if "sm90a" in _backends.native_archs() else "9.0a"
    with pytest.raises((ValueError, RuntimeError), match=match):
        op()(torch.randn(8, 64, dtype=torch.bfloat16), None, True, False, True, True)


@needs_native
def test_api_backend_cuda_says_why_not():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="backend='cuda' requested but unavailable: .*CUDA"):
        nvfp4.quantize(x, backend="cuda")
    with pytest.raises(RuntimeError, match="no CUDA kernel"):
        nvfp4.dequantize(nvfp4.quantize(x, backend="reference"), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        nvfp4.quantize(x, backend="native")


@needs_native
def test_cuda_path_checks_trace_under_compile(monkeypatch):
    """The eligibility checks of the CUDA path, as torch.compile(fullgraph=True) traces them on
    a Hopper GPU (stood in for here: capability (9, 0)); session 6 found Tensor.storage_offset()
    and an op returning strings there, both graph breaks."""
    monkeypatch.setattr(api, "device_capability", lambda device: (9, 0))
    cuda = torch.device("cuda", 0)

    def f(x):
        why = api._cuda_limits_reason(x, False, cuda)
        return x * (2 if why is None else 3)

    x = torch.randn(4, 64, dtype=torch.bfloat16)
    torch._dynamo.reset()
    want = 2 if "sm90a" in _backends.native_archs() else 3
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), x * want)
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x.float()), x.float() * 3)


@needs_native
def test_cuda_route_traces_fullgraph(monkeypatch):
    """quantize_to_fp8 on the CUDA route (forced here on CPU tensors) traces into one graph
    holding the op, through its fake implementation; the graph is not run."""
    monkeypatch.setattr(api, "_cuda_unavailable_reason", lambda x2d, scale_search: None)
    graphs = []

    def trace_only(gm, example_inputs):
        graphs.append(gm)
        return lambda *args: (torch.zeros(1),)

    def f(x):
        values, gs = nvfp4.quantize_to_fp8(x)
        return values.float() * gs

    torch._dynamo.reset()
    torch.compile(f, fullgraph=True, backend=trace_only)(torch.randn(8, 64, dtype=torch.bfloat16))
    calls = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert "solrl_kernels.nvfp4_quantize_rows" in calls, calls


# ---------------------------------------------------------------------------------- GPU tests
def _awkward(R: int, K: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Heavy-tailed rows with an outlier channel, plus: an all-zero block, an all-zero row,
    signed zeros, a row of subnormal values (fp32 subnormals for bf16, fp16 subnormals for
    fp16), a huge row and a tiny one."""
    torch.manual_seed(seed)
    x = torch.distributions.StudentT(3.0).sample((R, K)) if seed % 2 else torch.randn(R, K)
    x[:, 5 % K] *= 50
    x = x.to(dtype)
    x[0, :16] = 0
    if R > 1:
        x[1] = 0
    if R > 2:
        x[2, 1::2] = -0.0
    if R > 3:
        tiny = 1e-39 if dtype == torch.bfloat16 else 1e-6
        x[3] = (torch.randn(K) * tiny).to(dtype)
    if R > 4:
        x[4] = x[4] * (1e30 if dtype == torch.bfloat16 else 100)
    if R > 5:
        x[5] = x[5] * (1e-30 if dtype == torch.bfloat16 else 1e-3)
    return x


# K: rows sharing a warp (16 .. 1024: 2 .. 32 threads per row), one CTA per row with every
# unit used (3072, 5120, 8192) or a ragged last item (272 units: 2240 is 280 units over 96
# threads), long rows (15360) and the longest (32768)
KS = [16, 48, 272, 1024, 1040, 2240, 3072, 5120, 8192, 15360, 32768]


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("K", KS, ids=lambda k: f"K{k}")
def test_gpu_bit_exact(K, dtype):
    R = max(7, min(301, (1 << 21) // K))  # rows not a multiple of the rows per CTA
    x = _awkward(R, K, dtype, seed=K)
    xc = x.cuda()
    for rule in ("rn", "fp8_exact"):
        for gran in ("tensor", "row"):
            for layout in ("row_major", "blocked"):
                a = nvfp4.quantize(xc, rule, False, gran, check_finite=False,
                                   scale_layout=layout, backend="cuda")
                b = nvfp4.quantize(x, rule, False, gran, check_finite=False,
                                   scale_layout=layout, backend="reference")
                assert_same_nvfp4(a, b)
        gs_rows = torch.rand(R, 1) * 0.02 + 1e-4
        assert_same_nvfp4(
            nvfp4.quantize(xc, rule, granularity="row", check_finite=False,
                           global_scale=gs_rows.cuda(), backend="cuda"),
            ref.quantize(x, rule, granularity="row", global_scale=gs_rows))
    for gran in ("tensor", "row"):
        v, gs = nvfp4.quantize_to_fp8(xc, granularity=gran, backend="cuda")
        v_ref, gs_ref = ref.to_fp8_container(ref.quantize(x, "fp8_exact", granularity=gran))
        assert_same_fp8_container(v, gs, v_ref, gs_ref)


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
def test_gpu_large_both_outputs_one_call():
    """Packed data, scales, per-row scale and the container from one launch, at a DiT size."""
    x = _awkward(4608, 3072, torch.bfloat16, seed=1)
    data, scales, gs, fp8 = op()(x.cuda(), None, True, False, True, True)
    b = ref.quantize(x, "fp8_exact", granularity="row")
    assert torch.equal(data.cpu(), b.data)
    assert torch.equal(scales.cpu(), b.scales.view(torch.uint8))
    assert torch.equal(gs.cpu(), b.global_scale.reshape(-1))
    v_ref, _ = ref.to_fp8_container(b)
    assert torch.equal(fp8.view(torch.uint8).cpu(), v_ref.view(torch.uint8))


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
@pytest.mark.parametrize("K", [16, 1040, 3072, 5120, 8192])
def test_gpu_many_rows(K):
    """16M elements in many more CTAs than fit on the GPU at once (rows sharing a warp; a row
    per CTA with 3 blocks per thread at K = 1040 / 3072, 4 at 5120 / 8192), all outputs; the
    awkward rows are re-planted a third and two thirds in."""
    R = (1 << 24) // K + 3
    x = _awkward(R, K, torch.bfloat16, seed=K + 1)
    for start in (R // 3, 2 * R // 3):
        x[start:start + 6] = x[:6]
    data, scales, gs, fp8 = op()(x.cuda(), None, True, False, True, True)
    b = ref.quantize(x, "fp8_exact", granularity="row")
    assert torch.equal(data.cpu(), b.data)
    assert torch.equal(scales.cpu(), b.scales.view(torch.uint8))
    assert torch.equal(gs.cpu(), b.global_scale.reshape(-1))
    assert torch.equal(fp8.view(torch.uint8).cpu(), ref.to_fp8_container(b)[0].view(torch.uint8))
    gs_rows = torch.rand(R, 1) * 0.02 + 1e-4
    assert_same_nvfp4(
        nvfp4.quantize(x.cuda(), "rn", granularity="row", check_finite=False,
                       global_scale=gs_rows.cuda(), scale_layout="blocked", backend="cuda"),
        nvfp4.quantize(x, "rn", granularity="row", check_finite=False, global_scale=gs_rows,
                       scale_layout="blocked", backend="reference"))


def _blocky(R: int, K: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """_awkward rows with, in every row, about one block in 8 zeroed, one made huge and one
    tiny (bf16: x 1e25 / 1e-25; fp16: x 64 / 1e-4, clamped to the finite range)."""
    x = _awkward(R, K, dtype, seed).float().reshape(R, K // 16, 16)
    kind = torch.randint(0, 8, (R, K // 16, 1), generator=torch.Generator().manual_seed(seed))
    huge, tiny = (1e25, 1e-25) if dtype == torch.bfloat16 else (64.0, 1e-4)
    x = torch.where(kind == 0, 0.0, torch.where(kind == 1, x * huge,
                                                torch.where(kind == 2, x * tiny, x)))
    top = torch.finfo(dtype).max
    return x.reshape(R, K).clamp(-top, top).to(dtype)


def _poison_cuda_cache(*numels: int) -> None:
    """Leave freed uint8 blocks of these sizes, filled with 0xA5, in the caching allocator:
    outputs allocated without a memset then show any byte the kernel leaves unwritten."""
    blocks = [torch.full((n,), 0xA5, dtype=torch.uint8, device="cuda") for n in numels for _ in "ab"]
    del blocks


# Blocked scales, compared byte for byte with the padding: rows sharing warps (K = 1040: 65
# blocks, 3 columns of padding) and a CTA per row (3072 ... 32768: 64 to 1024 threads); ragged
# R (padding rows in the last tile: the op clears the scales first) and R = 256 (no padding:
# the scales are not cleared, the kernel writes every byte)
@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
@pytest.mark.parametrize("R", [1, 129, 256, 300], ids=lambda r: f"R{r}")
@pytest.mark.parametrize("K", [1040, 3072, 5120, 8192, 12288, 32768], ids=lambda k: f"K{k}")
def test_gpu_blocked_scales_bit_exact(K, R):
    for dtype in (torch.bfloat16, torch.float16):
        x = _blocky(R, K, dtype, seed=K + R + (dtype == torch.float16))
        xc = x.cuda()
        for rule in ("rn", "fp8_exact"):
            fp8_exact = rule == "fp8_exact"
            b = ref.quantize(x, rule, granularity="row")
            want = nvfp4.to_blocked(b.scales.reshape(R, K // 16)).view(torch.uint8)
            _poison_cuda_cache(R * K // 2, want.numel())
            data, scales, gs, fp8 = op()(xc, None, fp8_exact, True, True, fp8_exact)
            assert torch.equal(scales.cpu(), want), (rule, dtype)  # every byte, padding too
            assert torch.equal(data.cpu(), b.data)
            assert torch.equal(gs.cpu(), b.global_scale.reshape(-1))
            if fp8_exact:
                v_ref, _ = ref.to_fp8_container(b)
                assert torch.equal(fp8.view(torch.uint8).cpu(), v_ref.view(torch.uint8))
            # given scales (no row max): the tensor's, and one per row
            for gran, given in (("tensor", None), ("row", torch.rand(R, 1) * 0.02 + 1e-4)):
                _poison_cuda_cache(R * K // 2, want.numel())
                a = nvfp4.quantize(xc, rule, granularity=gran, check_finite=False,
                                   global_scale=None if given is None else given.cuda(),
                                   scale_layout="blocked", backend="cuda")
                r = nvfp4.quantize(x, rule, granularity=gran, check_finite=False,
                                   global_scale=given, scale_layout="blocked", backend="reference")
                assert torch.equal(a.scales.view(torch.uint8).cpu(), r.scales.view(torch.uint8))
                assert_same_nvfp4(a, r)


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
def test_gpu_views_empty_and_fallbacks():
    x = _awkward(64, 1040, torch.bfloat16, seed=3).cuda()
    view = x[:, 16:1040]  # row stride 1040 (a multiple of 8), 32-byte offset: the kernel runs
    assert api._cuda_unavailable_reason(view, False) is None
    assert_same_nvfp4(nvfp4.quantize(view, "fp8_exact", granularity="row", backend="cuda"),
                      ref.quantize(view.cpu(), "fp8_exact", granularity="row"))
    odd = x[:, 4:1028]  # 8 bytes past a 16-byte boundary: "auto" takes Triton, same bits
    assert "16-byte" in api._cuda_unavailable_reason(odd, False)
    assert api._path("auto", odd, False, container=True) == "triton"
    v, gs = nvfp4.quantize_to_fp8(odd)
    assert_same_fp8_container(
        v, gs, *ref.to_fp8_container(ref.quantize(odd.cpu(), "fp8_exact", granularity="row")))
    assert api._path("auto", x, False, container=True) == "cuda"
    assert api._path("auto", x, False, container=False) == "triton"  # packed: Triton is faster
    for K in (1040, 1024):  # per-row scales: CUDA at every K since session 8
        assert api._path("auto", x[:, :K], False, container=False, row_scale=True) == "cuda"
    assert api._path("auto", x.float(), False, container=True) == "triton"
    assert api._path("auto", x, True, container=True) == "triton"  # scale search
    e = nvfp4.quantize(x[:0], backend="cuda")
    assert e.data.shape == (0, 520)
    v, gs = nvfp4.quantize_to_fp8(x[:0], backend="cuda")
    assert v.shape == (0, 1040) and gs.shape == (0, 1)


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
def test_gpu_opcheck_and_compile():
    x = _awkward(33, 256, torch.bfloat16, seed=5).cuda()
    torch.library.opcheck(op().default, (x, None, True, False, True, False),
                          test_utils=("test_faketensor",))

    @torch.compile(fullgraph=True)
    def f(x):
        values, gs = nvfp4.quantize_to_fp8(x)
        return values.float() * gs

    v, gs = ref.to_fp8_container(ref.quantize(x.cpu(), "fp8_exact", granularity="row"))
    assert torch.equal(f(x).cpu(), v.float() * gs)


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
@pytest.mark.parametrize("R, K1, K2", [(1, 16, 16), (37, 3072, 12288), (300, 64, 1040),
                                       (129, 2240, 5600), (5, 8192, 24576)])
def test_gpu_concatenated_rows_bit_exact(R, K1, K2):
    """x_tail: the rows of cat([x, x_tail], 1), read from both in place (row-strided views,
    a zero row and huge / tiny magnitudes among them) == the kernel on the concatenation ==
    the reference; and quantize_to_fp8(x, x_tail=...) routes there."""
    x = _awkward(R, K1 + 16, torch.bfloat16, seed=R + K1).cuda()[:, 8:8 + K1]
    tail = _awkward(R, K2, torch.bfloat16, seed=K2).cuda()
    if R > 2:
        tail[1] *= 1e-30
        x[2].zero_()
        tail[2].zero_()
    both = torch.cat([x, tail], 1)
    got = op()(x, None, True, False, True, True, tail)
    want = op()(both, None, True, False, True, True)
    for g, w in zip(got, want):
        assert torch.equal(g.view(torch.uint8) if g.dtype == torch.float8_e4m3fn else g,
                           w.view(torch.uint8) if w.dtype == torch.float8_e4m3fn else w)
    v, gs = nvfp4.quantize_to_fp8(x, x_tail=tail)
    assert_same_fp8_container(
        v, gs, *ref.to_fp8_container(ref.quantize(both.cpu(), "fp8_exact", granularity="row")))


@pytest.mark.gpu
@needs_native
@needs_cuda_quantizer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_activation_on_read_matches_torch_gelu(dtype):
    """activation="gelu_tanh" from activation_start on: GELU with the hardware tanh, as the
    quantizer reads, against torch's GELU then the same quantizer. The GELU'd values may differ
    in their last place, so a few E4M3 values (and scales of rows whose amax moved) may differ
    by a step; nothing else. Then the whole row GELU'd (activation_start 0), as
    quantize_to_fp8(activation="gelu_tanh") runs it."""
    x = (torch.randn(257, 3072 + 12288, device="cuda") * 2).to(dtype)
    x[3, 3072:] = 0
    start = 3072
    got_v = op()(x, None, True, False, False, True, None, "gelu_tanh", start)[3]
    ref_x = torch.cat([x[:, :start], torch.nn.functional.gelu(x[:, start:], approximate="tanh")], 1)
    want_v = op()(ref_x, None, True, False, False, True)[3]
    assert torch.equal(got_v[:, :start].view(torch.uint8)[3], want_v[:, :start].view(torch.uint8)[3])
    differ = (got_v.float() != want_v.float()).float().mean().item()
    assert differ < 2e-3, differ
    rel = ((got_v.float() - want_v.float()).norm() / want_v.float().norm()).item()
    assert rel < 2e-3, rel
    # the tail form: cat([x, gelu(x_tail)]) through x_tail + activation_start = x's width
    head, tail = x[:, :start].contiguous(), x[:, start:].contiguous()
    tail_v = op()(head, None, True, False, False, True, tail, "gelu_tanh", start)[3]
    assert torch.equal(tail_v.view(torch.uint8), got_v.view(torch.uint8))
    # GELU of the whole row (activation_start 0), as quantize_to_fp8(activation=...) runs it
    all_v = op()(x, None, True, False, False, True, None, "gelu_tanh", 0)[3]
    want_all = op()(torch.nn.functional.gelu(x, approximate="tanh"), None, True, False, False,
                    True)[3]
    assert (all_v.float() != want_all.float()).float().mean().item() < 2e-3
    v, gs = nvfp4.quantize_to_fp8(x, activation="gelu_tanh")
    assert torch.equal(v.view(torch.uint8), all_v.view(torch.uint8))


# ------------------------------------------------ the CUDA kernel's division-free arithmetic
def _rn32(v: Fraction) -> np.float32:
    """v rounded to the nearest float32, ties to even (subnormals included), exactly."""
    if v == 0:
        return np.float32(0.0)
    f = np.float32(float(v))  # float(Fraction) is correctly rounded; f32 may double-round
    near = (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf)))
    return min(near, key=lambda c: (abs(Fraction(float(c)) - v), int(c.view(np.uint32)) & 1))


def _markstein(a: np.float32, b: np.float32, rb: np.float32) -> np.float32:
    """RN(q + RN(a - q b) rb), q = RN(a rb), each fma rounded once (the kernel's sequence)."""
    fa, fb, frb = Fraction(float(a)), Fraction(float(b)), Fraction(float(rb))
    q = _rn32(fa * frb)
    rem = _rn32(fa - Fraction(float(q)) * fb)
    return _rn32(Fraction(float(q)) + Fraction(float(rem)) * frb)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_block_amax_over_6_without_division_is_exact(dtype):
    """block_ideal_scale's RN(amax / 6) by one product and one correction equals the
    correctly rounded quotient for every positive finite bf16 / fp16 value (subnormals too)."""
    top = 0x7F80 if dtype == torch.bfloat16 else 0x7C00
    values = torch.arange(1, top, dtype=torch.int32).to(torch.int16).view(dtype).float().numpy()
    sixth, six = np.float32(1) / np.float32(6), np.float32(6)
    # the single product is not enough (a third of the values round differently) ...
    assert (values * sixth != values / six).mean() > 0.2
    # ... the corrected one is exact (in exact arithmetic, every value)
    for a in values:
        assert _markstein(a, six, sixth) == a / six, a


def test_block_scale_over_gs_without_division_is_exact():
    """block_ideal_scale's h / gs by Markstein's correction with RN(1 / gs): exact for gs in
    [2^-90, 2^100] and quotients in [2^-12, 2^12] (random draws, edge significands)."""
    rng = np.random.default_rng(0)
    edge = [0, 0x7FFFFF, 0x400000, 0x7FFFFE, 1, 0x2AAAAB]
    for i in range(3000):
        eg = int(rng.integers(127 - 90, 127 + 101))
        eh = eg + int(rng.integers(-12, 13))
        mg = edge[i % len(edge)] if i % 5 == 0 else int(rng.integers(0, 1 << 23))
        mh = edge[i % len(edge)] if i % 7 == 0 else int(rng.integers(0, 1 << 23))
        h, gs = (np.array([(e << 23) | m], dtype=np.uint32).view(np.float32)[0]
                 for e, m in ((eh, mh), (eg, mg)))
        rg = _rn32(1 / Fraction(float(gs)))
        assert _markstein(h, gs, rg) == _rn32(Fraction(float(h)) / Fraction(float(gs))), (h, gs)


# ------------------------------------ the launcher's plan and the kernel's indexing, mirrored
# csrc/nvfp4_quantize/nvfp4_quantize_rows_sm90.cu line for line, in its integer arithmetic (on
# non-negative ints C++'s / is //): blocks_per_thread and make_plan; the kernel's prologue
# (row and lane of a thread), its block loop and row_max's shared-memory slots; and the
# condition under which ops.cpp leaves blocked scales uncleared.
MAX_THREADS, THREADS_SHARED, BPT_SHARED, MIN_BPT, MAX_BPT = 1024, 128, 2, 2, 4


def _blocks_per_thread(blocks: int) -> int:
    best, best_cost = MIN_BPT, 1e300
    for bpt in range(MIN_BPT, MAX_BPT + 1):
        threads = (blocks + bpt - 1) // bpt
        if threads > MAX_THREADS:
            continue
        cost = ((threads + 31) // 32) * (1.35 + bpt)
        if cost < best_cost:
            best, best_cost = bpt, cost
    return best


def _make_plan(R: int, K: int) -> dict:
    """-> bpt, threads_per_row (tpr), log2_tpr, cta (threads), grid."""
    blocks = K // 16
    need = (blocks + BPT_SHARED - 1) // BPT_SHARED
    if need <= 32:  # rows share warps
        log2 = 0
        while (1 << log2) < need:
            log2 += 1
        rows_per_cta = THREADS_SHARED // (1 << log2)
        return dict(bpt=BPT_SHARED, tpr=1 << log2, log2_tpr=log2, cta=THREADS_SHARED,
                    grid=(R + rows_per_cta - 1) // rows_per_cta)
    bpt = _blocks_per_thread(blocks)
    tpr = ((blocks + bpt - 1) // bpt + 31) // 32 * 32
    return dict(bpt=bpt, tpr=tpr, log2_tpr=5, cta=tpr, grid=R)


def _blocked_filled(R: int, K: int) -> bool:
    """ops.cpp: blocked scales are allocated without a memset (no padding rows or columns)."""
    return R % 128 == 0 and (K // 16) % 4 == 0


def _kernel_rows(pl: dict, R: int):
    """The prologue: (cta, threadIdx.x) -> row, lane_in_row, as arrays over the grid; rows
    that own a CTA (tpr > 32) depend on the CTA only, so x is left out there."""
    tpr = pl["tpr"]
    if tpr > 32:
        return np.arange(pl["grid"]), None
    c, x = (a.ravel() for a in np.meshgrid(np.arange(pl["grid"]), np.arange(pl["cta"]), indexing="ij"))
    return (c * pl["cta"] + x) >> pl["log2_tpr"], x & (tpr - 1)


RS = [1, 7, 127, 128, 129, 300, 1000]


def _check_rows(pl: dict, R: int) -> None:
    """Every row < R has exactly one thread per lane."""
    rows, lanes = _kernel_rows(pl, R)
    ok = rows < R
    if lanes is None:  # a row per CTA: lanes 0..tpr-1 are threadIdx.x
        assert np.array_equal(np.bincount(rows[ok], minlength=R), np.ones(R, np.int64))
    else:
        assert np.array_equal(np.bincount(rows[ok] * pl["tpr"] + lanes[ok], minlength=R * pl["tpr"]),
                              np.ones(R * pl["tpr"], np.int64))


def _check_row_max_slots(pl: dict) -> None:
    """row_max: warp w of the CTA's row writes red[w]; the row reads red[lane], lane < warps:
    exactly its warps, <= 32 slots."""
    if pl["tpr"] <= 32:
        return  # shuffles within a warp
    assert pl["cta"] % 32 == 0 and pl["cta"] // 32 <= 32


def test_launcher_and_kernel_indexing_every_k():
    """For every K (multiple of 16 up to 32768) and several R: each row's blocks are quantized
    by exactly one thread (rows x blocks: each (row < R, block) once), threads per CTA fit,
    row_max reduces each row's own warps, and blocked scales are left uncleared only where
    the kernel's byte stores cover every byte of them."""
    rows_checked = set()
    for K in range(16, 32768 + 1, 16):
        blocks = K // 16
        pl = _make_plan(1, K)
        tpr, bpt = pl["tpr"], pl["bpt"]
        assert pl["cta"] <= MAX_THREADS
        assert (tpr & (tpr - 1) == 0 and tpr <= 32) if pl["log2_tpr"] < 5 else tpr % 32 == 0
        # every block of a row once: b = lane + i * tpr, b < blocks
        b = (np.arange(tpr)[:, None] + np.arange(bpt)[None, :] * tpr).ravel()
        assert np.array_equal(np.bincount(b[b < blocks], minlength=blocks), np.ones(blocks, np.int64))
        _check_row_max_slots(pl)
        for R in RS:
            plr = _make_plan(R, K)
            key = (tpr, plr["log2_tpr"], plr["cta"], plr["grid"], R)
            if key not in rows_checked:  # rows depend on the plan's shape, not on K
                rows_checked.add(key)
                _check_rows(plr, R)
            # R x blocks bytes, once each (blocked_offset is one-to-one: test_nvfp4)
            assert _blocked_filled(R, K) == (R * blocks == blocked_numel(R, blocks))
