"""`python -m solrl_kernels`: the backend report and the self-check it exits on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from solrl_kernels.__main__ import _self_check
from solrl_kernels._backends import backends_report


def test_self_check_passes_here():
    """The quantizer, nvfp4_linear and attention checks on this machine's paths: the Triton
    interpreter on CPU in CI, the kernels on a GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    failed = [what for what, ok in _self_check(device) if not ok]
    assert not failed, failed


def test_backends_report_names_every_path():
    rows = backends_report()
    assert [r[0] for r in rows] == ["native", "triton", "emulated"]
    assert all(isinstance(why, str) and why for _, _, why in rows)


def test_backend_checks_are_constants_under_compile_without_the_extension():
    """The first native_ops_available() call may come from inside torch.compile (a rollout's
    first compiled forward). Dynamo must not trace _load_native's imports and registrations:
    without _C that raised InternalTorchDynamoError on the H200 (session 8). A fresh
    interpreter, so the cached result of this session's import does not hide it."""
    code = """
import sys
sys.modules["solrl_kernels._C"] = None  # `import solrl_kernels._C` raises ImportError
import torch
from solrl_kernels._backends import native_ops_available, native_unavailable_reason

@torch.compile(fullgraph=True, backend="eager")
def f(x):
    return x + 1 if native_ops_available() else x - 1

x = torch.randn(4)
assert torch.equal(f(x), x - 1)
assert "not built" in native_unavailable_reason()
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
