"""NVFP4 GEMM sweep for the H200: every kernel variant / config against cuBLAS in one run.

    python bench/gemm_sweep.py                      # DiT shapes, M = 8192, all variants
    python bench/gemm_sweep.py --shapes all --ms 4096 8192 16384
    python bench/gemm_sweep.py --shapes quick       # one shape, for a smoke run

For each (K, N) linear shape and M tokens, on fresh random bf16 data:
  1. accuracy first: each variant vs the float64 product of the dequantized operands
     (relative Frobenius error, on the first 1024 rows), and the long-K accumulation check
     (K = 15360, fp32 output) with and without promotion of the FP8 wgmma partial sums;
  2. timings (triton.testing.do_bench medians after warm-up, CUDA events): cuBLAS BF16
     (torch.matmul), cuBLAS FP8 (torch._scaled_mm, row-wise scales, pre-quantized inputs),
     activation quantization (quantize_to_fp8), our Triton FP8 GEMM configs, the packed
     variants (expand pre-pass + FP8 GEMM; fused in-register expansion), the CUTLASS op when
     built, and the whole nvfp4_linear (activation quantization included) per storage mode;
  3. SASS of each compiled Triton kernel: QGMMA / HGMMA counts and local-memory spills
     (cuobjdump from CUDA or Triton's bundled copy), and whether the fused kernel's wgmma takes
     its A operand from registers (PTX).
Prints one table (TFLOP/s, x BF16, x cuBLAS FP8) and writes JSON lines + the log to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solrl_kernels.gemm import (  # noqa: E402
    _native_has,
    nvfp4_linear,
    prepare_weight,
    set_activation_reuse,
)
from solrl_kernels.gemm import triton_launch as tl_launch  # noqa: E402
from solrl_kernels.gemm.reference import fp8_gemm_reference, relative_error  # noqa: E402
from solrl_kernels.gemm.triton_launch import FP8GemmConfig, PackedGemmConfig  # noqa: E402
from solrl_kernels.gemm.weight import quantize_to_fp8  # noqa: E402

SHAPES = {  # name: (K, N) of nn.Linear(K, N)
    "flux-qkv": (3072, 3072), "flux-ff-up": (3072, 12288), "flux-ff-down": (12288, 3072),
    "flux-single-out": (15360, 3072),
    "sd35-attn": (2432, 2432), "sd35-ff-up": (2432, 9728), "sd35-ff-down": (9728, 2432),
    "sana-attn": (2240, 2240), "sana-ff-up": (2240, 5600), "sana-ff-down": (5600, 2240),
}
SHAPE_SETS = {
    "quick": ["flux-ff-up"],
    "dit": ["flux-qkv", "flux-ff-up", "flux-ff-down", "sd35-ff-up", "sana-ff-down"],
    "all": list(SHAPES),
}


@dataclass
class SweepArgs:
    """shapes: a set name (quick | dit | all) or comma-separated shape names.
    ms: token counts M. out: folder for JSON lines and the log. rep_ms: do_bench time per
    measurement. sass: dump and check SASS. fp8_configs / packed_configs: 'all' or 'default'."""

    shapes: str = "dit"
    ms: list[int] = field(default_factory=lambda: [8192])
    out: str = "bench/logs"
    rep_ms: int = 200
    sass: bool = True
    fp8_configs: str = "all"
    packed_configs: str = "all"


def parse_args() -> SweepArgs:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(SweepArgs):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=default)
        elif isinstance(default, list):
            p.add_argument(f"--{f.name}", type=int, nargs="+", default=default)
        else:
            p.add_argument(f"--{f.name}", type=type(default), default=default)
    return SweepArgs(**vars(p.parse_args()))


def fp8_variants(which: str) -> dict[str, FP8GemmConfig]:
    P = tl_launch.DEFAULT_PROMOTE_K
    v = {
        "tma 128x128x128 s4 w8 p128 (default)": FP8GemmConfig(block_n=128, num_stages=4,
                                                              promote_k=P),
        "tma 128x128x128 s3 w8 p128": FP8GemmConfig(block_n=128, num_stages=3, promote_k=P),
        "tma 128x128x128 s4 w8 p128 noflat": FP8GemmConfig(block_n=128, num_stages=4,
                                                           promote_k=P, flatten=False),
        "tma 128x128x128 s4 w8 p128 g16": FP8GemmConfig(block_n=128, num_stages=4,
                                                        promote_k=P, group_m=16),
        "tma 128x256x128 s3 w8 p128 (spills?)": FP8GemmConfig(promote_k=P),
        "tma 128x256x128 s3 w8 nopromote": FP8GemmConfig(promote_k=0),
        "tma 128x128x128 s4 w8 nopromote": FP8GemmConfig(block_n=128, num_stages=4),
        "tma 128x256x64 s4 w8 p64": FP8GemmConfig(block_k=64, num_stages=4, promote_k=64),
        "ptr 128x128x128 s4 w8 p128": FP8GemmConfig(kernel="ptr", block_n=128, num_stages=4,
                                                    promote_k=P),
    }
    if which == "default":
        return {"tma default": None}
    return v


def packed_variants(which: str) -> dict[str, PackedGemmConfig]:
    P = tl_launch.DEFAULT_PROMOTE_K
    v = {
        "expand + fp8 default": PackedGemmConfig(variant="expand"),
        "fused 128x128x128 w8 s3": PackedGemmConfig(variant="fused", block_m=128, block_n=128,
                                                    block_k=128, num_warps=8, num_stages=3,
                                                    promote_k=P),
        "fused 128x128x128 w8 s4": PackedGemmConfig(variant="fused", block_m=128, block_n=128,
                                                    block_k=128, num_warps=8, num_stages=4,
                                                    promote_k=P),
        "fused 256x128x128 w8 s3 nopromote": PackedGemmConfig(
            variant="fused", block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3),
        "fused 128x64x128 w4 s4": PackedGemmConfig(variant="fused", block_m=128, block_n=64,
                                                   block_k=128, num_warps=4, num_stages=4,
                                                   promote_k=P),
        "fused 128x128x64 w8 s4 p64": PackedGemmConfig(variant="fused", block_m=128,
                                                       block_n=128, block_k=64, num_warps=8,
                                                       num_stages=4, promote_k=64),
    }
    if which == "default":
        return {"packed default": None}
    return v


def bench_ms(fn, rep_ms: int) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=max(25, rep_ms // 4), rep=rep_ms,
                                   return_mode="median")


def tflops(M, N, K, ms):
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


def find_cuobjdump() -> str | None:
    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(cand) if cand.exists() else None
    except ImportError:
        return None


def sass_summary(kernel_name: str) -> dict:
    """QGMMA/HGMMA/LDL/STL counts of the last compiled `kernel_name`, and the first wgmma
    line of its PTX (register-A wgmma shows a {%r..} list as its second operand)."""
    ck = tl_launch.LAST_COMPILED.get(kernel_name)
    if ck is None:
        return {"error": "not compiled"}
    info: dict = {}
    ptx = ck.asm.get("ptx", "")
    wg = [ln.strip() for ln in ptx.splitlines() if "wgmma.mma_async" in ln]
    info["ptx_wgmma"] = len(wg)
    info["ptx_wgmma_first"] = wg[0][:160] if wg else None
    info["wgmma_a_from_registers"] = bool(wg) and bool(re.search(r"\},\s*\{%r", wg[0]))
    info["n_regs"] = getattr(ck, "n_regs", None)
    info["n_spills"] = getattr(ck, "n_spills", None)
    exe = find_cuobjdump()
    if exe is None:
        info["sass"] = "cuobjdump not found"
        return info
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([exe, "--dump-sass", path], capture_output=True, text=True,
                              timeout=120).stdout
    finally:
        os.unlink(path)
    for op in ("QGMMA", "HGMMA", "HMMA", "LDL", "STL", "F2FP", "PRMT"):
        info[op] = len(re.findall(rf"\b{op}\b", sass))
    return info


def sweep_one(args, shape_name, K, N, M, fp8_v, packed_v, sass_info, sass_done, emit, rows):
    """All variants at one (M, N, K): accuracy on the first 1024 rows, then timings."""
    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    gen = torch.Generator(device=dev).manual_seed(M + N + K)
    x = torch.randn(M, K, device=dev, generator=gen, dtype=torch.bfloat16)
    w = torch.randn(N, K, device=dev, generator=gen, dtype=torch.bfloat16) * 0.02
    a, sa = quantize_to_fp8(x)
    sa = sa.reshape(-1)
    wf = prepare_weight(w, storage="fp8")
    wp = prepare_weight(w, storage="packed")
    b, sb = wf.values, wf.global_scale.reshape(-1)
    rows_chk = min(M, 1024)
    ref = fp8_gemm_reference(a[:rows_chk], b, sa[:rows_chk], sb, None, "none",
                             torch.float64)
    res: dict[str, tuple[float, float]] = {}  # name -> (ms, rel err)
    # bf16 outputs: their error vs float64 includes the bf16 rounding, ~1.5e-3 by itself
    res["(bf16 rounding floor of rel.err)"] = (float("nan"),
                                               relative_error(ref.to(torch.bfloat16), ref))

    def run(name, fn, check=True, _ref=ref, _rows=rows_chk, _res=res):
        y = fn()
        err = relative_error(y[:_rows], _ref) if check else float("nan")
        ms = bench_ms(fn, args.rep_ms)
        _res[name] = (ms, err)
        return y

    run("cuBLAS BF16 (torch.matmul)", lambda: torch.matmul(x, w.T), check=False)
    run("cuBLAS FP8 (_scaled_mm rowwise)",
        lambda: torch._scaled_mm(a, b.t(), scale_a=sa.reshape(-1, 1),
                                 scale_b=sb.reshape(1, -1), out_dtype=torch.bfloat16))
    res["act quant (quantize_to_fp8)"] = (bench_ms(lambda: quantize_to_fp8(x),
                                                   args.rep_ms), float("nan"))
    for vname, cfg in fp8_v.items():
        run(f"triton fp8 {vname}",
            lambda cfg=cfg: tl_launch.fp8_gemm(a, b, sa, sb, None, "none",
                                               torch.bfloat16, cfg))
        kn = "fp8_gemm_ptr_kernel" if cfg is not None and cfg.kernel == "ptr" \
            else "fp8_gemm_tma_kernel"
        if args.sass and f"{kn}/{vname}" not in sass_done:
            sass_info[f"fp8 {vname}"] = sass_summary(kn)
            sass_done.add(f"{kn}/{vname}")
    if _native_has("fp8_gemm_sm90"):
        run("CUTLASS fp8_gemm_sm90",
            lambda: torch.ops.solrl_kernels.fp8_gemm_sm90(a, b, sa, sb, None, "none",
                                                          torch.bfloat16))
    res["expand pre-pass alone"] = (bench_ms(
        lambda: tl_launch.expand_nvfp4(wp.data, wp.scales), args.rep_ms), float("nan"))
    if args.sass and "expand" not in sass_done:
        sass_info["expand_nvfp4_kernel"] = sass_summary("expand_nvfp4_kernel")
        sass_done.add("expand")
    for vname, cfg in packed_v.items():
        try:
            run(f"packed {vname}",
                lambda cfg=cfg: tl_launch.nvfp4_gemm_packed(
                    a, wp.data, wp.scales, sa, sb, None, "none", torch.bfloat16, cfg))
        except Exception as e:  # a config that does not compile must not stop the run
            print(f"  packed {vname}: FAILED {type(e).__name__}: {str(e)[:200]}")
            continue
        if args.sass and cfg is not None and cfg.variant == "fused" \
                and f"fused/{vname}" not in sass_done:
            sass_info[f"fused {vname}"] = sass_summary("nvfp4_gemm_fused_kernel")
            sass_done.add(f"fused/{vname}")
    for storage, wq in (("fp8", wf), ("packed", wp)):
        for backend in ("triton", "cublas", "native"):
            if backend == "native" and not _native_has("fp8_gemm_sm90"):
                continue
            run(f"nvfp4_linear {storage} {backend} (incl. act quant)",
                lambda wq=wq, backend=backend: nvfp4_linear(x, wq, backend=backend),
                check=False)

    bf16_ms = res["cuBLAS BF16 (torch.matmul)"][0]
    fp8_ms = res["cuBLAS FP8 (_scaled_mm rowwise)"][0]
    print(f"\n== {shape_name}: M={M} N={N} K={K}  (BF16 {tflops(M, N, K, bf16_ms):.0f}, "
          f"cuBLAS FP8 {tflops(M, N, K, fp8_ms):.0f} TFLOP/s)")
    print(f"  {'variant':58s} {'ms':>8s} {'TFLOP/s':>8s} {'xBF16':>6s} {'xFP8':>6s} "
          f"{'rel.err':>9s}")
    for name, (ms, err) in res.items():
        tf = tflops(M, N, K, ms)
        print(f"  {name:58s} {ms:8.4f} {tf:8.1f} {bf16_ms / ms:6.2f} {fp8_ms / ms:6.2f} "
              f"{err:9.2e}")
        rec = {"kind": "timing", "shape": shape_name, "M": M, "N": N, "K": K,
               "variant": name, "ms": ms, "tflops": tf, "x_bf16": bf16_ms / ms,
               "x_cublas_fp8": fp8_ms / ms, "rel_err": err}
        rows.append(rec)
        emit(rec)



def main() -> None:
    args = parse_args()
    assert torch.cuda.is_available(), "the sweep needs a CUDA GPU"
    set_activation_reuse(False)  # each timed nvfp4_linear call quantizes its (repeated) input
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jsonl = out_dir / f"gemm_sweep-{stamp}.jsonl"
    names = SHAPE_SETS.get(args.shapes) or args.shapes.split(",")
    dev = torch.device("cuda")
    import triton

    env = (f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton "
           f"{triton.__version__} | CUDA {torch.version.cuda} | native GEMM op: "
           f"{_native_has('fp8_gemm_sm90')}")
    print(env, flush=True)
    rows: list[dict] = []

    def emit(rec: dict) -> None:
        rec = {"env": env, **rec}
        with jsonl.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    # ---- 1. long-K accumulation accuracy (fp32 output isolates the accumulation)
    gen = torch.Generator(device=dev).manual_seed(0)
    Kl = 15360
    x = torch.randn(1024, Kl, device=dev, generator=gen)
    w = torch.randn(1024, Kl, device=dev, generator=gen)
    a, sa = quantize_to_fp8(x)
    b, sb = quantize_to_fp8(w)
    sa, sb = sa.reshape(-1), sb.reshape(-1)
    ref = fp8_gemm_reference(a, b, sa, sb, None, "none", torch.float64)
    print(f"\n== accumulation accuracy, M=N=1024, K={Kl}, fp32 output, rel. Frobenius error")
    for name, cfg in {"no promotion": FP8GemmConfig(promote_k=0),
                      "promote every 128": FP8GemmConfig(promote_k=128),
                      "promote every 64 (BK 64)": FP8GemmConfig(block_k=64, promote_k=64,
                                                                num_stages=4)}.items():
        e = relative_error(tl_launch.fp8_gemm(a, b, sa, sb, None, "none", torch.float32, cfg),
                           ref)
        print(f"  triton {name:28s} {e:.3e}")
        emit({"kind": "accuracy_longk", "variant": name, "rel_err": e, "K": Kl})
    y = torch._scaled_mm(a, b.t(), scale_a=sa.reshape(-1, 1), scale_b=sb.reshape(1, -1),
                         out_dtype=torch.bfloat16)
    e = relative_error(y, ref)
    print(f"  cuBLAS _scaled_mm (bf16 out)   {e:.3e}   (bf16 rounding alone ~1e-3)")
    emit({"kind": "accuracy_longk", "variant": "cublas bf16 out", "rel_err": e, "K": Kl})
    x = w = a = b = ref = None

    sass_done: set[str] = set()
    sass_info: dict[str, dict] = {}
    fp8_v = fp8_variants(args.fp8_configs)
    packed_v = packed_variants(args.packed_configs)
    for shape_name in names:
        K, N = SHAPES[shape_name]
        for M in args.ms:
            sweep_one(args, shape_name, K, N, M, fp8_v, packed_v, sass_info, sass_done, emit,
                      rows)

    if args.sass:
        print("\n== SASS / PTX of the compiled Triton kernels")
        for k, info in sass_info.items():
            print(f"  {k:42s} {json.dumps(info)}")
            emit({"kind": "sass", "kernel": k, **info})

    # best per shape
    print("\n== best variant per shape (GEMM only, and whole layer incl. activation quant)")
    for shape_name in names:
        for M in args.ms:
            sel = [r for r in rows if r["shape"] == shape_name and r["M"] == M]
            if not sel:
                continue
            ours = [r for r in sel if r["variant"].startswith(("triton fp8", "CUTLASS fp8"))]
            packed = [r for r in sel if r["variant"].startswith(("packed", "CUTLASS nvfp4"))]
            layer = [r for r in sel if r["variant"].startswith("nvfp4_linear")]
            for label, group in (("fp8 GEMM", ours), ("packed GEMM", packed), ("layer", layer)):
                if group:
                    best = max(group, key=lambda r: r["tflops"])
                    print(f"  {shape_name:16s} M={M:6d} {label:12s} {best['variant']:54s} "
                          f"{best['tflops']:7.1f} TFLOP/s  x{best['x_bf16']:.2f} BF16  "
                          f"x{best['x_cublas_fp8']:.2f} FP8")
    print(f"\nrecords: {jsonl}")


if __name__ == "__main__":
    main()
