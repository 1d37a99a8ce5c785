"""`python -m solrl_kernels`: the backend report and the self-check it exits on."""

from __future__ import annotations

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
