"""Whole transformer forward passes at real widths: BF16 vs rollout_mode (GPU).

    pytest bench/test_bench_transformer.py -m gpu -s -p no:cacheprovider

The rollout question is how much faster one denoising step runs, not one GEMM. Each case
builds a diffusers transformer with the published widths of FLUX.1-dev, SD3.5-Large or
SANA-1.6B but only a few blocks (random bf16 weights; the blocks of a model are identical,
so time per block is what transfers; the full depth is in BLOCKS), feeds it 1024 px
samples (batch 1, and batch 4 as a rollout over several candidates batches them), and times ``transformer(**inputs)`` under torch.no_grad by CUDA-graph replay
(bench/timing.py) in four configurations, all in the same run:
  * bf16:              the model as built (cuBLAS GEMMs, SDPA attention)     (baseline)
  * nvfp4:             rollout_mode(linear="nvfp4")  (FP8-exact NVFP4 linears, "fp8" storage)
  * nvfp4+attn-fp8:    ... attention="fp8"
  * nvfp4+attn-pv:     ... attention="nvfp4_pv"
Ratios are speed against bf16. Figures go to bench/results.json through record().

test_bench_transformer_compiled (opt-in, SOLRL_BENCH_COMPILE=1: compiling takes minutes) times
each model at batch 4 under torch.compile: BF16, rollout_mode(linear="nvfp4"), and with
attention="fp8" too. The profile (bench/transformer_profile.py, RESULTS §7b) puts 41% of an
eager BF16 forward (47% of an NVFP4 one) in unfused element-wise ops, which Inductor fuses
(RESULTS §7c, §7d).
"""

from __future__ import annotations

import os

import pytest
import torch
from timing import gpu_ms

from solrl_kernels.nn import rollout_mode

diffusers = pytest.importorskip("diffusers")

MODES = {"nvfp4": dict(linear="nvfp4"),
         "nvfp4+attn-fp8": dict(linear="nvfp4", attention="fp8"),
         "nvfp4+attn-pv": dict(linear="nvfp4", attention="nvfp4_pv")}
BLOCKS = {"flux1-dev": 19 + 38, "sd35-large": 38, "sana-1.6b": 20}  # full depth, for the log


def flux1_dev(layers: tuple[int, int] = (2, 4), image_tokens: int = 4096,
              text_tokens: int = 512, batch: int = 1):
    """FLUX.1-dev widths (hidden 3072 = 24 x 128, MLP 12288, T5 4096, CLIP 768)."""
    m = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=layers[0], num_single_layers=layers[1],
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    side = int(image_tokens ** 0.5)
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    inputs = dict(
        hidden_states=torch.randn(batch, image_tokens, 64),
        encoder_hidden_states=torch.randn(batch, text_tokens, 4096),
        pooled_projections=torch.randn(batch, 768), timestep=torch.full((batch,), 0.5),
        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text_tokens, 3),
        guidance=torch.full((batch,), 3.5))
    return m, inputs


def sd35_large(layers: int = 4, latent: int = 128, text_tokens: int = 333, batch: int = 1):
    """SD3.5-Large widths (hidden 2432 = 38 x 64, MLP 9728, joint dim 4096, pooled 2048)."""
    m = diffusers.SD3Transformer2DModel(
        sample_size=latent, patch_size=2, in_channels=16, num_layers=layers,
        attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
        caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192, qk_norm="rms_norm")
    inputs = dict(hidden_states=torch.randn(batch, 16, latent, latent),
                  encoder_hidden_states=torch.randn(batch, text_tokens, 4096),
                  pooled_projections=torch.randn(batch, 2048),
                  timestep=torch.full((batch,), 500.0))
    return m, inputs


def sana_1600m(layers: int = 4, latent: int = 32, text_tokens: int = 300, batch: int = 1):
    """SANA-1.6B widths (hidden 2240 = 70 x 32, MLP 5600, cross-attention 20 x 112, Gemma 2304)."""
    m = diffusers.SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32,
        num_layers=layers, num_cross_attention_heads=20, cross_attention_head_dim=112,
        cross_attention_dim=2240, caption_channels=2304, mlp_ratio=2.5, sample_size=latent,
        patch_size=1)
    inputs = dict(hidden_states=torch.randn(batch, 32, latent, latent),
                  encoder_hidden_states=torch.randn(batch, text_tokens, 2304),
                  timestep=torch.full((batch,), 500.0))
    return m, inputs


BUILDERS = {"flux1-dev": flux1_dev, "sd35-large": sd35_large, "sana-1.6b": sana_1600m}


def on_gpu(builder, batch: int = 1):
    """builder(batch=...) with seed 0 -> (model bf16 on the GPU in eval mode, its inputs there:
    floating ones bf16)."""
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    model, inputs = builder(batch=batch)
    model = model.to("cuda", torch.bfloat16).eval()
    inputs = {k: v.to("cuda", torch.bfloat16 if v.is_floating_point() else v.dtype)
              for k, v in inputs.items()}
    return model, inputs


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("model_name", list(BUILDERS))
def test_bench_transformer_forward(benchmark, model_name, batch):
    from record import record

    model, inputs = on_gpu(BUILDERS[model_name], batch)
    n_blocks = sum(len(getattr(model, n)) for n in ("transformer_blocks",
                                                      "single_transformer_blocks")
                   if hasattr(model, n))

    def forward():
        return model(**inputs, return_dict=False)[0]

    with torch.no_grad():
        ref = forward().float()
        times = {"bf16": gpu_ms(forward, 100)[0]}
        errs, swapped = {}, {}
        for mode, kwargs in MODES.items():
            with rollout_mode(model, **kwargs) as report:
                out = forward().float()
                assert torch.isfinite(out).all(), mode
                swapped[mode] = len(report.swapped)
                errs[mode] = float((out - ref).norm() / ref.norm())
                times[mode] = gpu_ms(forward, 100)[0]
        benchmark.pedantic(forward, rounds=1, iterations=1)
    line = ", ".join(f"{m} {t:.2f} ms ({times['bf16'] / t:.2f}x, rel. diff {errs[m]:.3f})"
                     for m, t in times.items() if m != "bf16")
    print(f"\n{model_name}, batch {batch}, {n_blocks} blocks (full model: {BLOCKS[model_name]}): bf16 "
          f"{times['bf16']:.2f} ms; {line}")
    for mode, t in times.items():
        if mode != "bf16":
            tag = model_name if batch == 1 else f"{model_name}-B{batch}"
            record(f"transformer/{tag}[{mode}]", "forward ms", t, "bf16 forward",
                   times["bf16"], higher_is_better=False, blocks=n_blocks, batch=batch,
                   full_depth=BLOCKS[model_name], layers_swapped=swapped[mode],
                   rel_diff_vs_bf16=errs[mode], timing="cuda_graph")
    assert all(n > 0 for n in swapped.values()), swapped


COMPILED_MODES = ("nvfp4", "nvfp4+attn-fp8")  # rollout_mode under torch.compile


@pytest.mark.gpu
@pytest.mark.skipif(os.environ.get("SOLRL_BENCH_COMPILE") != "1",
                    reason="compiles the model (minutes); set SOLRL_BENCH_COMPILE=1")
@pytest.mark.parametrize("model_name", list(BUILDERS))
def test_bench_transformer_compiled(benchmark, model_name):
    """Batch 4 (a rollout batches its candidates; the profile of RESULTS §7b is at batch 4):
    eager BF16, torch.compile BF16 and torch.compile of rollout_mode (COMPILED_MODES), timed
    in one run by CUDA-graph replay. A compiled model that builds a new graph while being
    timed fails the test (RESULTS §7d: a guard that failed at every call)."""
    from record import record
    from torch._dynamo.utils import counters

    batch = 4
    model, inputs = on_gpu(BUILDERS[model_name], batch)

    def forward(m):
        return lambda: m(**inputs, return_dict=False)[0]

    def time_compiled(name):
        torch._dynamo.reset()
        counters.clear()
        compiled = forward(torch.compile(model))
        out = compiled().float()
        assert torch.isfinite(out).all(), name
        graphs = counters["stats"]["unique_graphs"]
        times[name], how[name] = gpu_ms(compiled, 100)
        assert counters["stats"]["unique_graphs"] == graphs, f"{name}: recompiled while timed"
        return float((out - ref).norm() / ref.norm())

    with torch.no_grad():
        ref = forward(model)().float()
        times, how, errs = {}, {}, {}
        times["bf16"], how["bf16"] = gpu_ms(forward(model), 100)
        time_compiled("bf16+compile")
        for mode in COMPILED_MODES:
            with rollout_mode(model, **MODES[mode]):
                errs[f"{mode}+compile"] = time_compiled(f"{mode}+compile")
        benchmark.pedantic(forward(model), rounds=1, iterations=1)
    base = times["bf16+compile"]
    line = ", ".join(f"{m} {times[m]:.2f} ms ({times['bf16'] / times[m]:.2f}x eager bf16, "
                     f"{base / times[m]:.2f}x compiled bf16; rel. diff {e:.3f})"
                     for m, e in errs.items())
    print(f"\n{model_name}, batch {batch}, compiled: bf16 eager {times['bf16']:.2f} ms, bf16 "
          f"compiled {base:.2f} ms ({times['bf16'] / base:.2f}x); {line}; timing {how}")
    tag = f"transformer/{model_name}-B{batch}"
    record(f"{tag}[bf16+compile]", "forward ms", base, "bf16 forward (eager)", times["bf16"],
           higher_is_better=False, batch=batch, timing=how["bf16+compile"])
    for m, e in errs.items():
        record(f"{tag}[{m}]", "forward ms", times[m], "bf16 forward (compiled)", base,
               higher_is_better=False, batch=batch, rel_diff_vs_bf16=e, timing=how[m])
