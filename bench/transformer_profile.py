"""Where a transformer forward at real widths spends its GPU time: BF16 vs rollout_mode.

    python bench/transformer_profile.py [--model flux1-dev] [--batch 1]
        [--modes bf16,nvfp4,nvfp4+attn-fp8] [--compile]

Mode "nvfp4+unfused-gelu": NVFP4 linears with fuse_activations=False, so the feed-forward
GELU runs as a torch op instead of inside our kernels (bench/RESULTS.md §7h).
Suffixes undo one fusion of rollout_mode, for A/B runs: "+cat" (e.g. nvfp4+cat) keeps FLUX's
single-stream blocks as diffusers wrote them (proj_out's input concatenated, GELU by torch),
against flux_single.py; "+epilogue-gelu" puts a feed-forward's GELU into its first GEMM's
epilogue instead of its second layer's input quantization (swap.py).

Builds a model of bench/test_bench_transformer.py (--model: flux1-dev, 2 double + 4 single
blocks; sd35-large, 4 blocks; sana-1.6b, 4 blocks; 1024 px), runs a few eager forwards under
torch.profiler and groups the CUDA kernels by what they do (GEMM, our quantization, attention,
the rest: norms, modulation, RoPE, GELU, copies), in ms per forward. Answers "what is left to
speed up" with a measurement instead of a FLOP count. Kernel time only; the host (eager
launches) is not counted. --compile profiles torch.compile(model) instead (Inductor's fused
kernels get their own category), to see what is left once the element-wise ops are fused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections import defaultdict
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_bench_transformer import BUILDERS, MODES, on_gpu  # noqa: E402

from solrl_kernels.nn import QuantizeConfig, rollout_mode, swap  # noqa: E402

PROFILE_MODES = {**MODES, "nvfp4+unfused-gelu": dict(
    linear="nvfp4", config=QuantizeConfig(fuse_activations=False))}
# mode suffix -> (swap's function, a stand-in that turns its fusion off)
UNDO_FUSION = {"+cat": ("fuse_single_blocks", lambda model: ([], lambda: None)),
               "+epilogue-gelu": ("_gelu_readers", lambda *args: {})}

# first match wins; matched against the kernel name. Inductor names its fused kernels after
# the ops around them (e.g. triton_poi_fused_cat_gelu_nvfp4_quantize_rows_...: a
# concatenation feeding our quantizer), so its kernels are matched first (before session 13
# they fell into "quantize (ours)" and "attention (SDPA)").
CATEGORIES = [
    ("fused element-wise (Inductor)", r"^triton_(poi|red|per)_"),
    ("quantize (ours)", r"quantize|absmax|attn_stats|attn_quant|expand_nvfp4"),
    ("attention (ours)", r"attn_fwd"),
    ("attention (SDPA)", r"flash|fmha|cudnn|sdpa|attention"),
    ("GEMM fp8 (ours)", r"cutlass::device_kernel|solrl|fp8_gemm"),
    ("GEMM cuBLAS", r"nvjet|gemm|xmma|cublas|cutlass"),
    ("norm / modulation / RoPE / GELU / copies", r"."),
]


def _device_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total", "device_time_total"):
        v = getattr(evt, name, None)
        if v:
            return float(v)
    return 0.0


def profile(model, inputs, iters: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    with torch.no_grad():
        for _ in range(2):
            model(**inputs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                model(**inputs)
            torch.cuda.synchronize()
    per_cat: dict[str, float] = defaultdict(float)
    kernels = []
    for evt in prof.key_averages():
        us = _device_us(evt)
        if us <= 0 or evt.key.startswith(("ProfilerStep", "cuda")):
            continue
        kernels.append((evt.key, us / iters / 1e3))
        for cat, pat in CATEGORIES:
            if re.search(pat, evt.key):
                per_cat[cat] += us / iters / 1e3
                break
    kernels.sort(key=lambda kv: -kv[1])
    return dict(per_cat), kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="flux1-dev", choices=sorted(BUILDERS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", default="bf16,nvfp4,nvfp4+attn-fp8")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--compile", action="store_true", help="profile torch.compile(model)")
    args = ap.parse_args()
    model, inputs = on_gpu(BUILDERS[args.model], args.batch)
    print(f"{args.model} widths, {type(model).__name__}, batch {args.batch}, 1024 px"
          f"{', torch.compile' if args.compile else ''}; GPU kernel time per forward (ms), "
          f"torch {torch.__version__}")

    def run(m):
        if args.compile:
            torch._dynamo.reset()
            m = torch.compile(m)
        return profile(m, inputs, args.iters)

    for mode in args.modes.split(","):
        if mode == "bf16":
            per_cat, kernels = run(model)
        else:
            base, undo = mode, contextlib.ExitStack()
            while suffix := next((x for x in UNDO_FUSION if base.endswith(x)), None):
                base = base.removesuffix(suffix)
                undo.enter_context(mock.patch.object(swap, *UNDO_FUSION[suffix]))
            with undo, rollout_mode(model, **PROFILE_MODES[base]):
                per_cat, kernels = run(model)
        total = sum(per_cat.values())
        print(f"\n[{mode}] total {total:.2f} ms")
        for cat, _ in CATEGORIES:
            if cat in per_cat:
                print(f"  {cat:42s} {per_cat[cat]:7.3f} ms  {100 * per_cat[cat] / total:5.1f}%")
        print("  top kernels:")
        for name, ms in kernels[:args.top]:
            print(f"    {ms:7.3f} ms  {name[:110]}")


if __name__ == "__main__":
    main()
