"""solrl.fidelity: the preview's ranking against full BF16 rollouts of the same seeds."""

import json
import os

import pytest
import torch

from solrl import fidelity as F
from solrl.config import from_dict
from solrl.metrics import read_jsonl
from solrl.selection import select
from solrl.train import train

toy = pytest.importorskip("solrl.toy")
from solrl.toy.world import eval_prompts, sample_prompts  # noqa: E402

TINY = dict(image_size=16, patch_size=4, num_layers=1, num_attention_heads=2, attention_head_dim=16,
            text_dim=32, pooled_dim=32, text_layers=1, max_tokens=16)  # fmt: skip


def tiny_model():
    torch.manual_seed(0)
    return toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval()


def redness(images, prompts):
    return (images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))).float()


def cfg_for(run_dir, **rollout):
    return from_dict({
        "iterations": 1, "device": "cpu", "seed": 5, "model": {"dtype": "fp32"},
        "rollout": {"prompts_per_iter": 2, "pool": 6, "select": 4, "preview_steps": 2, "steps": 3,
                    "batch_size": 8, "fp4_min_features": 0, **rollout},
        "train": {"micro_batch": 4, "mixed_precision": "no", "lora_rank": 4, "lora_alpha": 8,
                  "lr": 5e-2, "kl_beta": 0.0},
        "eval": {"every": 0},
        "log": {"run_dir": str(run_dir), "image_every": 0, "ckpt_every": 1, "progress": False,
                "tensorboard": False},
    })  # fmt: skip


def run_fidelity(cfg, out, rounds=1):
    return F.fidelity(cfg, str(out), rounds, model=tiny_model(), reward_fn=redness,
                      prompt_fn=sample_prompts)


@pytest.mark.parametrize("rollout, names", [
    ({}, ["reference", "preview", "bf16, preview steps", "fp4, full steps"]),
    ({"preview_linear": "bf16"}, ["reference", "preview"]),  # the others repeat these two
    ({"preview_steps": 3}, ["reference", "preview"]),
])  # fmt: skip
def test_variants_leave_out_repeats(tmp_path, rollout, names):
    assert [v.name for v in F.variants(cfg_for(tmp_path, **rollout))] == names


def test_compare_measures():
    torch.manual_seed(0)
    ref = torch.rand(8, 10)
    same = F.compare(ref, ref, 4, "best_worst")
    assert same == {"spearman": pytest.approx(1.0), "agreement": 1.0, "contrast": pytest.approx(1.0)}
    # reversed ranking: best_worst picks the very same seeds, but the halves swap: only the
    # contrast (and the rank correlation) says the preview is useless
    rev = F.compare(-ref, ref, 4, "best_worst")
    assert rev["agreement"] == 1.0
    assert rev["spearman"] == pytest.approx(-1.0) and rev["contrast"] == pytest.approx(-1.0)
    noisy = F.compare(ref + 0.3 * torch.rand(8, 10), ref, 4, "best_worst")
    assert 0 < noisy["spearman"] < 1 and 0 < noisy["contrast"] < 1 and 0 <= noisy["agreement"] <= 1
    bad = ref.clone()
    bad[0, 3] = float("nan")  # that prompt is left out
    assert F.compare(bad, ref, 4, "best_worst") == F.compare(ref[1:], ref[1:], 4, "best_worst", seed=1)
    assert F.compare(bad[:1], ref[:1], 4, "best_worst") == {
        "spearman": None, "agreement": None, "contrast": None}


def test_fidelity_previews_the_candidates_of_the_runs_first_iteration(tmp_path):
    """The preview variant draws the same prompts, seeds and network as the driver's first
    iteration: its rewards are the driver's FP4 pool rewards; the reference's are the BF16
    rewards of the seeds the driver regenerates."""
    run_dir = train(cfg_for(tmp_path / "run"), model=tiny_model(), reward_fn=redness,
                    prompt_fn=sample_prompts, eval_prompts=eval_prompts())
    row = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))[0]
    report = run_fidelity(cfg_for(tmp_path / "unused"), tmp_path / "fid", rounds=2)
    names = [v["name"] for v in report["variants"]]
    assert names == ["reference", "preview", "bf16, preview steps", "fp4, full steps"]
    ref, preview = report["variants"][0], report["variants"][1]
    first = torch.tensor(preview["rewards"][:2])  # round 0: the run's iteration 0
    assert float(first.mean()) == pytest.approx(row["reward_fp4_mean"], abs=1e-6)
    picked = [torch.tensor(ref["rewards"][g])[select(first[g], 4, "best_worst")] for g in range(2)]
    assert float(torch.cat(picked).mean()) == pytest.approx(row["reward_bf16_mean"], abs=1e-6)
    assert len(report["prompts"]) == 4 and torch.tensor(ref["rewards"]).shape == (4, 6)
    assert ref["spearman"] == pytest.approx(1.0) and ref["contrast"] == pytest.approx(1.0)
    for v in report["variants"]:
        assert -1 <= v["spearman"] <= 1 and 0 <= v["agreement"] <= 1 and v["s_per_image"] > 0
    on_disk = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert on_disk["variants"][1]["rewards"] == preview["rewards"]
    assert (tmp_path / "fid" / "fidelity.png").stat().st_size > 10_000
    assert "spearman" in F.table(report) and "agreement 0.67" in F.table(report)
    assert ref["layers_nvfp4"] is None and preview["layers_nvfp4"] > 0
    none_swapped = {**report, "variants": [ref, {**preview, "layers_nvfp4": 0}]}
    assert "swapped no layer" in F.table(none_swapped) and "swapped no layer" not in F.table(report)


def test_resume_reads_the_trained_policy_and_changes_nothing_in_the_run(tmp_path):
    run_dir = train(cfg_for(tmp_path / "run"), model=tiny_model(), reward_fn=redness,
                    prompt_fn=sample_prompts, eval_prompts=eval_prompts())
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, ps in os.walk(run_dir) for p in ps}
    fresh = run_fidelity(cfg_for(tmp_path / "x", preview_linear="bf16"), tmp_path / "fresh")
    cfg = cfg_for(run_dir, preview_linear="bf16")
    cfg.resume = run_dir
    trained = run_fidelity(cfg, tmp_path / "trained")
    assert trained["resume"] == run_dir
    assert trained["variants"][0]["rewards"] != fresh["variants"][0]["rewards"]  # updated policy
    after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, ps in os.walk(run_dir) for p in ps}
    assert after == before


def test_cli_mistakes_end_in_one_line(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "fidelity.json").write_text("{}")
    cases = [(["--rounds", "x"], "--rounds must be a positive integer"),
             (["--out", str(tmp_path / "old")], "already holds a fidelity report"),
             (["--rounds", "0", "--out", str(tmp_path / "z")], "--rounds must be >= 1"),
             (["--out"], "--out needs a value"),
             (["rollout.bogus=1"], "unknown")]  # fmt: skip
    for argv, msg in cases:
        assert F.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("solrl: error: ") and msg in err and err.count("\n") == 1, err
    assert F.main(["--help"]) == 0 and "Preview fidelity" in capsys.readouterr().out
