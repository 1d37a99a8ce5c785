"""Two ranks on CPU (gloo), as torchrun would start them: the same prompts and noise as one
process, one run directory, identical policies on every rank after the updates."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from solrl.metrics import read_jsonl

toy = pytest.importorskip("solrl.toy")

TINY = dict(image_size=16, patch_size=4, num_layers=1, num_attention_heads=2, attention_head_dim=16,
            text_dim=32, pooled_dim=32, text_layers=1, max_tokens=16)  # fmt: skip


def _redness(images, prompts):
    return (images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))).float()


def _cfg(run_dir):
    from solrl.config import from_dict

    return from_dict({
        "iterations": 2, "device": "cpu", "seed": 11,
        "model": {"dtype": "fp32"},
        "rollout": {"prompts_per_iter": 4, "pool": 4, "select": 2, "preview_steps": 2, "steps": 3,
                    "batch_size": 8, "fp4_min_features": 0},
        "train": {"micro_batch": 4, "grad_accum": 1, "mixed_precision": "no", "lora_rank": 4,
                  "lora_alpha": 8, "lr": 1e-2},
        "eval": {"every": 0},
        "log": {"run_dir": run_dir, "image_every": 0, "ckpt_every": 0, "progress": False,
                "tensorboard": False},
    })  # fmt: skip


def _train(run_dir):
    from solrl.toy.world import sample_prompts
    from solrl.train import train

    torch.manual_seed(0)
    model = toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval()
    train(_cfg(run_dir), model=model, reward_fn=_redness, prompt_fn=sample_prompts, eval_prompts=[])
    return model


def _worker(rank, world, port, run_dir, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = _train(run_dir)
    torch.save({k: v for k, v in model.transformer.state_dict().items() if "lora" in k},
               os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    ddp_dir = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, _free_port(), ddp_dir, str(tmp_path)), nprocs=2, join=True)
    rows = read_jsonl(os.path.join(ddp_dir, "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["loss"]) for r in rows)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert any(v.abs().sum() > 0 for k, v in s0.items() if "lora_B" in k)  # it trained

    _train(str(tmp_path / "single"))
    single = read_jsonl(os.path.join(str(tmp_path / "single"), "metrics.jsonl"))
    # iteration 0 sees the same prompts and the same counter-based noise: same rewards
    for key in ("reward_fp4_mean", "reward_fp4_std", "reward_bf16_mean", "reward_bf16_std"):
        assert rows[0][key] == pytest.approx(single[0][key], rel=1e-5, abs=1e-7), key
