"""Where cuDNN's SDPA backward fails in FLUX.1 training (GPU; each case in its own process, because
the failure kills the CUDA context).

    python bench/cudnn_probe.py                 # every case
    python bench/cudnn_probe.py --case train    # one case, in this process

bench/training_attention.py shows the op alone working at FLUX.1's training shapes in every
layout (and 1.7x faster than FLASH), while the driver died in backward with cuDNN on
(bench/RESULTS.md §8; the findings: §8a). The cases run a FLUX.1-width transformer (2 double + 4 single blocks,
random bf16 weights, 512 text + 1024 image tokens, batch 8) under bf16 autocast, with cuDNN
the only SDPA backend allowed, and print "OK" or the error:

  train          forward + backward
  checkpointing  the same with diffusers' gradient checkpointing
  rollout-first  a no-grad forward at batch 16 first (a rollout), then forward + backward
  batches        forward + backward at batch 8, then 2, then 8 again
  double, single forward + backward with only the 2 double (joint) or only the 4 single blocks
  batch1         forward + backward at batch 1
  sdpa-only      the op alone on q, k, v of this model's shapes (as bench/training_attention.py)
  mixed-grad     the op alone, backward twice: the output gradient first a slice of a wider
                 tensor (as a single block's), then a dense one (as a double block's)
  train-fixed    "train" inside solrl.policy.training_attention(), which copies every SDPA
                 output's gradient into the output's strides before the backward sees it

Under CUDA_LAUNCH_BLOCKING=1 the error names the kernel that failed, not a later one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(__file__))
from solrl.policy import training_attention  # noqa: E402

CASES = ("train", "checkpointing", "rollout-first", "batches", "double", "single", "batch1", "sdpa-only", "mixed-grad",
         "train-fixed")


def run_case(case: str) -> None:
    from test_bench_transformer import flux1_dev

    torch.manual_seed(0)
    if case == "sdpa-only":
        q, k, v = (torch.randn(8, 24, 1536, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, k, v).float().pow(2).mean().backward()
        torch.cuda.synchronize()
        print("OK", flush=True)
        return
    if case == "mixed-grad":
        q, k, v = (torch.randn(8, 1536, 24, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                   .requires_grad_() for _ in range(3))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            for wide in (5, 1):
                o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                g = torch.randn(8, 1536, wide * 3072, device="cuda", dtype=torch.bfloat16)[..., :3072]
                o.backward(g.unflatten(-1, (24, 128)).transpose(1, 2))
                torch.cuda.synchronize()
        print("OK", flush=True)
        return
    layers = {"double": (2, 0), "single": (0, 4)}.get(case, (2, 4))
    model, full = flux1_dev(layers=layers, image_tokens=1024, text_tokens=512, batch=16)
    model = model.to("cuda", torch.bfloat16).train()
    full = {k: v.to("cuda", torch.bfloat16) for k, v in full.items()}
    if case == "checkpointing":
        model.enable_gradient_checkpointing()

    def inputs(batch: int):  # the first `batch` samples (the ids have no batch dimension)
        return {k: v if k.endswith("_ids") else v[:batch] for k, v in full.items()}

    def train_step(batch: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**inputs(batch), return_dict=False)[0]
        out.float().pow(2).mean().backward()
        torch.cuda.synchronize()

    fix = training_attention() if case == "train-fixed" else contextlib.nullcontext()
    with fix, sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        if case == "rollout-first":
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(**inputs(16), return_dict=False)
        for batch in {"batches": (8, 2, 8), "batch1": (1,)}.get(case, (8,)):
            train_step(batch)
    print("OK", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=CASES)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="cases to run, each in a process")
    args = ap.parse_args()
    if args.case:
        run_case(args.case)
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    for case in args.cases:
        proc = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True,
                              text=True, timeout=300)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        verdict = "OK" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}): {(errors or lines)[-1]}"
        print(f"{case:14s} {verdict}", flush=True)
        if proc.returncode:  # where: the innermost frames of the traceback
            frames = [ln.strip() for ln in lines if ln.lstrip().startswith("File ")]
            print("\n".join(f"    {f}" for f in frames[-4:]), flush=True)


if __name__ == "__main__":
    main()
