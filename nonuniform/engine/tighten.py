"""Intermediate bounds by backward rows: CROWN bounds of the neurons at a nonlinear op's input.

``bm`` is a :class:`~nonuniform.engine.bounds.BoundedModel` (passed in: the engine calls this module).
Each sample gets backward rows only for *its own* neurons that need bounds (padded to the largest
count in the batch), so a sample's bounds never depend on its batch-mates. Rows are receptive-field
patches below a convolutional chain (:mod:`~nonuniform.engine.patches`), dense maps otherwise;
both may carry their own lower slopes at every ReLU below them (full alpha-CROWN,
:mod:`~nonuniform.engine.alpha`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir.network import AffineOp
from ..relax.activations import LinearRelaxation, PiecewiseLinear
from .alpha import Slopes, row_relaxations, slot_rows
from .interval import intersect_rows
from .patches import patch_bounds, patch_size

#: Intermediate bounds of convolutional chains use patch rows; False forces dense rows (the tests
#: compare both).
PATCHES = True

#: CROWN uses patch rows while every patch covers less than this fraction of its map: on
#: resnet_2b, whose last block's patches cover 7x7 of 8x8 maps, dense rows there make its bound
#: 1.2-1.5x faster (2026-12-02). Rows with alpha slopes stay patches up to the whole map: their
#: slope tables are a patch per row, not a map (resnet_2b: 4.8 GB and slower with dense tables).
PATCH_FRACTION = 0.7

#: Largest number of elements of one backward-pass tensor when computing intermediate bounds;
#: neurons are processed in chunks below it (about 1 GiB in float32).
MEMORY_BUDGET = 2**28


def uses_patches(bm, i: int, relax: dict[int, LinearRelaxation], sloped: bool = False) -> int:
    """Elements of the largest patch row below the input of ``ops[i]``; 0 for dense rows.
    ``sloped``: for rows that carry alpha slopes (patches wherever they are smaller than the map)."""
    if not PATCHES:
        return 0
    # The geometry depends on the network and on which ops below are relaxed -- the same at every
    # call of a linear method -- so it is walked once per target, not at every bound.
    key = (i, 1.0 if sloped else PATCH_FRACTION)
    cache = bm.__dict__.setdefault("_patch_sizes", {})
    if key not in cache:
        cache[key] = patch_size(bm.net, bm.net.ops[i].inputs[0], relax, key[1])
    return cache[key]


def one_sided(bm, i: int) -> bool:
    """True when a neuron whose upper bound is <= 0 needs no lower bound: a ReLU (zero on the
    whole interval: relaxation and output interval ignore the lower bound) that is the only
    consumer of its input (no other op reads the interval)."""
    op = bm.net.ops[i]
    relaxation = getattr(op, "relaxation", None)
    if not isinstance(relaxation, PiecewiseLinear) or relaxation.negative_slope != 0.0:
        return False
    src = op.inputs[0]
    return sum(src in other.inputs for other in bm.net.ops) == 1


def _order(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the indices of ``mask``'s neurons first (index order), padded to the largest
    count: (order, valid), both (batch, kmax)."""
    counts = mask.sum(1)
    kmax = int(counts.max())
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :kmax]
    return order, torch.arange(kmax, device=mask.device)[None, :] < counts[:, None]


def tighten(
    bm,
    i: int,
    l: Tensor,
    u: Tensor,
    relax: dict[int, LinearRelaxation],
    lower: Tensor,
    upper: Tensor,
    iv: dict[int, tuple[Tensor, Tensor]],
    pre: dict[int, tuple[Tensor, Tensor]],
    patch_elems: int,
    slopes: Slopes | None = None,
    src: int | None = None,
    need: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CROWN bounds for the neurons at the input of nonlinear op ``ops[i]`` that need them,
    intersected with the interval ``(l, u)``.

    ReLUs (:func:`one_sided`) go in two rounds: upper bounds first, then lower bounds only where
    the upper bound stayed positive (the same result: a ReLU with ``u <= 0`` is zero whatever
    ``l`` is). At mnist-cnn-small's certified boxes about half the neurons IBP calls unstable are
    inactive by CROWN, so this saves a quarter of the rows or more. Other ops get both bounds in
    one round. ``src`` and ``need`` (a two-input op's second input, and which of its neurons need
    bounds) default to the op's first input and its relaxation's ``needs_bounds``.
    """
    op = bm.net.ops[i]
    b = l.shape[0]
    src = op.inputs[0] if src is None else src
    need = op.relaxation.needs_bounds(l, u).reshape(b, -1) if need is None else need
    if not bool(need.any()):
        return l, u
    rows = _Rows(bm, i, src, need, relax, lower, upper, iv, pre, patch_elems, slopes)
    lf, uf = l.reshape(b, -1), u.reshape(b, -1)
    if src != op.inputs[0] or not one_sided(bm, i):  # both bounds of every needed neuron, in one round
        order, valid = _order(need)
        k = order.shape[1]
        upper_half = torch.arange(2 * k, device=l.device).expand(b, -1) >= k
        out = rows.bounds(torch.cat([order, order], 1), upper_half)
        lf, uf = intersect_rows(lf, uf, lf, uf, order, valid, out[:, :k], -out[:, k:])
        return lf.reshape(l.shape), uf.reshape(u.shape)
    order, valid = _order(need)
    lf, uf = rows.intersect(lf, uf, order, valid, torch.ones_like(valid))  # upper bounds
    still = need & (uf > 0)
    if bool(still.any()):
        order, valid = _order(still)
        lf, uf = rows.intersect(lf, uf, order, valid, torch.zeros_like(valid))  # lower bounds
    return lf.reshape(l.shape), uf.reshape(u.shape)


class _Rows:
    """Lower bounds of signed neurons ``+-z[n]`` at the input of ``ops[i]`` by backward rows."""

    def __init__(self, bm, i, src, need, relax, lower, upper, iv, pre, patch_elems, slopes) -> None:
        self.bm, self.src, self.need, self.relax = bm, src, need, relax
        self.lower, self.upper, self.iv, self.pre, self.patch_elems = lower, upper, iv, pre, patch_elems
        self.i = i
        self.slopes = slopes if slopes is not None and i in slopes.inter else None
        self.prefix: tuple | None = None

    def intersect(self, lf: Tensor, uf: Tensor, order: Tensor, valid: Tensor, neg: Tensor):
        """``(lf, uf)`` (batch, n) intersected with the bounds of the rows ``order`` (batch, K, no
        repeats): the upper bound where ``neg``, else the lower bound; ``valid`` marks real rows."""
        out = self.bounds(order, neg)
        inf = torch.full_like(out, float("inf"))
        crown_l, crown_u = torch.where(neg, -inf, out), torch.where(neg, -out, inf)
        return intersect_rows(lf, uf, lf, uf, order, valid, crown_l, crown_u)

    def bounds(self, order: Tensor, neg: Tensor) -> Tensor:
        """Lower bounds of ``-z[order]`` where ``neg``, else of ``z[order]``: (batch, K)."""
        b, n = self.need.shape
        width = self.patch_elems or self.bm.net.max_width(self.src + 1)
        chunk = max(1, MEMORY_BUDGET // (b * width))
        k = order.shape[1]
        parts = [self._bound(order[:, s : s + chunk], neg[:, s : s + chunk], n) for s in range(0, k, chunk)]
        return torch.cat(parts, 1)

    def _bound(self, order: Tensor, neg: Tensor, n: int) -> Tensor:
        bm, src = self.bm, self.src
        if self.patch_elems:  # convolutional chain below: rows as receptive-field patches
            signed = torch.where(neg, -(order + 1), order + 1)
            alphas = valid = None
            if self.slopes is not None:
                alphas, valid = slot_rows(self.slopes, self.i, order + n * neg.long())
            return patch_bounds(
                bm.net, src, signed, self.relax, self.lower, self.upper, alphas, self.pre, valid
            )
        if self.prefix is None:
            self.prefix = self._prefix(n)
        pending, bias_u, j, pos, k_u = self.prefix
        sel = pos[order] + k_u * neg.long()  # (b, K) row of each signed neuron in the prefix
        gathered = {k: _take(v[0], sel) for k, v in pending.items()}
        rel = self.relax
        if self.slopes is not None:
            rel = row_relaxations(bm.net.ops, rel, self.pre, self.slopes, self.i, order + n * neg.long())
        return bm._backward(gathered, j, rel, self.lower, self.upper, self.iv, _take(bias_u[0], sel))

    def _prefix(self, n: int) -> tuple:
        """The affine ops between ``ops[src]`` and the nonlinear ops below it do not depend on the
        sample, so they run once on the union of needed neurons (one-hot rows of both signs, batch
        axis 1); each sample gathers its rows from the result."""
        bm, src, dev, dt = self.bm, self.src, self.lower.device, self.lower.dtype
        union = self.need.any(0).nonzero().squeeze(1)
        k_u = union.numel()
        rows = torch.zeros(k_u, n, dtype=dt, device=dev)
        rows[torch.arange(k_u, device=dev), union] = 1.0
        pending: dict[int, Tensor] = {
            src: torch.cat([rows, -rows]).reshape(1, 2 * k_u, *bm.net.ops[src].out_shape)
        }
        bias_u = torch.zeros(1, 2 * k_u, dtype=dt, device=dev)
        j = src
        while j >= 0 and (j not in pending or isinstance(bm.net.ops[j], AffineOp)):
            if j in pending:
                bias_u = bm._affine_step(j, pending, bias_u)
            j -= 1
        pos = torch.zeros(n, dtype=torch.long, device=dev)
        pos[union] = torch.arange(k_u, device=dev)
        return pending, bias_u, j, pos, k_u


def _take(v: Tensor, sel: Tensor) -> Tensor:
    """``v[sel]`` for an index of any shape: ``index_select`` on the flat index, 2-4x faster than
    advanced indexing here (2026-12-03: (198, 100) rows by (32, 91), 541 -> 144 us)."""
    return v.index_select(0, sel.reshape(-1)).view(*sel.shape, *v.shape[1:])
