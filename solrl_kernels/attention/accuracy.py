"""Accuracy of the quantized attention against fp32 SDPA, on the input kinds of the issue.

    python -m solrl_kernels.attention.accuracy                 # emulated path, CPU, ~1 min
    python -m solrl_kernels.attention.accuracy --device cuda   # also the Triton kernel
    python -m solrl_kernels.attention.accuracy --ablation      # one operand quantized at a time

Input kinds (q, k, v of shape (B, H, S, D), softmax scale 1/sqrt(D)):
  flat      q, k, v ~ N(0, 1): scores have std 1 (attention spread over many keys)
  peaky     q, k ~ N(0, 1.8^2): scores have std 3.24 (a few keys take most of the weight;
            calibrated so that the naive NVFP4 emulation gives ~0.954, the issue's figure)
  k_bias    flat, plus a large common bias on K: k += c, c ~ N(0, 8^2) per channel
  q_bias    flat, plus a common component on Q: q += c, c ~ N(0, 3^2) per channel; every
            query then favours the same keys (attention-sink-like, peaky)
  dit       DiT-like channel outliers: 4 channels of q and k with mean +-6 and std 4, and
            4 channels of v with mean +-5 and std 3, on top of N(0, 1)
"""

from __future__ import annotations

import argparse
import math

import torch

INPUT_KINDS = ("flat", "peaky", "k_bias", "q_bias", "dit")


def make_inputs(
    kind: str,
    B: int = 1,
    H: int = 2,
    S: int = 1024,
    D: int = 128,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random (q, k, v) of one kind (module doc), each (B, H, S, D)."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {INPUT_KINDS}, got {kind!r}")
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    q, k, v = randn(B, H, S, D), randn(B, H, S, D), randn(B, H, S, D)
    if kind == "peaky":
        q, k = 1.8 * q, 1.8 * k
    elif kind == "k_bias":
        k = k + 8 * randn(B, H, 1, D)
    elif kind == "q_bias":
        q = q + 3 * randn(B, H, 1, D)
    elif kind == "dit":
        for t, mean, std in ((q, 6.0, 4.0), (k, 6.0, 4.0), (v, 5.0, 3.0)):
            idx = torch.randperm(D, generator=g)[:4]
            sign = torch.where(torch.rand(4, generator=g) < 0.5, -1.0, 1.0)
            t[..., idx] = sign * mean + std * randn(B, H, S, 4)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """cosine similarity and relative error ||out - ref|| / ||ref|| (flattened, fp64)."""
    a, b = out.double().flatten(), ref.double().flatten()
    if not bool(torch.isfinite(a).all()):
        return {"cos": float("nan"), "rel": float("nan")}
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))
    rel = float((a - b).norm() / b.norm().clamp_min(1e-300))
    return {"cos": cos, "rel": rel}


def _methods(q, k, v, kernel: bool) -> dict:
    from .reference import attention_reference, naive_nvfp4_attention_reference

    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    methods = {
        "naive nvfp4": lambda: naive_nvfp4_attention_reference(q, k, v),
        "fp8 (emulated)": lambda: attention_reference(q, k, v, "fp8"),
        "nvfp4 (emulated)": lambda: attention_reference(q, k, v, "nvfp4"),
        "nvfp4_pv (emulated)": lambda: attention_reference(q, k, v, "nvfp4_pv"),
        "bf16 inputs, fp32 SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(
            qb.float(), kb.float(), vb.float()
        ),
    }
    if kernel:
        from .ops import attention

        methods["fp8 (kernel, bf16 in)"] = lambda: attention(qb, kb, vb, "fp8", backend="triton")
        methods["nvfp4 (kernel, bf16 in)"] = lambda: attention(qb, kb, vb, "nvfp4", backend="triton")
        methods["nvfp4_pv (kernel, bf16 in)"] = lambda: attention(qb, kb, vb, "nvfp4_pv",
                                                                  backend="triton")
    return methods


def accuracy_table(
    kinds=INPUT_KINDS, S: int = 1024, D: int = 128, H: int = 2, device: str = "cpu",
    kernel: bool = False, seed: int = 0,
) -> list[dict]:
    """Rows {kind, method, cos, rel} against fp32 SDPA (float64 for the reference matmul)."""
    rows = []
    for kind in kinds:
        q, k, v = make_inputs(kind, H=H, S=S, D=D, device=device, seed=seed)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.double(), k.double(), v.double(), scale=1 / math.sqrt(D)
        )
        methods = _methods(q, k, v, kernel)
        for name, fn in methods.items():
            rows.append({"kind": kind, "method": name, **compare(fn(), ref)})
    return rows


def ablation_table(kinds=("flat", "peaky"), S: int = 1024, D: int = 128, H: int = 2,
                   fmt: str = "nvfp4", seed: int = 0) -> list[dict]:
    """Which operand costs the accuracy: rows {kind, method, cos, rel} with only Q, only K,
    only P or only V quantized to `fmt` (the others exact), then all four (emulated)."""
    from .reference import emulate_operands

    rows = []
    for kind in kinds:
        q, k, v = make_inputs(kind, H=H, S=S, D=D, seed=seed)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.double(), k.double(), v.double(), scale=1 / math.sqrt(D)
        )
        for i, name in enumerate(("Q", "K", "P", "V", "all")):
            formats = tuple(fmt if name == "all" or j == i else None for j in range(4))
            out = emulate_operands(q.float(), k.float(), v.float(), formats)
            rows.append({"kind": kind, "method": f"{fmt}: only {name}" if name != "all"
                         else f"{fmt}: all operands", **compare(out, ref)})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--ablation", action="store_true",
                    help="quantize one operand at a time (Q, K, P, V; emulated, nvfp4)")
    args = ap.parse_args(argv)
    if args.ablation:
        rows = ablation_table(S=args.seq, D=args.head_dim, H=args.heads)
    else:
        rows = accuracy_table(
            S=args.seq, D=args.head_dim, H=args.heads, device=args.device,
            kernel=args.device != "cpu",
        )
    print(f"accuracy vs fp32 SDPA: B 1, H {args.heads}, S {args.seq}, D {args.head_dim}")
    print(f"{'input':8} {'method':26} {'cosine':>9} {'rel err':>9}")
    for r in rows:
        print(f"{r['kind']:8} {r['method']:26} {r['cos']:9.5f} {r['rel']:9.5f}")


if __name__ == "__main__":
    main()
