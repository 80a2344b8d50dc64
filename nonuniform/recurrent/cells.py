"""One fused backward step through a whole recurrent cell (issue 21: bound speed).

The node-by-node walk of :meth:`~nonuniform.recurrent.engine.RecurrentBoundedModel._backward` crosses an
LSTM step as five nodes and about sixty small tensor operations (three plane selections per
product, slices, a concatenation of the four gates, two matrix products and a bias product), and a
bound crosses ~800 steps (every intermediate pass goes back to the first step). Here one step is
a handful of operations on stacked tensors, with exactly the same arithmetic:

* the planes of a cell's products are stacked once per propagated state as
  ``up (K, batch, 1, H)`` and ``low - up``, so that one ``addcmul`` selects, for every row, the
  lower plane where the coefficient is >= 0 and the upper one elsewhere, for all K coefficients
  (the two products of an LSTM's ``c = f*c' + i*g`` share their coefficient, so they are one
  selection of five: i, f, g, c', constant);
* the input, previous-state and bias weights of a step are one matrix ``[W_x | W_h | b]``
  (:attr:`~nonuniform.recurrent.graph.Cell.weight`), applied by one product to all gate
  coefficients at once.

Only cells up to ``FUSED_MAX_HIDDEN`` (16) wide are fused: the gain comes from fewer operations,
and wider cells are bound by data volume, where the fused step's larger temporaries cost as
much as they save (measured in experiments/results/recurrent.md, commit d4b7093).

Shapes: coefficients ``L (batch or 1, rows, H)``; a selection is K tensors ``(batch, rows, H)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..relax.gates import PlaneRelaxation
from .graph import Cell, Ref

#: (up, low - up), each ``(K, batch, 1, H)``
Stack = tuple[Tensor, Tensor]


def _stack(pairs: list[tuple[Tensor, Tensor]]) -> Stack:
    """Stacks ``(low, up)`` pairs of ``(batch, 1, H)`` planes into :data:`Stack`."""
    up = torch.stack([u for _, u in pairs])
    return up, torch.stack([lo for lo, _ in pairs]) - up


def _x(p: PlaneRelaxation) -> tuple[Tensor, Tensor]:
    return p.lx, p.ux


def _y(p: PlaneRelaxation) -> tuple[Tensor, Tensor]:
    return p.ly, p.uy


def _c(*planes: PlaneRelaxation) -> tuple[Tensor, Tensor]:  # type: ignore[return-value]
    """The constants of products that share one coefficient: a sum (the selection is linear)."""
    return sum(p.lc for p in planes), sum(p.uc for p in planes)


def cell_stacks(cell: Cell, relax: dict) -> list[Stack]:
    """The cell's planes in the order its kernel reads them (see :func:`cell_backward`)."""
    rels = [relax[k] for k in cell.relaxed]
    if cell.kind == "lstm":  # h = o * tanh(c); c = f * c' + i * g
        h, fc, ig = rels
        return [_stack([_x(h), _y(h), _c(h)]), _stack([_x(ig), _x(fc), _y(ig), _y(fc), _c(fc, ig)])]
    # GRU: h = sigmoid(-z) * tanh(n) + sigmoid(z) * h'; n = W x + r * hn
    zn, zh, rhn = rels
    return [_stack([_x(zh), _x(zn), _y(zn), _y(zh), _c(zn, zh)]), _stack([_x(rhn), _y(rhn), _c(rhn)])]


def _select(L: Tensor, stack: Stack) -> tuple[Tensor, ...]:
    """``L * (low if L >= 0 else up)`` for each of the K stacked planes: K ``(batch, rows, H)``.
    (K first: a broadcast over a middle axis is ~2x slower on CPU than over the first.)"""
    up, diff = stack
    return torch.addcmul(L * up, L.clamp(min=0), diff).unbind(0)


def cell_backward(
    cell: Cell,
    stacks: list[Stack],
    L_h: Tensor | None,
    L_c: Tensor | None,
    push: Callable[[Ref, Tensor], None],
) -> Tensor:
    """Pushes the coefficients on ``h_t`` (and ``c_t``) back to the cell's sources; returns the
    constant term ``(batch, rows)``. At least one of ``L_h``, ``L_c`` is given."""
    if cell.kind == "lstm":
        const = 0.0
        L_o = None
        if L_h is not None:
            L_o, L_ch, c_h = _select(L_h, stacks[0])
            const = c_h.sum(-1)
            L_c = L_ch if L_c is None else L_c + L_ch
        L_i, L_f, L_g, L_cp, c_c = _select(L_c, stacks[1])
        push(cell.c_prev, L_cp)  # type: ignore[arg-type]
        gates = torch.cat([L_i, L_f, L_g] if L_o is None else [L_i, L_f, L_g, L_o], -1)
        const = const + c_c.sum(-1)
    else:  # GRU
        L_zh, L_negz, L_n, L_hp, c_h = _select(L_h, stacks[0])
        L_r, L_hn, c_n = _select(L_n, stacks[1])
        push(cell.h_prev, L_hp)
        gates = torch.cat([L_r, L_zh - L_negz, L_n, L_hn], -1)
        const = c_h.sum(-1) + c_n.sum(-1)
    w = cell.weight if gates.shape[-1] == cell.weight.shape[0] else cell.weight[: gates.shape[-1]]
    return const + _push_out(cell, gates @ w, push)


def _push_out(cell: Cell, out: Tensor, push: Callable[[Ref, Tensor], None]) -> Tensor:
    """Pushes ``[L_x | L_h' | constant] = gates @ cell.weight`` to the step's input and h';
    returns the constant."""
    at = 0
    for ref in cell.inputs:
        size = ref.stop - ref.start
        push(ref, out[..., at : at + size])
        at += size
    push(cell.h_prev, out[..., at:-1])
    return out[..., -1]


__all__ = ["Stack", "cell_backward", "cell_stacks"]
