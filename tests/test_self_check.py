"""`python -m solrl_kernels`: the backend report and the self-check it exits on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solrl_kernels.__main__ import _self_check, main
from solrl_kernels._backends import backends_report

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with this checkout on the path: _load_native's cached
    result and the modules this session imported do not leak into it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)


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
    res = _run_python(code)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("solrl_kernels._C") is not None,
                    reason="solrl_kernels._C is built in this checkout")
def test_native_report_says_not_built_without_the_extension():
    """No _C file at all (this checkout, unbuilt): "not built" and how to build it, not
    "stale" (what _native_ops' missing-op RuntimeError used to be reported as)."""
    native = dict((name, (ok, why)) for name, ok, why in backends_report())["native"]
    assert native[0] is False
    assert "not built" in native[1] and "pip install --no-build-isolation ." in native[1]
    assert "stale" not in native[1]


# How solrl_kernels._C is made to look in a fresh interpreter, before solrl_kernels is imported.
_NATIVE_SETUPS = {
    # absent: no finder has it, whether or not this checkout built one
    "not built": """
import importlib.abc
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "solrl_kernels._C":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
""",
    # present but unloadable, like a .so built against another torch (undefined symbol)
    "failed to load": """
import importlib.abc
class Unloadable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "solrl_kernels._C":
            raise ImportError("_C.so: undefined symbol: _ZN3c104impl")
sys.meta_path.insert(0, Unloadable())
""",
    # loads, but registers none of the ops _native_ops gives fakes for: an old build
    "stale": """
import types
sys.modules["solrl_kernels._C"] = types.ModuleType("solrl_kernels._C")
""",
}


@pytest.mark.parametrize("expected", list(_NATIVE_SETUPS))
def test_native_report_names_the_cause(expected):
    """Each way _C can be unusable gets its own reason in the report (and only that one)."""
    code = f"""
import sys
{_NATIVE_SETUPS[expected]}
from solrl_kernels._backends import backends_report
ok, why = {{name: (ok, why) for name, ok, why in backends_report()}}["native"]
assert not ok
print(why)
"""
    res = _run_python(code)
    assert res.returncode == 0, res.stderr[-3000:]
    why = res.stdout.strip()
    assert why.startswith(f"solrl_kernels._C is {expected}") or \
        why.startswith(f"solrl_kernels._C {expected}"), why
    assert all(other not in why for other in _NATIVE_SETUPS if other != expected), why


def test_help_prints_usage_and_runs_no_checks(monkeypatch, capsys):
    """`python -m solrl_kernels --help`: the usage and description, exit 0, no self-check."""
    monkeypatch.setattr(sys, "argv", ["python -m solrl_kernels", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m solrl_kernels")
    assert "which execution paths work here" in out
    assert "| torch" not in out and "  check" not in out  # no report, no checks


def test_unknown_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
