"""Equality checks for tests and benchmarks: bit equality, except where a scale search ties.

With ``scale_search=True`` each block keeps the candidate scale of least squared error. Two
implementations sum a block's 16 squared errors in different orders (the reference in torch,
the kernels in a reduction tree), so where two candidates' errors agree to fp32 rounding they
may keep different ones; either is a documented minimum. These checks accept exactly that:
differing blocks must be rare (< 1%) and their squared errors equal to 1e-5 relative.
"""

from __future__ import annotations

import torch

from . import reference as ref
from .tensor import NVFP4Tensor

MAX_TIE_FRACTION = 0.01


def _block_sse(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per 16-block squared error of dequantized values (..., K) against x, in float64."""
    d = values.cpu().double() - x.cpu().double()
    return (d.reshape(-1, x.shape[-1] // 16, 16) ** 2).sum(-1)


def _tie_mask(va: torch.Tensor, vb: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """(rows, K/16) bool: blocks whose values differ. Raises unless all are ties (x given)."""
    K = va.shape[-1]
    diff = (va.cpu().reshape(-1, K // 16, 16) != vb.cpu().reshape(-1, K // 16, 16)).any(-1)
    if not diff.any():
        return diff
    where = diff.nonzero()[:5].tolist()
    if x is None:
        raise AssertionError(f"{int(diff.sum())} blocks differ, first at {where}")
    frac = diff.float().mean().item()
    assert frac < MAX_TIE_FRACTION, f"{int(diff.sum())} blocks ({frac:.2%}) chose another scale"
    ea, eb = _block_sse(va, x)[diff], _block_sse(vb, x)[diff]
    assert torch.allclose(ea, eb, rtol=1e-5, atol=1e-30), (
        f"blocks {where} differ and their squared errors do not tie: {ea[:5]} vs {eb[:5]}")
    return diff


def assert_same_nvfp4(a: NVFP4Tensor, b: NVFP4Tensor, x: torch.Tensor | None = None) -> None:
    """a and b hold the same bits (global scale, block scales, codes). With x (the input of a
    scale search), blocks may differ where their squared errors tie (module doc)."""
    assert torch.equal(a.global_scale.cpu(), b.global_scale.cpu()), (a.global_scale, b.global_scale)
    a, b = a.to("cpu"), b.to("cpu")
    ties = _tie_mask(ref.dequantize(a).reshape(-1, a.K), ref.dequantize(b).reshape(-1, b.K),
                     None if x is None else x.reshape(-1, a.K))
    sa = ref.row_major_scales(a).view(torch.uint8).reshape(ties.shape)
    sb = ref.row_major_scales(b).view(torch.uint8).reshape(ties.shape)
    ca = ref.unpack(a.data).reshape(*ties.shape, 16)
    cb = ref.unpack(b.data).reshape(*ties.shape, 16)
    keep = ~ties
    if not torch.equal(sa[keep], sb[keep]):
        bad = ((sa != sb) & keep).nonzero()[:5].tolist()
        raise AssertionError(f"block scales differ at {bad}")
    assert torch.equal(ca[keep], cb[keep]), "e2m1 codes differ"


def assert_same_fp8_container(v: torch.Tensor, gs: torch.Tensor, v_ref: torch.Tensor,
                              gs_ref: torch.Tensor, x: torch.Tensor | None = None) -> None:
    """E4M3 containers (..., K) with fp32 scales hold the same bits; ties as above."""
    assert torch.equal(gs.cpu(), gs_ref.cpu()), (gs, gs_ref)
    K = v.shape[-1]
    g = gs.cpu().reshape(-1, 1) if gs.numel() > 1 else gs.cpu()
    va = v.cpu().float().reshape(-1, K) * g
    vb = v_ref.cpu().float().reshape(-1, K) * g
    ties = _tie_mask(va, vb, None if x is None else x.reshape(-1, K))
    bits_a = v.cpu().view(torch.uint8).reshape(*ties.shape, 16)
    bits_b = v_ref.cpu().view(torch.uint8).reshape(*ties.shape, 16)
    assert torch.equal(bits_a[~ties], bits_b[~ties]), "E4M3 container bits differ"
