"""Arithmetic on backward rows shared by the relaxations and the engine: dot products over the
feature axes and ``lam * a + min(lam, 0) * b`` in few passes, in whatever memory order the rows
are stored.

Rows are ``(batch, rows, *features)``; a transposed convolution returns its rows channels-last
(:meth:`~nonuniform.ir.ops.ConvOp.backward`), and flattening those in (C, H, W) order would copy
the largest tensor of a CNN's bound, so they are read in (H, W, C) order instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def feature_dot(a: Tensor, w: Tensor) -> Tensor:
    """``(a * w)`` summed over the feature dims: a (batch, rows, *f), w broadcastable -> (batch, rows).

    A ``w`` shared by all rows (rows axis 1) is a batched matrix-vector product, which does not
    materialise the product."""
    if w.dim() == a.dim() and w.shape[1] == 1 and w.shape[2:] == a.shape[2:]:
        a, w = flat_features(a, w)
        return row_dot(a, w.squeeze(1))
    return (a * w).flatten(2).sum(-1)


def row_dot(a: Tensor, v: Tensor) -> Tensor:
    """``a @ v`` per sample: a (batch, rows, n), v (batch, n) -> (batch, rows); batch axes of size
    1 broadcast.

    Made as the row vector ``v`` times ``a`` transposed: MKL's batched matrix-vector product over
    row-major rows runs 1.7-4x slower than the same sums in this form (2026-12-03, one thread:
    (32, 91, 100) 176 -> 73 us, (8, 774, 2048) 8.5 -> 4.6 ms). The gradient is written out for
    the same reason: autograd's would be an outer product by a ``bmm`` of inner size 1 and a
    transposed ``a``-sized gradient (elementwise passes over mixed layouts are slow)."""
    if torch.is_grad_enabled() and (a.requires_grad or v.requires_grad):
        return _RowDot.apply(a, v)
    return _row_dot(a, v)


def _row_dot(a: Tensor, v: Tensor) -> Tensor:
    return torch.matmul(v.unsqueeze(-2), a.transpose(-1, -2)).squeeze(-2)


class _RowDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, v)
        return _row_dot(a, v)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        a, v = ctx.saved_tensors
        g_a = g_v = None
        if ctx.needs_input_grad[0]:
            g_a = (g.unsqueeze(-1) * v.unsqueeze(-2)).sum_to_size(a.shape)
        if ctx.needs_input_grad[1]:
            g_v = torch.matmul(g.unsqueeze(-2), a).squeeze(-2).sum_to_size(v.shape)
        return g_a, g_v


#: (batch, rows, C, H, W) -> (batch, rows, H, W, C): the order channels-last maps are stored in.
CHANNELS_LAST = (0, 1, 3, 4, 2)


def channels_last(a: Tensor) -> bool:
    """Whether ``a`` (batch, rows, C, H, W) stores each map channels-last (what the transposed
    convolutions return) and not also in the standard order (then flattening it copies)."""
    if a.dim() != 5 or a.shape[0] * a.shape[1] == 0:
        return False
    one = a[0, 0]  # the feature strides, read by is_contiguous (which ignores size-1 dims)
    return not one.is_contiguous() and one.permute(1, 2, 0).is_contiguous()


def flat_features(a: Tensor, w: Tensor, last: bool | None = None) -> tuple[Tensor, Tensor]:
    """``a`` (batch, rows, *f) and ``w`` (batch', rows', *f) flattened to (.., .., n) in ``a``'s
    memory order: a channels-last ``a`` flattens in (H, W, C) order as a view (a copy of the
    largest tensor of a CNN's bound, twice per bound, otherwise); ``w`` follows it. ``last``:
    :func:`channels_last` of ``a`` when the caller has it already."""
    if channels_last(a) if last is None else last:
        return a.permute(CHANNELS_LAST).flatten(2), w.permute(CHANNELS_LAST).flatten(2)
    return a.flatten(2), w.flatten(2)


def lower_plus(lam: Tensor, slope: Tensor, neg: Tensor, extra: Tensor) -> Tensor:
    """``lam * slope + neg * extra`` in two passes (in place when the shapes allow it)."""
    out = lam * slope
    if _fits(neg.shape, out.shape) and _fits(extra.shape, out.shape):
        return out.addcmul_(neg, extra)
    return torch.addcmul(out, neg, extra)


def _fits(shape: torch.Size, target: torch.Size) -> bool:
    """``shape`` broadcasts to ``target`` without growing it (``torch.broadcast_shapes`` is a
    Python reference implementation costing ~0.4 ms a call)."""
    if len(shape) > len(target):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(shape), reversed(target)))


__all__ = ["CHANNELS_LAST", "channels_last", "feature_dot", "flat_features", "lower_plus", "row_dot"]
