"""Probe: does TMA + Triton's Hopper warp specialization speed up the fp8 attention kernel?

    python bench/attention_ws_probe.py            # H200; ~2 min incl. compiles

The product kernel (kernels.attn_fwd_kernel) quantizes its Q tile in registers and streams
K/V tiles with pointer loads that Triton software-pipelines. This probe runs the same "fp8"
math (operations, operand layouts, K/V pre-passes) with the K/V-side tiles loaded through
on-device tensor descriptors (TMA), and optionally `tl.range(..., warp_specialize=True)`
(Triton >= 3.5 warp-specializes non-causal attention on Hopper when the loads are on-device
descriptors). Q is quantized beforehand (in torch, not timed) and loaded by a descriptor
too, or, in the "q-in-kernel" variants, loaded by pointers and quantized as the product
kernel does. For each configuration it checks the output against the product kernel on the
same pre-quantized K/V, then times the attention kernel alone (CUDA events, medians) beside
the product kernel and cuDNN SDPA in bf16 on the same tensors. A configuration that fails
to compile is reported and skipped. Nothing is recorded in results.json: a probe, not a
published figure (bench/RESULTS.md §3c).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solrl_kernels.attention import kernels, quant  # noqa: E402
from solrl_kernels.attention.ops import KernelConfig, attention_fwd, quantize_kv  # noqa: E402
from solrl_kernels.attention.reference import (  # noqa: E402
    DEFAULT_CONFIG,
    LOG2E,
    _softmax_scale,
)

# WS: Triton >= 3.5 warp-specializes this loop on Hopper only with num_warps=4 and BLOCK_M
# 128 (two consumer warpgroups, data-partitioned along M) and every tile a TMA descriptor.


@triton.jit
def attn_fwd_fp8_desc_kernel(
    q8_ptr, q_mul_ptr, q_ptr, k8_ptr, k_scale_ptr, k_bias_ptr, v8t_ptr, stats_ptr, o_ptr,
    H, Sq, Sq_pad, S_pad, n_tiles, G, qk_mul,
    sqb, sqh, sqs, sob, soh, sos,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WS: tl.constexpr, NUM_STAGES: tl.constexpr, Q_IN_KERNEL: tl.constexpr,
):
    """kernels.attn_fwd_kernel's "fp8" path with the K/V-side tiles through on-device TMA
    descriptors; Q pre-quantized (q8, q_mul: a descriptor too) or, with Q_IN_KERNEL, bf16 Q
    quantized here. Triton's Hopper warp specialization (WS) cannot partition the in-kernel
    Q quantization (WSDataPartition "Unexpected op", Triton 3.8)."""
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    b = g // H
    h = g % H
    q_desc = tl.make_tensor_descriptor(q8_ptr, shape=[G * Sq_pad, D], strides=[D, 1],
                                       block_shape=[BLOCK_M, D])
    qm_desc = tl.make_tensor_descriptor(q_mul_ptr, shape=[G * Sq_pad], strides=[1],
                                        block_shape=[BLOCK_M])
    k_desc = tl.make_tensor_descriptor(k8_ptr, shape=[G * S_pad, D], strides=[D, 1],
                                       block_shape=[BLOCK_N, D])
    v_desc = tl.make_tensor_descriptor(v8t_ptr, shape=[G * D, S_pad], strides=[S_pad, 1],
                                       block_shape=[D, BLOCK_N])
    ks_desc = tl.make_tensor_descriptor(k_scale_ptr, shape=[G * S_pad], strides=[1],
                                        block_shape=[BLOCK_N])
    kb_desc = tl.make_tensor_descriptor(k_bias_ptr, shape=[G * S_pad], strides=[1],
                                        block_shape=[BLOCK_N])
    q_row0 = g * Sq_pad + pid_m * BLOCK_M
    if Q_IN_KERNEL:  # as attn_fwd_kernel: bf16 Q by pointers, smoothed and quantized here
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < Sq
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
                    + rows[:, None].to(tl.int64) * sqs + d[None, :],
                    mask=row_ok[:, None], other=0.0).to(tl.float32)
        q_mean = tl.load(stats_ptr + g.to(tl.int64) * 4 * D + d)
        q = tl.where(row_ok[:, None], q - q_mean[None, :], 0.0)
        q_vals, q_gs = kernels._quant_rows(q, False, False, BLOCK_M, D)
        q8 = q_vals.to(tl.float8e4nv)
        q_mul = q_gs * qk_mul
    else:
        q8 = q_desc.load([q_row0, 0])
        q_mul = qm_desc.load([q_row0])

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    kv_row0 = g * S_pad
    for j in tl.range(0, n_tiles, num_stages=NUM_STAGES, warp_specialize=WS):
        key0 = kv_row0 + j * BLOCK_N
        s = tl.dot(q8, k_desc.load([key0, 0]).T)
        t = s * q_mul[:, None] * ks_desc.load([key0])[None, :] + kb_desc.load([key0])[None, :]
        m_new = tl.maximum(m_i, tl.max(t, axis=1))
        alpha = tl.exp2(m_i - m_new)
        r = tl.exp2(t - (m_new - kernels.LOG2_P_SCALE_FP8)[:, None])
        l_i = l_i * alpha + tl.sum(r, axis=1)
        vt = v_desc.load([g * D, j * BLOCK_N])
        acc = acc * alpha[:, None] + tl.dot(r.to(tl.float8e4nv), vt.T)
        m_i = m_new

    d = tl.arange(0, D)
    st = stats_ptr + g.to(tl.int64) * 4 * D + d
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    v_gs = tl.math.div_rn(tl.load(st + 3 * D), tl.zeros((D,), dtype=tl.float32) + 448.0)
    out = acc * v_gs[None, :] / l_i[:, None] + tl.load(st + 2 * D)[None, :]
    tl.store(o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh
             + rows[:, None].to(tl.int64) * sos + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(rows < Sq)[:, None])


def quantize_q(q, stats, tau, pad=128):
    """Q's "fp8" quantization as the attention kernel does it (reference.py), in torch:
    smoothed rows, one E4M3 scale per row -> q8 (G, Sq_pad, D), q_mul (G, Sq_pad) =
    row scale * softmax scale * log2(e)."""
    B, H, Sq, D = q.shape
    G, Sq_pad = B * H, triton.cdiv(Sq, pad) * pad
    x = q.float().reshape(G, Sq, D) - stats[:, 0, None, :]
    amax = x.abs().amax(-1)
    a = torch.where(amax > 0, amax.clamp_min(quant.FP8_ROW_AMAX_MIN), torch.full_like(amax, 448.0))
    y = (x * (448.0 / a)[..., None]).clamp(-448, 448)
    q8 = torch.zeros(G, Sq_pad, D, device=q.device, dtype=torch.float8_e4m3fn)
    q8[:, :Sq] = y.to(torch.float8_e4m3fn)
    q_mul = torch.zeros(G, Sq_pad, device=q.device)
    q_mul[:, :Sq] = a / 448.0 * (tau * LOG2E)
    return q8, q_mul


def run_desc(q, q8, q_mul, kv, out, tau, block_m, warps, stages, ws, q_in_kernel):
    B, H, Sq, D = out.shape
    bn = DEFAULT_CONFIG.block_n
    attn_fwd_fp8_desc_kernel[(triton.cdiv(Sq, block_m), B * H)](
        q8, q_mul, q, kv.k8, kv.k_scale, kv.k_bias, kv.v8t, kv.stats, out,
        H, Sq, q8.shape[1], kv.S_pad, triton.cdiv(kv.Sk, bn), B * H, tau * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        D=D, BLOCK_M=block_m, BLOCK_N=bn, WS=ws, NUM_STAGES=stages, Q_IN_KERNEL=q_in_kernel,
        num_warps=warps,
    )
    return out


SHAPES = [("FLUX.1 1024px B1", 1, 24, 4608, 128), ("FLUX.1 1024px B2", 2, 24, 4608, 128),
          ("SD3.5-L 1024px B2", 2, 38, 4429, 64)]
# (block_m, num_warps, num_stages, warp-specialize, Q quantized in the kernel)
VARIANTS = [(64, 4, 3, False, False), (128, 8, 2, False, False), (128, 4, 2, False, False)] + [
    (128, 4, s, True, False) for s in (2, 3, 4)] + [
    (64, 4, s, False, True) for s in (2, 3, 4)]


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def probe_shape(label: str, B: int, H: int, S: int, D: int) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    tau = _softmax_scale(D, None)
    flops = 4 * B * H * S * S * D
    kv = quantize_kv(q, k, v, "fp8", tau, DEFAULT_CONFIG)
    q8, q_mul = quantize_q(q, kv.stats, tau)
    ref = attention_fwd(q, kv, torch.empty_like(q), "fp8", tau, DEFAULT_CONFIG)
    ms_cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    ms_prod = bench(lambda: attention_fwd(q, kv, torch.empty_like(q), "fp8", tau,
                                          DEFAULT_CONFIG, KernelConfig()))
    print(f"\n{label} (B {B}, H {H}, S {S}, D {D}): cuDNN {flops / ms_cudnn / 1e9:.0f} "
          f"TFLOP/s; product kernel {flops / ms_prod / 1e9:.0f} TFLOP/s "
          f"({ms_cudnn / ms_prod:.2f}x cuDNN)")
    out = torch.empty_like(q)
    for bm, w, s, ws, qk in VARIANTS:
        name = f"desc bm{bm} w{w} s{s} ws={int(ws)}{' q-in-kernel' if qk else ''}"
        try:
            run_desc(q, q8, q_mul, kv, out, tau, bm, w, s, ws, qk)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            print(f"  {name:28s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        err = float((out.double() - ref.double()).norm() / ref.double().norm())
        ms = bench(lambda bm=bm, w=w, s=s, ws=ws, qk=qk: run_desc(q, q8, q_mul, kv, out, tau,
                                                                  bm, w, s, ws, qk))
        print(f"  {name:28s} {flops / ms / 1e9:6.0f} TFLOP/s {ms_cudnn / ms:5.2f}x cuDNN "
              f"{ms_prod / ms:5.2f}x product  rel. diff {err:.1e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="first shape only")
    args = ap.parse_args()
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda",
                                                                     dtype=torch.int8))
    print(f"torch {torch.__version__}, triton {triton.__version__}, "
          f"{torch.cuda.get_device_name()}")
    for shape in SHAPES[:1] if args.quick else SHAPES:
        probe_shape(*shape)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
