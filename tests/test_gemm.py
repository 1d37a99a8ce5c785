"""NVFP4 linear / FP8 GEMM: every backend against the float64 reference of dequantized operands.

CPU: the emulated ops, and the Triton kernels in the interpreter (TRITON_INTERPRET=1, set by
conftest) on small ragged shapes. GPU (marked): each backend at DiT shapes incl. K = 15360.
"""

from __future__ import annotations

import math

import pytest
import torch

from solrl_kernels import nvfp4
from solrl_kernels.gemm import (
    FP8GemmConfig,
    FP8Weight,
    PackedGemmConfig,
    fp8_gemm,
    nvfp4_linear,
    prepare_weight,
    resolve_backend,
)
from solrl_kernels.gemm import ops as gemm_ops
from solrl_kernels.gemm import triton_launch as tl_launch
from solrl_kernels.gemm.reference import (
    expand_packed_to_fp8,
    fp8_gemm_reference,
    nvfp4_gemm_packed_reference,
    nvfp4_linear_reference,
    relative_error,
)

HAS_CUDA = torch.cuda.is_available()
FP8 = torch.float8_e4m3fn


def assert_close_verbose(out: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor | float,
                         what: str = "") -> None:
    """|out - ref| <= tol elementwise; on failure print the first mismatches and NaN/Inf."""
    out64, ref64 = out.double(), ref.double()
    tol = torch.as_tensor(tol, dtype=torch.float64, device=out.device)
    bad = ~((out64 - ref64).abs() <= tol)
    if bad.any():
        idx = bad.nonzero()[:8].tolist()
        lines = [f"{tuple(i)}: out={out64[tuple(i)].item():.6g} ref={ref64[tuple(i)].item():.6g} "
                 f"tol={tol.expand_as(out64)[tuple(i)].item():.3g}" for i in idx]
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements out of tolerance "
            f"(NaN: {int(torch.isnan(out64).sum())}, Inf: {int(torch.isinf(out64).sum())})\n"
            + "\n".join(lines)
        )


def awkward_rows(M: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """Fresh random (M, K) with awkward rows: an all-zero row, all-zero 16-blocks, a huge and a
    tiny row, a row with one outlier."""
    x = torch.randn(M, K, generator=gen)
    x[1] = 0.0
    x[2, :16] = 0.0
    x[3, 32:48] = 0.0
    x[4] *= 3e4
    x[5] *= 1e-6
    x[6, 7] = 500.0
    return x


def fp8_operands(M, N, K, gen, rule="fp8_exact"):
    x = awkward_rows(M, K, gen)
    w = awkward_rows(N, K, gen)
    xq = nvfp4.quantize(x, rule, granularity="row", backend="reference")
    wq = nvfp4.quantize(w, rule, granularity="row", backend="reference")
    return x, w, xq, wq


def fp32_sum_bound(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor):
    """Worst-case error of an fp32 dot of exact E4M3 products, K terms: K * 2^-24 * sum|a b|,
    scaled like the output (each product of two E4M3 values is exact in fp32)."""
    K = a.shape[1]
    mag = a.double().abs() @ b.double().abs().T
    return K * 2.0**-24 * mag * sa.double().reshape(-1, 1).abs() * sb.double().reshape(1, -1).abs()


# ------------------------------------------------------------------------ CPU: emulated path
@pytest.mark.parametrize("storage,rule", [
    pytest.param("fp8", "fp8_exact", id="fp8-fp8_exact"),
    pytest.param("packed", "fp8_exact", id="packed-fp8_exact"),
    pytest.param("packed", "rn", id="packed-rn"),
])
@pytest.mark.parametrize("activation", ["none", "gelu_tanh", "silu"])
def test_emulated_linear_matches_float64_reference(storage, rule, activation):
    gen = torch.Generator().manual_seed(hash((storage, rule, activation)) % 2**31)
    M, N, K = 48, 80, 96
    x = awkward_rows(M, K, gen).reshape(4, 12, K)  # leading dims are flattened
    w_dense = torch.randn(N, K, generator=gen)
    bias = torch.randn(N, generator=gen)
    w = prepare_weight(w_dense, storage=storage, scale_rule=rule)
    wt = w if isinstance(w, nvfp4.NVFP4Tensor) else nvfp4.quantize(
        w_dense, rule, granularity="row", backend="reference")
    out = nvfp4_linear(x, w, bias, out_dtype=torch.float32, activation=activation,
                       backend="emulated")
    ref = nvfp4_linear_reference(x, wt, bias, activation, torch.float64)
    assert out.shape == (4, 12, N) and out.dtype == torch.float32
    # fp32 accumulation of exact fp32 products (K terms) + fp32 epilogue: a relative bound
    rel = relative_error(out, ref)
    assert rel < 1e-6, rel


def test_fp8_storage_is_exactly_the_packed_weight():
    gen = torch.Generator().manual_seed(1)
    w = awkward_rows(64, 128, gen)
    fp8w = prepare_weight(w, storage="fp8")
    packed = prepare_weight(w, storage="packed")
    assert isinstance(fp8w, FP8Weight)
    deq_fp8 = fp8w.values.double() * fp8w.global_scale.double()
    deq_packed = nvfp4.reference.dequantize(packed, torch.float32).double()
    torch.testing.assert_close(deq_fp8, deq_packed, rtol=2**-23, atol=0)
    # memory: 8 bits vs 4.5 bits per element (+ one fp32 per row)
    assert packed.nbytes() == 64 * 128 // 2 + 64 * 128 // 16 + 64 * 4
    assert fp8w.nbytes() == 64 * 128 + 64 * 4


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_emulated_linear_low_precision_output(out_dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 64, generator=gen).to(torch.bfloat16)
    w = prepare_weight(torch.randn(48, 64, generator=gen), storage="packed")
    out = nvfp4_linear(x, w, None, out_dtype=out_dtype, backend="emulated")
    ref = nvfp4_linear_reference(x, w, None, "none", torch.float64)
    assert out.dtype == out_dtype
    # one rounding to out_dtype: half an ulp relative, after fp32 accumulation
    eps = torch.finfo(out_dtype).eps
    assert_close_verbose(out, ref, ref.abs() * eps + 1e-6 * ref.abs().max(), "low precision out")


def test_fp8_gemm_emulated_matches_reference():
    gen = torch.Generator().manual_seed(3)
    _, _, xq, wq = fp8_operands(48, 80, 96, gen)
    a, sa = nvfp4.to_fp8_container(xq)
    b, sb = nvfp4.to_fp8_container(wq)
    bias = torch.randn(80, generator=gen)
    out = fp8_gemm(a, b, sa, sb, bias, "silu", torch.float32, backend="emulated")
    ref = fp8_gemm_reference(a, b, sa.reshape(-1), sb.reshape(-1), bias, "silu", torch.float64)
    assert relative_error(out, ref) < 1e-6


# --------------------------------------------------------- CPU: Triton kernels, interpreted
SMALL_FP8 = [
    pytest.param(FP8GemmConfig(kernel="tma", block_m=32, block_n=32, block_k=64, group_m=2,
                               num_warps=4, num_stages=1, flatten=False), id="tma"),
    pytest.param(FP8GemmConfig(kernel="ptr", block_m=32, block_n=64, block_k=32, group_m=1,
                               num_warps=4, num_stages=1), id="ptr"),
]


@pytest.mark.parametrize("cfg", SMALL_FP8)
@pytest.mark.parametrize("activation,per_row", [("none", True), ("gelu_tanh", False),
                                                ("silu", True)])
def test_triton_fp8_gemm_interpreted(cfg, activation, per_row):
    gen = torch.Generator().manual_seed(4)
    M, N, K = 48, 80, 96  # ragged against every tile size, K % block_k != 0
    _, _, xq, wq = fp8_operands(M, N, K, gen)
    a, sa = nvfp4.to_fp8_container(xq)
    b, sb = nvfp4.to_fp8_container(wq)
    sa = sa.reshape(-1) if per_row else sa.reshape(-1)[:1].clone()
    sb = sb.reshape(-1) if per_row else sb.reshape(-1)[:1].clone()
    bias = torch.randn(N, generator=gen) if activation != "none" else None
    out = tl_launch.fp8_gemm(a, b, sa, sb, bias, activation, torch.float32, cfg)
    ref = fp8_gemm_reference(a, b, sa, sb, bias, activation, torch.float64)
    # exact products, fp32 sums (interpreter: numpy fp32 dot), activation in fp32
    bound = fp32_sum_bound(a, b, sa, sb) * 1.1 + ref.abs() * 2e-6 + 1e-30
    assert_close_verbose(out, ref, bound, f"fp8_gemm {activation}")


def test_triton_expand_is_bit_exact():
    gen = torch.Generator().manual_seed(5)
    w = awkward_rows(40, 160, gen)  # ragged N and K against the 16 x 64 tiles
    wq = nvfp4.quantize(w, "fp8_exact", scale_search=True, granularity="row", backend="reference")
    out = tl_launch.expand_nvfp4(wq.data, wq.scales, block_n=16, block_k=64)
    ref = expand_packed_to_fp8(wq.data, wq.scales)
    assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))
    # and it is the NVFP4 container's value set
    assert torch.equal(ref.view(torch.uint8), nvfp4.to_fp8_container(wq)[0].view(torch.uint8))


def test_expand_covers_every_code_and_scale():
    """All 16 codes x all 27 fp8_exact scales {1, 1.5} * 2^e in [2^-7, 64]."""
    scales = torch.tensor([m * 2.0**e for e in range(-7, 6) for m in (1.0, 1.5)] + [64.0])
    n_s = scales.numel()
    codes = torch.arange(16, dtype=torch.uint8).repeat(n_s, 1)  # (n_s, 16): one block per row
    data = nvfp4.pack(codes)
    sc = scales.to(FP8).reshape(n_s, 1)
    assert torch.equal(sc.float().reshape(-1), scales)  # all exactly E4M3
    out = tl_launch.expand_nvfp4(data, sc, block_n=16, block_k=16)
    exact = nvfp4.reference.e2m1_to_float(codes) * scales.reshape(-1, 1)
    assert torch.equal(out.float(), exact)


@pytest.mark.parametrize("variant", ["expand", "fused"])
def test_triton_packed_gemm_interpreted(variant):
    gen = torch.Generator().manual_seed(6)
    M, N, K = 48, 80, 96
    _, _, xq, wq = fp8_operands(M, N, K, gen)
    a, sa = nvfp4.to_fp8_container(xq)
    bias = torch.randn(N, generator=gen).to(torch.bfloat16)
    cfg = PackedGemmConfig(variant=variant, fp8=SMALL_FP8[0].values[0], block_m=32, block_n=32,
                           block_k=64, group=2, num_warps=4, num_stages=1, expand_block_n=16,
                           expand_block_k=32)
    sb = wq.global_scale.reshape(-1)
    out = tl_launch.nvfp4_gemm_packed(a, wq.data, wq.scales, sa.reshape(-1), sb, bias,
                                      "gelu_tanh", torch.float32, cfg)
    ref = nvfp4_gemm_packed_reference(a, wq.data, wq.scales, sa.reshape(-1), sb, bias,
                                      "gelu_tanh", torch.float64)
    b = expand_packed_to_fp8(wq.data, wq.scales)
    bound = fp32_sum_bound(a, b, sa, sb) * 1.1 + ref.abs() * 2e-6 + 1e-30
    assert_close_verbose(out, ref, bound, f"packed {variant}")


@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_nvfp4_linear_triton_backend_interpreted(storage):
    """The whole layer through the Triton backend (activation quantization + GEMM)."""
    gen = torch.Generator().manual_seed(7)
    x = awkward_rows(20, 64, gen).to(torch.bfloat16)
    w_dense = torch.randn(48, 64, generator=gen)
    w = prepare_weight(w_dense, storage=storage)
    assert resolve_backend(w, "cpu", "triton") == "triton"
    out = nvfp4_linear(x, w, None, out_dtype=torch.float32, backend="triton")
    wt = nvfp4.quantize(w_dense, "fp8_exact", granularity="row", backend="reference")
    ref = nvfp4_linear_reference(x, wt, None, "none", torch.float64)
    assert relative_error(out, ref) < 1e-6


@pytest.mark.parametrize("backend", ["emulated", "triton"])
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_nvfp4_linear_x_tail_is_the_concatenation(backend, storage):
    """x_tail: the layer of cat([x, x_tail], -1), bit for bit (the CUDA quantizer reading both
    in place is checked on the GPU; these paths concatenate)."""
    gen = torch.Generator().manual_seed(11)
    x = awkward_rows(12, 96, gen).to(torch.bfloat16).reshape(2, 6, 96)
    tail = torch.randn(2, 6, 32, generator=gen).to(torch.bfloat16) * 40
    w = prepare_weight(torch.randn(24, 128, generator=gen), storage=storage)
    bias = torch.randn(24, generator=gen)
    want = nvfp4_linear(torch.cat([x, tail], -1), w, bias, activation="gelu_tanh",
                        backend=backend)
    got = nvfp4_linear(x, w, bias, activation="gelu_tanh", backend=backend, x_tail=tail)
    assert got.shape == (2, 6, 24) and torch.equal(got, want)
    gelu_tail = torch.nn.functional.gelu(tail, approximate="tanh")
    want = nvfp4_linear(torch.cat([x, gelu_tail], -1), w, bias, backend=backend)
    got = nvfp4_linear(x, w, bias, backend=backend, x_tail=tail, x_tail_activation="gelu_tanh")
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["emulated", "triton"])
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_nvfp4_linear_x_activation_is_torch_gelu_first(backend, storage):
    """x_activation="gelu_tanh": the layer of F.gelu(x, approximate="tanh"), bit for bit (the
    CUDA quantizer applying it as it reads is checked on the GPU), alone and with x_tail."""
    gen = torch.Generator().manual_seed(12)
    x = awkward_rows(12, 96, gen).to(torch.bfloat16).reshape(2, 6, 96)
    tail = torch.randn(2, 6, 32, generator=gen).to(torch.bfloat16) * 40
    w = prepare_weight(torch.randn(24, 96, generator=gen), storage=storage)
    w_cat = prepare_weight(torch.randn(24, 128, generator=gen), storage=storage)
    bias = torch.randn(24, generator=gen)

    def gelu(t):
        return torch.nn.functional.gelu(t, approximate="tanh")

    want = nvfp4_linear(gelu(x), w, bias, backend=backend)
    got = nvfp4_linear(x, w, bias, backend=backend, x_activation="gelu_tanh")
    assert got.shape == (2, 6, 24) and torch.equal(got, want)
    for tail_act in ("none", "gelu_tanh"):  # GELU on the whole row / on x only
        t = gelu(tail) if tail_act == "gelu_tanh" else tail
        want = nvfp4_linear(torch.cat([gelu(x), t], -1), w_cat, bias, backend=backend)
        got = nvfp4_linear(x, w_cat, bias, backend=backend, x_tail=tail,
                           x_tail_activation=tail_act, x_activation="gelu_tanh")
        assert torch.equal(got, want), tail_act


# ------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    gen = torch.Generator().manual_seed(8)
    w = prepare_weight(torch.randn(32, 64, generator=gen), storage="fp8")
    x = torch.randn(4, 64, generator=gen)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 64\)"):
        nvfp4_linear(torch.randn(4, 48), w)
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        nvfp4_linear(x.to(torch.int32), w)
    with pytest.raises(TypeError, match="NVFP4Tensor or FP8Weight"):
        nvfp4_linear(x, torch.randn(32, 64))
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\)"):
        nvfp4_linear(x, w, torch.randn(31))
    with pytest.raises(ValueError, match="activation must be one of"):
        nvfp4_linear(x, w, activation="relu")
    with pytest.raises(ValueError, match="backend must be one of"):
        nvfp4_linear(x, w, backend="cutlass")
    with pytest.raises(ValueError, match=r"K1 \+ K2 = 64, got \(4, 48\) and \(4, 32\)"):
        nvfp4_linear(x[:, :48], w, x_tail=torch.randn(4, 32))
    with pytest.raises(ValueError, match=r"K1 \+ K2 = 64"):
        nvfp4_linear(x[:, :48], w, x_tail=torch.randn(3, 16))
    with pytest.raises(TypeError, match="x_tail must be a tensor of x's dtype"):
        nvfp4_linear(x[:, :48], w, x_tail=torch.randn(4, 16).half())
    with pytest.raises(ValueError, match="x_tail_activation must be 'none' or 'gelu_tanh'"):
        nvfp4_linear(x[:, :48], w, x_tail=torch.randn(4, 16), x_tail_activation="silu")
    with pytest.raises(ValueError, match="x_activation must be 'none' or 'gelu_tanh'"):
        nvfp4_linear(x, w, x_activation="silu")
    rn = prepare_weight(torch.randn(32, 64, generator=gen), storage="packed", scale_rule="rn")
    with pytest.raises(ValueError, match="need scale_rule='fp8_exact'"):
        nvfp4_linear(x, rn, backend="triton")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        nvfp4_linear(x, w, backend="cublas")
    with pytest.raises(ValueError, match="weight_storage='fp8' needs scale_rule='fp8_exact'"):
        prepare_weight(torch.randn(32, 64), storage="fp8", scale_rule="rn")
    a = torch.randn(8, 64).to(FP8)
    with pytest.raises(ValueError, match="a has K=64 but the weight has K=48"):
        tl_launch.fp8_gemm(a, torch.randn(16, 48).to(FP8), torch.ones(1), torch.ones(1))
    with pytest.raises(TypeError, match="a must be float8_e4m3fn"):
        tl_launch.fp8_gemm(a.float(), a, torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="scale_b must have 1 or 8 elements"):
        tl_launch.fp8_gemm(a, a, torch.ones(8), torch.ones(3))
    with pytest.raises(ValueError, match="must divide block_k"):
        FP8GemmConfig(block_k=64, promote_k=48)


@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_nvfp4_linear_checks_what_every_backend_needs(storage):
    """Mistakes the GPU backends reject (or crash on) are caught up front on every backend:
    before, the emulated path cast to any out_dtype and ran a weight on another device."""
    w = prepare_weight(torch.randn(32, 64), storage=storage)
    x = torch.randn(4, 64)
    for out_dtype in (torch.int32, torch.float64, torch.float8_e4m3fn):
        with pytest.raises(TypeError, match=r"out_dtype must be one of \(torch.bfloat16, "):
            nvfp4_linear(x, w, out_dtype=out_dtype)
    with pytest.raises(TypeError, match="bias must be a torch.Tensor or None, got list"):
        nvfp4_linear(x, w, [0.0] * 32)
    with pytest.raises(ValueError, match="w is on meta but x is on cpu"):
        nvfp4_linear(x, w.to("meta"))
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        nvfp4_linear(x, w, torch.zeros(32, device="meta"))
    with pytest.raises(ValueError, match="x_tail is on meta but x is on cpu"):
        nvfp4_linear(x[:, :48], w, x_tail=torch.randn(4, 16, device="meta"))
    with pytest.raises(TypeError, match="takes a device, not a dtype"):
        w.to(torch.bfloat16)
    assert nvfp4_linear(x, w, out_dtype=torch.float32).dtype == torch.float32


def test_prepare_weight_checks_and_detaches_the_weight():
    """prepare_weight(linear.weight), as the module doc shows: the quantized weight keeps no
    autograd graph of the Parameter, so the layer's output does not require grad."""
    linear = torch.nn.Linear(64, 32)
    for storage in ("fp8", "packed"):
        w = prepare_weight(linear.weight, storage=storage)
        assert not w.global_scale.requires_grad
        assert not nvfp4_linear(torch.randn(4, 64), w).requires_grad
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got list"):
        prepare_weight([[0.0] * 16])
    with pytest.raises(ValueError, match="weight: the last dimension K=40"):
        prepare_weight(torch.randn(8, 40))
    bad = torch.randn(8, 64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="weight contains 1 NaN and 0 Inf"):
        prepare_weight(bad)


# ---------------------------------------------------------------------- torch.library checks
# opcheck's test_schema (SchemaCheckMode) multiplies inputs to detect mutation, which torch does
# not implement for float8_e4m3fn tensors ("mul_cpu_reduced_float" not implemented): every op
# here takes FP8 inputs, so the schema test is left out; the fake-tensor, autograd-registration
# and AOT-dispatch tests run.
OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck_args(gen, M=32, N=48, K=64):
    _, _, xq, wq = fp8_operands(M, N, K, gen)
    a, sa = nvfp4.to_fp8_container(xq)
    b, sb = nvfp4.to_fp8_container(wq)
    return a, b, sa.reshape(-1), sb.reshape(-1), wq


@pytest.mark.parametrize("op_name", ["fp8_gemm_emulated", "fp8_gemm_triton"])
def test_opcheck_fp8_gemm_ops(op_name):
    gen = torch.Generator().manual_seed(9)
    a, b, sa, sb, _ = _opcheck_args(gen)
    bias = torch.randn(b.shape[0], generator=gen)
    op = getattr(torch.ops.solrl_kernels, op_name).default
    torch.library.opcheck(op, (a, b, sa, sb, bias, "gelu_tanh", torch.bfloat16),
                          test_utils=OPCHECK_UTILS)
    torch.library.opcheck(op, (a, b, sa[:1].clone(), sb, None, "none", torch.float32),
                          test_utils=OPCHECK_UTILS)


def test_opcheck_packed_and_linear_ops():
    gen = torch.Generator().manual_seed(10)
    a, b, sa, sb, wq = _opcheck_args(gen)
    torch.library.opcheck(torch.ops.solrl_kernels.nvfp4_gemm_packed_triton.default,
                          (a, wq.data, wq.scales, sa, sb, None, "silu", torch.bfloat16),
                          test_utils=OPCHECK_UTILS)
    x = torch.randn(32, 64, generator=gen).to(torch.bfloat16)
    bias = torch.randn(48, generator=gen).to(torch.bfloat16)
    torch.library.opcheck(torch.ops.solrl_kernels.nvfp4_linear_emulated.default,
                          (x, wq.data, wq.scales, wq.global_scale, bias, "none", "rn",
                           torch.bfloat16), test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.solrl_kernels.fp8_linear_emulated.default,
                          (x, b, sb.reshape(-1, 1), None, "gelu_tanh", torch.float32),
                          test_utils=OPCHECK_UTILS)


def test_torch_compile_fullgraph_cpu():
    from solrl_kernels.nn import NVFP4Linear

    gen = torch.Generator().manual_seed(11)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = NVFP4Linear.from_linear(torch.nn.Linear(64, 96), weight_storage="fp8",
                                              activation="gelu_tanh")
            self.down = NVFP4Linear.from_linear(torch.nn.Linear(96, 32), weight_storage="packed",
                                                scale_rule="rn")

        def forward(self, x):
            return self.down(self.up(x) * 2.0)

    model = Tiny()
    x = torch.randn(3, 7, 64, generator=gen)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert torch.equal(out, eager)


# ------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [  # (M, N, K): DiT projections, ragged M/N, and the long-K case of the issue
    pytest.param(4096, 3072, 3072, id="flux-qkv"),
    pytest.param(1000, 2240, 5600, id="sana-ff-down-ragged-M"),
    pytest.param(2048, 3072, 15360, id="flux-single-proj-out-K15360"),
    pytest.param(333, 1000, 1024, id="ragged-MN"),
]


def _gpu_operands(M, N, K, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02
    bias = torch.randn(N, device="cuda", generator=gen, dtype=torch.bfloat16)
    return x, w, bias


def _backends_here(storage):
    names = ["emulated", "triton"]
    if HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9):
        names.append("cublas")
    from solrl_kernels.gemm import _native_has

    if _native_has("fp8_gemm_sm90"):  # packed: the weight expanded to E4M3 first
        names.append("native")
    return names


@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", GPU_SHAPES)
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_gpu_backends_vs_float64(M, N, K, storage):
    """The issue's criterion: relative Frobenius error <= 1e-3 against the float64 product of
    the dequantized operands. It is checked on float32 outputs: rounding to bf16 alone costs
    ~1.5e-3 (half an ulp of 8 bits, RMS), so bf16-only backends are held to their bf16
    rounding floor + 5e-4 (CUTLASS), or + 1e-3 for cuBLAS row-wise FP8, whose accumulation
    adds ~6e-4 on the H200 (measured 2.2e-3 against a floor of 1.65e-3 at K = 3072..15360)."""
    x, w_dense, bias = _gpu_operands(M, N, K, seed=M + N + K)
    w = prepare_weight(w_dense, storage=storage)
    wt = nvfp4.quantize(w_dense, "fp8_exact", granularity="row")
    ref = nvfp4_linear_reference(x, wt, bias, "none", torch.float64)
    floor = relative_error(ref.to(torch.bfloat16), ref)
    errs = {}
    for name in _backends_here(storage):
        fp32_out = name in ("emulated", "triton")
        out = nvfp4_linear(x, w, bias, out_dtype=torch.float32 if fp32_out else torch.bfloat16,
                           backend=name)
        slack = 1e-3 if name == "cublas" else 5e-4
        errs[name] = (relative_error(out, ref), 1e-3 if fp32_out else floor + slack)
    print(f"\n{storage} M={M} N={N} K={K} (bf16 floor {floor:.2e}): "
          + ", ".join(f"{k} {e:.2e}" for k, (e, _) in errs.items()))
    for name, (e, bound) in errs.items():
        assert e <= bound, f"{name}: relative error {e:.3e} > {bound:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_gpu_x_tail_bit_exact(storage):
    """FLUX single-stream proj_out's input (3072 + 12288 columns) read in place by the CUDA
    quantizer: the same bits as the layer on the concatenation, for every GPU backend; and
    the GELU applied as the quantizer reads (x_tail_activation, x_activation) against torch's
    GELU first."""
    x, w_dense, bias = _gpu_operands(300, 512, 3072 + 12288, seed=3)
    head, tail = x[:, :3072].clone(), x[:, 3072:].clone()
    w = prepare_weight(w_dense, storage=storage)
    for name in _backends_here(storage):
        want = nvfp4_linear(x, w, bias, backend=name)
        got = nvfp4_linear(head, w, bias, backend=name, x_tail=tail)
        assert torch.equal(got, want), name
    # GELU applied by the quantizer (hardware tanh) against torch's GELU, then concatenation
    gelu_x = torch.cat([head, torch.nn.functional.gelu(tail, approximate="tanh")], 1)
    ref = nvfp4_linear(gelu_x, w, bias, backend="emulated", out_dtype=torch.float32)
    got = nvfp4_linear(head, w, bias, x_tail=tail, x_tail_activation="gelu_tanh")
    assert relative_error(got, ref) < relative_error(ref.to(torch.bfloat16), ref) + 1e-3
    # a feed-forward's fc2: GELU of the whole input, applied by the quantizer as it reads,
    # against torch's GELU first on the same backend (GELU'd values may differ in their last
    # place, and move an E4M3 value by a step; test_native_quantize counts those)
    gelu_x = torch.nn.functional.gelu(x, approximate="tanh")
    for name in _backends_here(storage):
        want = nvfp4_linear(gelu_x, w, bias, backend=name)
        got = nvfp4_linear(x, w, bias, backend=name, x_activation="gelu_tanh")
        err = relative_error(got, want)
        print(f"\n{storage} {name}: GELU on read vs torch's GELU first: rel. diff {err:.2e}")
        assert err < 3e-3, name  # H200, session 13: 1.9e-3 (0 on the emulated path)


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ["gelu_tanh", "silu"])
def test_gpu_fused_activation(activation):
    x, w_dense, bias = _gpu_operands(512, 1024, 2048, seed=5)
    for storage in ("fp8", "packed"):
        w = prepare_weight(w_dense, storage=storage)
        wt = nvfp4.quantize(w_dense, "fp8_exact", granularity="row")
        ref = nvfp4_linear_reference(x, wt, bias, activation, torch.float64)
        out = nvfp4_linear(x, w, bias, out_dtype=torch.float32, activation=activation,
                           backend="triton")
        assert relative_error(out, ref) <= 1e-3


@pytest.mark.gpu
def test_gpu_triton_fp8_gemm_fp32_out_accuracy_long_k():
    """fp32 output isolates the accumulation error (no bf16 rounding): promoted accumulation
    at K = 15360 must stay well inside 1e-3 of the float64 product."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    M, N, K = 1024, 1024, 15360
    x = torch.randn(M, K, device="cuda", generator=gen)
    w = torch.randn(N, K, device="cuda", generator=gen)
    a, sa = nvfp4.to_fp8_container(nvfp4.quantize(x, "fp8_exact", granularity="row"))
    b, sb = nvfp4.to_fp8_container(nvfp4.quantize(w, "fp8_exact", granularity="row"))
    sa, sb = sa.reshape(-1), sb.reshape(-1)
    ref = fp8_gemm_reference(a, b, sa, sb, None, "none", torch.float64)
    out = tl_launch.fp8_gemm(a, b, sa, sb, None, "none", torch.float32)
    err = relative_error(out, ref)
    print(f"\ntriton fp8 gemm fp32 out K={K}: rel err {err:.2e}")
    assert err <= 5e-4


@pytest.mark.gpu
def test_gpu_expand_bit_exact():
    gen = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(3072, 3072, device="cuda", generator=gen)
    w[5] *= 1e-4
    wq = nvfp4.quantize(w, "fp8_exact", scale_search=True, granularity="row")
    out = tl_launch.expand_nvfp4(wq.data, wq.scales)
    assert torch.equal(out.view(torch.uint8),
                       expand_packed_to_fp8(wq.data, wq.scales).view(torch.uint8))


@pytest.mark.gpu
def test_gpu_opcheck_cublas_and_triton():
    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(256, 512, device="cuda", generator=gen)
    w = torch.randn(384, 512, device="cuda", generator=gen)
    a, sa = nvfp4.to_fp8_container(nvfp4.quantize(x, "fp8_exact", granularity="row"))
    wq = nvfp4.quantize(w, "fp8_exact", granularity="row")
    b, sb = nvfp4.to_fp8_container(wq)
    args = (a, b, sa.reshape(-1), sb.reshape(-1), None, "none", torch.bfloat16)
    for op in (gemm_ops.fp8_gemm_cublas, gemm_ops.fp8_gemm_triton):
        torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)
    torch.library.opcheck(gemm_ops.nvfp4_gemm_packed_triton,
                          (a, wq.data, wq.scales, sa.reshape(-1), sb.reshape(-1), None, "silu",
                           torch.bfloat16), test_utils=OPCHECK_UTILS)


@pytest.mark.gpu
def test_gpu_rn_weights_warn_and_run_emulated():
    x, w_dense, bias = _gpu_operands(256, 512, 1024, seed=3)
    w = prepare_weight(w_dense, storage="packed", scale_rule="rn")
    import solrl_kernels.gemm as g

    g._RN_WARNED = False
    with pytest.warns(UserWarning, match="exact emulated path"):
        out = nvfp4_linear(x, w, bias, out_dtype=torch.float32)
    ref = nvfp4_linear_reference(x, w, bias, "none", torch.float64)
    assert relative_error(out, ref) <= 1e-3
    assert not math.isnan(relative_error(out, ref))


# ------------------------------------------------------- Blackwell glue (CPU, faked kernel)
def test_sm100_dispatch_glue_with_emulated_kernel(monkeypatch):
    """The sm100 path cannot run here (no Blackwell GPU). This checks its glue: per-row NVFP4
    activations, 128x4-blocked scales, alpha, and the fp32 scale/bias epilogue, with the
    CUTLASS op replaced by a plain-torch emulation of its documented semantics."""
    import solrl_kernels.gemm as g
    from solrl_kernels.nvfp4 import from_blocked

    def fake_sm100(a_data, a_sf, b_data, b_sf, alpha, bias, out_dtype):
        M, N, K = a_data.shape[0], b_data.shape[0], a_data.shape[1] * 2

        def deq(data, sf, rows):
            s = from_blocked(sf, rows, K // 16).float().reshape(rows, K // 16, 1)
            codes = nvfp4.unpack(data).reshape(rows, K // 16, 16)
            return (nvfp4.reference.e2m1_to_float(codes) * s).reshape(rows, K)

        y = alpha * (deq(a_data, a_sf, M) @ deq(b_data, b_sf, N).T)
        return (y if bias is None else y + bias).to(out_dtype)

    monkeypatch.setattr(g, "_capability", lambda device: (10, 0))
    monkeypatch.setattr(g, "cuda_fp8_capable", lambda device: True)
    monkeypatch.setattr(g, "_sm100_native_available", lambda: True)
    monkeypatch.setattr(g, "_sm100_op", lambda: fake_sm100)
    gen = torch.Generator().manual_seed(12)
    x = awkward_rows(40, 64, gen)
    w_dense = torch.randn(48, 64, generator=gen)
    bias = torch.randn(48, generator=gen)
    for rule in ("rn", "fp8_exact"):
        w = nvfp4.quantize(w_dense, rule, granularity="row", scale_layout="blocked",
                           backend="reference")
        assert g.resolve_backend(w, "cpu") == "native"
        out = nvfp4_linear(x, w, bias, out_dtype=torch.float32, activation="silu")
        # the csrc op writes bf16: expected = act(bf16(block product) * gs_x * gs_w + bias)
        xq = nvfp4.reference.quantize(x, rule, granularity="row", check_finite=False)
        xv = nvfp4.reference.dequantize(xq) / xq.global_scale
        wv = nvfp4.reference.dequantize(w) / w.global_scale
        acc = (xv.double() @ wv.double().T).to(torch.bfloat16).double()
        y = acc * xq.global_scale.double() * w.global_scale.double().reshape(1, -1) + bias
        expected = torch.nn.functional.silu(y)
        assert relative_error(out, expected) < 1e-6, rule
        ref = nvfp4_linear_reference(x, w, bias, "silu", torch.float64)
        assert relative_error(out, ref) < 4e-3, rule  # the documented extra bf16 rounding


@pytest.mark.gpu
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_gpu_torch_compile_fullgraph(storage):
    from solrl_kernels.nn import NVFP4Linear

    torch.manual_seed(13)
    lin = torch.nn.Linear(512, 256, device="cuda", dtype=torch.bfloat16)
    q = NVFP4Linear.from_linear(lin, weight_storage=storage, activation="silu")
    x = torch.randn(4, 100, 512, device="cuda", dtype=torch.bfloat16)
    eager = q(x)
    torch._dynamo.reset()
    out = torch.compile(q, fullgraph=True)(x)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
