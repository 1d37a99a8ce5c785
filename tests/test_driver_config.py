"""Configs: presets, YAML, overrides, --help, and bad input caught before any work."""

import copy
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


@pytest.mark.parametrize("argv, hint", [
    (["train.lrr=3"], "train.lr"), (["--rollout.pools", "3"], "rollout.pool"),
    (["modle.kind=toy"], "model.kind"), (["train.learning_rate=1e-4"], "train.lr"),
    (["--lr=1e-4"], "train.lr"), (["rollout.batch=4"], "rollout.batch_size"),
])  # fmt: skip
def test_unknown_key_suggests_close_keys(argv, hint):
    """One line naming the key and its closest valid keys (not the list of all ~60)."""
    key = argv[0].lstrip("-").split("=")[0]
    with pytest.raises(C.ConfigError) as e:
        C.parse_args(argv)
    msg = str(e.value)
    assert msg.startswith(f"unknown option {key!r}; did you mean: ") and hint in msg, msg
    assert "\n" not in msg and msg.count(",") <= 2


def test_unknown_key_in_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(C.ConfigError, match=r"'train.learning_rate' in .*bad.yaml; did you mean: train.lr\?$"):
        C.parse_args(["--config", str(f)])


def test_pool_smaller_than_selection_is_rejected():
    with pytest.raises(C.ConfigError, match=r"rollout.pool \(16\) is smaller than rollout.select \(24\)"):
        C.from_dict({"rollout": {"pool": 16, "select": 24}})
    with pytest.raises(C.ConfigError, match="smaller"):  # the CLI reports it before any work
        C.parse_args(["rollout.pool=4", "rollout.select=8"])
    # the bf16 baseline ignores the pool
    assert C.from_dict({"algorithm": "bf16", "rollout": {"pool": 4, "select": 8}}).rollout.select == 8


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(C.ConfigError, match="needs model.path"):
        C.from_dict({"model": {"kind": "flux"}})
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.from_dict({"model": {"kind": "sd3", "path": str(tmp_path / "nope")}})


@pytest.mark.parametrize("bad, match", [
    ({"train": {"lr": -1.0}}, "train.lr must be > 0"),
    ({"train": {"timestep_fraction": 1.5}}, "timestep_fraction"),
    ({"rollout": {"selection": "best"}}, "best"),
    ({"algorithm": "ppo"}, "ppo"),
    ({"train": {"lora_rank": "8"}}, "expected an int"),
    ({"rollout": {"select": 1, "pool": 4}}, "select must be >= 2"),
    ({"train": {"objective": "grpo"}, "rollout": {"steps": 1}}, "steps >= 2"),
    ({"rollout": {"fp4_exclude": ["attn1\\.(to_q"]}}, "rollout.fp4_exclude: bad regex"),
    ({"rollout": {"fp4_exclude": ["attn1", ""]}}, "rollout.fp4_exclude: empty entry"),
    ({"train": {"lora_targets": [" "]}}, "train.lora_targets: empty entry"),
])
def test_bad_values(bad, match):
    with pytest.raises(C.ConfigError, match=match):
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
    with pytest.raises(C.ConfigError, match="no such run directory"):
        C.parse_args(["--resume", os.path.join(str(tmp_path), "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.ConfigError, match="no config.yaml"):
        C.parse_args(["--resume", str(tmp_path / "empty")])


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


def test_saved_config_never_resumes(tmp_path):
    """config.yaml holds no `resume` (else `--config` of a resumed run's file would append to
    that run), and a `resume` key in an older file or a preset is dropped on loading."""
    cfg = C.parse_args(["--preset", "toy-cpu"])
    cfg.resume = str(tmp_path / "old")
    C.save_yaml(cfg, tmp_path / "config.yaml")
    assert "resume" not in C.load_yaml(tmp_path / "config.yaml")
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(yaml.safe_dump({"resume": str(tmp_path / "old"), "iterations": 7}))
    again = C.parse_args(["--config", str(legacy), f"log.run_dir={tmp_path / 'fresh'}"])
    assert again.resume == "" and again.iterations == 7 and again.log.run_dir == str(tmp_path / "fresh")


def test_preset_and_resume_as_key_value_mean_the_flags(tmp_path):
    assert C.parse_args(["preset=toy-gpu"]) == C.parse_args(["--preset", "toy-gpu"])
    f = tmp_path / "over.yaml"
    f.write_text("iterations: 9\n")
    assert C.parse_args([f"config={f}"]).iterations == 9
    C.save_yaml(C.parse_args(["--preset", "toy-cpu", "train.lr=0.01"]), tmp_path / "config.yaml")
    by_flag = C.parse_args(["--resume", str(tmp_path), "iterations=20"])
    assert C.parse_args([f"resume={tmp_path}", "iterations=20"]) == by_flag
    assert by_flag.train.lr == 0.01 and by_flag.resume == str(tmp_path)
    with pytest.raises(C.ConfigError, match="--preset given twice"):
        C.parse_args(["--preset", "toy-cpu", "preset=flux"])


def test_help_lists_preset_config_resume_once(capsys):
    with pytest.raises(SystemExit):
        C.parse_args(["--help"])
    out = capsys.readouterr().out
    for flag, arg in (("--preset", "NAME"), ("--config", "FILE"), ("--resume", "DIR")):
        assert sum(line.lstrip().startswith(flag) for line in out.splitlines()) == 1, flag
        assert f"  {flag} {arg}  " in out
    assert "--preset STR" not in out and "--resume STR" not in out
    assert "train.lora_*" in out  # --resume documents the keys that cannot change


def test_empty_list_value_clears_the_list(tmp_path):
    """`rollout.fp4_exclude=` (e.g. clearing the sana preset's list) is (), not ('',), whose
    empty regex would keep every layer in BF16; likewise `train.lora_targets=`."""
    sana = ["--preset", "sana", f"model.path={tmp_path}"]
    assert C.parse_args(sana).rollout.fp4_exclude  # the preset sets some
    assert C.parse_args([*sana, "rollout.fp4_exclude="]).rollout.fp4_exclude == ()
    assert C.parse_args([*sana, "--rollout.fp4_exclude="]).rollout.fp4_exclude == ()
    assert C.parse_args(["train.lora_targets=to_q", "train.lora_targets="]).train.lora_targets == ()


@pytest.mark.parametrize("argv", [
    ["train.adam_betas=[0.8,0.95]"], ["train.adam_betas=0.8,0.95"], ["train.adam_betas=0.8 0.95"],
    ["train.adam_betas=[0.8, 0.95]"], ["train.adam_betas=0.8", "0.95"], ["--train.adam_betas=0.8,0.95"],
    ["--train.adam_betas", "0.8", "0.95"], ["--train.adam_betas", "[0.8,0.95]"],
    ["train.adam_betas=[0.8,", "0.95]"], ["--train.adam_betas", "0.8,", "0.95", "iterations=3"],
])  # fmt: skip
def test_tuple_values(argv):
    assert C.parse_args(argv).train.adam_betas == (0.8, 0.95)


def test_list_option_as_two_items_is_split():
    """`--key [a,b]` (the value a separate argv item) is the list a, b, as `key=[a,b]` is; it
    used to reach tyro whole, where `[a,b]` became one regex (a character class)."""
    cfg = C.parse_args(["--rollout.fp4_exclude", "[proj_out,norm_out]", "--train.lora_targets",
                        "to_q", "to_k", "iterations=3"])  # fmt: skip
    assert cfg.rollout.fp4_exclude == ("proj_out", "norm_out")
    assert cfg.train.lora_targets == ("to_q", "to_k") and cfg.iterations == 3
    assert C.parse_args(["--train.lora_targets", "[]"]).train.lora_targets == ()


def test_list_values_keep_regex_commas():
    cfg = C.parse_args([r"rollout.fp4_exclude=[blocks\.\d{1,2}\.attn, 'ff\.(net,x)']",
                        "train.lora_targets=to_q,to_k"])  # fmt: skip
    assert cfg.rollout.fp4_exclude == (r"blocks\.\d{1,2}\.attn", r"ff\.(net,x)")
    assert cfg.train.lora_targets == ("to_q", "to_k")
    with pytest.raises(C.ConfigError, match=r"train.adam_betas takes 2 values.*=0.9,0.999"):
        C.parse_args(["train.adam_betas=0.9,0.95,0.99"])
    with pytest.raises(C.ConfigError, match=r"train.adam_betas takes 2 values"):
        C.parse_args(["train.adam_betas=0.9", "iterations=3"])


def test_resume_refuses_other_sources_and_run_dir(tmp_path):
    C.save_yaml(C.parse_args(["--preset", "toy-cpu"]), tmp_path / "config.yaml")
    other = tmp_path / "other.yaml"
    other.write_text("iterations: 3\n")
    for extra, match in ((["--preset", "flux"], "--preset cannot"), ([f"--config={other}"], "--config cannot"),
                         ([f"log.run_dir={tmp_path / 'elsewhere'}"], "log.run_dir cannot change")):  # fmt: skip
        with pytest.raises(C.ConfigError, match=match):
            C.parse_args(["--resume", str(tmp_path), *extra])
    same = C.parse_args(["--resume", str(tmp_path), f"log.run_dir={tmp_path}{os.sep}"])
    assert same.log.run_dir.rstrip(os.sep) == str(tmp_path)


def test_check_resume_names_fixed_keys_and_done_iterations(tmp_path):
    cfg = C.parse_args(["--preset", "toy-cpu", "iterations=10"])
    cfg.resume = str(tmp_path)
    state = {"next_iteration": 4, "config": C.to_dict(cfg)}
    C.check_resume(cfg, state)  # unchanged: fine
    changed = copy.deepcopy(cfg)
    changed.train.lora_rank, changed.train.lr, changed.eval.every, changed.log.image_every = 8, 0.5, 1, 0
    with pytest.raises(C.ConfigError, match=r"cannot change on resume: train.lora_rank 16 -> 8 \(fixed: "):
        C.check_resume(changed, state)
    changed.train.lora_rank = 16
    C.check_resume(changed, state)  # lr, eval.*, log.* may change
    for n in (2, 4):
        cfg.iterations = n
        with pytest.raises(C.ConfigError, match=f"already run 4 iterations: iterations={n} leaves nothing"):
            C.check_resume(cfg, state)
