"""NVFP4Linear, quantize_model and rollout_mode on tiny diffusers transformers (CPU), with and
without peft LoRA; the FLUX-size re-quantization timing on GPU (marked)."""

from __future__ import annotations

import copy
import sys
import time
import types

import pytest
import torch
from torch import nn

from solrl_kernels import nvfp4
from solrl_kernels.attention.processors import attention_stats
from solrl_kernels.gemm import prepare_weight
from solrl_kernels.gemm.reference import nvfp4_linear_reference, relative_error
from solrl_kernels.nn import (
    DEFAULT_EXCLUDE,
    NVFP4Linear,
    NVFP4PointwiseConv2d,
    QuantizeConfig,
    effective_weight,
    quantize_model,
    rollout_mode,
)

try:  # CPU tests need diffusers and peft; the GPU timing test does not
    import diffusers
    import peft
except ImportError:  # pragma: no cover
    diffusers = peft = None
needs_diffusers = pytest.mark.skipif(diffusers is None or peft is None,
                                     reason="needs diffusers and peft")

BF16 = torch.bfloat16
B = 2


def tiny_flux():
    m = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6))
    gen = torch.Generator().manual_seed(0)
    S, T = 16, 8
    inputs = dict(
        hidden_states=torch.randn(B, S, 16, generator=gen), encoder_hidden_states=torch.randn(
            B, T, 32, generator=gen), pooled_projections=torch.randn(B, 32, generator=gen),
        timestep=torch.tensor([0.5, 0.7]), img_ids=torch.zeros(S, 3), txt_ids=torch.zeros(T, 3))
    return m, inputs


def tiny_sd3():
    m = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
        pooled_projection_dim=32, out_channels=4)
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(B, 4, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(B, 8, 32, generator=gen),
                  pooled_projections=torch.randn(B, 32, generator=gen),
                  timestep=torch.tensor([500.0, 700.0]))
    return m, inputs


def tiny_sana():
    m = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=16,
        cross_attention_dim=32, caption_channels=32, mlp_ratio=2.5, sample_size=8, patch_size=1)
    gen = torch.Generator().manual_seed(2)
    inputs = dict(hidden_states=torch.randn(B, 4, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(B, 8, 32, generator=gen),
                  timestep=torch.tensor([500.0, 700.0]))
    return m, inputs


MODELS = [pytest.param(tiny_flux, id="flux"), pytest.param(tiny_sd3, id="sd3"),
          pytest.param(tiny_sana, id="sana")]


def to_bf16(model, inputs):
    model = model.to(BF16).eval()
    return model, {k: (v.to(BF16) if v.is_floating_point() and k not in ("timestep", "img_ids",
                                                                          "txt_ids") else v)
                   for k, v in inputs.items()}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def snapshot(model):
    """(name, module id) of every module, (name, param id, data_ptr, requires_grad, clone)."""
    mods = [(n, id(m)) for n, m in model.named_modules()]
    params = [(n, id(p), p.data_ptr(), p.requires_grad, p.detach().clone())
              for n, p in model.named_parameters()]
    return mods, params


def assert_same_snapshot(a, b):
    assert a[0] == b[0], "module tree changed"
    assert len(a[1]) == len(b[1])
    for (n1, i1, d1, r1, v1), (n2, i2, d2, r2, v2) in zip(a[1], b[1]):
        assert (n1, i1, d1, r1) == (n2, i2, d2, r2), n1
        assert torch.equal(v1, v2), f"parameter {n1} changed"


# --------------------------------------------------------------------------- NVFP4Linear
@pytest.mark.parametrize("storage,rule", [("fp8", "fp8_exact"), ("packed", "fp8_exact"),
                                          ("packed", "rn")])
def test_nvfp4_linear_module_matches_reference(storage, rule):
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(96, 80)
    x = torch.randn(5, 7, 96, generator=gen)
    q = NVFP4Linear.from_linear(lin, scale_rule=rule, weight_storage=storage)
    wq = nvfp4.quantize(lin.weight.detach(), rule, granularity="row", backend="reference")
    ref = nvfp4_linear_reference(x, wq, lin.bias.detach(), "none", torch.float64)
    out = q(x)
    assert out.shape == (5, 7, 80) and out.dtype == torch.float32
    assert relative_error(out, ref) < 1e-6
    torch.testing.assert_close(q.dequantized_weight().double(),
                               nvfp4.reference.dequantize(wq).double(), rtol=0, atol=0)
    # and it is close to the float layer (NVFP4 error, ~10% per element, less after the sum)
    assert relative_error(out, lin(x)) < 0.2
    expected = 80 * 96 if storage == "fp8" else 80 * 96 // 2 + 80 * 96 // 16
    assert q.weight_nbytes() == expected + 80 * 4


def test_pointwise_conv_matches_linear_semantics():
    gen = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(32, 48, kernel_size=1)
    x = torch.randn(2, 32, 5, 3, generator=gen)
    q = NVFP4PointwiseConv2d.from_conv(conv, weight_storage="packed")
    wq = nvfp4.quantize(conv.weight.detach().reshape(48, 32), "fp8_exact", granularity="row",
                        backend="reference")
    ref = nvfp4_linear_reference(x.permute(0, 2, 3, 1), wq, conv.bias.detach(), "none",
                                 torch.float64).permute(0, 3, 1, 2)
    out = q(x)
    assert out.shape == (2, 48, 5, 3)
    assert relative_error(out, ref) < 1e-6
    with pytest.raises(ValueError, match="not a pointwise"):
        NVFP4PointwiseConv2d.from_conv(nn.Conv2d(32, 48, kernel_size=3))


def test_module_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        NVFP4Linear(40, 32)
    with pytest.raises(ValueError, match="needs scale_rule='fp8_exact'"):
        NVFP4Linear(32, 32, scale_rule="rn", weight_storage="fp8")
    with pytest.raises(ValueError, match="weight must be \\(32, 64\\)"):
        NVFP4Linear(64, 32).set_weight(torch.randn(32, 48))
    with pytest.raises(ValueError, match="min_features must be >= 0"):
        QuantizeConfig(min_features=-1)
    with pytest.raises(TypeError, match="sequences of regexes"):
        QuantizeConfig(include="to_q")


def test_module_argument_mistakes_are_clear_errors():
    linear = nn.Linear(64, 32)
    with pytest.raises(TypeError, match="from_linear takes an nn.Linear, got Conv2d"):
        NVFP4Linear.from_linear(nn.Conv2d(64, 32, 1))
    # a bias of the wrong shape used to be stored, then broadcast into every output
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\), got \(1,\)"):
        NVFP4Linear.from_linear(linear, bias=torch.randn(1))
    q = NVFP4Linear.from_linear(linear)
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\), got \(16,\)"):
        q.set_weight(linear.weight, torch.randn(16))
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 64\), got \(\)"):
        q(torch.tensor(1.0))
    with pytest.raises(ValueError, match="w is on cpu but x is on meta"):
        q(torch.randn(4, 64, device="meta"))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got Tensor"):
        quantize_model(torch.randn(4, 4))
    with pytest.raises(TypeError, match="config must be a QuantizeConfig or None, got dict"):
        quantize_model(nn.Sequential(nn.Linear(256, 256)), config={"scale_rule": "rn"})


def test_quantize_config_option_mistakes_are_clear_errors():
    """A string min_features or scale_search used to reach a comparison (or pass as truthy),
    a bad regex raised re.error without saying which option held it."""
    with pytest.raises(TypeError, match="min_features must be an int, got '256'"):
        QuantizeConfig(min_features="256")
    with pytest.raises(TypeError, match="scale_search must be True or False, got 'yes'"):
        QuantizeConfig(scale_search="yes")
    with pytest.raises(ValueError, match=r"exclude: 'attn\(' is not a valid regex"):
        QuantizeConfig(exclude=["proj_out", "attn("])
    with pytest.raises(ValueError, match=r"include: '\[' is not a valid regex"):
        QuantizeConfig(include=["["])


def test_report_summary_when_nothing_is_swapped():
    report = quantize_model(nn.Sequential(nn.Linear(64, 64)))  # below min_features: kept
    assert report.swapped == [] and "nan" not in report.summary()
    assert report.summary() == "NVFP4: 0 layers swapped, 1 kept (no weights quantized)"


def test_rollout_mode_keyword_contradicting_config_is_an_error():
    """config's fields win over the keywords; a keyword set to something else was silently
    ignored (here: the layers stayed fp8_exact)."""
    model = nn.Sequential(nn.Linear(256, 256))
    x = torch.randn(3, 256)
    with pytest.raises(ValueError, match="scale_rule='rn' contradicts config.scale_rule="
                                         "'fp8_exact'"), \
            rollout_mode(model, scale_rule="rn", weight_storage="packed", config=QuantizeConfig()):
        pass
    assert isinstance(model[0], nn.Linear)
    rn = QuantizeConfig(scale_rule="rn", weight_storage="packed", min_features=0)
    with rollout_mode(model, scale_rule="rn", config=rn):  # agreeing keywords are fine
        assert model[0].scale_rule == "rn" and model[0](x).shape == (3, 256)


# ----------------------------------------------------------------- whole tiny transformers
@needs_diffusers
@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_rollout_mode_tiny_models(make, storage):
    model, inputs = to_bf16(*make())
    ref = run(model, inputs)
    before = snapshot(model)
    with rollout_mode(model, linear="nvfp4", attention="bf16", weight_storage=storage,
                      min_features=0) as report:
        out = run(model, inputs)
        swapped_types = {type(m).__name__ for m in model.modules()}
    err = relative_error(out, ref)
    print(f"\n{make.__name__} [{storage}]: {len(report.swapped)} layers NVFP4, output rel. error "
          f"vs BF16 {err:.4f}; {report.summary()}")
    assert "NVFP4Linear" in swapped_types
    assert report.swapped and all(not n.startswith(("proj_out", "norm_out", "x_embedder",
                                                    "context_embedder", "time"))
                                  for n in report.swapped)
    # tiny random models: each layer's NVFP4 error (~10% per weight, ~1-3% per output) adds up
    assert 0 < err < 0.15, err
    after = snapshot(model)
    assert_same_snapshot(before, after)
    assert torch.equal(run(model, inputs), ref), "restored model gives different outputs"


def _flux_head_dim_64():
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
        num_attention_heads=1, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(16, 24, 24))
    return model, tiny_flux()[1], 2  # one joint (double-stream) and one single-stream SDPA


def _sd3_head_dim_64():
    model = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=64,
        num_attention_heads=1, joint_attention_dim=32, caption_projection_dim=64,
        pooled_projection_dim=32, out_channels=4)
    return model, tiny_sd3()[1], 1  # one joint SDPA


@needs_diffusers
@pytest.mark.parametrize("build", [_flux_head_dim_64, _sd3_head_dim_64], ids=["flux", "sd3"])
def test_rollout_mode_compiles_fullgraph(build):
    """torch.compile(fullgraph=True) traces a transformer in rollout_mode, NVFP4 linears and
    fp8 attention processors included (head dim 64: the SDPA calls are quantized), gives the
    eager outputs, and compiles once: later calls reuse the graph. On torch < 2.14 this also
    covers Flux's Tensor.unflatten under the processors' mode (a graph break in every
    attention before session 8); the second call, the attention statistics counted while
    tracing (a guard that failed at every call: each call recompiled until session 9)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    model, inputs, n_sdpa = build()
    model, inputs = to_bf16(model, inputs)
    graphs = []

    def record_graph(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    with torch.no_grad(), rollout_mode(model, linear="nvfp4", attention="fp8", min_features=0):
        eager = model(**inputs, return_dict=False)[0]
        counted = attention_stats(model).quantized
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=aot_autograd(fw_compiler=record_graph))
        out = compiled(**inputs, return_dict=False)[0]
        again = compiled(**inputs, return_dict=False)[0]
        counted_after = attention_stats(model).quantized
    assert counted == counted_after == n_sdpa  # eager calls only
    assert len(graphs) == 1, f"{len(graphs)} graphs: recompiled"
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("quant_attention" in t for t in targets) == n_sdpa, targets
    assert not any("scaled_dot_product" in t for t in targets)
    assert torch.equal(again, out)
    assert torch.allclose(out.float(), eager.float(), rtol=1e-2, atol=1e-2)
    assert relative_error(out, eager) < 1e-3


@needs_diffusers
@pytest.mark.parametrize("make", [tiny_flux, tiny_sd3], ids=["flux", "sd3"])
def test_feed_forward_gelu_is_applied_by_the_next_layer(make):
    """A feed-forward's tanh-GELU moves into its second layer's input quantization
    (input_activation), or into the first layer's epilogue where the second is not swapped.
    Off the Hopper quantizer (here) the GELU then runs as torch's, so all variants give the
    unfused model's output bit for bit."""
    model, inputs = to_bf16(*make())
    ff = model.transformer_blocks[0].ff
    cfg = QuantizeConfig(min_features=0, fuse_activations=False)
    with rollout_mode(model, config=cfg):
        assert type(ff.net[0]).__name__ == "GELU" and isinstance(ff.net[0].proj, NVFP4Linear)
        unfused = model(**inputs).sample
    with rollout_mode(model, min_features=0):
        fc1, fc2 = ff.net[0], ff.net[2]
        assert isinstance(fc1, NVFP4Linear) and fc1.activation == "none"
        assert isinstance(fc2, NVFP4Linear) and fc2.input_activation == "gelu_tanh"
        assert "input_activation=gelu_tanh" in repr(fc2)
        on_read = model(**inputs).sample
    exclude = (*DEFAULT_EXCLUDE, r"transformer_blocks\.0\.ff\.net\.2$")
    with rollout_mode(model, config=QuantizeConfig(min_features=0, exclude=exclude)):
        fc1, fc2 = ff.net[0], ff.net[2]
        assert isinstance(fc1, NVFP4Linear) and fc1.activation == "gelu_tanh"
        assert type(fc2) is nn.Linear
        epilogue = model(**inputs).sample
    assert type(ff.net[0]).__name__ == "GELU" and type(ff.net[2]) is nn.Linear
    assert torch.equal(on_read, unfused)
    assert relative_error(epilogue, unfused) < 0.05  # GELU of the fp32 accumulator instead


@needs_diffusers
def test_gelu_fusion_and_conv_swaps():
    flux, _ = tiny_flux()
    with rollout_mode(flux, min_features=0):
        ff0 = flux.transformer_blocks[0].ff.net[0]
        assert isinstance(ff0, NVFP4Linear) and ff0.activation == "none"
    assert type(flux.transformer_blocks[0].ff.net[0]).__name__ == "GELU"
    sana, _ = tiny_sana()
    with rollout_mode(sana, min_features=0) as rep:
        ff = sana.transformer_blocks[0].ff
        assert isinstance(ff.conv_inverted, NVFP4PointwiseConv2d)
        assert isinstance(ff.conv_point, NVFP4PointwiseConv2d)
        assert isinstance(ff.conv_depth, nn.Conv2d)  # 3x3 depthwise stays
        assert "patch_embed.proj" in rep.skipped
    cfg = QuantizeConfig(min_features=0, swap_conv1x1=False, fuse_activations=False)
    with rollout_mode(sana, config=cfg):
        assert isinstance(sana.transformer_blocks[0].ff.conv_inverted, nn.Conv2d)
    with rollout_mode(flux, config=QuantizeConfig(min_features=0, fuse_activations=False)):
        assert isinstance(flux.transformer_blocks[0].ff.net[0].proj, NVFP4Linear)


@needs_diffusers
def test_flux_single_blocks_skip_the_concatenation():
    """FLUX single-stream blocks: proj_out reads [attention, GELU(MLP)] without concatenating
    them and applies act_mlp itself (flux_single.py). Off the Hopper quantizer (here) GELU and
    concatenation run as the torch ops diffusers calls, so the output is the unpatched NVFP4
    model's bit for bit; the block's forward comes back unchanged on exit."""
    from unittest import mock

    from solrl_kernels.nn import swap

    flux, inputs = tiny_flux()
    flux, inputs = to_bf16(flux, inputs)
    block = flux.single_transformer_blocks[0]
    bf16 = flux(**inputs).sample
    with mock.patch.object(swap, "fuse_single_blocks", lambda m: ([], lambda: None)), \
            rollout_mode(flux, min_features=0) as rep:
        assert rep.cat_free_blocks == [] and "forward" not in vars(block)
        unpatched = flux(**inputs).sample
    with rollout_mode(flux, min_features=0) as rep:
        assert rep.cat_free_blocks == ["single_transformer_blocks.0"]
        assert "forward" in vars(block)
        patched = flux(**inputs).sample
        a, m = torch.randn(2, 5, 32, dtype=BF16), torch.randn(2, 5, 128, dtype=BF16)
        gelu_m = nn.functional.gelu(m, approximate="tanh")
        assert torch.equal(block.proj_out(a, x_tail=m, x_tail_activation="gelu_tanh"),
                           block.proj_out(torch.cat([a, gelu_m], -1)))
        with pytest.raises(ValueError, match="expected input"):
            block.proj_out(a, x_tail=m[..., :64])
        with pytest.raises(ValueError, match="x_tail_activation must be"):
            block.proj_out(a, x_tail=m, x_tail_activation="relu")
    assert torch.equal(patched, unpatched)
    assert "forward" not in vars(block)
    assert torch.equal(flux(**inputs).sample, bf16)
    with rollout_mode(flux, config=QuantizeConfig(min_features=0, fuse_activations=False)) as rep:
        assert rep.cat_free_blocks == []
    # another diffusers release (another forward source): left alone
    from solrl_kernels.nn import flux_single

    flux_single._forward_is_known.cache_clear()
    with mock.patch.object(flux_single, "KNOWN_FORWARD_SOURCES", frozenset()), \
            rollout_mode(flux, min_features=0) as rep:
        assert rep.cat_free_blocks == [] and "forward" not in vars(block)
    flux_single._forward_is_known.cache_clear()


@needs_diffusers
def test_include_exclude_min_features():
    flux, _ = tiny_flux()
    with rollout_mode(flux, include=[r"attn\.to_q$"], min_features=0) as rep:
        assert rep.swapped == ["transformer_blocks.0.attn.to_q",
                               "single_transformer_blocks.0.attn.to_q"]
    with rollout_mode(flux, exclude=[r"single_"], min_features=0) as rep:
        assert rep.swapped and not any("single_" in n for n in rep.swapped)
        assert "transformer_blocks.0.norm1.linear" in rep.swapped  # default excludes replaced
    with rollout_mode(flux, min_features=64) as rep:  # in or out < 64: every layer of this toy
        assert rep.swapped == []
        assert all("small" in r or "excluded" in r for r in rep.skipped.values())


@needs_diffusers
def test_quantize_model_is_permanent():
    model, inputs = to_bf16(*tiny_sd3())
    report = quantize_model(model, min_features=0, weight_storage="packed")
    assert report.swapped and report.bytes_after < 0.6 * report.bytes_before
    assert isinstance(model.transformer_blocks[0].attn.to_q, NVFP4Linear)
    out = run(model, inputs)
    assert torch.isfinite(out).all()
    # a second pass finds them already quantized
    again = quantize_model(model, min_features=0)
    assert again.swapped == [] and "transformer_blocks.0.attn.to_q" in again.skipped


@needs_diffusers
def test_rollout_mode_requantizes_current_weights_on_entry():
    model, inputs = to_bf16(*tiny_flux())
    with rollout_mode(model, min_features=0):
        first = run(model, inputs)
    with torch.no_grad():
        for blk in model.transformer_blocks:
            blk.attn.to_q.weight.mul_(-1.5)  # a "policy update"
    with rollout_mode(model, min_features=0):
        q = model.transformer_blocks[0].attn.to_q
        second = run(model, inputs)
        deq = q.dequantized_weight()
    orig = model.transformer_blocks[0].attn.to_q.weight.detach()
    expect = prepare_weight(orig, storage="fp8")
    torch.testing.assert_close(deq, expect.values.float() * expect.global_scale, rtol=0, atol=0)
    assert not torch.equal(first, second)


@needs_diffusers
def test_rollout_mode_restores_on_exception_and_validates_args():
    model, inputs = to_bf16(*tiny_sd3())
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), rollout_mode(model, min_features=0):
        raise RuntimeError("boom")
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match="linear must be 'nvfp4' or 'bf16'"), \
            rollout_mode(model, linear="fp4"):
        pass
    with pytest.raises(ValueError, match="attention must be"), rollout_mode(model, attention="x"):
        pass
    with rollout_mode(model, linear="bf16") as rep:
        assert rep.swapped == []
    assert_same_snapshot(before, snapshot(model))


@needs_diffusers
def test_rollout_mode_attention_precision_is_set_and_restored(monkeypatch):
    """rollout_mode calls the attention engineer's set_attention_precision and its restore
    function (replaced here by a recorder, so this tests only the contract)."""
    calls = []

    def fake_set(transformer, precision):
        calls.append(("set", precision))
        return lambda: calls.append(("restore", precision))

    try:
        import solrl_kernels.attention.processors as processors

        monkeypatch.setattr(processors, "set_attention_precision", fake_set)
    except ImportError:  # not written yet: stand in a module with the agreed signature
        fake = types.ModuleType("solrl_kernels.attention.processors")
        fake.set_attention_precision = fake_set
        monkeypatch.setitem(sys.modules, "solrl_kernels.attention.processors", fake)
    model, _ = tiny_flux()
    with rollout_mode(model, linear="bf16", attention="fp8"):
        assert calls == [("set", "fp8")]
    assert calls == [("set", "fp8"), ("restore", "fp8")]
    with pytest.raises(KeyError), rollout_mode(model, attention="nvfp4", min_features=0):
        raise KeyError("x")
    assert calls[-1] == ("restore", "nvfp4")


# ------------------------------------------------------------------------------ peft LoRA
def add_lora(model, targets, seed=5, **kw):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                          **kw)
    torch.manual_seed(seed)
    model.add_adapter(cfg)
    return model


@needs_diffusers
@pytest.mark.parametrize("make,targets", [
    pytest.param(tiny_flux, ["to_q", "to_k", "to_v", "to_out.0", "proj_mlp"], id="flux"),
    pytest.param(tiny_sana, ["to_q", "to_v", "conv_inverted", "conv_point"], id="sana-conv"),
])
def test_rollout_mode_with_lora_merges_adapters(make, targets):
    model, inputs = to_bf16(*make())
    model = add_lora(model, targets)
    lora_layers = {n: m for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert lora_layers
    ref = run(model, inputs)  # BF16 with the adapters active
    before = snapshot(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert any(grads.values()) and not all(grads.values())  # LoRA trainable, base frozen
    with rollout_mode(model, min_features=0) as rep:
        out = run(model, inputs)
        for name in lora_layers:
            assert name in rep.swapped
        # the swapped weight is quantize(base + delta)
        name, layer = next(iter(lora_layers.items()))
        parent_name, attr = name.rsplit(".", 1)
        swapped = getattr(model.get_submodule(parent_name), attr)
        assert isinstance(swapped, NVFP4Linear)
        base = layer.get_base_layer().weight.detach()
        merged = base + layer.get_delta_weight("default").to(base.dtype)
        expect = prepare_weight(merged.reshape(merged.shape[0], -1), storage="fp8")
        torch.testing.assert_close(swapped.dequantized_weight(),
                                   expect.values.float() * expect.global_scale, rtol=0, atol=0)
    err = relative_error(out, ref)
    print(f"\n{make.__name__} + LoRA: output rel. error vs BF16+LoRA {err:.4f}")
    assert 0 < err < 0.15
    assert_same_snapshot(before, snapshot(model))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    for name, layer in lora_layers.items():
        assert model.get_submodule(name) is layer and not layer.merged
    assert torch.equal(run(model, inputs), ref)


@needs_diffusers
def test_effective_weight_dora_and_disabled_adapters():
    torch.manual_seed(6)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(32, 48))
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc"], init_lora_weights=False,
                          use_dora=True)
    model = peft.inject_adapter_in_model(cfg, model)
    wrapped = model.fc
    base_weight = wrapped.get_base_layer().weight
    w, _ = effective_weight(wrapped)  # DoRA: peft merges a throwaway copy
    merged = copy.deepcopy(wrapped)
    merged.merge()
    torch.testing.assert_close(w, merged.get_base_layer().weight, rtol=0, atol=0)
    assert not wrapped.merged and not torch.equal(w, base_weight)
    wrapped.enable_adapters(False)
    w2, _ = effective_weight(wrapped)
    assert w2 is base_weight


# ------------------------------------------------------------------------------------ GPU
FLUX_DOUBLE = [(3072, 18432), (3072, 18432)] + [(3072, 3072)] * 8 + [(3072, 12288), (12288, 3072)] * 2
FLUX_SINGLE = [(3072, 9216)] + [(3072, 3072)] * 3 + [(3072, 12288), (15360, 3072)]


class FluxSizeLinears(nn.Module):
    """The nn.Linear shapes of FLUX.1's 19 double + 38 single blocks (~11.9B parameters)."""

    def __init__(self, device, dtype=BF16):
        super().__init__()

        def block(shapes):
            return nn.ModuleList(nn.Linear(k, n, device=device, dtype=dtype) for k, n in shapes)

        self.transformer_blocks = nn.ModuleList(block(FLUX_DOUBLE) for _ in range(19))
        self.single_transformer_blocks = nn.ModuleList(block(FLUX_SINGLE) for _ in range(38))


@pytest.mark.gpu
@pytest.mark.parametrize("storage", ["fp8", "packed"])
def test_gpu_flux_size_requantization_under_1s(storage):
    torch.manual_seed(0)
    model = FluxSizeLinears("cuda")
    n_params = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    cfg = QuantizeConfig(weight_storage=storage, min_features=0, exclude=())
    with rollout_mode(model, config=cfg):  # warm-up: kernel compilation
        pass
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with rollout_mode(model, config=cfg) as rep:
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"\nFLUX-size re-quantization [{storage}]: {n_params / 1e9:.2f}B params, "
          f"{len(rep.swapped)} layers, {rep.bytes_before / 2**30:.1f} -> "
          f"{rep.bytes_after / 2**30:.2f} GiB, {best * 1e3:.0f} ms (runs: "
          f"{', '.join(f'{t * 1e3:.0f}' for t in times)} ms)")
    assert len(rep.swapped) == 19 * len(FLUX_DOUBLE) + 38 * len(FLUX_SINGLE)
    assert best < 1.0


def test_module_to_dtype_keeps_quantized_buffers():
    q = NVFP4Linear.from_linear(nn.Linear(64, 32).to(BF16), weight_storage="fp8")
    x = torch.randn(3, 64)
    ref = q(x.to(BF16))
    q = q.to(torch.float16).to(BF16)  # the bf16 bias survives fp16 exactly
    assert q.weight_fp8.dtype == torch.float8_e4m3fn
    assert q.weight_global_scale.dtype == torch.float32 and q.bias.dtype == BF16
    torch.testing.assert_close(q(x.to(BF16)), ref, rtol=0, atol=0)
