"""Tests of the C++/CUDA ops in solrl_kernels._C (csrc/): schemas, fakes, argument errors, and
on a GPU the kernels against float64 references.

CPU (whenever _C is built): schemas, fake implementations (FakeTensorMode) and the errors that
the C++ argument checks raise on CPU tensors. GPU (@pytest.mark.gpu): fp8_gemm_sm90 on Hopper
against a float64 reference on fresh random E4M3 inputs; nvfp4_gemm_sm100 only on sm_100.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from solrl_kernels import _backends

pytestmark = pytest.mark.skipif(
    not _backends.native_ops_available(), reason=_backends.native_unavailable_reason()
)

if _backends.native_ops_available():
    from solrl_kernels import _native_ops  # noqa: F401  registers the fakes (idempotent import)

E4M3 = torch.float8_e4m3fn
ACTIVATIONS = ("none", "gelu_tanh", "silu")


def ops():
    return torch.ops.solrl_kernels


def cap_major() -> int | None:
    return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else None


# --------------------------------------------------------------------------------- references
def act_ref(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    if activation == "silu":
        return torch.nn.functional.silu(y)
    return y


def fp8_gemm_ref(a, b, scale_a, scale_b, bias, activation) -> torch.Tensor:
    """float64: act(scale_a[m] * scale_b[n] * (a @ b.T)[m, n] + bias[n])."""
    acc = a.double() @ b.double().T
    y = scale_a.double().reshape(-1, 1) * scale_b.double().reshape(1, -1) * acc
    if bias is not None:
        y = y + bias.double()
    return act_ref(y, activation)


def rel_err_report(out: torch.Tensor, ref: torch.Tensor, tol: float) -> tuple[float, str]:
    """(||out - ref|| / ||ref||, a failure message with the worst elements and NaN/Inf counts)."""
    o, r = out.double(), ref.double()
    err = float((o - r).norm() / r.norm().clamp_min(1e-30))
    diff = (o - r).abs()
    worst = diff.flatten().topk(min(5, diff.numel())).indices
    idx = [tuple(int(v) for v in torch.unravel_index(i, diff.shape)) for i in worst]
    lines = [f"rel err {err:.3e} > {tol:.1e}; NaN {int(o.isnan().sum())}, Inf {int(o.isinf().sum())}"]
    lines += [f"  at {i}: out {float(o[i]):+.6e} ref {float(r[i]):+.6e}" for i in idx]
    return err, "\n".join(lines)


def assert_close_rel(out: torch.Tensor, ref64: torch.Tensor, tol: float = 1e-3) -> None:
    # bf16 output: its own rounding is up to 2^-9 relative (rel. RMS ~1.5e-3 on random data),
    # more than the tolerance, so it is compared with the float64 reference rounded to bf16
    # (what an exact kernel would return); fp16 (2^-11) is compared with float64 directly.
    ref = ref64.to(torch.bfloat16) if out.dtype == torch.bfloat16 else ref64
    assert torch.isfinite(out).all(), rel_err_report(out, ref, tol)[1]
    err, msg = rel_err_report(out, ref, tol)
    assert err <= tol, msg


# ---------------------------------------------------------------------------------- CPU tests
def test_schemas_registered():
    expected = {
        "fp8_gemm_sm90": "solrl_kernels::fp8_gemm_sm90(Tensor a, Tensor b, Tensor scale_a, "
        "Tensor scale_b, Tensor? bias, str activation, ScalarType out_dtype) -> Tensor",
        "nvfp4_gemm_sm100": "solrl_kernels::nvfp4_gemm_sm100(Tensor a_data, Tensor "
        "a_scales_blocked, Tensor b_data, Tensor b_scales_blocked, Tensor alpha, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor",
    }
    for name, schema in expected.items():
        assert str(getattr(ops(), name).default._schema) == schema
    archs = _backends.native_archs()
    assert set(archs) <= {"sm90a", "sm100a"}, archs


def _fp8_inputs(M, N, K, device="cpu", per_row=True, bias_dtype=torch.bfloat16, scale=3.0):
    a = (torch.randn(M, K, device=device) * scale).to(E4M3)
    b = (torch.randn(N, K, device=device) * scale).to(E4M3)
    sa = torch.rand(M if per_row else 1, device=device) + 0.05
    sb = torch.rand(N if per_row else 1, device=device) + 0.05
    bias = None if bias_dtype is None else torch.randn(N, device=device).to(bias_dtype)
    return a, b, sa, sb, bias


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_fp8_gemm_sm90_fake_shapes(out_dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b, sa, sb, bias = _fp8_inputs(37, 24, 48)
        out = ops().fp8_gemm_sm90(a, b, sa, sb, bias, "silu", out_dtype)
        out_t = ops()._fp8_gemm_sm90_tile(a, b, sa[:1], sb, None, "none", out_dtype, 1)
    assert out.shape == (37, 24) and out.dtype == out_dtype
    assert out_t.shape == (37, 24) and out_t.dtype == out_dtype


@pytest.mark.parametrize("impl", ["cpp", "fake"])
def test_fp8_gemm_sm90_tile_range_same_in_cpp_and_fake(impl):
    """The fake accepts exactly the tiles the C++ op does (-1 and 0..3), with one message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def call(tile):
        a, b, sa, sb, bias = _fp8_inputs(37, 24, 48)
        return ops()._fp8_gemm_sm90_tile(a, b, sa, sb, bias, "none", torch.bfloat16, tile)

    for bad in (-2, len(_native_ops.FP8_GEMM_SM90_TILES) - 1):
        with pytest.raises(ValueError, match=r"tile must be -1 \(heuristic\) or in \[0, 4\)"):
            if impl == "fake":
                with FakeTensorMode():
                    call(bad)
            else:
                call(bad)
    if impl == "fake":
        with FakeTensorMode():
            assert all(call(t).shape == (37, 24) for t in (-1, 0, 1, 2, 3))


def test_nvfp4_gemm_sm100_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from solrl_kernels.nvfp4.layouts import blocked_numel

    M, N, K = 130, 40, 96
    with FakeTensorMode():
        out = ops().nvfp4_gemm_sm100(
            torch.empty(M, K // 2, dtype=torch.uint8),
            torch.empty(blocked_numel(M, K // 16), dtype=E4M3),
            torch.empty(N, K // 2, dtype=torch.uint8),
            torch.empty(blocked_numel(N, K // 16), dtype=E4M3),
            torch.empty((), dtype=torch.float32),
            None,
            torch.float16,
        )
    assert out.shape == (M, N) and out.dtype == torch.float16


def _bad_fp8_cases():
    M, N, K = 40, 24, 64
    cases = []

    def case(id_, exc, match, **kw):
        cases.append(pytest.param(kw, exc, match, id=id_))

    case("a-dtype", TypeError, "must be Float8_e4m3fn, got Float|must be torch.float8_e4m3fn",
         a=torch.randn(M, K))
    case("a-3d", ValueError, "2-D", a=torch.zeros(2, M, K, dtype=E4M3))
    case("k-mismatch", ValueError, "K differs", b=torch.zeros(N, K + 16, dtype=E4M3))
    case("k-mod-16", ValueError, "K=40", a=torch.zeros(M, 40, dtype=E4M3),
         b=torch.zeros(N, 40, dtype=E4M3))
    case("n-mod-8", ValueError, "N=20", b=torch.zeros(20, K, dtype=E4M3), scale_b=torch.ones(20),
         bias=None)
    case("a-noncontig", ValueError, "contiguous", a=torch.zeros(K, M, dtype=E4M3).T)
    case("scale-a-numel", ValueError, r"\(7,\)|\[7\]", scale_a=torch.ones(7))
    case("scale-b-dtype", TypeError, "float32|Float", scale_b=torch.ones(N, dtype=torch.float16))
    case("bias-shape", ValueError, r"\(25,\)|\[25\]", bias=torch.ones(N + 1))
    case("bias-dtype", TypeError, "bias must be", bias=torch.ones(N, dtype=torch.float64))
    case("activation", ValueError, "'relu'", activation="relu")
    case("out-dtype", ValueError, "out_dtype", out_dtype=torch.float32)
    return cases


@pytest.mark.parametrize("kw, exc, match", _bad_fp8_cases())
@pytest.mark.parametrize("impl", ["cpp", "fake"])
def test_fp8_gemm_sm90_bad_inputs(kw, exc, match, impl):
    a, b, sa, sb, bias = _fp8_inputs(40, 24, 64)
    args = dict(a=a, b=b, scale_a=sa, scale_b=sb, bias=bias, activation="none",
                out_dtype=torch.bfloat16)
    args.update(kw)
    if impl == "fake":
        with pytest.raises(exc, match=match):
            _native_ops.check_fp8_gemm_sm90_args(**args)
    else:  # the C++ checks run on CPU tensors too
        with pytest.raises(exc, match=match):
            ops().fp8_gemm_sm90(*args.values())


def test_fp8_gemm_sm90_valid_cpu_inputs_say_cuda_or_arch():
    a, b, sa, sb, bias = _fp8_inputs(40, 24, 64, per_row=False)
    match = "CUDA tensors only" if "sm90a" in _backends.native_archs() else "9.0a"
    with pytest.raises((ValueError, RuntimeError), match=match):
        ops().fp8_gemm_sm90(a, b, sa, sb, bias, "gelu_tanh", torch.float16)


def test_nvfp4_gemm_sm100_bad_inputs_cpu():
    from solrl_kernels.nvfp4.layouts import blocked_numel

    M, N, K = 40, 24, 64
    ad, bd = torch.zeros(M, K // 2, dtype=torch.uint8), torch.zeros(N, K // 2, dtype=torch.uint8)
    asc = torch.zeros(blocked_numel(M, K // 16), dtype=E4M3)
    bsc = torch.zeros(blocked_numel(N, K // 16), dtype=E4M3)
    alpha = torch.ones(())
    with pytest.raises(ValueError, match="= 512 elements"):  # row-major scales, not blocked
        ops().nvfp4_gemm_sm100(ad, torch.zeros(M * K // 16, dtype=E4M3), bd, bsc, alpha, None,
                               torch.bfloat16)
    with pytest.raises(ValueError, match="K=48"):
        ops().nvfp4_gemm_sm100(torch.zeros(M, 24, dtype=torch.uint8), asc,
                               torch.zeros(N, 24, dtype=torch.uint8), bsc, alpha, None,
                               torch.bfloat16)
    with pytest.raises(TypeError, match="alpha must be"):
        ops().nvfp4_gemm_sm100(ad, asc, bd, bsc, alpha.double(), None, torch.bfloat16)
    match = "CUDA tensors only" if "sm100a" in _backends.native_archs() else "10.0a"
    with pytest.raises((ValueError, RuntimeError), match=match):
        ops().nvfp4_gemm_sm100(ad, asc, bd, bsc, alpha, None, torch.bfloat16)


# ---------------------------------------------------------------------------------- GPU tests
needs_hopper = pytest.mark.skipif(
    cap_major() != 9 or "sm90a" not in _backends.native_archs(),
    reason="needs an sm_90 GPU and a build with TORCH_CUDA_ARCH_LIST containing 9.0a",
)

SHAPES = [  # (M, N, K): tiny, ragged M/N with a K tail shorter than one 128 k-tile, ragged,
    pytest.param(1, 8, 16, id="1x8x16"),  # long K (accuracy), many tiles (cooperative tile)
    pytest.param(77, 136, 48, id="77x136x48"),
    pytest.param(1000, 776, 512, id="1000x776x512"),
    pytest.param(256, 512, 15360, id="256x512x15360"),
    pytest.param(2048, 3072, 1024, id="2048x3072x1024"),
]


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("M, N, K", SHAPES)
@pytest.mark.parametrize("tile", [-1, 0, 1, 2, 3], ids=["heuristic", "128x128coop", "64x128pingpong",
                                                  "128x192coop", "64x192pingpong"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fp8_gemm_sm90_shapes(M, N, K, tile, out_dtype):
    torch.manual_seed(M * 7 + N * 3 + K + tile)
    a, b, sa, sb, bias = _fp8_inputs(M, N, K, "cuda", per_row=True, bias_dtype=torch.float32)
    out = ops()._fp8_gemm_sm90_tile(a, b, sa, sb, bias, "gelu_tanh", out_dtype, tile)
    assert out.shape == (M, N) and out.dtype == out_dtype
    assert_close_rel(out, fp8_gemm_ref(a, b, sa, sb, bias, "gelu_tanh"))


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("tile", [0, 1, 2, 3],
                         ids=["128x128coop", "64x128pingpong", "128x192coop", "64x192pingpong"])
def test_fp8_gemm_sm90_schedules_bit_identical(tile):
    """Swizzle and raster order move output tiles between SMs, never the arithmetic: every
    schedule gives the default's bits (ragged M and N: partial tiles at both edges)."""
    torch.manual_seed(tile)
    a, b, sa, sb, bias = _fp8_inputs(1100, 1032, 640, "cuda", bias_dtype=torch.float32)
    ref = ops()._fp8_gemm_sm90_tile(a, b, sa, sb, bias, "silu", torch.bfloat16, tile)
    assert_close_rel(ref, fp8_gemm_ref(a, b, sa, sb, bias, "silu"))
    for swizzle in (1, 2, 4, 8):
        for raster in (0, 1, 2):
            out = ops()._fp8_gemm_sm90_tile(a, b, sa, sb, bias, "silu", torch.bfloat16, tile,
                                            swizzle, raster)
            assert torch.equal(out, ref), (swizzle, raster)
    # fp32 promotion every k-tile instead of every 2: different rounding, same accuracy bound
    out4 = ops()._fp8_gemm_sm90_tile(a, b, sa, sb, bias, "silu", torch.bfloat16, tile, 0, 0, 4)
    assert_close_rel(out4, fp8_gemm_ref(a, b, sa, sb, bias, "silu"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(swizzle=3), "swizzle must be"), (dict(swizzle=16), "swizzle must be"),
    (dict(raster=3), "raster must be"), (dict(promotion_interval=6), "promotion_interval must"),
])
def test_fp8_gemm_sm90_tile_rejects_bad_schedule(kwargs, match):
    a, b, sa, sb, bias = _fp8_inputs(16, 16, 32)
    args = dict(swizzle=0, raster=0, promotion_interval=8) | kwargs
    with pytest.raises(ValueError, match=match):
        ops()._fp8_gemm_sm90_tile(a, b, sa, sb, bias, "none", torch.bfloat16, 0, *args.values())


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.bfloat16, torch.float16],
                         ids=["nobias", "bias32", "biasbf16", "bias16"])
@pytest.mark.parametrize("scales", ["row-col", "tensor-tensor", "row-tensor", "tensor-col"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fp8_gemm_sm90_epilogue(activation, bias_dtype, scales, out_dtype):
    M, N, K = 300, 392, 4096
    torch.manual_seed(zlib.crc32(f"{activation}{bias_dtype}{scales}{out_dtype}".encode()))
    a, b, sa, sb, bias = _fp8_inputs(M, N, K, "cuda", per_row=True, bias_dtype=bias_dtype,
                                     scale=1.0)
    if scales.startswith("tensor"):
        sa = sa[:1].clone()
    if scales.endswith("tensor"):
        sb = sb[:1].clone()
    out = ops().fp8_gemm_sm90(a, b, sa, sb, bias, activation, out_dtype)
    # the reference sees the bias exactly as given (a 16-bit bias is exact in fp32)
    assert_close_rel(out, fp8_gemm_ref(a, b, sa, sb, bias, activation))


@pytest.mark.gpu
@needs_hopper
def test_fp8_gemm_sm90_opcheck_and_compile():
    a, b, sa, sb, bias = _fp8_inputs(200, 64, 256, "cuda")
    # only the fake-tensor check: opcheck's test_schema compares inputs before/after with
    # arithmetic that float8 tensors lack ("mul_cuda" not implemented for 'Float8_e4m3fn');
    # tracing is covered by the torch.compile call below
    torch.library.opcheck(ops().fp8_gemm_sm90.default,
                          (a, b, sa, sb, bias, "silu", torch.bfloat16),
                          test_utils=("test_faketensor",))

    @torch.compile(fullgraph=True)
    def f(a, b, sa, sb, bias):
        return ops().fp8_gemm_sm90(a, b, sa, sb, bias, "none", torch.float16) * 2

    out = f(a, b, sa, sb, bias)
    assert_close_rel(out, 2 * fp8_gemm_ref(a, b, sa, sb, bias, "none"))


@pytest.mark.gpu
@needs_hopper
def test_fp8_gemm_sm90_misaligned_view_and_empty():
    a, b, sa, sb, _ = _fp8_inputs(64, 64, 64, "cuda")
    flat = torch.empty(64 * 64 + 8, dtype=E4M3, device="cuda")
    a_view = flat[8:].view(64, 64)  # contiguous, but 8 bytes past a 16-byte boundary
    with pytest.raises(ValueError, match="16-byte aligned"):
        ops().fp8_gemm_sm90(a_view, b, sa, sb, None, "none", torch.bfloat16)
    out = ops().fp8_gemm_sm90(a[:0], b, sa[:0], sb, None, "none", torch.bfloat16)
    assert out.shape == (0, 64)


@pytest.mark.gpu
@pytest.mark.skipif(cap_major() == 10, reason="runs on a non-Blackwell GPU")
def test_nvfp4_gemm_sm100_refuses_other_gpus():
    from solrl_kernels.nvfp4.layouts import blocked_numel

    M, N, K = 128, 64, 64
    dev = "cuda"
    with pytest.raises(RuntimeError, match="sm_100|10.0a"):
        ops().nvfp4_gemm_sm100(
            torch.zeros(M, K // 2, dtype=torch.uint8, device=dev),
            torch.zeros(blocked_numel(M, K // 16), dtype=E4M3, device=dev),
            torch.zeros(N, K // 2, dtype=torch.uint8, device=dev),
            torch.zeros(blocked_numel(N, K // 16), dtype=E4M3, device=dev),
            torch.ones((), device=dev), None, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(cap_major() != 10, reason="needs an sm_100 (Blackwell) GPU; never run here")
@pytest.mark.parametrize("M, N, K", [(128, 128, 256), (300, 136, 96), (1024, 2048, 4096)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_nvfp4_gemm_sm100_matches_reference(M, N, K, out_dtype):
    from solrl_kernels.nvfp4 import dequantize, quantize_reference, to_blocked

    torch.manual_seed(M + N + K)
    x = torch.randn(M, K, device="cuda")
    w = torch.randn(N, K, device="cuda") * 0.1
    qa, qb = quantize_reference(x), quantize_reference(w)
    bias = torch.randn(N, device="cuda")
    alpha = (qa.global_scale * qb.global_scale).float().reshape(())
    out = ops().nvfp4_gemm_sm100(qa.data, to_blocked(qa.scales), qb.data, to_blocked(qb.scales),
                                 alpha, bias, out_dtype)
    ref = dequantize(qa, torch.float64) @ dequantize(qb, torch.float64).T + bias.double()
    assert_close_rel(out, ref)
