"""How the fused backends read a (B, *S) tensor as B rows, shared by Triton and CUDA.

Layout. The norm of a row is invariant under permutations of its entries, and every other op
here is elementwise, so any tensor that is dense with its batch dimension outermost (contiguous,
channels_last, ...) is read in storage order with no copy: sample i is the d elements that start
at ``data_ptr + i * stride(0)``. Anything else is made contiguous first. Outputs that have the
shape of an input are allocated with ``torch.empty_like`` (which keeps dense strides) and every
input that is read beside them is brought to the same strides, so that element j of a row means
the same logical entry in all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_rows(t: Tensor) -> bool:
    """True when `t` is dense with its batch dimension outermost (see above)."""
    if t.is_contiguous():  # the common case, without walking the strides in Python
        return True
    dims = sorted((s, n) for s, n in zip(t.stride()[1:], t.shape[1:], strict=True) if n > 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return t.shape[0] == 1 or t.stride(0) == expected


def as_rows(t: Tensor) -> Tensor:
    """`t` itself when it can be read as rows in storage order, else a contiguous copy."""
    return t if is_rows(t) else t.contiguous()


def rows(t: Tensor) -> tuple[Tensor, int, int, int]:
    """``(as_rows(t), B, d, row_stride)`` in one call: the first thing every fused op asks."""
    if not t.is_contiguous():
        t = as_rows(t)
        B = t.shape[0]
        return t, B, t.numel() // B, row_stride(t)
    B = t.shape[0]
    d = t.numel() // B
    return t, B, d, d  # contiguous: stride(0) is d wherever B > 1


def row_stride(t: Tensor) -> int:
    """Distance between two samples of a rows-readable tensor (anything when B = 1)."""
    return t.stride(0) if t.shape[0] > 1 else t[0].numel()


def same_layout(a: Tensor, b: Tensor) -> bool:
    """Equal strides on every dimension that has more than one entry (`a` and `b` of one shape)."""
    if a.is_contiguous() and b.is_contiguous():
        return True
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape, strict=True) if n > 1)


def like(t: Tensor, ref: Tensor) -> Tensor:
    """`t` (its own dtype and device) with the strides of `ref`; copies only if they differ."""
    if same_layout(t, ref):
        return t
    out = torch.empty_strided(ref.shape, ref.stride(), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def rows_target(out: Tensor) -> Tensor:
    """Where a kernel writes `out`: `out` itself if rows-readable, else a contiguous buffer to copy back."""
    return out if is_rows(out) else torch.empty(out.shape, dtype=out.dtype, device=out.device)


def rows_out(t: Tensor) -> tuple[Tensor, Tensor, Tensor, int, int, int]:
    """For a kernel that reads `t` and writes an output of its shape: ``(out, target, src, B, d,
    row_stride)``, `out` = ``torch.empty_like(t)``, `target` where the kernel writes it
    (`rows_target`), `src` `t` with the target's strides (`like`), in one call."""
    out = torch.empty_like(t)
    if t.is_contiguous():  # so is `out`: nothing to bring to other strides
        B = t.shape[0]
        d = t.numel() // B
        return out, out, t, B, d, d
    target = rows_target(out)
    src = like(t, target)
    B = src.shape[0]
    return out, target, src, B, src.numel() // B, row_stride(src)


def rows_layout(t: Tensor) -> Tensor:
    """A meta tensor with the strides a kernel uses for an output like `t`: those of
    ``torch.empty_like(t)`` when rows-readable, else contiguous (see `rows_target`)."""
    return rows_target(torch.empty_like(t, device="meta"))
