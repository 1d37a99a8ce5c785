"""cuDNN's own FP8 attention forward at issue 5's shapes, beside cuDNN BF16 SDPA and ours.

    python3 bench/cudnn_fp8_attention.py    (on the H200: bash bench/device/run.sh cudnn-fp8)

Needs nvidia-cudnn-frontend (installed without its dependencies: CUDNN_FE=1 bench/device/fetch.sh).

What it answers: how fast the vendor's FP8 flash attention runs on this GPU, as a ceiling for
issue 5's target (quantized attention >= 1.4x cuDNN BF16 SDPA, whole op). Nothing here ships:
`solrl_kernels` does not call cuDNN's FP8 path.

The recipe is cuDNN's per-tensor one (`graph.sdpa_fp8`): Q, K, V in E4M3 with one fp32
descale each, P in E4M3 scaled by 448 (its max is 1), O in E4M3 (Hopper's FP8 forward writes
FP8 O) with scale 448 / amax(V) (|O| <= max |V|). GPU time by CUDA-graph
replay (bench/timing.py; CUDA events where a function cannot be captured, and the table says
which), FLOPs 4 B H S^2 D:
  kernel     graph.execute alone on pre-quantized E4M3 tensors;
  pre, post  amax of Q, K, V and the E4M3 casts; O back to bf16 (both compiled by torch.compile,
             so fused where Inductor can);
  parts      kernel + pre + post: the whole op's GPU time (recorded as "whole op");
  whole      the three in one timed call (with host gaps where it falls back to events);
  cuDNN bf16 and ours ("fp8", the whole op) on the same bf16 tensors.
Accuracy: cosine similarity and relative error against fp32 SDPA on the inputs of
solrl_kernels.attention.accuracy (flat, peaky, K or Q with a common bias, DiT-like),
next to our "fp8".
Records go to results.json ("attention cudnn-fp8 ..."), the table to stdout.
"""

from __future__ import annotations

import argparse
import math

import torch
import triton
from record import record
from timing import gpu_ms

from solrl_kernels.attention import attention
from solrl_kernels.attention.accuracy import INPUT_KINDS, compare, make_inputs

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
SHAPES = [  # (label, B, H, S, D): issue 5's joint text + image sequences
    ("FLUX.1 1024px", 1, 24, 4096 + 512, 128),
    ("FLUX.1 1024px", 2, 24, 4096 + 512, 128),
    ("FLUX.1 512px", 4, 24, 1024 + 512, 128),
    ("SD3.5-L 1024px", 2, 38, 4096 + 333, 64),
    ("SD3.5-L 512px", 4, 38, 1024 + 333, 64),
]


class CudnnFp8Attention:
    """One cuDNN FP8 SDPA graph for a fixed (B, H, S, D); call with E4M3 (B, H, S, D) tensors."""

    def __init__(self, B: int, H: int, S: int, D: int, device: torch.device):
        import cudnn

        self.handle = cudnn.create_handle()
        fp8, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=fp32, compute_data_type=fp32,
                          handle=self.handle)
        shape, stride = [B, H, S, D], [H * S * D, S * D, D, 1]
        self.q, self.k, self.v = (g.tensor(name=n, dim=shape, stride=stride, data_type=fp8)
                                  for n in ("q", "k", "v"))
        self.scalars = [g.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
                        for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s",
                                  "scale_o")]
        o, _, amax_s, amax_o = g.sdpa_fp8(
            q=self.q, k=self.k, v=self.v, descale_q=self.scalars[0], descale_k=self.scalars[1],
            descale_v=self.scalars[2], descale_s=self.scalars[3], scale_s=self.scalars[4],
            scale_o=self.scalars[5], is_inference=True, attn_scale=1.0 / math.sqrt(D),
            use_causal_mask=False, name="sdpa_fp8")
        o.set_output(True).set_dim(shape).set_stride(stride).set_data_type(fp8)
        for t in (amax_s, amax_o):
            t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph, self.o_t, self.amax_t = g, o, (amax_s, amax_o)
        self.o = torch.empty(shape, dtype=E4M3, device=device)
        self.amax = [torch.empty(1, 1, 1, 1, device=device) for _ in range(2)]
        self.workspace = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device=device)
        self.fixed = {self.scalars[3]: _scalar(1.0 / E4M3_MAX, device),
                      self.scalars[4]: _scalar(E4M3_MAX, device)}

    def __call__(self, q8, k8, v8, descale_q, descale_k, descale_v, scale_o) -> torch.Tensor:
        import cudnn

        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
        pack = {self.q: q8, self.k: k8, self.v: v8, self.scalars[0]: descale_q,
                self.scalars[1]: descale_k, self.scalars[2]: descale_v, self.scalars[5]: scale_o,
                self.o_t: self.o, self.amax_t[0]: self.amax[0], self.amax_t[1]: self.amax[1],
                **self.fixed}
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return self.o


def _scalar(x: float, device) -> torch.Tensor:
    return torch.full((1, 1, 1, 1), x, dtype=torch.float32, device=device)


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (E4M3 of x * 448 / amax, descale amax / 448 as a (1, 1, 1, 1) fp32 tensor)."""
    amax = x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * (E4M3_MAX / amax)).to(E4M3), (amax / E4M3_MAX).reshape(1, 1, 1, 1)


def prepare(q, k, v):
    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_tensor(t) for t in (q, k, v))
    # |O| <= max |V|: O's E4M3 scale maps max |V| to 448
    return q8, k8, v8, dq, dk, dv, 1.0 / dv


def finish(o8: torch.Tensor, scale_o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (o8.float() / scale_o).to(dtype)


def accuracy(S: int, D: int) -> list[tuple]:
    rows = []
    for kind in INPUT_KINDS:
        q, k, v = (t.cuda() for t in make_inputs(kind, B=1, H=4, S=S, D=D, seed=1))
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        fn = CudnnFp8Attention(1, 4, S, D, q.device)
        *ops, scale_o = prepare(q, k, v)
        got = finish(fn(*ops, scale_o), scale_o, torch.float32)
        ours = attention(q, k, v, "fp8").float()
        rows.append((kind, compare(got, ref), compare(ours, ref)))
    return rows


def _time(fn) -> tuple[float, str]:
    """bench/timing.gpu_ms, falling back to CUDA events if cuDNN refuses the graph capture."""
    try:
        return gpu_ms(fn)
    except Exception:  # noqa: BLE001 - any capture failure: time it eagerly instead
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"), "events"


def bench_shape(label: str, B: int, H: int, S: int, D: int, prepare_c, finish_c) -> None:
    """Times one shape (module doc), records it and prints its row."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    torch.manual_seed(S + B + D)
    q, k, v = (torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    fn = CudnnFp8Attention(B, H, S, D, dev)
    *ops, scale_o = prepare_c(q, k, v)
    o8 = fn(*ops, scale_o)
    ref = torch.nn.functional.scaled_dot_product_attention(*(t[:, :2].float() for t in (q, k, v)))
    err = compare(finish(o8, scale_o, torch.float32)[:, :2], ref)

    def whole():
        *o, s = prepare_c(q, k, v)
        return finish_c(fn(*o, s), s, torch.bfloat16)

    def bf16():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    timed = {"kernel": lambda: fn(*ops, scale_o), "pre": lambda: prepare_c(q, k, v),
             "post": lambda: finish_c(o8, scale_o, torch.bfloat16), "whole": whole, "bf16": bf16,
             "ours": lambda: attention(q, k, v, "fp8")}
    times, modes = {}, {}
    for name, fn_ in timed.items():
        times[name], modes[name] = _time(fn_)
    times["parts"] = times["kernel"] + times["pre"] + times["post"]
    tf = {n: 4.0 * B * H * S * S * D / (t * 1e-3) / 1e12 for n, t in times.items()}
    name = f"attention cudnn-fp8 {label} B{B} H{H} S{S} D{D}"
    record(name + " kernel", "TFLOP/s", tf["kernel"], "cuDNN SDPA bf16", tf["bf16"],
           rel_err_vs_fp32_sdpa=err["rel"], ours_fp8_tflops=tf["ours"], timing=modes)
    record(name + " whole op", "TFLOP/s", tf["parts"], "cuDNN SDPA bf16", tf["bf16"],
           pre_ms=times["pre"], post_ms=times["post"], kernel_ms=times["kernel"],
           whole_measured_ms=times["whole"], timing=modes)
    print(f"{label:16} {B:2} {H:3} {S:5} {D:4} {tf['kernel']:7.0f} {tf['parts']:7.0f} "
          f"{tf['whole']:7.0f} {tf['bf16']:7.0f} {tf['ours']:7.0f}   "
          f"{tf['kernel'] / tf['bf16']:.2f} {tf['parts'] / tf['bf16']:.2f} "
          f"{tf['ours'] / tf['bf16']:.2f}   pre {times['pre'] * 1e3:.0f} us, post "
          f"{times['post'] * 1e3:.0f} us, rel err {err['rel']:.3f}", flush=True)
    print("  timing: " + ", ".join(f"{n} {m}" for n, m in modes.items()), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy-s", type=int, default=2048, help="sequence length of the accuracy check")
    args = p.parse_args(argv)
    prepare_c, finish_c = torch.compile(prepare), torch.compile(finish)
    print("TFLOP/s; kernel = cuDNN FP8 alone, parts = kernel + pre + post GPU times, whole = the\n"
          "three in one timed call, bf16 = cuDNN BF16 SDPA, ours = our fp8 whole op")
    print(f"{'shape':16} {'B':>2} {'H':>3} {'S':>5} {'D':>4} {'kernel':>7} {'parts':>7} "
          f"{'whole':>7} {'bf16':>7} {'ours':>7}   x bf16: kernel parts ours")
    for shape in SHAPES:
        try:
            bench_shape(*shape, prepare_c, finish_c)
        except Exception as e:  # cuDNN declines some shapes: say which and go on
            print(f"{shape}: {type(e).__name__}: {e}", flush=True)
    for D in (128, 64):
        print(f"\naccuracy vs fp32 SDPA, B 1, H 4, S {args.accuracy_s}, D {D}: cosine (rel err)")
        for kind, theirs, ours in accuracy(args.accuracy_s, D):
            print(f"  {kind:6} cuDNN fp8 {theirs['cos']:.5f} ({theirs['rel']:.4f})   "
                  f"ours fp8 {ours['cos']:.5f} ({ours['rel']:.4f})")


if __name__ == "__main__":
    main()
