"""Model adapters (SD3, FLUX, SANA) on tiny random diffusers pipelines saved to a temp folder:
`from_pretrained(path)` loads them with no network, and our Euler sampler through the adapter
reproduces the diffusers pipeline's own latents exactly (same sigmas, guidance 1 / embedded)."""

import json

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


def test_sd3_adapter_matches_pipeline(tmp_path):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    from solrl.models.sd3 import SD3Model

    torch.manual_seed(0)
    tok, vocab = _clip_tokenizer(tmp_path)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                               attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                               joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(),
        text_encoder=CLIPTextModelWithProjection(_clip_config(vocab)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab)), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(tmp_path / "sd3")
    m = SD3Model.from_pretrained(str(tmp_path / "sd3"), dtype="fp32", resolution=16)
    assert m.latent_shape == (4, 8, 8) and m.default_shift == 3.0

    def ref(noise):
        return m.pipeline(prompt=PROMPTS, latents=noise.clone(), sigmas=SIGMAS, guidance_scale=1.0,
                          output_type="latent", height=16, width=16).images

    _check_adapter(m, ref)


def test_flux_adapter_matches_pipeline(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from tokenizers import Tokenizer, models
    from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

    from solrl.models.flux import FluxModel, pack_latents, unpack_latents

    torch.manual_seed(0)
    tok, vocab = _clip_tokenizer(tmp_path)
    t5_vocab = ["<pad>", "</s>", "<unk>", *WORDS]
    t5_tok = T5TokenizerFast(tokenizer_object=Tokenizer(models.Unigram([(w, -1.0) for w in t5_vocab], unk_id=2)),
                             pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_vocab), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                 num_heads=4, decoder_start_token_id=0))
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, axes_dims_rope=(4, 6, 6), guidance_embeds=True)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=_vae(), text_encoder=CLIPTextModel(_clip_config(vocab)),
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok)
    pipe.save_pretrained(tmp_path / "flux")
    m = FluxModel.from_pretrained(str(tmp_path / "flux"), dtype="fp32", resolution=16, max_sequence_length=8,
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


def test_sana_adapter_matches_pipeline(tmp_path):
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizerFast

    from solrl.models.sana import SanaModel

    torch.manual_seed(0)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = GemmaTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                             unk_token="<unk>")
    te = Gemma2Model(Gemma2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  num_hidden_layers=1, max_position_embeddings=64, pad_token_id=0))
    tr = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                                attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                cross_attention_dim=16, caption_channels=32, sample_size=8)
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
    m = SanaModel.from_pretrained(str(tmp_path / "sana"), dtype="fp32", resolution=32, max_sequence_length=8)
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
