"""Which SDPA backend the training passes should prefer: forward + backward of attention at the
real-model presets' training shapes, FLASH vs memory-efficient (and cuDNN, each in its own
process because its backward can kill the CUDA context) (GPU).

    python bench/training_attention.py                # every shape, FLASH and EFFICIENT, + cuDNN
    python bench/training_attention.py --backend cudnn --shape flux1-512   # one run, one process

Session 14 turned cuDNN off for training (its backward failed at FLUX.1's shapes); session 15
found why (bench/cudnn_probe.py) and `solrl.policy.training_attention()` keeps it with a
workaround (bench/RESULTS.md §8a). This script times one attention call's forward and backward
(CUDA events, median, triton do_bench) with random bf16 q, k, v and output gradient, and checks
the output and the three input gradients against the MATH backend in fp32 on the same inputs
first. Records go to bench/results.json (ratio: a backend's time / FLASH's).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(__file__))
from record import record  # noqa: E402

# name -> (batch, heads, query tokens, key tokens, head dim): the presets' micro-batch at their
# resolution. FLUX.1 and SD3.5-L: joint self-attention over text + image tokens (512 + 1024;
# 333 + 1024). SANA: cross-attention of 1024 image tokens to 300 text tokens (its self-attention
# is linear and does not go through SDPA).
SHAPES = {
    "flux1-512": (8, 24, 1536, 1536, 128),
    "sd35l-512": (8, 38, 1357, 1357, 64),
    "sana-1024-cross": (16, 70, 1024, 300, 32),
}
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
LAYOUTS = ("bhsd", "bshd", "sliced")


def inputs(shape, layout: str, seed=0):
    """Random bf16 q, k, v (B, H, S, D) and an output gradient. Layout "bhsd": contiguous;
    "bshd": views of contiguous (B, S, H, D) tensors, as diffusers' processors pass them;
    "sliced": bshd, with the output gradient a slice of a wider (B, S, 5·H·D) gradient, as in a
    FLUX.1 single block, whose attention output is concatenated with the MLP's."""
    b, h, sq, sk, d = shape
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(s):
        if layout in ("bshd", "sliced"):
            return torch.randn(b, s, h, d, generator=g, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        return torch.randn(b, h, s, d, generator=g, device="cuda", dtype=torch.bfloat16)

    q, k, v = rand(sq), rand(sk), rand(sk)
    if layout == "sliced":
        wide = torch.randn(b, sq, 5 * h * d, generator=g, device="cuda", dtype=torch.bfloat16)
        grad_out = wide[..., : h * d].unflatten(-1, (h, d)).transpose(1, 2)
    else:
        grad_out = rand(sq)
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad_out


def forward_backward(q, k, v, grad_out, backend):
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(q, k, v)
        return (o, *torch.autograd.grad(o, (q, k, v), grad_out))


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run_one(name: str, layout: str, backend: str) -> float:
    """Check one backend against fp32 MATH, then return its median milliseconds per call."""
    import triton

    q, k, v, grad_out = inputs(SHAPES[name], layout)
    got = forward_backward(q, k, v, grad_out, BACKENDS[backend])
    ref_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = forward_backward(*ref_inputs, grad_out.float(), SDPBackend.MATH)
    errs = [rel_err(a, b) for a, b in zip(got, ref)]
    del ref, ref_inputs
    worst = max(errs)
    assert worst < 2e-2, f"{name} {backend}: relative error vs fp32 math {errs}"
    ms = triton.testing.do_bench(lambda: forward_backward(q, k, v, grad_out, BACKENDS[backend]),
                                 warmup=25, rep=200, return_mode="median")
    b, h, sq, sk, d = SHAPES[name]
    tflops = 3.5 * 4 * b * h * sq * sk * d / ms / 1e9  # forward 4·B·H·Sq·Sk·D, backward 2.5×
    print(f"{name:16s} {layout} {backend:10s} {ms:7.3f} ms  {tflops:6.0f} TFLOP/s  "
          f"rel. err o/dq/dk/dv vs fp32 {' '.join(f'{e:.1e}' for e in errs)}", flush=True)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), action="append")
    ap.add_argument("--layout", choices=LAYOUTS, action="append")
    ap.add_argument("--backend", choices=sorted(BACKENDS))
    ap.add_argument("--no-cudnn", action="store_true", help="skip the cuDNN subprocesses")
    args = ap.parse_args()
    shapes, layouts = args.shape or list(SHAPES), args.layout or LAYOUTS
    if args.backend:  # one backend in this process (the cuDNN subprocess)
        for name in shapes:
            for layout in layouts:
                print(f"MS {name} {layout} {run_one(name, layout, args.backend):.6f}")
        return
    for name in shapes:
        for layout in layouts:
            key = f"training_attention/{name}/{layout}"
            flash, efficient = run_one(name, layout, "flash"), run_one(name, layout, "efficient")
            record(key, "fwd_bwd_ms/efficient", efficient, "flash", flash, higher_is_better=False)
            if args.no_cudnn:
                continue
            proc = subprocess.run([sys.executable, __file__, "--shape", name, "--layout", layout,
                                   "--backend", "cudnn"], capture_output=True, text=True, timeout=300)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MS ")]
            if proc.returncode or not lines:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                print(f"{name:16s} {layout} cudnn      FAILED (exit {proc.returncode}): {' | '.join(tail)}")
                continue
            print(proc.stdout.splitlines()[0])
            cudnn = float(lines[-1].split()[-1])
            record(key, "fwd_bwd_ms/cudnn", cudnn, "flash", flash, higher_is_better=False)


if __name__ == "__main__":
    main()
