"""The `python -m solrl.train` command line end to end (main()): user mistakes as one line and
exit status 2, resume rules, Ctrl-C. Runs use a tiny random toy model (load_model patched)."""

import os

import pytest
import torch
import yaml

from solrl import train as train_mod
from solrl.metrics import read_jsonl

toy = pytest.importorskip("solrl.toy")

TINY = dict(image_size=16, patch_size=4, num_layers=1, num_attention_heads=2, attention_head_dim=16,
            text_dim=32, pooled_dim=32, text_layers=1, max_tokens=16)  # fmt: skip
CHEAP = ["--preset", "toy-cpu", "rollout.prompts_per_iter=2", "rollout.pool=4", "rollout.select=2",
         "rollout.preview_steps=1", "rollout.steps=2", "rollout.batch_size=8", "train.micro_batch=4",
         "eval.every=0", "log.image_every=0", "log.progress=false", "log.tensorboard=false",
         "log.ckpt_every=1"]  # fmt: skip


@pytest.fixture
def loads(monkeypatch, tmp_path):
    """Patch the model and reward loaders with a tiny model and a cheap reward; count loads."""
    calls = []

    def load_model(cfg, device):
        calls.append(cfg)
        torch.manual_seed(0)
        return toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval()

    def redness(images, prompts):
        return (images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))).float()

    monkeypatch.setattr(train_mod, "load_model", load_model)
    monkeypatch.setattr(train_mod, "load_reward", lambda cfg, device: redness)
    monkeypatch.chdir(tmp_path)  # a default run directory would land here
    return calls


def iterations_in(run_dir) -> list[int]:
    return [r["iteration"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("solrl: error: "), err
    return err[0]


def test_config_of_a_resumed_run_starts_a_new_run(tmp_path, loads):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert train_mod.main([*CHEAP, "iterations=1", f"log.run_dir={a}"]) == 0
    assert train_mod.main(["--resume", a, "iterations=2"]) == 0
    assert "resume" not in yaml.safe_load(open(os.path.join(a, "config.yaml")))
    assert train_mod.main(["--config", os.path.join(a, "config.yaml"), f"log.run_dir={b}",
                           "iterations=3"]) == 0  # fmt: skip
    assert iterations_in(a) == [0, 1] and iterations_in(b) == [0, 1, 2]


def test_resume_keeps_structure_and_takes_other_overrides(tmp_path, loads, capsys):
    a = str(tmp_path / "a")
    assert train_mod.main([*CHEAP, "iterations=1", f"log.run_dir={a}"]) == 0
    capsys.readouterr()
    n_loads = len(loads)
    assert train_mod.main(["--resume", a, "iterations=2", "train.lora_rank=8", "algorithm=bf16"]) == 2
    line = error_line(capsys)
    assert "cannot change on resume: algorithm 'sol_rl' -> 'bf16'; train.lora_rank 16 -> 8" in line
    assert len(loads) == n_loads  # refused before loading the model
    # allowed: iterations, train.lr (applied to the restored optimiser), eval.*, log.*
    assert train_mod.main(["--resume", a, "iterations=2", "train.lr=0.5", "eval.every=1"]) == 0
    rows = read_jsonl(os.path.join(a, "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["lr"] == 0.5 and rows[0]["lr"] != 0.5


def test_resume_cannot_lower_iterations(tmp_path, loads, capsys):
    a = str(tmp_path / "a")
    assert train_mod.main([*CHEAP, "iterations=2", f"log.run_dir={a}"]) == 0
    capsys.readouterr()
    for n in (1, 2):
        assert train_mod.main(["--resume", a, f"iterations={n}"]) == 2
        assert f"has already run 2 iterations: iterations={n} leaves nothing to do" in error_line(capsys)
    assert yaml.safe_load(open(os.path.join(a, "config.yaml")))["iterations"] == 2  # not rewritten
    assert iterations_in(a) == [0, 1]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["train.learning_rate=1e-4"], "unknown option 'train.learning_rate'; did you mean: train.lr?"),
    (["--preset", "nope"], "unknown preset 'nope'; valid: toy, "),
    (["--config", "{tmp}/missing.yaml"], "cannot read config file '{tmp}/missing.yaml'"),
    (["--config", "{tmp}/bad.yaml"], "bad.yaml: not valid YAML (line 2, column 1)"),
    (["--preset", "flux", "model.path={tmp}/nonexistent"], "model.path '{tmp}/nonexistent' does not exist"),
    (["--preset", "sana"], "model.kind='sana' needs model.path="),
    (["--preset", "flux", "model.path={tmp}"], "(no model_index.json)"),
    (["--resume", "{tmp}/runs/nonexistent"], "--resume '{tmp}/runs/nonexistent': no such run directory"),
    (["--preset", "toy-cpu", "device=cuda"], "device=cuda but no CUDA device is available"),
    ([*CHEAP, "rollout.pool=1"], "rollout.pool (1) is smaller than rollout.select (2)"),
    ([*CHEAP, "log.run_dir={tmp}/done"], "{tmp}/done already holds a run; continue it with --resume"),
    ([*CHEAP, "train.lora_targets=no_such_layer", "log.run_dir={tmp}/lora"],
     "train.lora_targets ['no_such_layer']: "),
    ([*CHEAP, "prompts={tmp}/no_prompts.txt", "log.run_dir={tmp}/p"],
     "prompt file '{tmp}/no_prompts.txt' does not exist"),
])  # fmt: skip
def test_user_errors_are_one_line_with_status_2(tmp_path, loads, capsys, argv, message):
    if "device=cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    tmp = str(tmp_path)
    _write(tmp_path / "bad.yaml", "train: [1\n")
    _write(tmp_path / "done" / "metrics.jsonl", "{}\n")
    assert train_mod.main([a.format(tmp=tmp) for a in argv]) == 2
    assert message.format(tmp=tmp) in error_line(capsys)


def test_internal_errors_keep_their_traceback(tmp_path, loads, monkeypatch):
    def broken(cfg, device):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(train_mod, "load_model", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        train_mod.main([*CHEAP, f"log.run_dir={tmp_path / 'x'}"])


def test_ctrl_c_prints_how_to_continue(tmp_path, loads, monkeypatch, capsys):
    a = str(tmp_path / "a")
    update, calls = train_mod.update, []

    def interrupted_at_second_iteration(run, it, *args):
        calls.append(it)
        if it == 1:
            raise KeyboardInterrupt
        return update(run, it, *args)

    monkeypatch.setattr(train_mod, "update", interrupted_at_second_iteration)
    assert train_mod.main([*CHEAP, "iterations=3", f"log.run_dir={a}"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"solrl: interrupted; continue with: python -m solrl.train --resume {a}"]
    monkeypatch.setattr(train_mod, "update", update)
    assert train_mod.main(["--resume", a]) == 0
    assert iterations_in(a) == [0, 1, 2]
