"""Bounds for recurrent classifiers: CROWN back-substitution through the unrolled recurrence.

A :class:`~nonuniform.modules.SequenceClassifier` is unrolled, for one input shape, into a list of
nodes in topological order, each a flat vector per sample:

* ``InputNode`` -- the features of one time step (a slice of the flattened input box);
* ``LinearNode`` -- ``sum_i W_i v_i + b`` over earlier nodes (or slices of them); ``W_i`` is a
  matrix, a scalar times the identity, or an affine op of the head (see :mod:`~nonuniform.ir.network`);
* ``ActNode`` -- a scalar activation (tanh/relu of an RNN cell, the head's activations);
* ``ProductNode`` -- ``p(x) * q(y)``, the gates of LSTM and GRU cells
  (:class:`~nonuniform.relax.activations.Product`).

The backward pass starts with ``lam`` on one node and walks the nodes in reverse order: linear
nodes pass ``lam @ W`` to their sources, nonlinear nodes pass it through their relaxation lines
or planes, and input nodes are concretised against their time step's box. Because every step's
input box is concretised where it is reached, the cost of a back-substitution is linear in the
number of steps it crosses and never carries the whole input sequence.

Intermediate bounds: every linear node that feeds a nonlinearity gets the interval propagated
from its sources, intersected with a CROWN back-substitution down to the inputs (POPQORN's
scheme), unless it depends on inputs and constants only or is a scalar multiple of one source
(then the interval is exact). The final
bound is intersected with the interval bound at the last nonlinear nodes, so no method is
looser than ``ibp``. ``alpha-crown`` replaces CROWN's fixed choices (gate-plane blend, tangent
points, ReLU slopes) by optimised parameters (:mod:`~nonuniform.recurrent.alpha`) and keeps the max with
CROWN's bound. Bidirectional layers are a second chain over the same input nodes
(:mod:`~nonuniform.recurrent.graph`).

Shapes: boxes ``(batch, *input_shape)`` read as ``(batch, time, features)``; ``lam``
``(batch or 1, specs, node size)``; bounds ``(batch, specs)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.bounds import ENGINES, BoundedModel
from ..engine.interval import intersect
from ..ir.network import AffineOp
from ..modules import SequenceClassifier
from ..relax.activations import (
    TINY_WIDTH,
    LinearRelaxation,
    PiecewiseLinear,
    Relaxation,
)
from ..relax.gates import PlaneRelaxation
from .alpha import RecurrentParams, initial_params, optimised_bound
from .cells import Stack, cell_backward, cell_stacks
from .graph import (
    ActNode,
    Cell,
    Graph,
    InputNode,
    LinearNode,
    Ref,
    _apply,
    _apply_abs,
    _transpose,
)


def _pick(L: Tensor, pos: Tensor, low: Tensor, up: Tensor) -> Tensor:
    """``L * (low if L >= 0 else up)`` elementwise, for planes ``(batch, 1, n)`` against
    ``L (batch, rows, n)``: written as ``L*up + relu(L)*(low - up)`` because a broadcasting
    ``torch.where`` is ~3x slower on CPU than this and the pos/neg split takes twice the passes."""
    return torch.addcmul(L * up, pos, low - up)


def _pick_sum(L: Tensor, pos: Tensor, low: Tensor, up: Tensor) -> Tensor:
    """``_pick(L, pos, low, up).sum(-1)`` (as matmuls it is faster, but ~1.5x slower with the
    gradient: the backward of a (rows, n) @ (n, 1) product is an outer product per sample)."""
    return _pick(L, pos, low, up).sum(-1)


@dataclass
class RecurrentState:
    """Bounds of every node's output and the relaxation of every nonlinear node."""

    lower: list[Tensor]
    upper: list[Tensor]
    relax: dict[int, LinearRelaxation | PlaneRelaxation]
    #: (node, activation) pairs relaxed as lines (the keys of alpha-CROWN's line parameters)
    lines: list[tuple[int, Relaxation]] = field(default_factory=list)
    #: stacked planes of each cell (by its last node), built when a backward pass first crosses it
    stacks: dict[int, list[Stack]] = field(default_factory=dict)

    def cell_stacks(self, cell: Cell) -> list[Stack]:
        if cell.last not in self.stacks:
            self.stacks[cell.last] = cell_stacks(cell, self.relax)
        return self.stacks[cell.last]


class RecurrentBoundedModel(BoundedModel):
    """:class:`~nonuniform.engine.bounds.BoundedModel` for a SequenceClassifier (built by it)."""

    def _build(self, model: nn.Module, input_shape: tuple[int, ...], dtype, device) -> Graph:  # type: ignore[override]
        return Graph(model, input_shape, dtype, device)

    def propagate(  # type: ignore[override]
        self, lower: Tensor, upper: Tensor, method: str = "crown", params: RecurrentParams | None = None
    ) -> RecurrentState:
        """Bounds and relaxations of every node; ``params`` (alpha-crown) replace CROWN's choices."""
        g = self.net
        xl, xu = g.steps_of(lower), g.steps_of(upper)
        lo: list[Tensor] = []
        hi: list[Tensor] = []
        relax: dict[int, LinearRelaxation | PlaneRelaxation] = {}
        mode = "fastlin" if method == "fastlin" else "crown"

        def get(r: Ref) -> tuple[Tensor, Tensor]:
            return lo[r.node][:, r.start : r.stop], hi[r.node][:, r.start : r.stop]

        # Lines of one activation over a whole node, computed once: the gates of a step are
        # slices of one node, and a few calls on (batch, 4H) cost far less than many on (batch, H).
        cache: dict[tuple[int, type], LinearRelaxation] = {}
        used: list[tuple[int, Relaxation]] = []
        state = RecurrentState(lo, hi, relax, used)  # filled in place, node by node

        def lines(r: Ref, act: Relaxation) -> LinearRelaxation:
            key = (r.node, type(act))
            if key not in cache:
                rel = params.lines(r.node, act, lo[r.node], hi[r.node]) if params is not None else None
                cache[key] = act.relax(lo[r.node], hi[r.node], mode) if rel is None else rel
                used.append((r.node, act))
            return LinearRelaxation(*(t[..., r.start : r.stop] for t in cache[key].astuple()))

        for k, node in enumerate(g.nodes):
            if isinstance(node, InputNode):
                l, u = xl[:, node.step], xu[:, node.step]
            elif isinstance(node, LinearNode):
                c = node.bias.expand(lower.shape[0], -1) if node.bias is not None else 0.0
                r = 0.0
                for ref, w in node.terms:
                    sl, su = get(ref)
                    c = c + _apply(w, (sl + su) / 2)
                    r = r + _apply_abs(w, (su - sl) / 2)
                l, u = c - r, c + r
                if method != "ibp" and node.tighten:
                    l, u = self._tighten(k, l, u, state, xl, xu)
            elif isinstance(node, ActNode):
                sl, su = get(node.src)
                l, u = node.relaxation.interval(sl, su)
                if method != "ibp":
                    relax[k] = lines(node.src, node.relaxation)
            else:
                bounds = (*get(node.x), *get(node.y))
                l, u = node.product.interval(*bounds)
                if method != "ibp":
                    rp, rq = lines(node.x, node.product.p), lines(node.y, node.product.q)
                    weights = params.plane_weights(k) if params is not None else None
                    relax[k] = node.product.relax(*bounds, mode, rp, rq, weights)
            lo.append(l)
            hi.append(u)
        return state

    def _tighten(self, k, l, u, state, xl, xu) -> tuple[Tensor, Tensor]:
        """Back-substitute from linear node k to the inputs, for the neurons that need it."""
        g = self.net
        relu_only = all(
            isinstance(g.nodes[c], ActNode) and isinstance(g.nodes[c].relaxation, PiecewiseLinear)
            for c in g.nodes[k].consumers
        )
        need = ((l < 0) & (u > 0)) if relu_only else (u - l) > TINY_WIDTH
        # Rows for the union over the batch (one shared backward pass), but each sample keeps
        # the CROWN bound only where *it* needs one: its result never depends on its batch-mates.
        sel = need.any(0).nonzero().squeeze(1)
        m = sel.numel()
        if m == 0:
            return l, u
        rows = torch.zeros(m, l.shape[1], dtype=l.dtype, device=l.device)
        rows[torch.arange(m, device=l.device), sel] = 1.0
        lam = torch.cat([rows, -rows]).unsqueeze(0)
        out = self._backward(k, lam, state, xl, xu, linear=True)
        new_l, new_u = intersect(l[:, sel], u[:, sel], out[:, :m], -out[:, m:], where=need[:, sel])
        return l.index_copy(1, sel, new_l), u.index_copy(1, sel, new_u)

    def _backward(
        self, start: int, lam: Tensor, state: RecurrentState, xl: Tensor, xu: Tensor, linear: bool
    ) -> Tensor:
        """Lower bound of ``lam . v_start`` over the box. With ``linear=False`` nonlinear nodes
        are not relaxed but concretised against their interval (the interval bound)."""
        g = self.net
        # Pending coefficients per node, by slice: gates push (batch, specs, H) pieces into a
        # (batch, specs, 4H) node, assembled once when the node is reached (no zero padding).
        parts: dict[int, dict[tuple[int, int], Tensor]] = {start: {(0, g.nodes[start].size): lam}}
        total = torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)

        def push(r: Ref, v: Tensor) -> None:
            pending = parts.setdefault(r.node, {})
            key = (r.start, r.stop)
            pending[key] = pending[key] + v if key in pending else v

        def assemble(k: int) -> Tensor | None:
            pending = parts.pop(k, None)
            if not pending:
                return None
            size = g.nodes[k].size
            if list(pending) == [(0, size)]:
                return pending[(0, size)]
            full = pending.pop((0, size), None)
            pieces, at = [], 0
            for (a, b), v in sorted(pending.items()):
                if a < at:  # overlapping slices (not built by this module): pad and add
                    v = F.pad(v, (a, size - b))
                    full = v if full is None else full + v
                    continue
                if a > at:
                    pieces.append(v.new_zeros(*v.shape[:-1], a - at))
                pieces.append(v)
                at = b
            if at < size:
                pieces.append(pieces[-1].new_zeros(*pieces[-1].shape[:-1], size - at))
            if len({p.shape[0] for p in pieces}) > 1:  # batch axis 1 next to batch axis b
                n = max(p.shape[0] for p in pieces)
                pieces = [p.expand(n, *p.shape[1:]) for p in pieces]
            out = torch.cat(pieces, -1)
            return out if full is None else full + out

        def concretise(L: Tensor, c: Tensor, rad: Tensor) -> Tensor:  # c, rad: (batch, n, 1)
            return (L @ c - L.abs() @ rad).squeeze(-1)

        # The input box's centre and radius per step, once per pass (not once per step reached).
        x_mid, x_rad = ((xu + xl) / 2).unsqueeze(-1), ((xu - xl) / 2).unsqueeze(-1)

        k = start + 1
        while k > 0:
            k -= 1
            cell = g.cells.get(k) if linear else None
            if cell is not None and start >= k:  # the whole step at once (recurrent_cells)
                L_h, L_c = assemble(k), assemble(cell.c) if cell.kind == "lstm" else None
                if L_h is not None or L_c is not None:
                    total = total + cell_backward(cell, state.cell_stacks(cell), L_h, L_c, push)
                k = cell.first
                continue
            L = assemble(k)
            if L is None:
                continue
            node = g.nodes[k]
            if isinstance(node, InputNode):
                total = total + concretise(L, x_mid[:, node.step], x_rad[:, node.step])
            elif isinstance(node, LinearNode):
                if node.bias is not None:
                    total = total + L @ node.bias
                for r, w in node.terms:
                    if isinstance(w, AffineOp):
                        term = w.bias_term(L)
                        if term is not None:
                            total = total + term
                    push(r, _transpose(w, L))
            elif not linear:
                l, u = state.lower[k].unsqueeze(-1), state.upper[k].unsqueeze(-1)
                total = total + concretise(L, (u + l) / 2, (u - l) / 2)
            else:
                rel = state.relax[k]
                pos = L.clamp(min=0)
                if isinstance(rel, LinearRelaxation):
                    total = total + _pick_sum(L, pos, rel.lower_bias, rel.upper_bias)
                    push(node.src, _pick(L, pos, rel.lower_slope, rel.upper_slope))
                else:
                    total = total + _pick_sum(L, pos, rel.lc, rel.uc)
                    push(node.x, _pick(L, pos, rel.lx, rel.ux))
                    push(node.y, _pick(L, pos, rel.ly, rel.uy))
        return total

    def final_bound(self, lam: Tensor, state: RecurrentState, lower: Tensor, upper: Tensor) -> Tensor:
        """Lower bound of ``lam @ f`` from a propagated state (the linear relaxation's)."""
        g = self.net
        return self._backward(g.output, lam, state, g.steps_of(lower), g.steps_of(upper), linear=True)

    def _lower(self, lam, lower, upper, method, alpha_steps, alpha_lr, state, slopes=None) -> Tensor:  # type: ignore[override]
        joint = method == "alpha-crown" and slopes is not None and alpha_steps <= 0
        if state is None:
            # A single pass with given parameters (the box optimiser's joint mode) needs no CROWN
            # pass beside it: any parameters give a sound bound. That halves its cost.
            state = self.propagate(
                lower, upper, "crown" if method == "alpha-crown" else method, params=slopes if joint else None
            )
        g = self.net
        xl, xu = g.steps_of(lower), g.steps_of(upper)
        out = self._backward(g.output, lam, state, xl, xu, linear=False)
        if method != "ibp":
            out = torch.maximum(out, self.final_bound(lam, state, lower, upper))
        if method == "alpha-crown" and alpha_steps > 0 and not joint:  # never looser than CROWN: the max
            out = torch.maximum(out, optimised_bound(self, lam, lower, upper, alpha_steps, alpha_lr, slopes))
        return out

    def start_slopes(self, lower: Tensor, upper: Tensor, specs: int) -> RecurrentParams:  # type: ignore[override]
        return initial_params(self.propagate(lower, upper, "crown"))


ENGINES[SequenceClassifier] = RecurrentBoundedModel

__all__ = ["Graph", "RecurrentBoundedModel", "RecurrentState", "SequenceClassifier"]
