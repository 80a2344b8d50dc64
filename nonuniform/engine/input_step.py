"""The last step of every backward pass: the affine ops that read the box, and the box itself.

The backward pass ends with coefficients ``lam`` at the output of the input's affine chain
``g(x) = M x + m`` (a Linear, a convolution, a flatten before it, ...), and the bound is

    min over the box of lam . g(x) = lam . g(c) - |M^T lam| . r      (c, r: the box's centre, radius)

Moving ``lam`` through the chain first and concretising after (what the generic pass does) makes
the ``(batch, rows, *input)`` tensor ``M^T lam`` -- the largest of an MLP's bound -- and reads it
three times (the centre's and the radius' products, the absolute value's copy). Here the centre
term is taken at the chain's output (``g(c)``: a few hundred numbers per sample) and ``M^T lam``
is made, made absolute in place and read once, in sample chunks small enough to stay in cache.
With the gradient a hand-written backward (:class:`_Radius`) replaces autograd's chain through
those copies. Same numbers up to rounding (tested against the generic pass).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir.network import AffineOp, Network
from ..relax.rows import channels_last, flat_features, row_dot

#: Elements of ``M^T lam`` made at once (float32: 1 MiB, about an L2 cache).
CHUNK = 2**18


def input_chain(net: Network) -> list[int]:
    """The affine ops that read the model input, in order, each the only reader of the one
    before it (empty when the input has several readers or its reader is not affine)."""
    cache = net.__dict__.setdefault("_input_chain", {})
    if "chain" not in cache:
        consumers, chain, k = net.consumers(), [], -1
        while len(consumers[k]) == 1:
            j = consumers[k][0]
            op = net.ops[j]
            if not isinstance(op, AffineOp) or list(op.inputs) != [k] or j == len(net.ops) - 1:
                break
            chain.append(j)
            k = j
        cache["chain"] = chain
    return cache["chain"]


def input_bound(net: Network, chain: list[int], lam: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``min lam . g(x)`` over the boxes, ``g`` the ``chain``: lam (batch, rows, *out) -> (batch, rows)."""
    b = lower.shape[0]
    lam = lam.expand(b, *lam.shape[1:]) if lam.shape[0] != b else lam
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    gc = centre
    for j in chain:
        gc = net.ops[j].forward(gc)
    flat_lam, flat_gc = flat_features(lam, gc.unsqueeze(1))
    centre_term = row_dot(flat_lam, flat_gc.squeeze(1))
    ops = [net.ops[j] for j in reversed(chain)]
    if torch.is_grad_enabled() and (lam.requires_grad or radius.requires_grad):
        return centre_term - _Radius.apply(lam, radius, ops)
    return centre_term - _radius_term(lam, radius, ops)


def _transpose(ops: list[AffineOp], lam: Tensor) -> Tensor:
    for op in ops:
        lam = op.backward(lam)
    return lam


def _chunks(b: int, per_sample: int) -> list[slice]:
    step = max(1, CHUNK // max(1, per_sample))
    return [slice(s, s + step) for s in range(0, b, step)]


def _flat(a: Tensor, radius: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``a`` (batch, rows, *input) and ``radius`` (batch, *input) flattened in ``a``'s memory
    order (see :func:`flat_features`): (batch, rows, n), (batch, n), and whether that order
    is channels-last."""
    last = channels_last(a)
    a, r = flat_features(a, radius.unsqueeze(1), last)
    return a, r.squeeze(1), last


def _radius_term(lam: Tensor, radius: Tensor, ops: list[AffineOp]) -> Tensor:
    """``|M^T lam| . r`` (batch, rows), made and reduced in sample chunks."""
    out = []
    for c in _chunks(lam.shape[0], lam.shape[1] * radius[0].numel()):
        a, r, _ = _flat(_transpose(ops, lam[c]), radius[c])
        out.append(row_dot(a.abs_(), r))
    return torch.cat(out)


def _buffer(a: Tensor) -> Tensor:
    """One chunk's worth of ``a`` (batch, rows, n), reused for every chunk's absolute values."""
    return a.new_empty(min(a.shape[0], _chunks(a.shape[0], a[0].numel())[0].stop), *a.shape[1:])


def _abs(a: Tensor, buf: Tensor) -> Tensor:
    return torch.abs(a, out=buf[: a.shape[0]])


class _Radius(torch.autograd.Function):
    """``|M^T lam| . r`` with its gradient: ``d/dr = g |M^T lam|`` and
    ``d/dlam = M (sgn(M^T lam) r g)`` (``M x = g(x) - g(0)``, the chain forward without biases).
    Only ``A = M^T lam`` is kept; its absolute values and signs are remade chunk by chunk."""

    @staticmethod
    def forward(ctx, lam: Tensor, radius: Tensor, ops: list[AffineOp]) -> Tensor:  # type: ignore[override]
        a, r, ctx.last = _flat(_transpose(ops, lam.detach()), radius.detach())
        buf = _buffer(a)
        out = torch.cat([row_dot(_abs(a[c], buf), r[c]) for c in _chunks(a.shape[0], a[0].numel())])
        ctx.ops, ctx.lam_shape, ctx.in_shape = ops, lam.shape, radius.shape[1:]
        ctx.save_for_backward(r, a)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        r, a = ctx.saved_tensors
        need_lam, need_r = ctx.needs_input_grad[:2]
        r = r.unsqueeze(1)  # (batch, 1, n)
        x = torch.empty_like(a) if need_lam else None
        g_r = torch.empty_like(r) if need_r else None
        buf = _buffer(a)
        for c in _chunks(a.shape[0], a[0].numel()):
            if need_r:
                torch.matmul(g[c].unsqueeze(1), _abs(a[c], buf), out=g_r[c])
            if need_lam:
                torch.sgn(a[c], out=x[c]).mul_(r[c]).mul_(g[c].unsqueeze(-1))
        g_lam = None
        b, k, shape = *ctx.lam_shape[:2], ctx.in_shape
        if need_lam:
            if ctx.last:  # back from (H, W, C) order: a channels-last view, no copy
                x = x.reshape(b, k, *shape[1:], shape[0]).permute(0, 1, 4, 2, 3)
            x = x.reshape(b * k, *shape)
            zero = torch.zeros(1, *ctx.in_shape, dtype=x.dtype, device=x.device)
            for op in reversed(ctx.ops):
                x, zero = op.forward(x), op.forward(zero)
            g_lam = (x - zero).reshape(ctx.lam_shape)
        if need_r and ctx.last:
            g_r = g_r.reshape(b, *shape[1:], shape[0]).permute(0, 3, 1, 2)
        return g_lam, (g_r.reshape(b, *shape) if need_r else None), None


__all__ = ["CHUNK", "input_bound", "input_chain"]
