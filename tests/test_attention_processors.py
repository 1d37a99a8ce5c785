"""diffusers attention processors: tiny random Flux / SD3 / SANA transformers on CPU.

"bf16" must reproduce diffusers' own processors bit for bit (same SDPA call); "fp8"/"nvfp4"
must intercept every joint-attention SDPA call (text + image tokens, after Flux's RoPE) and
stay close to the unquantized output; restore() must put the original objects back.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from solrl_kernels.attention import attention_reference  # noqa: E402
from solrl_kernels.attention import processors as P  # noqa: E402
from solrl_kernels.attention.accuracy import compare  # noqa: E402
from solrl_kernels.attention.processors import (  # noqa: E402
    QuantizedAttnProcessor,
    attention_stats,
    set_attention_precision,
)


def _flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=64,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        axes_dims_rope=(16, 24, 24),
    ).eval()
    B, S_img, S_txt = 1, 48, 9
    inputs = {
        "hidden_states": torch.randn(B, S_img, 8),
        "encoder_hidden_states": torch.randn(B, S_txt, 32),
        "pooled_projections": torch.randn(B, 16),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.stack(
            [torch.zeros(S_img), torch.arange(S_img) // 8, torch.arange(S_img) % 8], -1
        ).float(),
        "txt_ids": torch.zeros(S_txt, 3),
        "return_dict": False,
    }
    return model, inputs, S_img + S_txt, 2  # joint sequence, attention calls per forward


def _sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=64,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=128,
        pooled_projection_dim=16, out_channels=4,
    ).eval()
    inputs = {
        "hidden_states": torch.randn(1, 4, 8, 8),
        "encoder_hidden_states": torch.randn(1, 7, 32),
        "pooled_projections": torch.randn(1, 16),
        "timestep": torch.tensor([500]),
        "return_dict": False,
    }
    return model, inputs, 16 + 7, 2


MODELS = {"flux": _flux, "sd3": _sd3}


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_processors_match_diffusers_and_restore(name):
    model, inputs, _, n_calls = MODELS[name]()
    originals = {k: v for k, v in model.attn_processors.items()}
    with torch.no_grad():
        ref = model(**inputs)[0]
        restore = set_attention_precision(model, "bf16")
        assert all(isinstance(p, QuantizedAttnProcessor) for p in model.attn_processors.values())
        out = model(**inputs)[0]
        stats = attention_stats(model)
        restore()
    assert torch.equal(out, ref)  # the same SDPA call on CPU: identical
    assert (stats.quantized, stats.fallback) == (n_calls, 0)
    after = model.attn_processors
    assert after.keys() == originals.keys()
    assert all(after[k] is originals[k] for k in originals)
    restore()  # idempotent
    assert all(model.attn_processors[k] is originals[k] for k in originals)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("precision", ["fp8", "nvfp4"])
def test_quantized_processors_intercept_joint_attention(name, precision, monkeypatch):
    model, inputs, S_joint, n_calls = MODELS[name]()
    seen = []

    def spy(q, k, v, prec, scale=None, config=None):
        seen.append((tuple(q.shape), prec))
        # the emulated path: CPU tests stay fast; the kernel is tested in test_attention.py
        return attention_reference(q, k, v, prec, scale, config).to(q.dtype)

    with torch.no_grad():
        ref = model(**inputs)[0]
        restore = set_attention_precision(model, precision)
        monkeypatch.setattr(P, "attention", spy)
        out = model(**inputs)[0]
        restore()
    assert seen == [((1, 2, S_joint, 64), precision)] * n_calls  # joint text+image sequence
    got = compare(out, ref)
    assert got["cos"] > (0.999 if precision == "fp8" else 0.99), got


def test_flux_rope_is_applied_before_quantization(monkeypatch):
    """The q/k the kernel sees are diffusers' post-RoPE tensors: with RoPE ids zeroed the
    intercepted q changes, so it is taken after apply_rotary_emb."""
    model, inputs, _, _ = _flux()
    seen = []

    def spy(q, k, v, prec, scale=None, config=None):
        seen.append(q.clone())
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    restore = set_attention_precision(model, "nvfp4")
    monkeypatch.setattr(P, "attention", spy)
    with torch.no_grad():
        model(**inputs)
        no_rope = dict(inputs, img_ids=torch.zeros_like(inputs["img_ids"]))
        model(**no_rope)
    restore()
    assert not torch.allclose(seen[0], seen[2])  # first block's q with and without positions


def test_masked_sdpa_falls_back():
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=128, heads=2, dim_head=64)
    x = torch.randn(1, 10, 128)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[:, -3:] = False
    with torch.no_grad():
        ref_masked = attn(x, attention_mask=mask)
        restore = set_attention_precision(attn, "nvfp4")
        out_masked = attn(x, attention_mask=mask)
        out_plain = attn(x)
        stats = attn.processor.stats
        restore()
    assert torch.equal(out_masked, ref_masked)
    assert (stats.quantized, stats.fallback) == (1, 1)
    assert torch.isfinite(out_plain).all()


def test_sana_linear_attention_left_alone():
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    model = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32,
        num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=64,
        cross_attention_dim=128, caption_channels=16, sample_size=8, patch_size=1,
    ).eval()
    procs = model.attn_processors
    restore = set_attention_precision(model, "nvfp4")
    wrapped = {k: type(v.processor).__name__ for k, v in model.attn_processors.items()
               if isinstance(v, QuantizedAttnProcessor)}
    untouched = {k: type(v).__name__ for k, v in model.attn_processors.items()
                 if not isinstance(v, QuantizedAttnProcessor)}
    restore()
    assert all("Linear" in n for n in untouched.values()) and untouched
    assert wrapped and all("Linear" not in n for n in wrapped.values())
    assert all(model.attn_processors[k] is procs[k] for k in procs)


def test_set_attention_precision_errors():
    model, _, _, _ = _sd3()
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp4'"):
        set_attention_precision(model, "fp4")
    with pytest.raises(ValueError, match="Linear has no diffusers attention modules"):
        set_attention_precision(torch.nn.Linear(2, 2), "fp8")
    with pytest.raises(TypeError, match="must be a torch.nn.Module, got str"):
        set_attention_precision("model", "fp8")


def test_rewrap_changes_precision_and_restores_first_originals():
    model, inputs, _, _ = _sd3()
    originals = dict(model.attn_processors)
    r1 = set_attention_precision(model, "fp8")
    r2 = set_attention_precision(model, "bf16")
    procs = model.attn_processors.values()
    assert all(p.precision == "bf16" and not isinstance(p.processor, QuantizedAttnProcessor)
               for p in procs)
    r2()
    assert all(p.precision == "fp8" for p in model.attn_processors.values())
    r1()
    assert all(model.attn_processors[k] is originals[k] for k in originals)


def test_wrapped_processors_copy_pickle_and_keep_the_signature():
    """A wrapper is of a per-class subclass (its __call__ carries the original's signature,
    as a class attribute so torch.compile traces it); copies and pickles rebuild it with its
    precision, config and counts, and a model holding wrappers deep-copies."""
    import copy
    import inspect
    import pickle

    model, inputs, _, _ = _flux()
    original = model.transformer_blocks[0].attn.processor
    set_attention_precision(model, "fp8")
    p = model.transformer_blocks[0].attn.processor
    assert isinstance(p, QuantizedAttnProcessor) and "__call__" not in vars(p)
    assert inspect.signature(p.__call__) == inspect.signature(original.__call__)
    model(**inputs)
    assert p.stats.quantized == 1
    for q in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(q) is type(p) and q is not p
        assert (q.precision, q.config, q.stats) == (p.precision, p.config, p.stats)
        assert type(q.processor) is type(original)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(**inputs)[0], model(**inputs)[0], rtol=0, atol=0)
