"""Where the host time of one eager nvfp4_linear call goes (GPU; diagnostic, records nothing).

    python bench/host_profile.py [--m 4096 --k 3072 --n 3072]

Prints the host microseconds per call (launch path only, the GPU runs behind), the GPU time
(CUDA-graph replay) for comparison, then a cProfile of 200 calls sorted by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ (timing.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

from timing import gpu_ms, host_us  # noqa: E402

from solrl_kernels.gemm import nvfp4_linear, prepare_weight, set_activation_reuse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=3072)
    ap.add_argument("--n", type=int, default=3072)
    args = ap.parse_args()
    set_activation_reuse(False)  # every call quantizes, as the benchmarks time it
    x = torch.randn(args.m, args.k, device="cuda", dtype=torch.bfloat16)
    for storage in ("fp8", "packed"):
        w = prepare_weight(torch.randn(args.n, args.k, device="cuda") * 0.02, storage=storage)
        fn = lambda w=w: nvfp4_linear(x, w)  # noqa: E731
        print(f"[{storage}] host {host_us(fn, 200):.0f} us/call, GPU {gpu_ms(fn)[0] * 1e3:.0f} "
              f"us/call (M={args.m} K={args.k} N={args.n})")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
