"""Configs: presets, YAML, overrides, --help, and bad input caught before any work."""

import os

import pytest
import yaml

from solrl import config as C


def test_every_preset_parses(tmp_path):
    for name in C.preset_names():
        overrides = [] if name.startswith("toy") else [f"model.path={tmp_path}"]
        cfg = C.parse_args(["--preset", name, *overrides])
        assert cfg.preset == name
        assert cfg.rollout.pool >= cfg.rollout.select
    assert set(C.preset_names()) >= {"toy-cpu", "toy-gpu", "flux", "sd35l", "sana"}


def test_official_sol_rl_defaults_in_sana_preset(tmp_path):
    cfg = C.parse_args(["--preset", "sana", f"model.path={tmp_path}"])
    r, t = cfg.rollout, cfg.train
    assert (r.pool, r.select, r.selection, r.preview_steps, r.steps) == (96, 24, "best_worst", 6, 10)
    assert r.prompts_per_iter == 48 and cfg.eval.steps == 40
    assert (t.objective, t.finetune, t.kl_beta, t.timestep_fraction) == ("nft", "lora", 1e-4, 0.6)
    assert cfg.algorithm == "sol_rl" and r.preview_linear == "nvfp4" and r.preview_attention == "bf16"


def test_real_model_presets_compile_rollouts(tmp_path):
    """The GPU presets compile the rollout copy (RESULTS 7h); the toy presets do not."""
    for name in ("flux", "sd35l", "sana"):
        assert C.parse_args(["--preset", name, f"model.path={tmp_path}"]).train.compile is True
        off = C.parse_args(["--preset", name, f"model.path={tmp_path}", "train.compile=false"])
        assert off.train.compile is False
    assert C.parse_args(["--preset", "toy-gpu"]).train.compile is False
    # key=value bools in YAML's spelling too (README writes train.compile=true)
    assert C.parse_args(["--preset", "toy-gpu", "train.compile=TRUE"]).train.compile is True
    with pytest.raises(SystemExit):
        C.parse_args(["--preset", "toy-gpu", "train.compile=maybe"])


def test_default_preset_is_toy():
    cfg = C.parse_args([])
    assert cfg.preset in ("toy-cpu", "toy-gpu") and cfg.model.kind == "toy"


def test_overrides_key_value_and_flags_and_config_file(tmp_path):
    f = tmp_path / "over.yaml"
    f.write_text(yaml.safe_dump({"train": {"lr": 1e-5, "lora_targets": ["to_q", "to_k"]},
                                 "rollout": {"pool": 40}}))
    cfg = C.parse_args(["--preset", "toy-cpu", "--config", str(f), "rollout.select=10",
                        "--train.compile", "True", "algorithm=bf16_pool", "--seed=7"])
    assert cfg.train.lr == 1e-5 and cfg.train.lora_targets == ("to_q", "to_k")
    assert (cfg.rollout.pool, cfg.rollout.select) == (40, 10)
    assert cfg.train.compile is True and cfg.algorithm == "bf16_pool" and cfg.seed == 7


def test_yaml_round_trip(tmp_path):
    cfg = C.parse_args(["--preset", "toy-gpu", "--train.adam_betas", "0.8", "0.9"])
    C.save_yaml(cfg, tmp_path / "config.yaml")
    again = C.from_dict(C.load_yaml(tmp_path / "config.yaml"))
    assert again == cfg and again.train.adam_betas == (0.8, 0.9)


@pytest.mark.parametrize("argv", [["train.lrr=3"], ["--rollout.pools", "3"], ["modle.kind=toy"]])
def test_unknown_key_lists_valid_keys(argv):
    with pytest.raises(KeyError) as e:
        C.parse_args(argv)
    msg = str(e.value)
    assert "unknown config key" in msg and "Valid keys:" in msg
    for key in ("train.lr", "rollout.pool", "model.kind", "log.run_dir"):
        assert key in msg


def test_unknown_key_in_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(KeyError, match=r"'train.learning_rate' in .*bad.yaml.*Valid keys: .*train.lr"):
        C.parse_args(["--config", str(f)])


def test_pool_smaller_than_selection_is_rejected():
    with pytest.raises(ValueError, match=r"rollout.pool \(16\) is smaller than rollout.select \(24\)"):
        C.from_dict({"rollout": {"pool": 16, "select": 24}})
    with pytest.raises(SystemExit):  # the CLI reports it before any work
        C.parse_args(["rollout.pool=4", "rollout.select=8"])
    # the bf16 baseline ignores the pool
    assert C.from_dict({"algorithm": "bf16", "rollout": {"pool": 4, "select": 8}}).rollout.select == 8


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs model.path"):
        C.from_dict({"model": {"kind": "flux"}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        C.from_dict({"model": {"kind": "sd3", "path": str(tmp_path / "nope")}})


@pytest.mark.parametrize("bad, match", [
    ({"train": {"lr": -1.0}}, "train.lr must be > 0"),
    ({"train": {"timestep_fraction": 1.5}}, "timestep_fraction"),
    ({"rollout": {"selection": "best"}}, "best"),
    ({"algorithm": "ppo"}, "ppo"),
    ({"train": {"lora_rank": "8"}}, "expected an int"),
    ({"rollout": {"select": 1, "pool": 4}}, "select must be >= 2"),
    ({"train": {"objective": "grpo"}, "rollout": {"steps": 1}}, "steps >= 2"),
    ({"rollout": {"fp4_exclude": ["attn1\\.(to_q"]}}, "bad regex"),
])
def test_bad_values(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        C.from_dict(bad)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        C.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in C.valid_keys():
        assert f"--{key}" in out, key
    for meta in ("--preset", "--config", "--resume", "key=value"):
        assert meta in out


def test_resume_reads_saved_config(tmp_path):
    cfg = C.parse_args(["--preset", "toy-cpu", "train.lr=0.01"])
    C.save_yaml(cfg, tmp_path / "config.yaml")
    again = C.parse_args(["--resume", str(tmp_path), "iterations=99"])
    assert again.train.lr == 0.01 and again.iterations == 99
    assert again.resume == str(tmp_path) and again.log.run_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        C.parse_args(["--resume", os.path.join(str(tmp_path), "missing")])


def test_help_joins_wrapped_docstring_lines():
    """--help: a field's wrapped docstring lines read as one paragraph (tyro keeps a line break
    before an indented line, and our field docstrings are indented)."""
    tyro = pytest.importorskip("tyro")
    docstrings = getattr(tyro, "_docstrings", None)
    if not hasattr(docstrings, "get_field_docstring"):
        pytest.skip("this tyro has no get_field_docstring")
    from solrl.config import TrainConfig, parse_args

    parse_args(["iterations=1"])  # installs the joining
    if hasattr(docstrings.get_field_docstring, "cache_clear"):
        docstrings.get_field_docstring.cache_clear()
    text = docstrings.get_field_docstring(TrainConfig, "gradient_checkpointing", ())
    assert text.startswith("Recompute each transformer block") and "\n" not in text, text
