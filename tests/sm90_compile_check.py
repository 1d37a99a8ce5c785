"""Compile every Triton kernel for Hopper (sm_90a) without a GPU, and report what came out.

    TRITON_INTERPRET=0 python tests/sm90_compile_check.py     # JSON lines on stdout

Triton compiles for a target named by the active driver; here a stand-in driver names
sm_90 and every launch is turned into a compile-only "warmup", so the real host code
(tile choice, descriptors, constexprs) runs on CPU tensors and ptxas produces the cubin.
For each kernel variant this prints: name, registers, spill stores/loads, and the tensor
core instructions (wgmma in PTX, QGMMA/HGMMA in SASS when cuobjdump is found).
Run by tests/test_sm90_compile.py in a subprocess (the test session interprets Triton).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _CompileOnlyDriver:
    """Names the target; launches never happen (JITFunction.run is forced to warmup)."""

    def __init__(self, arch: int = 90):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED: list[tuple[str, object]] = []
_run = JITFunction.run


def _compile_only_run(self, *args, grid, warmup, **kwargs):
    kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
    COMPILED.append((self.fn.__name__, kernel))
    return kernel


def _cuobjdump() -> str | None:
    import triton.backends.nvidia as nv

    local = Path(nv.__file__).parent / "bin" / "cuobjdump"
    return str(local) if local.exists() else shutil.which("cuobjdump")


def describe(variant: str, name: str, kernel) -> dict:
    ptx = kernel.asm["ptx"]
    out = {"variant": variant, "kernel": name,
           "wgmma": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.\w+\.(\w+\.\w+\.\w+)", ptx))),
           "regs": None, "spills": None, "sass_mma": {}}
    tool = _cuobjdump()
    if tool:
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(kernel.asm["cubin"])
        res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "--dump-sass", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        m = re.search(r"REG:(\d+)", res)
        out["regs"] = int(m.group(1)) if m else None
        out["spills"] = len(re.findall(r"\b(?:STL|LDL)\b", sass))
        out["sass_mma"] = dict(collections.Counter(re.findall(r"\b([QH]GMMA\.[\w.]+)", sass)))
    return out


def variants():
    """(variant name, thunk) pairs: each thunk runs the public host code once."""
    from solrl_kernels import nvfp4
    from solrl_kernels.attention import ops as attn_ops
    from solrl_kernels.gemm import triton_launch as tl_

    x = torch.randn(64, 3072, dtype=torch.bfloat16)
    gs = torch.tensor(0.01)
    yield "quantize_to_fp8 row", lambda: nvfp4.quantize_to_fp8(x, granularity="row", backend="triton")
    yield "quantize fp8_exact row", lambda: nvfp4.quantize(x, "fp8_exact", granularity="row", check_finite=False, backend="triton")
    yield "quantize fp8_exact search", lambda: nvfp4.quantize(x, "fp8_exact", True, "row", check_finite=False, backend="triton")
    yield "quantize rn given scale", lambda: nvfp4.quantize(x, "rn", global_scale=gs, check_finite=False, backend="triton")
    yield "quantize rn blocked", lambda: nvfp4.quantize(x, "rn", global_scale=gs, check_finite=False, scale_layout="blocked", backend="triton")
    t = nvfp4.quantize(x, "rn", check_finite=False, backend="reference")
    yield "dequantize bf16", lambda: nvfp4.dequantize(t, torch.bfloat16, backend="triton")
    yield "absmax", lambda: torch.ops.solrl_kernels.absmax(x)

    M, N, K = 256, 512, 3072
    a = torch.randn(M, K).to(torch.float8_e4m3fn)
    b = torch.randn(N, K).to(torch.float8_e4m3fn)
    w = nvfp4.quantize(torch.randn(N, K), "fp8_exact", granularity="row", backend="reference")
    sa, sb = torch.ones(M), torch.ones(N)
    with mock.patch.object(torch.cuda, "get_device_capability", lambda *a: (9, 0)):
        cfg = tl_.default_fp8_config(M * 32, N, K, torch.device("cuda"))
        pcfg = tl_.PackedGemmConfig(variant="fused", fp8=cfg)
    yield "fp8 gemm (H200 tiles)", lambda: tl_.fp8_gemm(a, b, sa, sb, None, "gelu_tanh", torch.bfloat16, cfg)
    yield "packed gemm fused", lambda: tl_.nvfp4_gemm_packed(a, w.data, w.scales, sa, sb, None, "none", torch.bfloat16, pcfg)
    yield "packed weight expansion", lambda: tl_.expand_nvfp4(w.data, w.scales)

    for prec in ("fp8", "nvfp4", "nvfp4_pv"):
        for D in (64, 128):
            q = torch.randn(1, 2, 300, D, dtype=torch.bfloat16)
            yield f"attention {prec} D{D}", lambda q=q, p=prec: attn_ops.quant_attention_triton(q, q, q, p)


def main() -> None:
    driver.set_active(_CompileOnlyDriver())
    JITFunction.run = _compile_only_run
    # the public API checks for a GPU before choosing its Triton path: say there is one
    with mock.patch("solrl_kernels.nvfp4.api.triton_available", lambda *a: True):
        for variant, thunk in variants():
            COMPILED.clear()
            try:
                thunk()
            except Exception as e:  # noqa: BLE001  reported, the test fails on it
                print(json.dumps({"variant": variant, "error": f"{type(e).__name__}: {e}"[:2000]}))
                continue
            for name, kernel in COMPILED:
                print(json.dumps(describe(variant, name, kernel)), flush=True)


if __name__ == "__main__":
    main()
