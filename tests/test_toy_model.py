"""The toy model: DiffusionModel protocol, diffusers SD3 transformer, LoRA, save/load,
the pretraining and eval entry points (tiny CPU configs), and the shipped weights."""

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from solrl.models import DiffusionModel, repeat_cond
from solrl.sampling import ode_sample
from solrl.toy import ToyModelConfig, ToyT2I, load_pretrained
from solrl.toy.model import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE

TINY = ToyModelConfig(num_layers=1, num_attention_heads=1, attention_head_dim=32, text_dim=32,
                      pooled_dim=32, text_layers=1)
SHIPPED = (DEFAULT_WEIGHTS_DIR / WEIGHTS_FILE).is_file()
needs_shipped = pytest.mark.skipif(
    not SHIPPED, reason="shipped weights solrl/toy/weights/model.safetensors not present yet "
    "(run `python -m solrl.toy.pretrain --out solrl/toy/weights` on a GPU)")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ToyT2I(TINY).eval()


def test_protocol_and_shapes(tiny):
    from diffusers import SD3Transformer2DModel

    assert isinstance(tiny, DiffusionModel)
    assert isinstance(tiny.transformer, SD3Transformer2DModel)
    assert tiny.latent_shape == (3, 64, 64)
    prompts = ["two red circles left of a blue square", "a white diamond", "a zebra"]
    cond = tiny.encode_prompts(prompts)
    assert cond["encoder_hidden_states"].shape == (3, 16, 32)
    assert cond["pooled_projections"].shape == (3, 32)
    x = torch.randn(3, 3, 64, 64)
    v = tiny.velocity(x, torch.tensor([0.9, 0.5, 0.1]), cond)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    # prompts change the velocity; sigma changes it
    v2 = tiny.velocity(x, torch.tensor([0.9, 0.5, 0.1]), repeat_cond(
        tiny.encode_prompts(["a white diamond"]), 3))
    assert not torch.allclose(v[0], v2[0])
    img = tiny.decode(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5))
    assert img[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_velocity_bad_input(tiny):
    cond = tiny.encode_prompts(["a red circle"])
    with pytest.raises(ValueError, match=r"latents must be \[B, \*\(3, 64, 64\)\]"):
        tiny.velocity(torch.randn(1, 3, 32, 32), torch.ones(1), cond)
    with pytest.raises(ValueError, match=r"sigma must be \[B\]"):
        tiny.velocity(torch.randn(1, 3, 64, 64), torch.ones(2), cond)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ToyModelConfig(image_size=30)
    with pytest.raises(ValueError, match="multiple of 16"):
        ToyModelConfig(text_dim=40, text_heads=2)


def test_velocity_with_other_transformer_and_dtype(tiny):
    import copy

    other = copy.deepcopy(tiny.transformer)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cond = tiny.encode_prompts(["a red circle"] * 2)
    x, s = torch.randn(2, 3, 64, 64), torch.tensor([0.3, 0.7])
    assert not torch.allclose(tiny.velocity(x, s, cond), tiny.velocity(x, s, cond, other))
    bf = copy.deepcopy(tiny.transformer).to(torch.bfloat16)
    v = tiny.velocity(x, s, cond, bf)
    assert v.dtype == torch.float32  # returned in latents' dtype
    ref = tiny.velocity(x, s, cond)
    assert (v - ref).abs().max() < 0.1 * ref.abs().max() + 0.05  # bf16 weights: loose


def test_linear_layers_nvfp4_friendly():
    m = ToyT2I()  # the shipped architecture
    bad = [n for n, mod in m.transformer.named_modules()
           if isinstance(mod, nn.Linear) and mod.in_features % 16]
    assert bad == []
    bad = [n for n, mod in m.text_encoder.named_modules()
           if isinstance(mod, nn.Linear) and mod.in_features % 16]
    assert bad == []
    n = sum(p.numel() for p in m.parameters())
    assert n * 2 <= 16e6  # fp16 file under 16 MB


def test_lora_injects(tiny):
    peft = pytest.importorskip("peft")
    import copy

    tr = copy.deepcopy(tiny.transformer)
    cfg = peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj",
                                          "ff.net.2"])
    lora = peft.get_peft_model(tr, cfg)
    n_lora = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert n_lora > 0
    with torch.no_grad():  # B starts at zero (identity adapter): perturb it
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    cond = tiny.encode_prompts(["a red circle"])
    x, s = torch.randn(1, 3, 64, 64), torch.tensor([0.5])
    v = tiny.velocity(x, s, cond, transformer=lora)
    assert not torch.allclose(v, tiny.velocity(x, s, cond))
    v.pow(2).mean().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)


def test_save_load_roundtrip(tiny, tmp_path):
    out = tiny.save_pretrained(tmp_path / "w", meta={"note": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["meta"] == {"note": "test"} and cfg["model"]["num_layers"] == 1
    loaded = load_pretrained(out)
    assert not loaded.training
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k  # fp16 storage
    cond = loaded.encode_prompts(["a blue square"])
    assert cond["encoder_hidden_states"].dtype == torch.float32
    bf = load_pretrained(out, dtype=torch.bfloat16)
    assert bf.transformer.pos_embed.proj.weight.dtype == torch.bfloat16
    # fp32 storage is exact
    out32 = tiny.save_pretrained(tmp_path / "w32", dtype=torch.float32)
    loaded32 = load_pretrained(out32)
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded32.state_dict()[k], v), k


def test_load_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(tmp_path)
    out = tiny.save_pretrained(tmp_path / "w")
    cfg = json.loads((out / "config.json").read_text())
    cfg["vocab"] = cfg["vocab"][:-1]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vocabulary differs"):
        load_pretrained(out)
    cfg["vocab"] = list(tiny.tokenizer.vocab)
    cfg["model"]["depth"] = 3
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unknown model config keys \['depth'\]"):
        load_pretrained(out)


def test_pretrain_smoke_and_eval(tmp_path):
    """A few pretraining steps of a tiny model on CPU write loadable weights, a loss curve and
    sample grids; eval reads them and writes its table."""
    from solrl.toy import eval as toy_eval
    from solrl.toy import pretrain

    cfg = pretrain.PretrainConfig(out=tmp_path / "run", steps=4, batch_size=4, warmup=2,
                                  device="cpu", log_every=2, sample_every=2, sample_steps=1,
                                  model=TINY)
    out = pretrain.main(cfg)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "loss.png", "model.safetensors", "samples_000002.png",
                     "samples_000004.png", "train_log.jsonl"]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(r["loss"] > 0 for r in log)
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["pretrain"]["steps"] == 4
    model = load_pretrained(out)
    assert model.cfg == TINY

    ecfg = toy_eval.EvalConfig(weights=out, out=tmp_path / "eval", steps=(1,),
                               samples_per_prompt=1, max_prompts=1, device="cpu")
    res = toy_eval.main(ecfg)
    table = res["results"]["1"]
    assert table["all"]["n"] == 5 and 0 <= table["all"]["reward"] <= 1
    assert (tmp_path / "eval" / "eval.json").is_file()
    assert (tmp_path / "eval" / "samples_1.png").is_file()


def test_pretrain_reproducible(tmp_path):
    from solrl.toy import pretrain

    outs = []
    for name in ("a", "b"):
        cfg = pretrain.PretrainConfig(out=tmp_path / name, steps=2, batch_size=3, warmup=1,
                                      device="cpu", log_every=1, sample_every=0,
                                      sample_steps=1, save_dtype="float32", model=TINY)
        outs.append(load_pretrained(pretrain.main(cfg)).state_dict())
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k
    with pytest.raises(ValueError, match="cond_dropout"):
        pretrain.PretrainConfig(cond_dropout=1.0)


def test_pretrain_lr_schedule():
    from solrl.toy.pretrain import PretrainConfig, lr_at

    cfg = PretrainConfig(steps=100, warmup=10, lr=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)


@needs_shipped
def test_shipped_weights_load_and_sample():
    from solrl.rewards import build_reward

    size = (DEFAULT_WEIGHTS_DIR / WEIGHTS_FILE).stat().st_size
    assert size <= 16e6
    model = load_pretrained()
    prompts = ["a red circle", "two blue squares"]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, *model.latent_shape, generator=gen)
    x = ode_sample(model, noise, model.encode_prompts(prompts), 6)
    img = model.decode(x)
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()
    assert img.std() > 0.1  # not a blank image
    r = build_reward("geneval")(img, prompts)
    assert r.shape == (2,) and (r > 0).all()


@needs_shipped
@pytest.mark.slow
def test_preview_speed_cpu():
    """Task budget: one prompt's 48-candidate, 6-step preview in <= 5 s on a 2-core CPU."""
    model = load_pretrained()
    noise = torch.randn(48, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            cond = repeat_cond(model.encode_prompts(["two red circles left of a blue square"]), 48)
            model.decode(ode_sample(model, noise, cond, 6))
        times.append(time.perf_counter() - t0)
    print(f"48 x 6-step preview: {min(times):.2f} s (threads {torch.get_num_threads()})")
    assert min(times) <= 5.0


@needs_shipped
def test_model_card_mentions_measured_numbers():
    card = (Path(__file__).parents[1] / "solrl" / "toy" / "MODEL_CARD.md").read_text()
    assert "| all" in card and "TBD" not in card


@pytest.mark.gpu
def test_pretrain_and_sample_gpu(tmp_path):
    """The GPU path of pretraining (bf16 autocast, fused AdamW, device-side data) and of
    sampling/eval, on a tiny config."""
    from solrl.toy import eval as toy_eval
    from solrl.toy import pretrain

    cfg = pretrain.PretrainConfig(out=tmp_path / "run", steps=3, batch_size=16, warmup=1,
                                  device="cuda", log_every=1, sample_every=0, sample_steps=2,
                                  compile=False, model=TINY)
    out = pretrain.main(cfg)
    model = load_pretrained(out, device="cuda")
    images = toy_eval.generate(model, ["a red circle", "two blue squares"], 4, seed=0,
                               samples_per_prompt=3)
    assert images.shape == (6, 3, 64, 64) and images.is_cuda and torch.isfinite(images).all()
    again = toy_eval.generate(model, ["a red circle", "two blue squares"], 4, seed=0,
                              samples_per_prompt=3, batch_size=4)
    assert (images - again).abs().max() < 1e-2  # batch split only changes bf16 rounding
