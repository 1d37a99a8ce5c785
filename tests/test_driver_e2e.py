"""End-to-end driver runs on CPU with a tiny random toy model: every algorithm and objective for
2 iterations, resume equality, NaN/Inf handling, the run directory's files, and the CLI."""

import copy
import json
import math
import os

import pytest
import torch

from solrl.config import from_dict, load_yaml
from solrl.metrics import TIMING_KEYS, read_jsonl
from solrl.train import main, train

toy = pytest.importorskip("solrl.toy")
from solrl.toy.world import eval_prompts, sample_prompts  # noqa: E402

TINY = dict(image_size=16, patch_size=4, num_layers=1, num_attention_heads=2, attention_head_dim=16,
            text_dim=32, pooled_dim=32, text_layers=1, max_tokens=16)  # fmt: skip


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval()


def redness(images, prompts):
    """A cheap, continuous, deterministic reward: mean red minus mean green/blue."""
    return (images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))).float()


def prompts_fn(n, seed):
    return sample_prompts(n, seed)


def tiny_cfg(tmp_path, name, **over):
    d = {
        "iterations": 2, "device": "cpu", "seed": 3,
        "model": {"dtype": "fp32"},
        "rollout": {"prompts_per_iter": 2, "pool": 5, "select": 3, "preview_steps": 2, "steps": 3,
                    "batch_size": 4, "fp4_min_features": 0},
        "train": {"micro_batch": 4, "mixed_precision": "no", "lora_rank": 4, "lora_alpha": 8,
                  "lr": 1e-2, "kl_beta": 1e-4},
        "eval": {"every": 1, "num_prompts": 2, "steps": 2},
        "log": {"run_dir": str(tmp_path / name), "image_every": 1, "image_prompts": 1,
                "ckpt_every": 1, "progress": False, "tensorboard": False},
    }  # fmt: skip
    for key, val in over.items():
        node = d
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = val
    return from_dict(d)


def run(cfg, model=None, reward=redness):
    return train(cfg, model=model or tiny_model(), reward_fn=reward, prompt_fn=prompts_fn,
                 eval_prompts=eval_prompts())


def _finite_params(module):
    return all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("algorithm, objective", [
    ("sol_rl", "nft"), ("bf16", "nft"), ("bf16_pool", "nft"), ("naive_fp4", "nft"),
    ("sol_rl", "grpo"), ("bf16_pool", "grpo"),
])  # fmt: skip
def test_two_iterations(tmp_path, algorithm, objective):
    cfg = tiny_cfg(tmp_path, f"{algorithm}-{objective}", algorithm=algorithm,
                   **{"train.objective": objective})
    if algorithm == "naive_fp4" or objective == "grpo":
        cfg.train.finetune = "full"  # exercise full fine-tuning too
    model = tiny_model()
    base = copy.deepcopy(model.transformer.state_dict())
    run_dir = run(cfg, model)
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert r["loss"] is not None and math.isfinite(r["loss"])
        assert r["skipped_groups"] == r["skipped_losses"] == r["skipped_steps"] == 0
        assert r["iter_s"] > 0 and r["train_s"] > 0
        fp4, bf16 = r["reward_fp4_mean"] is not None, r["reward_bf16_mean"] is not None
        assert fp4 == (algorithm in ("sol_rl", "naive_fp4"))
        assert bf16 == (algorithm != "naive_fp4")
        assert (r["preview_s"] > 0) == (algorithm != "bf16")
        if objective == "grpo":
            assert r["clip_frac"] is not None
    if algorithm == "sol_rl":
        assert any(r["spearman_fp4_bf16"] is not None for r in rows)
    files = set(os.listdir(run_dir))
    assert {"config.yaml", "metrics.jsonl", "eval.jsonl", "reward.png", "summary.txt", "samples",
            "checkpoints", "environment.txt"} <= files
    assert os.listdir(os.path.join(run_dir, "samples"))
    assert ("fp4_layers.txt" in files) == (algorithm in ("sol_rl", "naive_fp4"))
    if "fp4_layers.txt" in files:  # the swap report: NVFP4 layers, and the kept ones with a reason
        text = open(os.path.join(run_dir, "fp4_layers.txt")).read()
        n_swapped = int(text.split("layers swapped")[0].split()[-1])
        assert text.startswith("NVFP4: ") and n_swapped > 0, text
        assert f"NVFP4 ({n_swapped}):" in text and "kept in high precision (" in text
        for rule in ("embedder / input projection", "final layer", "adaLN modulation"):  # DEFAULT_EXCLUDE
            assert f": excluded: {rule}" in text, text
    assert len(read_jsonl(os.path.join(run_dir, "eval.jsonl"))) == 3  # before, after each iteration
    ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert ckpts == ["iter_000000", "iter_000001"]
    # the policy moved, and stayed finite
    if cfg.train.finetune == "full":
        after = model.transformer.state_dict()
        assert any(not torch.equal(after[k], base[k]) for k in base)
    assert _finite_params(model.transformer)


def test_fp4_preview_differs_from_bf16_and_regeneration_reuses_seeds(tmp_path):
    """Stage one (NVFP4, preview steps) and stage two (BF16) start from the same latents: with
    preview_steps == steps and FP4 off, the regenerated rewards equal the preview's exactly."""
    cfg = tiny_cfg(tmp_path, "same", **{"rollout.preview_steps": 3, "rollout.preview_linear": "bf16",
                                        "eval.every": 0, "log.image_every": 0})
    rows = read_jsonl(os.path.join(run(cfg), "metrics.jsonl"))
    assert all(r["spearman_fp4_bf16"] in (None, 1.0) for r in rows)
    assert rows[0]["reward_bf16_mean"] is not None
    # the same selected seeds: bf16 set == fp4 rewards of the selected candidates
    cfg2 = tiny_cfg(tmp_path, "fp4", **{"rollout.preview_steps": 3, "eval.every": 0,
                                        "log.image_every": 0})
    rows2 = read_jsonl(os.path.join(run(cfg2), "metrics.jsonl"))
    assert rows2[0]["reward_fp4_mean"] != rows[0]["reward_fp4_mean"]  # NVFP4 changes the preview


def test_resume_gives_the_same_metrics(tmp_path):
    full = tiny_cfg(tmp_path, "full", iterations=4, **{"log.ckpt_every": 2})
    rows_full = read_jsonl(os.path.join(run(full), "metrics.jsonl"))
    part = tiny_cfg(tmp_path, "part", iterations=2, **{"log.ckpt_every": 2})
    run_dir = run(part)
    # a line written after the last checkpoint (a crash) must be dropped on resume
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"iteration": 2, "loss": 123.0}) + "\n")
    saved = load_yaml(os.path.join(run_dir, "config.yaml"))
    saved.update(iterations=4, resume=run_dir)
    run(from_dict(saved))
    rows_resumed = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["iteration"] for r in rows_resumed] == [0, 1, 2, 3]
    for a, b in zip(rows_full, rows_resumed):
        a = {k: v for k, v in a.items() if k not in TIMING_KEYS}
        b = {k: v for k, v in b.items() if k not in TIMING_KEYS}
        assert a == b
    assert rows_resumed[-1]["time_s"] > rows_resumed[1]["time_s"]  # wall-clock carried over
    evals = read_jsonl(os.path.join(run_dir, "eval.jsonl"))
    assert [e["updates"] for e in evals] == [0, 1, 2, 3, 4]
    env = open(os.path.join(run_dir, "environment.txt")).read()  # one section per session
    assert env.count("# session started ") == 2 and env.count(f"\ntorch {torch.__version__} (CUDA ") == 2, env


def test_resume_before_the_first_checkpoint_starts_over(tmp_path, capsys):
    """A run stopped before its first checkpoint starts over on resume: its initial evaluation is
    redone, not duplicated. Without progress bars (log.progress=false, or stderr not a terminal)
    each iteration prints one line."""
    import shutil

    cfg = tiny_cfg(tmp_path, "nock", iterations=2, **{"log.ckpt_every": 0, "log.image_every": 0})
    run_dir = run(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("iteration ")]
    assert [ln.split(":")[0] for ln in lines] == ["iteration 1/2", "iteration 2/2"], lines
    assert "reward fp4 " in lines[0] and ", eval " in lines[0] and " s (preview " in lines[0]
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))  # as if stopped before the checkpoint
    saved = load_yaml(os.path.join(run_dir, "config.yaml"))
    saved.update(resume=run_dir)
    run(from_dict(saved))
    assert [e["updates"] for e in read_jsonl(os.path.join(run_dir, "eval.jsonl"))] == [0, 1, 2]
    assert [r["iteration"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))] == [0, 1]


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = tiny_cfg(tmp_path, "once", iterations=1, **{"eval.every": 0, "log.image_every": 0})
    run(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        run(tiny_cfg(tmp_path, "once", iterations=1))


def test_nan_reward_group_is_skipped_and_counted(tmp_path):
    calls = {"n": 0}

    def flaky(images, prompts):
        r = redness(images, prompts)
        calls["n"] += 1
        if calls["n"] == 1:  # the first batch = prompt group 0 of iteration 0
            r[1] = float("nan")
        return r

    # bf16: batches of 3 = one group of K = 3 each
    cfg = tiny_cfg(tmp_path, "nan", algorithm="bf16",
                   **{"eval.every": 0, "log.image_every": 0, "rollout.batch_size": 3})
    model = tiny_model()
    rows = read_jsonl(os.path.join(run(cfg, model, flaky), "metrics.jsonl"))
    assert [r["skipped_groups"] for r in rows] == [1, 0]
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rows)
    assert _finite_params(model.transformer)


def test_iteration_with_every_group_skipped(tmp_path):
    calls = {"n": 0}

    def inf_first_iteration(images, prompts):
        calls["n"] += 1
        r = redness(images, prompts)
        return r + float("inf") if calls["n"] <= 3 else r  # all stage-one batches of iteration 0

    cfg = tiny_cfg(tmp_path, "inf", **{"eval.every": 0, "log.image_every": 0})
    model = tiny_model()
    rows = read_jsonl(os.path.join(run(cfg, model, inf_first_iteration), "metrics.jsonl"))
    assert rows[0]["skipped_groups"] == 2 and rows[0]["loss"] is None
    assert rows[1]["skipped_groups"] == 0 and math.isfinite(rows[1]["loss"])
    assert _finite_params(model.transformer)


def test_nan_loss_is_skipped_never_applied(tmp_path):
    model = tiny_model()
    real = model.velocity
    state = {"n": 0}

    def poisoned(latents, sigma, cond, transformer=None):
        out = real(latents, sigma, cond, transformer)
        if torch.is_grad_enabled():  # the training forward
            state["n"] += 1
            if state["n"] == 1:
                return out * float("nan")
        return out

    model.velocity = poisoned
    cfg = tiny_cfg(tmp_path, "nanloss", iterations=1, **{"eval.every": 0, "log.image_every": 0})
    rows = read_jsonl(os.path.join(run(cfg, model), "metrics.jsonl"))
    assert rows[0]["skipped_losses"] == 1
    assert _finite_params(model.transformer)


def test_cli_no_arguments_help_and_toy_weights(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--rollout.pool" in capsys.readouterr().out
    weights = os.path.join(os.path.dirname(toy.__file__), "weights", "model.safetensors")
    if not os.path.exists(weights):
        pytest.skip("shipped toy weights not present yet (python -m solrl.toy.pretrain)")
    run_dir = str(tmp_path / "cli")
    assert main(["--preset", "toy-cpu", "iterations=1", "rollout.prompts_per_iter=1", "rollout.pool=4",
                 "rollout.select=2", "rollout.preview_steps=1", "rollout.steps=2", "eval.every=0",
                 "train.micro_batch=2", "log.progress=False", f"log.run_dir={run_dir}"]) == 0
    assert len(read_jsonl(os.path.join(run_dir, "metrics.jsonl"))) == 1


@pytest.mark.parametrize("objective", ["nft", "grpo"])
def test_bf16_weights_and_autocast(tmp_path, objective):
    """The GPU configuration's dtypes on CPU: bf16 base / rollout copy, fp32 LoRA, bf16 autocast,
    NVFP4 preview of a bf16 copy."""
    cfg = tiny_cfg(tmp_path, f"bf16-{objective}", **{"model.dtype": "bf16", "train.mixed_precision": "bf16",
                                                     "train.objective": objective, "log.image_every": 0})
    model = tiny_model().to(torch.bfloat16)
    rows = read_jsonl(os.path.join(run(cfg, model), "metrics.jsonl"))
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert all(r["reward_fp4_mean"] is not None and r["reward_bf16_mean"] is not None for r in rows)
    lora = [p for n, p in model.transformer.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert all(p.dtype == torch.bfloat16 for n, p in model.transformer.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("objective, cudnn", [("nft", True), ("grpo", True), ("nft", False)])
def test_training_passes_run_under_training_attention(tmp_path, monkeypatch, objective, cudnn):
    """The policy's forwards with grad, and so their backward, run inside training_attention():
    SDPA wrapped (cuDNN's gradient-stride workaround, RESULTS §8a), or with cuDNN off when
    train.cudnn_attention=false; rollouts see neither, and both are undone after the update."""
    import torch.nn.functional as F

    from solrl.policy import Policy

    sdpa = F.scaled_dot_product_attention
    seen = {True: [], False: []}  # grad enabled -> (SDPA wrapped, cuDNN enabled) at each forward
    velocity = Policy.velocity

    def spy(self, *args, **kwargs):
        seen[torch.is_grad_enabled()].append(
            (F.scaled_dot_product_attention is not sdpa, torch.backends.cuda.cudnn_sdp_enabled()))
        return velocity(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "velocity", spy)
    run(tiny_cfg(tmp_path, objective, iterations=1, **{"train.objective": objective, "eval.every": 0,
                                                       "train.cudnn_attention": cudnn}))
    assert seen[True] and set(seen[True]) == {(cudnn, cudnn)}, seen
    assert F.scaled_dot_product_attention is sdpa and torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm, objective", [("sol_rl", "nft"), ("sol_rl", "grpo"), ("naive_fp4", "nft")])
def test_gpu_two_iterations_nvfp4_preview(tmp_path, algorithm, objective):
    """On CUDA: bf16 weights, bf16 autocast, the NVFP4 preview through solrl_kernels (Triton /
    native GEMMs), counter noise generated on the GPU."""
    cfg = tiny_cfg(tmp_path, f"gpu-{algorithm}-{objective}", algorithm=algorithm, device="cuda",
                   **{"model.dtype": "bf16", "train.mixed_precision": "bf16", "train.objective": objective,
                      "rollout.pool": 16, "rollout.select": 8, "rollout.batch_size": 32})
    model = tiny_model().to("cuda", torch.bfloat16)
    rows = read_jsonl(os.path.join(run(cfg, model), "metrics.jsonl"))
    for r in rows:
        assert math.isfinite(r["loss"]) and r["mem_gb"] > 0
        assert r["reward_fp4_mean"] is not None
        assert r["skipped_groups"] == r["skipped_losses"] == r["skipped_steps"] == 0
    assert _finite_params(model.transformer)


def test_a_failing_compile_falls_back_to_eager_rollouts(tmp_path, monkeypatch, capsys):
    """train.compile is on in the real-model presets: where torch.compile fails on the rollout
    copy, the run warns once, samples eagerly from then on, and gives the eager run's results
    (the failed stage is sampled again with the same per-candidate seeds)."""
    from solrl import train as train_mod

    class FailsToCompile(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module
            self.calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            raise torch._dynamo.exc.TorchDynamoException("fake backend failure\nmore")

    compiled = []
    monkeypatch.setattr(train_mod.torch, "compile",
                        lambda m: compiled.append(FailsToCompile(m)) or compiled[-1])
    over = {"algorithm": "sol_rl", "iterations": 2, "eval.every": 0}
    rows = read_jsonl(os.path.join(run(tiny_cfg(tmp_path, "fallback", **over,
                                                **{"train.compile": True})), "metrics.jsonl"))
    err = capsys.readouterr().err
    assert err.count("torch.compile failed on the rollout copy") == 1, err
    assert "TorchDynamoException: fake backend failure)" in err
    assert len(compiled) == 1 and compiled[0].calls == 1  # tried once, then eager throughout
    eager = read_jsonl(os.path.join(run(tiny_cfg(tmp_path, "eager", **over)), "metrics.jsonl"))
    for key in ("reward_fp4_mean", "reward_bf16_mean", "loss"):
        assert [r[key] for r in rows] == [r[key] for r in eager], key


def test_compiled_rollouts_do_not_recompile_per_iteration(tmp_path):
    """train.compile: the NVFP4 previews (under rollout_mode) and the BF16 regeneration run the
    compiled rollout copy. Each iteration re-quantizes the weights into new NVFP4Linear modules;
    Dynamo guards on their type, not their identity, so iterations after the first compile
    nothing: two iterations build exactly the graphs one does."""
    from torch._dynamo.utils import counters

    graphs = []
    for iterations in (1, 2):
        torch._dynamo.reset()
        counters.clear()
        cfg = tiny_cfg(tmp_path, f"compiled-{iterations}", algorithm="sol_rl", iterations=iterations,
                       **{"train.compile": True, "eval.every": 0})
        rows = read_jsonl(os.path.join(run(cfg), "metrics.jsonl"))
        assert len(rows) == iterations and all(math.isfinite(r["loss"]) for r in rows)
        assert rows[-1]["reward_fp4_mean"] is not None and rows[-1]["reward_bf16_mean"] is not None
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0], graphs
