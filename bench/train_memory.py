"""Peak GPU memory and time of one Sol-RL iteration on a full-depth FLUX.1 / SD3.5-L / SANA
transformer, with and without gradient checkpointing (GPU).

    python bench/train_memory.py --model flux1-dev --modes checkpointing,plain

The question is whether the real-model presets fit a GPU: `python -m solrl.train --preset flux`
trains on micro-batches of 8 at 512 px, and the driver also keeps a bf16 rollout copy of the
transformer (plus its NVFP4 weights during previews). Each mode runs the driver itself
(`solrl.train.train`) for one iteration with the preset's resolution, micro-batch, LoRA, NFT
objective and bf16 autocast, on the published architecture at full depth with random bf16
weights (`test_bench_transformer`'s builders). What is not real: the text encoders and the VAE
(random conditioning of the right shapes, and the first three latent channels as the "image";
a real run also holds T5-XXL / Gemma and the VAE: add their weights, e.g. 9.5 GB for T5-XXL in
bf16), and the rollout sizes, cut to one prompt of `--pool` candidates and `--steps` steps so
that one iteration takes seconds (memory depends on the micro-batch, not on the pool). The
driver's `mem_gb` (torch.cuda.max_memory_allocated over the iteration) is the figure; a mode
that runs out of memory reports where. Records go to bench/results.json.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_bench_transformer import BUILDERS  # noqa: E402

from solrl.config import load_preset, parse_args  # noqa: E402
from solrl.metrics import read_jsonl  # noqa: E402
from solrl.train import train  # noqa: E402

# model -> (preset, adapter class, full depth as the builder's `layers`, latent channels,
#           VAE downsampling, conditioning shapes: name -> shape after the batch dimension)
SETUPS = {
    "flux1-dev": ("flux", "solrl.models.flux:FluxModel", (19, 38), 16, 8,
                  {"encoder_hidden_states": (512, 4096), "pooled_projections": (768,)}),
    "sd35-large": ("sd35l", "solrl.models.sd3:SD3Model", 38, 16, 8,
                   {"encoder_hidden_states": (333, 4096), "pooled_projections": (2048,)}),
    "sana-1.6b": ("sana", "solrl.models.sana:SanaModel", 20, 32, 32,
                  {"encoder_hidden_states": (300, 2304), "encoder_attention_mask": (300,)}),
}


def adapter(model_name: str, resolution: int):
    """The preset's adapter around a full-depth random transformer (bf16, on the GPU), with
    random per-prompt conditioning in place of the text encoders and no VAE."""
    import importlib

    preset, cls_path, layers, channels, down, cond_shapes = SETUPS[model_name]
    module, cls_name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialised in bf16 on the GPU: no fp32 copy
    try:
        with torch.device("cuda"):
            transformer, _ = BUILDERS[model_name](layers=layers)
    finally:
        torch.set_default_dtype(default)
    transformer = transformer.to(torch.bfloat16).eval()

    def encode(prompts: list[str]):
        out = {k: [] for k in cond_shapes}
        for p in prompts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
            for k, shape in cond_shapes.items():
                out[k].append(torch.ones(shape, dtype=torch.int64) if k.endswith("mask")
                              else torch.randn(shape, generator=g).to(torch.bfloat16))
        return {k: torch.stack(v).cuda() for k, v in out.items()}

    class NoVAE(cls):
        def decode(self, latents):  # the first three channels stand for the image
            return ((latents[:, :3].float() + 1) / 2).clamp(0, 1)

    side = resolution // down
    return NoVAE(transformer, encode, (channels, side, side))


def one_iteration(model_name: str, checkpointing: bool, args) -> dict:
    preset = SETUPS[model_name][0]
    d = load_preset(preset)
    res = args.resolution or d["model"]["resolution"]
    micro = args.micro_batch or d["train"]["micro_batch"]
    cfg = parse_args([  # the preset as `python -m solrl.train --preset ...` builds it
        "--preset", preset, "device=cuda", "iterations=1", "reward=jpeg_compressibility",
        f"algorithm={args.algorithm}", f"model.path={tempfile.gettempdir()}", f"model.resolution={res}",
        "rollout.prompts_per_iter=1", f"rollout.pool={args.pool}", f"rollout.select={micro}",
        "rollout.preview_steps=2", f"rollout.steps={args.steps}", f"rollout.batch_size={micro}",
        "train.compile=false", f"train.gradient_checkpointing={checkpointing}",
        f"train.micro_batch={micro}", "eval.every=0", "log.image_every=0", "log.ckpt_every=0",
        "log.progress=false", "log.tensorboard=false", f"log.run_dir={tempfile.mkdtemp()}",
        *args.overrides,
    ])  # fmt: skip
    gc.collect()
    torch.cuda.empty_cache()
    t0 = time.perf_counter()
    model = adapter(model_name, res)
    weights_gb = torch.cuda.memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()  # the driver's mem_gb: peak from here on
    result = {"model": model_name, "checkpointing": checkpointing, "resolution": res,
              "micro_batch": micro, "transformer_gb": weights_gb}
    try:
        run_dir = train(cfg, model=model, reward_fn=None, prompt_fn=lambda n, seed: ["a photo"] * n,
                        eval_prompts=["a photo"])
        row = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))[-1]
        result.update(peak_gb=row["mem_gb"], train_s=row["train_s"], iter_s=row["iter_s"])
    except torch.OutOfMemoryError:
        result.update(peak_gb=None, oom_at_gb=torch.cuda.max_memory_allocated() / 2**30)
    result["wall_s"] = time.perf_counter() - t0
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="flux1-dev", choices=list(SETUPS))
    ap.add_argument("--modes", default="checkpointing,plain",
                    help="comma-separated: checkpointing, plain (no checkpointing)")
    ap.add_argument("--resolution", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--micro-batch", type=int, default=0, help="0 = the preset's train.micro_batch")
    ap.add_argument("--pool", type=int, default=16, help="candidates of the one prompt")
    ap.add_argument("--steps", type=int, default=4, help="regeneration steps (training timesteps)")
    ap.add_argument("--algorithm", default="sol_rl", help="algorithm= of the run (bf16: no FP4 rollouts)")
    ap.add_argument("--no-cudnn-sdpa", action="store_true", help="disable SDPA's cuDNN backend")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="more config overrides for the run (then nothing is recorded; nor is it "
                    "without both modes)")
    args = ap.parse_args()
    if args.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    print(f"{torch.cuda.get_device_name()} ({total:.0f} GiB), torch {torch.__version__}", flush=True)
    results = {}
    for mode in args.modes.split(","):
        if mode not in ("checkpointing", "plain"):
            raise SystemExit(f"unknown mode {mode!r}")
        r = one_iteration(args.model, mode == "checkpointing", args)
        results[mode] = r
        peak = f"peak {r['peak_gb']:.1f} GiB" if r["peak_gb"] is not None else (
            f"OUT OF MEMORY (at {r['oom_at_gb']:.1f} GiB of {total:.0f})")
        extra = f", training {r['train_s']:.1f} s, iteration {r['iter_s']:.1f} s" if r["peak_gb"] else ""
        print(f"{args.model} {mode}: {r['resolution']} px, micro-batch {r['micro_batch']}, transformer "
              f"{r['transformer_gb']:.1f} GiB; {peak}{extra}", flush=True)
    ck, plain = results.get("checkpointing"), results.get("plain")
    if ck and ck["peak_gb"] and plain and not args.overrides:  # a record needs both modes
        from record import record

        base = plain["peak_gb"] or total  # OOM: the GPU's size
        record(f"train_memory[{args.model}]", "peak_gib", ck["peak_gb"],
               "no checkpointing" if plain["peak_gb"] else "GPU memory (no checkpointing: OOM)", base,
               higher_is_better=False, resolution=ck["resolution"], micro_batch=ck["micro_batch"],
               train_s=ck["train_s"], plain_train_s=plain.get("train_s"))


if __name__ == "__main__":
    main()
