"""`python -m solrl_kernels`: which execution paths work here, and a quick self-check.

Exit status 0 when every available path matches its reference: the quantizer bit for bit,
nvfp4_linear and the quantized attention to within rounding.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import nvfp4
from ._backends import backends_report, triton_available
from .nvfp4 import reference as ref


def _quantize_checks(device: str) -> list[tuple[str, bool]]:
    """The quantizer on `device` against the reference, bit for bit (scale-search ties aside)."""
    from .nvfp4.testing import assert_same_nvfp4

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 256, generator=g) * torch.logspace(-3, 3, 64)[:, None]).to(torch.bfloat16)
    path = "triton" if triton_available(device) else "reference (nothing faster to check)"
    rows = []
    for rule, search in (("rn", False), ("fp8_exact", False), ("fp8_exact", True)):
        try:
            assert_same_nvfp4(nvfp4.quantize(x.to(device), rule, search, "row"),
                              ref.quantize(x, rule, search, "row"), x if search else None)
            same = True
        except AssertionError:
            same = False
        rows.append((f"quantize {rule}{' +search' if search else ''}, {device}, {path}: "
                     "== reference bits", same))
    return rows


def _gemm_check(device: str) -> tuple[str, bool]:
    """nvfp4_linear (auto backend, bf16 out) against the float64 reference: ~bf16 rounding."""
    from .gemm import nvfp4_linear, prepare_weight, resolve_backend
    from .gemm.reference import nvfp4_linear_reference, relative_error

    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 512, generator=g).to(torch.bfloat16)
    w = (torch.randn(256, 512, generator=g) * 0.02).to(torch.bfloat16)
    wq = prepare_weight(w.to(device), storage="fp8")
    err = relative_error(nvfp4_linear(x.to(device), wq).cpu(), nvfp4_linear_reference(
        x, nvfp4.quantize(w, "fp8_exact", granularity="row"), out_dtype=torch.float64))
    backend = resolve_backend(wq, torch.device(device))
    return f"nvfp4_linear, {device}, {backend}: rel. error {err:.1e} <= 5e-3", err <= 5e-3


def _attention_checks(device: str) -> list[tuple[str, bool]]:
    """Quantized attention (auto backend) against its emulated reference, DiT-like inputs."""
    from .attention import attention, attention_reference
    from .attention.accuracy import compare, make_inputs
    from .attention.ops import kernel_path_available

    q, k, v = make_inputs("dit", B=1, H=2, S=200, D=64, seed=2)
    path = "triton" if kernel_path_available(device) else "emulated (nothing faster to check)"
    # Hopper's FP8 MMAs accumulate with fewer than 24 mantissa bits: at this short S the
    # kernel sits at 1e-3 of its fp32-dot reference (H200: fp8 9.8e-4, nvfp4_pv 1.2e-3);
    # the 1e-3 of issue 5 is asserted at S ~ 4.5k by the GPU tests.
    tol = 1e-3 if path.startswith("emulated") else 2e-3
    rows = []
    for precision in ("fp8", "nvfp4", "nvfp4_pv"):
        out = attention(q.to(device), k.to(device), v.to(device), precision).cpu()
        err = compare(out, attention_reference(q, k, v, precision))["rel"]
        rows.append((f"attention {precision}, {device}, {path}: rel. error {err:.1e} <= {tol:g}",
                     err <= tol))
    return rows


def _self_check(device: str) -> list[tuple[str, bool]]:
    """[(what was checked, passed)] for every check on `device`."""
    return [*_quantize_checks(device), _gemm_check(device), *_attention_checks(device)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: no options beyond --help; the module docstring is its description."""
    parser = argparse.ArgumentParser(
        prog="python -m solrl_kernels", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the backend report and run the self-check; 1 if any check fails, else 0."""
    parse_args(argv)
    print(f"solrl_kernels {__import__('solrl_kernels').__version__} | torch {torch.__version__}")
    for name, ok, why in backends_report():
        print(f"  {name:9s} {'yes' if ok else 'no ':3s}  {why}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    failed = 0
    for what, ok in _self_check(device):
        failed += not ok
        print(f"  check    {'ok ' if ok else 'FAIL'}  {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
