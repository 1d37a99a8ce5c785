"""Spread of quantize timings on the GPU, and why the benchmarks use CUDA-graph replay.

    python bench/quantize_spread.py [--R 8192 --K 8192] [--n 2]

Each case (the copy baseline and three quantize calls) is timed N times by CUDA events
(triton do_bench: includes any gap while the GPU waits for the host) and by CUDA-graph
replay (GPU time only, bench/timing.py), with the host time per call and the SM clock
after it. On the H200 machine (2026-11-30) the events figures of the quantize calls
scattered by 2-4x between repeats while the graph figures held within 5%: each call's
host path (125-250 us) is longer than its GPU time (~50 us). A difference between two
versions smaller than the spread of one is noise (METHOD.md).
"""

from __future__ import annotations

import argparse
import subprocess

import torch
import triton
from timing import gpu_ms, host_us

from solrl_kernels import nvfp4
from solrl_kernels.nvfp4 import ops


def sm_clock() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout
    return out.strip().replace("\n", " | ")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--R", type=int, default=8192)
    p.add_argument("--K", type=int, default=8192)
    p.add_argument("--n", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.R, args.K, device="cuda", dtype=torch.bfloat16)
    n = x.numel()
    y = torch.empty_like(x)
    gs = torch.tensor(0.01, device="cuda")
    packed = 2 * n + n // 2 + n // 16
    cases = {
        "copy": (lambda: y.copy_(x), 4 * n),
        "rn given": (lambda: nvfp4.quantize(x, "rn", global_scale=gs, check_finite=False), packed),
        "rn given, op only": (lambda: ops.nvfp4_quantize_op(x, gs, False, False, False, False, False,
                                                         True, False), packed),
        "fp8 container row": (lambda: nvfp4.quantize_to_fp8(x, granularity="row"), 3 * n),
    }
    for i in range(args.n):
        for name, (fn, nbytes) in cases.items():
            ev = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            graph = gpu_ms(fn)[0]
            print(f"{i} {name:20s} events {nbytes / ev / 1e6:6.0f} GB/s, CUDA graph "
                  f"{nbytes / graph / 1e6:6.0f} GB/s, host {host_us(fn):5.0f} us/call  "
                  f"[{sm_clock()}]", flush=True)


if __name__ == "__main__":
    main()
