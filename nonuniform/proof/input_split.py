"""Branch-and-bound on the input box: the complete method for networks with few inputs.

With five inputs (ACAS Xu) or eight (control policies) the box itself is the thing to split:
halving one input dimension shrinks every intermediate bound of the network at once, which
ReLU splitting cannot do. A leaf is a sub-box; it is *refuted* when every output case (an AND of
atoms ``c . y >= d``, :class:`~nonuniform.engine.specs.OutputCases`) has an atom that is
impossible on it, i.e. a CROWN lower bound of ``-c . y`` exceeds ``-d``. Leaves cover the box, so
refuting every leaf proves the property (``unsat``) on the box.

Why it is sound as it stands: leaves are bounded in float64 by the fresh non-differentiable
CROWN pass of :class:`~nonuniform.engine.bounds.BoundedModel` (the float64 proof the package
asks for), with a safety margin :data:`MARGIN` on every atom; the split halves cover their
parent exactly (the midpoint belongs to both).

Branching (``branching``): ``"sb"`` scores dimension ``i`` by ``|a_i| (u_i - l_i)`` where ``a``
is the linear lower bound's input coefficient of the most promising atom of the leaf's worst
case -- what halving ``i`` would take off the concretisation -- plus a small share of the
relative width (:data:`WIDTH_WEIGHT`) so that no dimension starves; ``"widest"`` halves the widest dimension
relative to the root box (the simple rule it is measured against in ``experiments/vnnlib.py``).

Every bounded leaf also offers two candidate counterexamples (its centre and the minimiser of
the linear bound), evaluated in one batched forward pass: the scheduler checks them and feeds
the best ones to the attacks as starting points.

Shapes: a leaf batch is ``(m, *input_shape)``; the frontier is kept flat ``(N, n_inputs)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..engine.bounds import BoundedModel
from ..engine.specs import OutputCases
from .combine import combined_gap
from .lp_leaf import ReluChainLP, pre_lists

#: An atom is refuted on a leaf only when its bound clears the threshold by this much.
MARGIN = 1e-6
BRANCHINGS = ("sb", "widest", "fsb")
#: sb's share of relative width. Measured on 7 ACAS Xu instances at 30 s each (2026-12-02): 0.1
#: drilled 77 halvings deep and left 3 open; 0.5: 74 s in all, 0.7-0.8: 21-22 s, 1.0: 31 s,
#: 2.0: 122 s. The optimum is narrow: a scoring that bounds the candidate halves would be sturdier.
WIDTH_WEIGHT = 0.75
FSB_WIDTH = 0.05
#: Most of a search's time the LP leaves may take (see :mod:`~nonuniform.proof.lp_leaf`).
LP_SHARE = 0.5
#: Most of a search's time ReLU splitting inside its leaves may take (``relu``); a quarter of it
#: while it has less than a batch queued (fuller batches: see ``LeafReluSplit.full``).
RELU_SHARE = 0.5
#: A leaf that ReLU splitting gave back is not handed over again for this many halvings.
RELU_HOLD = 2
#: With ReLU splitting on, sb never halves a dimension narrower than this share of the leaf's
#: widest (relative to the root box). Without it sb drilled one input of ACAS Xu 4_2 prop 2's
#: leaves to 2^-100 while ~112 ReLUs stayed unstable, and the frontier grew from 1,000 to 11,700
#: leaves; with it and ReLU splitting the instance is proved (docs/NOTES.md).
RELU_DRILL_CAP = 1 / 64


class LeafHandoff(Protocol):
    """Where open leaves can go instead of being halved
    (:class:`~nonuniform.proof.leaf_relu.LeafReluSplit`)."""

    empty: bool
    full: bool  # it has a whole batch of work queued (it waits for one while input splitting has leaves)
    open_volume: float  # the share of the root box its leaves still cover

    def eligible(self, state, idx: Tensor, depth: Tensor, gap: Tensor) -> Tensor: ...

    def add(self, lo: Tensor, hi: Tensor, depth: Tensor, pre: dict) -> None: ...

    def step(self) -> int: ...

    def take_returned(self) -> list: ...


@dataclass
class SplitStats:
    """What one input-splitting search did (for the result's details)."""

    leaves: int = 0  # sub-boxes bounded
    open: int = 0  # sub-boxes still to do (the frontier and those ReLU splitting holds)
    depth: int = 0  # most halvings of one leaf
    scored: int = 0  # candidate halves bounded to choose a split (fsb)
    lp: int = 0  # leaves given the LP relaxation
    lp_refuted: int = 0  # ... and refuted by it
    relu: int = 0  # leaves handed to ReLU splitting
    relu_refuted: int = 0  # ... and refuted by it (the rest came back)


class InputSplit:
    """A resumable input-splitting search on one box (see the module docstring).

    ``lower``/``upper``: (1, *input_shape) float64; ``cases``: the output region to refute.
    Call :meth:`run` with a deadline as many times as the scheduler wishes; it keeps its frontier.
    """

    def __init__(
        self,
        bm: BoundedModel,
        lower: Tensor,
        upper: Tensor,
        cases: OutputCases,
        batch: int = 1024,
        branching: str = "sb",
        max_leaves: int = 4_000_000,
        lp: ReluChainLP | None = None,
        relu: LeafHandoff | None = None,
    ) -> None:
        if bm.net.dtype != torch.float64:
            raise ValueError("InputSplit needs a float64 BoundedModel: its leaves are the final proof")
        if branching not in BRANCHINGS:
            raise ValueError(f"branching must be one of {BRANCHINGS}, got {branching!r}")
        self.bm, self.cases, self.batch, self.branching = bm, cases, batch, branching
        self.shape = tuple(lower.shape[1:])
        self.lo, self.hi = lower.flatten(1).clone(), upper.flatten(1).clone()
        self.depth = torch.zeros(1, dtype=torch.long)
        self.hold = torch.zeros(1, dtype=torch.long)  # per leaf: not handed to ``relu`` below this depth
        self.prior: dict[int, tuple[Tensor, Tensor]] = {}  # per leaf: its parent's op input bounds
        self.root_width = (self.hi - self.lo).clamp(min=1e-30)[0]
        self.spec = (-cases.rows)[None].to(torch.float64)  # lower bounds of -c . y
        self.threshold = (-cases.offsets).to(torch.float64) + MARGIN
        self.max_leaves = max_leaves
        self.lp = lp  # open leaves, shallowest first, get the LP relaxation while it takes < LP_SHARE
        self.relu = relu  # open leaves with few unstable ReLUs get ReLU splitting, within RELU_SHARE
        self.seconds = self.lp_seconds = self.relu_seconds = 0.0
        self.stats = SplitStats(open=1)
        self.hints = torch.empty(0, *self.shape, dtype=torch.float64)
        self.best_hint = float("inf")

    @property
    def proved(self) -> bool:
        return self.lo.shape[0] == 0 and (self.relu is None or self.relu.empty)

    @property
    def open_volume(self) -> float:
        """Share of the box not yet proved: open leaves and those ReLU splitting works on (a leaf
        ``d`` halvings deep is ``2^-d`` of it). How :class:`~nonuniform.proof.portfolio.Portfolio`
        sees progress."""
        own = float(torch.exp2(-self.depth.double()).sum()) if self.depth.numel() else 0.0
        return own + (self.relu.open_volume if self.relu is not None else 0.0)

    @property
    def exhausted(self) -> bool:
        """The leaf budget is spent (memory), or a leaf can no longer be halved in float64."""
        return self.stats.leaves >= self.max_leaves or self._stuck

    _stuck = False

    def run(self, deadline: float) -> Tensor | None:
        """Bound and split leaves until ``deadline``, the proof, or a candidate counterexample:
        returns the input point (1, *input_shape) where some case holds in float64, else None."""
        while not self.proved and time.perf_counter() < deadline and not self.exhausted:
            start = time.perf_counter()
            if (
                self.relu is not None
                and not self.relu.empty
                and (
                    not self.lo.shape[0]
                    or self.relu_seconds
                    < RELU_SHARE * (self.seconds + 1e-3) * (1 if self.relu.full else 0.25)
                )
            ):
                self._relu_step()
                self.relu_seconds += time.perf_counter() - start
                self.seconds += time.perf_counter() - start
                continue
            found = self._step(deadline)
            self.seconds += time.perf_counter() - start
            if found is not None:
                return found
        self.stats.open = int(self.lo.shape[0]) + (len(self.relu.owners) if self.relu is not None else 0)
        return None

    def _step(self, deadline: float = float("inf")) -> Tensor | None:
        k = min(self.batch, self.lo.shape[0])
        lo, hi, depth, hold = self.lo[-k:], self.hi[-k:], self.depth[-k:], self.hold[-k:]
        prior = {i: (l[-k:], u[-k:]) for i, (l, u) in self.prior.items()}
        self.lo, self.hi, self.depth, self.hold = self.lo[:-k], self.hi[:-k], self.depth[:-k], self.hold[:-k]
        self.prior = {i: (l[:-k], u[:-k]) for i, (l, u) in self.prior.items()}
        m = lo.shape[0]
        case_gap, gap, a, state = self._bound(lo, hi, prior)
        worst = case_gap.min(1)  # the leaf's least refuted case
        self.stats.leaves += m
        open_ = ~(worst.values > 0)  # a NaN bound (overflow) refutes nothing
        if self.lp is not None and bool(open_.any()):
            open_ &= ~self._lp_refuted(lo, hi, depth, state, case_gap, open_, deadline)
        if not open_.any():
            return None
        # candidate counterexamples: centres and the minimisers of the chosen atoms' linear bounds
        idx = open_.nonzero().squeeze(1)
        atoms = self.cases.index[worst.indices[idx]]  # (o, width): the worst case's atoms
        atom = atoms.gather(1, gap[idx].gather(1, atoms).argmax(1, keepdim=True)).squeeze(1)
        coef = a[idx, atom]  # (o, n)
        corner = torch.where(coef > 0, lo[idx], hi[idx])
        # the open leaves go back (halved) before a candidate is returned: the caller may find
        # that it fails the float32 check and go on, and the proof must still cover them
        points = torch.cat([(lo[idx] + hi[idx]) / 2, corner])
        if self.relu is not None:  # leaves with few unstable ReLUs: ReLU splitting instead of halving
            hand = self.relu.eligible(state, idx, depth[idx], worst.values[idx]) & (depth[idx] >= hold[idx])
            if bool(hand.any()):
                h = idx[hand]
                self.relu.add(lo[h], hi[h], depth[h], {i: (l[h], u[h]) for i, (l, u) in state.pre.items()})
                self.stats.relu += int(hand.sum())
                idx, coef = idx[~hand], coef[~hand]
            if not idx.numel():
                return self._check(points)
        pre = {i: (l[idx], u[idx]) for i, (l, u) in state.pre.items()}
        if self.branching == "fsb":
            dim = self._strong(lo[idx], hi[idx], pre)
        else:
            dim = self._choose(coef, lo[idx], hi[idx])
        self._split(lo[idx], hi[idx], depth[idx], pre, dim, hold[idx])
        return self._check(points)

    def _relu_step(self) -> None:
        """One batch of ReLU splitting; leaves it gives back return to the frontier, held."""
        self.relu.step()
        back = self.relu.take_returned()
        self.stats.relu_refuted = self.relu.refuted
        if back:
            pre = {i: (torch.cat([o.pre[i][0] for o in back]), torch.cat([o.pre[i][1] for o in back]))
                   for i in back[0].pre}  # fmt: skip
            depth = torch.cat([o.depth for o in back])
            self._push([torch.cat([o.lo for o in back])], [torch.cat([o.hi for o in back])], [depth], pre, 1,
                       [depth + RELU_HOLD])  # fmt: skip

    def _bound(self, lo: Tensor, hi: Tensor, prior: dict) -> tuple[Tensor, Tensor, Tensor, object]:
        """CROWN on flat leaves: (case gaps (m, cases), atom gaps (m, atoms), input coefficients
        (m, atoms, n), the bound state). A gap > 0 refutes its atom or case on the leaf."""
        m = lo.shape[0]
        box_lo, box_hi = lo.reshape(m, *self.shape), hi.reshape(m, *self.shape)
        spec = self.spec.expand(m, -1, -1)
        with torch.no_grad():
            state = self.bm.propagate(box_lo, box_hi, "crown", prior=prior or None)
            a, b = self.bm.linear_bound(spec, state)
            a = a.flatten(2)  # (m, atoms, n)
            lb = (a.clamp(min=0) @ lo[:, :, None] + a.clamp(max=0) @ hi[:, :, None]).squeeze(-1) + b
            lb = torch.maximum(lb, self.bm.backward(spec, {}, box_lo, box_hi, state.intervals))
        gap = lb - self.threshold
        case_gap = gap[:, self.cases.index].max(-1).values
        if self.cases.index.shape[1] > 1 and bool((case_gap <= 0).any()):
            case_gap = torch.maximum(case_gap, combined_gap(a, b - self.threshold, lo, hi, self.cases.index))
        return case_gap, gap, a, state

    def _lp_refuted(self, lo: Tensor, hi: Tensor, depth: Tensor, state, case_gap: Tensor, open_: Tensor,
                    deadline: float) -> Tensor:  # fmt: skip
        """(m,) leaves whose open cases the certified LP refutes, trying the shallowest open leaves
        first (a refuted leaf saves its whole subtree; ties: closest to refuted) while the LP's
        share of the search time stays below :data:`LP_SHARE`."""
        refuted = torch.zeros_like(open_)
        worst = case_gap.min(1).values
        for k in sorted(open_.nonzero().squeeze(1).tolist(), key=lambda i: (int(depth[i]), -float(worst[i]))):
            now = time.perf_counter()
            if self.lp_seconds > LP_SHARE * (self.seconds + 1e-3) or now >= deadline:
                break
            pre = pre_lists(state.pre, self.lp.acts, k)
            ok = True
            for g in (~(case_gap[k] > 0)).nonzero().squeeze(1).tolist():
                atoms = self.cases.index[g].unique()
                rows, offsets = self.cases.rows[atoms].numpy(), self.cases.offsets[atoms].numpy()
                if not self.lp.refute(lo[k].numpy(), hi[k].numpy(), pre, rows, offsets) > MARGIN:
                    ok = False
                    break
            refuted[k] = ok
            self.stats.lp += 1
            self.stats.lp_refuted += int(ok)
            self.lp_seconds += time.perf_counter() - now
        return refuted

    def _strong(self, lo: Tensor, hi: Tensor, pre: dict) -> Tensor:
        """(o,) per leaf, the dimension whose halves' worse bound is best, by bounding every
        candidate half (2 n boxes per leaf: strong branching, cheap with few inputs)."""
        o, n = lo.shape
        rows = torch.arange(n)
        mid = (lo + hi) / 2  # (o, n)
        lo_c = lo[:, None, None, :].repeat(1, n, 2, 1)  # (o, n dims, 2 halves, n)
        hi_c = hi[:, None, None, :].repeat(1, n, 2, 1)
        hi_c[:, rows, 0, rows] = mid
        lo_c[:, rows, 1, rows] = mid
        flat_lo, flat_hi = lo_c.reshape(-1, n), hi_c.reshape(-1, n)
        prior = {
            i: (l.repeat_interleave(2 * n, 0), u.repeat_interleave(2 * n, 0)) for i, (l, u) in pre.items()
        }
        # a half's deficit: the sum over its open cases of how far each is from refuted
        deficit = self._bound(flat_lo, flat_hi, prior)[0].clamp(max=0).sum(1).reshape(o, n, 2)
        self.stats.scored += deficit.numel()
        # ties (no half improves by more than a few percent) go to the relatively widest dimension
        rel = (hi - lo) / self.root_width
        scale = deficit.min(2).values.min(1, keepdim=True).values.abs()
        return (deficit.min(2).values + FSB_WIDTH * scale * rel / rel.max(1, keepdim=True).values).argmax(1)

    def _check(self, points: Tensor) -> Tensor | None:
        """The first point where some case holds (float64 forward pass); keeps the best as hints."""
        with torch.no_grad():
            v = self.cases.violation(self.bm.net.forward(points.reshape(-1, *self.shape))).min(1).values
        k = int(v.argmin())
        if v[k] <= 0:
            return points[k : k + 1].reshape(1, *self.shape)
        if float(v[k]) < self.best_hint:
            self.best_hint = float(v[k])
            order = torch.argsort(v)[:4]
            self.hints = points[order].reshape(-1, *self.shape)
        return None

    def _push(self, los, his, depths, pre, copies: int, holds=None) -> None:
        self.lo, self.hi = torch.cat([self.lo, *los]), torch.cat([self.hi, *his])
        self.depth = torch.cat([self.depth, *depths])
        self.hold = torch.cat(
            [self.hold, *(holds if holds is not None else [torch.zeros_like(d) for d in depths])]
        )
        if not self.prior:  # the root's children: the frontier had no bounds yet
            self.prior = {i: (l[:0], u[:0]) for i, (l, u) in pre.items()}
        self.prior = {i: (torch.cat([l, *[pre[i][0]] * copies]), torch.cat([u, *[pre[i][1]] * copies]))
                      for i, (l, u) in self.prior.items()}  # fmt: skip

    def _choose(self, coef: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """(o,) the input dimension to halve per open leaf."""
        width = hi - lo
        rel = width / self.root_width
        if self.branching == "widest":
            return rel.argmax(1)
        score = coef.abs() * width
        score = score / score.max(1, keepdim=True).values.clamp(min=1e-30)
        widest = rel.max(1, keepdim=True).values.clamp(min=1e-30)
        score = score + WIDTH_WEIGHT * rel / widest
        if self.relu is not None:  # no drilling: ReLU splitting takes the near-ties instead
            score = score.masked_fill(rel < RELU_DRILL_CAP * widest, -1.0)
        return score.argmax(1)

    def _split(self, lo: Tensor, hi: Tensor, depth: Tensor, pre: dict[int, tuple[Tensor, Tensor]],
               dim: Tensor, hold: Tensor | None = None) -> None:  # fmt: skip
        """Halve each leaf along ``dim``; both halves inherit the leaf's op bounds ``pre`` (and
        ``hold``, the depth below which ReLU splitting does not take them)."""
        hold = torch.zeros_like(depth) if hold is None else hold
        rows = torch.arange(lo.shape[0])
        mid = (lo[rows, dim] + hi[rows, dim]) / 2
        thin = (mid <= lo[rows, dim]) | (mid >= hi[rows, dim])
        if bool(thin.any()):  # a rule chose a dimension at float64 resolution: take the widest instead
            dim = torch.where(thin, ((hi - lo) / self.root_width).argmax(1), dim)
            mid = (lo[rows, dim] + hi[rows, dim]) / 2
        if bool(((mid <= lo[rows, dim]) | (mid >= hi[rows, dim])).any()):
            self._stuck = True  # a leaf too thin to halve in float64: give up, soundly
            self._push([lo], [hi], [depth], pre, 1, [hold])
            return
        left_hi, right_lo = hi.clone(), lo.clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        self._push([lo, right_lo], [left_hi, hi], [depth + 1, depth + 1], pre, 2, [hold, hold])
        self.stats.depth = max(self.stats.depth, int(depth.max()) + 1)


__all__ = ["BRANCHINGS", "MARGIN", "InputSplit", "SplitStats", "combined_gap"]
