"""Model adapters (SD3, FLUX, SANA) on tiny random diffusers pipelines saved to a temp folder:
`from_pretrained(path)` loads them with no network, and our Euler sampler through the adapter
reproduces the diffusers pipeline's own latents exactly (same sigmas, guidance 1 / embedded)."""

import json
import math

import pytest
import torch

from solrl.models.base import DiffusionModel
from solrl.sampling import ode_sample

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

WORDS = ["a", "red", "blue", "circle", "square", "two", "left", "of"]
PROMPTS = ["two red circle", "a blue square left of a red circle"]
SIGMAS = [1.0, 0.75, 0.5, 0.25]


def _clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    return tok, len(vocab)


def _clip_config(vocab):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, projection_dim=32, max_position_embeddings=16,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                         norm_num_groups=4, sample_size=16, shift_factor=0.06, scaling_factor=1.5)


def _check_adapter(m, pipe_latents_fn, n_steps=4):
    assert isinstance(m, DiffusionModel)
    cond = m.encode_prompts(PROMPTS)
    assert all(v.shape[0] == 2 for v in cond.values())
    noise = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(0))
    x = ode_sample(m, noise, cond, n_steps, shift=m.default_shift)
    ref = pipe_latents_fn(noise)
    assert torch.allclose(x, ref.float(), atol=1e-5, rtol=1e-5), (x - ref).abs().max()
    img = m.decode(x)
    assert img.shape[:2] == (2, 3) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    with pytest.raises(ValueError, match="latents must be"):
        m.velocity(noise[:, :1], torch.ones(2), cond)


def _sd3_pipeline(tmp_path, head_dim=8, heads=4) -> str:
    """A random SD3 pipeline (two CLIP encoders, no T5) saved under tmp_path; returns its folder."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tok, vocab = _clip_tokenizer(tmp_path)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                               attention_head_dim=head_dim, num_attention_heads=heads,
                               caption_projection_dim=head_dim * heads, joint_attention_dim=32,
                               pooled_projection_dim=64, out_channels=4)
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(),
        text_encoder=CLIPTextModelWithProjection(_clip_config(vocab)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab)), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(tmp_path / "sd3")
    return str(tmp_path / "sd3")


def test_sd3_adapter_matches_pipeline(tmp_path):
    from solrl.models.sd3 import SD3Model

    torch.manual_seed(0)
    m = SD3Model.from_pretrained(_sd3_pipeline(tmp_path), dtype="fp32", resolution=16)
    assert m.latent_shape == (4, 8, 8) and m.default_shift == 3.0

    def ref(noise):
        return m.pipeline(prompt=PROMPTS, latents=noise.clone(), sigmas=SIGMAS, guidance_scale=1.0,
                          output_type="latent", height=16, width=16).images

    _check_adapter(m, ref)


def _flux_pipeline(tmp_path, head_dim=16, heads=2, rope=(4, 6, 6)) -> str:
    """A random FLUX.1-dev-like pipeline (CLIP, T5, guidance embedding) saved under tmp_path."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from tokenizers import Tokenizer, models
    from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

    tok, vocab = _clip_tokenizer(tmp_path)
    t5_vocab = ["<pad>", "</s>", "<unk>", *WORDS]
    t5_tok = T5TokenizerFast(tokenizer_object=Tokenizer(models.Unigram([(w, -1.0) for w in t5_vocab], unk_id=2)),
                             pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_vocab), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                 num_heads=4, decoder_start_token_id=0))
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                pooled_projection_dim=32, axes_dims_rope=rope, guidance_embeds=True)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=_vae(), text_encoder=CLIPTextModel(_clip_config(vocab)),
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok)
    pipe.save_pretrained(tmp_path / "flux")
    return str(tmp_path / "flux")


def test_flux_adapter_matches_pipeline(tmp_path):
    from solrl.models.flux import FluxModel, pack_latents, unpack_latents

    torch.manual_seed(0)
    m = FluxModel.from_pretrained(_flux_pipeline(tmp_path), dtype="fp32", resolution=16, max_sequence_length=8,
                                  guidance_scale=3.5)
    assert m.latent_shape == (4, 8, 8) and m.default_shift > 1

    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(unpack_latents(pack_latents(x), 8, 8), x)

    def ref(noise):
        out = m.pipeline(prompt=PROMPTS, latents=pack_latents(noise.clone()), sigmas=SIGMAS,
                         guidance_scale=3.5, output_type="latent", height=16, width=16,
                         max_sequence_length=8).images
        return unpack_latents(out, 8, 8)

    _check_adapter(m, ref)


def _sana_pipeline(tmp_path, head_dim=8, heads=2) -> str:
    """A random SANA pipeline (Gemma-2 encoder, DC-AE) saved under tmp_path; returns its folder."""
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = GemmaTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                             unk_token="<unk>")
    te = Gemma2Model(Gemma2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  num_hidden_layers=1, max_position_embeddings=64, pad_token_id=0))
    tr = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=heads,
                                attention_head_dim=head_dim, num_cross_attention_heads=heads,
                                cross_attention_head_dim=head_dim, cross_attention_dim=head_dim * heads,
                                caption_channels=32, sample_size=8)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                        downsample_block_type="conv", upsample_block_type="interpolate",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    pipe = SanaPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=tr,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(tmp_path / "sana")
    return str(tmp_path / "sana")


def test_sana_adapter_matches_pipeline(tmp_path):
    from solrl.models.sana import SanaModel

    torch.manual_seed(0)
    m = SanaModel.from_pretrained(_sana_pipeline(tmp_path), dtype="fp32", resolution=32, max_sequence_length=8)
    assert m.latent_shape == (4, 16, 16) and m.default_shift == 3.0

    def ref(noise):
        return m.pipeline(prompt=PROMPTS, latents=noise.clone(), sigmas=SIGMAS, guidance_scale=1.0,
                          output_type="latent", height=32, width=32, max_sequence_length=8,
                          complex_human_instruction=None, use_resolution_binning=False).images

    _check_adapter(m, ref)


@pytest.mark.parametrize("kind", ["sd3", "flux", "sana"])
def test_missing_model_path_is_a_clear_error(kind, tmp_path):
    import importlib

    cls = {"sd3": "SD3Model", "flux": "FluxModel", "sana": "SanaModel"}[kind]
    adapter = getattr(importlib.import_module(f"solrl.models.{kind}"), cls)
    with pytest.raises(FileNotFoundError, match="model.path"):
        adapter.from_pretrained("")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        adapter.from_pretrained(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        adapter.from_pretrained(str(tmp_path))


@pytest.mark.gpu
@pytest.mark.parametrize("preset, build", [("sd35l", _sd3_pipeline), ("flux", _flux_pipeline),
                                           ("sana", _sana_pipeline)])
def test_gpu_preset_runs_compiled_nvfp4_previews(preset, build, tmp_path, monkeypatch, capsys):
    """The real-model presets as users run them on CUDA: bf16 weights, LoRA, train.compile on
    (the compiled rollout copy runs the NVFP4 previews through our kernels and the BF16
    regeneration), on a random pipeline 256 wide so that the default swap rules quantize its
    blocks. Two iterations finish without the eager fallback, the second compiles nothing new,
    and fp4_layers.txt lists the swapped layers."""
    from torch._dynamo.utils import counters

    from solrl import train as train_mod
    from solrl.metrics import read_jsonl

    torch.manual_seed(0)
    kw = {"flux": dict(rope=(16, 24, 24))}.get(preset, {})
    path = build(tmp_path, head_dim=64, heads=4, **kw)
    graphs_at = []
    explore = train_mod.explore
    monkeypatch.setattr(train_mod, "explore",
                        lambda *a, **k: graphs_at.append(counters["stats"]["unique_graphs"]) or explore(*a, **k))
    torch._dynamo.reset()
    counters.clear()
    run_dir = tmp_path / "run"
    res = 32 if preset == "sana" else 16
    assert train_mod.main([
        "--preset", preset, f"model.path={path}", f"model.resolution={res}", "model.max_sequence_length=8",
        "device=cuda", "iterations=2", "reward=jpeg_compressibility", "rollout.prompts_per_iter=2",
        "rollout.pool=6", "rollout.select=4", "rollout.preview_steps=2", "rollout.steps=3",
        "rollout.batch_size=8", "train.micro_batch=4", "eval.every=0", "log.image_every=0",
        f"log.run_dir={run_dir}", "log.progress=false", "log.tensorboard=false",
    ]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert "torch.compile failed" not in err, err
    rows = read_jsonl(str(run_dir / "metrics.jsonl"))
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(r["loss"]) and r["reward_fp4_mean"] is not None and r["reward_bf16_mean"] is not None
        assert r["skipped_groups"] == r["skipped_losses"] == r["skipped_steps"] == 0
    assert len(graphs_at) == 2 and 0 < graphs_at[1] == counters["stats"]["unique_graphs"], graphs_at
    layers = (run_dir / "fp4_layers.txt").read_text()
    assert int(layers.split("layers swapped")[0].split()[-1]) > 0 and "NVFP4: " in out, layers
    expected = {"sd35l": "transformer_blocks.0.ff.net.2", "flux": "single_transformer_blocks.0.proj_out",
                "sana": "transformer_blocks.0.ff.conv_point"}[preset]
    assert f"\n{expected}\n" in layers, layers
