"""Every Triton kernel compiles for Hopper (sm_90a) on this GPU-less machine, and the ones
that should use FP8 tensor cores do (wgmma e4m3 in PTX, QGMMA in SASS), without spills.

Runs tests/sm90_compile_check.py in a subprocess: the test session runs Triton in the
interpreter, which cannot compile. ~1 minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sm90_compile_check.py")


@pytest.fixture(scope="module")
def compiled() -> dict[str, list[dict]]:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, list[dict]] = {}
    for line in res.stdout.splitlines():
        rec = json.loads(line)
        out.setdefault(rec["variant"], []).append(rec)
    return out


def test_every_variant_compiles(compiled):
    errors = {v: r[0]["error"] for v, r in compiled.items() if "error" in r[0]}
    assert not errors, errors
    assert len(compiled) == 16, sorted(compiled)  # 7 quantization, 3 GEMM, 6 attention


@pytest.mark.parametrize("variant", ["fp8 gemm (H200 tiles)", "packed gemm fused",
                                     "attention fp8 D64", "attention fp8 D128",
                                     "attention nvfp4 D64", "attention nvfp4 D128",
                                     "attention nvfp4_pv D64", "attention nvfp4_pv D128"])
def test_fp8_tensor_cores_and_no_spills(compiled, variant):
    main = [r for r in compiled[variant] if r["wgmma"]]
    assert main, f"{variant}: no kernel issues wgmma"
    for r in main:
        assert r["wgmma"] == ["f32.e4m3.e4m3"], r
        if r["regs"] is not None:  # cuobjdump found: check the SASS too
            assert any(k.startswith("QGMMA") for k in r["sass_mma"]), r
            assert r["spills"] == 0, r


def test_no_kernel_spills(compiled):
    for r in (r for recs in compiled.values() for r in recs):
        if r.get("spills") is not None:
            assert r["spills"] == 0, r
