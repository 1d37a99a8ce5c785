"""`python -m solrl_kernels`: which execution paths work here, and a quick self-check.

Exit status 0 when every available path reproduces the reference bits.
"""

from __future__ import annotations

import sys

import torch

from . import nvfp4
from ._backends import backends_report, triton_available
from .nvfp4 import reference as ref


def _self_check(device: str) -> list[tuple[str, bool]]:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 256, generator=g) * torch.logspace(-3, 3, 64)[:, None]).to(torch.bfloat16)
    path = "triton" if triton_available(device) else "reference (nothing faster to check)"
    rows = []
    for rule, search in (("rn", False), ("fp8_exact", False), ("fp8_exact", True)):
        want = ref.quantize(x, rule, search, "row")
        got = nvfp4.quantize(x.to(device), rule, search, "row")
        same = (
            torch.equal(got.data.cpu(), want.data)
            and torch.equal(got.scales.view(torch.uint8).cpu(), want.scales.view(torch.uint8))
            and torch.equal(got.global_scale.cpu(), want.global_scale)
        )
        rows.append((f"quantize {rule}{' +search' if search else ''}, {device}, {path}", same))
    return rows


def main() -> int:
    print(f"solrl_kernels {__import__('solrl_kernels').__version__} | torch {torch.__version__}")
    for name, ok, why in backends_report():
        print(f"  {name:9s} {'yes' if ok else 'no ':3s}  {why}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    failed = 0
    for what, ok in _self_check(device):
        failed += not ok
        print(f"  check    {'ok ' if ok else 'FAIL'}  {what} == reference bits")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
