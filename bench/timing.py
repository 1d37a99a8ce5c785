"""How the benchmarks time a GPU function (METHOD.md: events, medians, warm-up).

Two numbers per function, because they answer different questions:

* ``gpu_ms``: the GPU time of one call, by CUDA-graph replay (triton do_bench_cudagraph,
  median). Host launch overhead is excluded: this is the kernel's speed, and what a rollout
  run under CUDA graphs (or torch.compile's reduce-overhead mode) gets.
* ``host_us``: the host (Python) time of one call, launches only. When it exceeds
  ``gpu_ms``, eager callers are host-bound and event timings without graphs measure the
  host, not the kernel: on the H200 machine, one quantize call through the torch.library op
  costs 125-250 us of host time against ~50 us on the GPU (2026-11-30).

A function that cannot be captured (it synchronizes with the host) falls back to CUDA-event
timing (triton do_bench, L2 flushed between calls), and ``gpu_ms`` says so.
"""

from __future__ import annotations

import time

import torch


def gpu_ms(fn, rep_ms: int = 100) -> tuple[float, str]:
    """(median milliseconds per call, "cuda_graph" | "events")."""
    import triton

    fn()  # compile / autotune outside the capture
    torch.cuda.synchronize()
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"), "cuda_graph"
    except RuntimeError:  # not capturable: a host sync inside
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"), "events"


def host_us(fn, calls: int = 50) -> float:
    """Host microseconds per call (launch path only; the GPU runs behind)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = time.perf_counter() - t0
    torch.cuda.synchronize()
    return t / calls * 1e6
