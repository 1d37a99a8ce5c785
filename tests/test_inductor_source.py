"""torch.compile pastes the source of every user Triton kernel it calls (with the helpers and
globals it reaches) into a '''-quoted string of its generated module. A backslash escape in
that source (a "\\n" in a PTX string, say) turns into a real character there and breaks the
module: the H200 saw `SyntaxError: unterminated string literal` from Inductor when the
quantizer's PTX constant spanned lines. CPU test: rebuild the source Inductor would embed
for each of our kernels, embed it the same way, and check it comes back intact. It runs in
a subprocess with the interpreter off (interpreted kernels are not JITFunctions)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

MODULES = ("solrl_kernels.nvfp4.kernels", "solrl_kernels.gemm.triton_kernels",
           "solrl_kernels.attention.kernels")


def check_all() -> list[str]:
    """Names of the kernels checked; raises on the first broken one."""
    import triton
    from torch._inductor.codegen.wrapper import (
        user_defined_triton_kernel_transitive_closure_source_code as closure_source,
    )

    checked = []
    for name in MODULES:
        for attr, fn in sorted(vars(importlib.import_module(name)).items()):
            if not (isinstance(fn, triton.runtime.jit.JITFunction) and attr.endswith("_kernel")):
                continue
            src = closure_source(fn)
            embedded: dict = {}
            exec(compile(f"src = '''\n{src}\n'''", "<inductor module>", "exec"), embedded)
            assert embedded["src"].strip("\n") == src.strip("\n"), f"{attr}: escapes in source"
            compile(src, attr, "exec")
            checked.append(attr)
    return checked


def test_kernel_sources_survive_inductor_embedding():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=f"{root}{os.pathsep}{root / 'tests'}")
    out = subprocess.run([sys.executable, "-c", "import test_inductor_source as t; "
                          "print(' '.join(t.check_all()))"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    checked = out.stdout.split()
    assert {"nvfp4_quantize_kernel", "attn_fwd_kernel", "fp8_gemm_tma_kernel"} <= set(checked)
