"""Scale layouts: row-major (rows, K/16) <-> the 128x4 "blocked" swizzle of Blackwell MMA.

The block-scaled tcgen05 MMA (CUTLASS ``Sm1xxBlockScaledConfig``, cuBLAS, torchao
``to_blocked``) reads scale factors in tiles of 128 rows x 4 scale columns. Rows and columns
are zero-padded to multiples of 128 and 4; tiles are stored row-tile-major, then
column-tile; inside a tile, row r = 32*i + j, column c sits at byte  j*16 + i*4 + c:

    tile (128 rows x 4 cols)                 stored as 32 x 16 bytes
    rows   0..31  -> i = 0 --.                 row j: [i=0: c0..c3 | i=1: c0..c3 |
    rows  32..63  -> i = 1   |  row 32*i + j          i=2: c0..c3 | i=3: c0..c3]
    rows  64..95  -> i = 2   |  goes to line j
    rows 96..127  -> i = 3 --'
"""

from __future__ import annotations

import torch


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def blocked_numel(rows: int, cols: int) -> int:
    """Number of elements of to_blocked's output for a (rows, cols) scale matrix."""
    return _ceil_div(rows, 128) * 128 * _ceil_div(cols, 4) * 4


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """(rows, cols) scale matrix -> flat swizzled tensor of blocked_numel(rows, cols) elements."""
    if scales.dim() != 2:
        raise ValueError(f"to_blocked expects a 2-D (rows, K/16) scale matrix, got {tuple(scales.shape)}")
    rows, cols = scales.shape
    n_rb, n_cb = _ceil_div(rows, 128), _ceil_div(cols, 4)
    raw = scales.view(torch.uint8) if scales.dtype == torch.float8_e4m3fn else scales
    padded = raw.new_zeros((n_rb * 128, n_cb * 4))
    padded[:rows, :cols] = raw
    blocks = padded.view(n_rb, 128, n_cb, 4).permute(0, 2, 1, 3)  # (n_rb, n_cb, 128, 4)
    out = blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1)  # [i, j, c] -> [j, i, c]
    return out.view(scales.dtype) if scales.dtype == torch.float8_e4m3fn else out


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_blocked`: flat swizzled scales -> (rows, cols)."""
    n_rb, n_cb = _ceil_div(rows, 128), _ceil_div(cols, 4)
    if blocked.numel() != n_rb * 128 * n_cb * 4:
        raise ValueError(
            f"from_blocked: {blocked.numel()} elements do not match a blocked ({rows}, {cols}) "
            f"matrix ({n_rb * 128 * n_cb * 4})"
        )
    raw = blocked.view(torch.uint8) if blocked.dtype == torch.float8_e4m3fn else blocked
    t = raw.reshape(n_rb, n_cb, 32, 4, 4).transpose(2, 3)  # [j, i, c] -> [i, j, c]
    t = t.reshape(n_rb, n_cb, 128, 4).permute(0, 2, 1, 3).reshape(n_rb * 128, n_cb * 4)
    out = t[:rows, :cols].contiguous()
    return out.view(blocked.dtype) if blocked.dtype == torch.float8_e4m3fn else out
