"""ReLU splitting inside the leaves of input splitting: the near-ties of low-dimensional inputs.

Input splitting (:mod:`~nonuniform.proof.input_split`) shrinks every intermediate bound at once,
but near a point where the property almost fails (ACAS Xu 4_2 and 3_3 property 2: the best point
found is 0.001 from unsafe) a linear relaxation closes the gap only on tiny sub-boxes, and halving
five dimensions multiplies the leaves faster than it closes the gaps (39,000 open leaves after
40 s). Such leaves still have only tens of unstable ReLUs, and fixing a few of them exactly
(ReLU branch-and-bound with alpha and beta, as :class:`~nonuniform.proof.bab.ReluSplit`) refutes
them in a handful of sub-problems: measured on 4_2 prop 2 (2026-12-03), 17 of 20 random open
leaves of the 5-s frontier in 1-51 sub-problems each, 20 of 20 of the 40-s frontier in 1-11;
the leaves left had 99 or more unstable neurons. With sb kept from drilling thin inputs
(:data:`~nonuniform.proof.input_split.RELU_DRILL_CAP`) one sb search with this hand-off proves
4_2 prop 2 in 148 s and 3_3 prop 2 in 77 s (2 threads, 2026-12-03): the first proofs of either
here. It is on by default (``VerifierConfig(leaf_relu=True)``): with the portfolio's turns by
progress and fuller batches, all 186 ACAS Xu instances are decided at their own time-outs
(docs/NOTES.md, "ACAS Xu by default").

:class:`LeafReluSplit` takes open input leaves (*owners*) with at most :data:`MAX_UNSTABLE` unstable
neurons and bounds the ReLU sub-problems of many owners in one batch, each on its own box. A
sub-problem is refuted when every case has an atom whose bound clears the threshold (a case is
an AND of atoms: one impossible atom refutes it; different sub-problems may use different
atoms). An owner is refuted once all of its sub-problems are; an owner whose sub-problems exceed
:data:`MAX_SUB` (or that reaches a sub-problem with nothing left to split) is *given back* to
input splitting whole, its queued sub-problems dropped.

Why it is sound: the sub-problems of an owner are its box under both sides of every split
(:data:`~nonuniform.proof.bab.SIDES`), each bounded in float64 by the same beta-CROWN leaf bound
as ReLU splitting (:func:`~nonuniform.proof.leaves.leaf_bound`) with the input splitting's
safety margin; the owner's intermediate bounds (valid on any subset of its box) are intersected
in as ``prior``, and a first sub-problem (the owner's box, nothing split) takes them as they
are. An owner leaves the search only refuted (all sub-problems) or given back (then input
splitting covers it again), so the input search is proved only when its frontier and this queue
are both empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.bounds import BoundedModel, BoundState
from ..engine.specs import OutputCases
from ..ir.ops import ProductOp
from . import bab  # SIDES read at call time: the soundness test patches it
from .leaves import LeafParams, branch_choices, leaf_bound, start_params

#: Open input leaves with at most this many unstable ReLUs (CROWN, summed over layers) go to ReLU
#: splitting. On 4_2 prop 2's frontiers every leaf with <= 75 was refuted, none with >= 99.
MAX_UNSTABLE = 64
#: ... and only from this many halvings on: handed over earlier (12-16), the leaves needed many
#: sub-problems each and ReLU splitting took its whole share while sb drilled elsewhere
#: (docs/NOTES.md, "ReLU splitting inside input leaves").
MIN_DEPTH = 30
#: Leaves with at most this many unstable ReLUs are cheap to split whatever their depth: from
#: :data:`FEW_DEPTH` halvings on they go too (4_2 prop 2's frontier shrank twice as fast).
FEW_UNSTABLE = 24
FEW_DEPTH = 8
#: Sub-problems one owner may take before it is given back to input splitting (16 against 96:
#: the owners that need more are cheaper to halve).
MAX_SUB = 16
#: Sub-problems bounded together: on ACAS Xu 4_2 prop 2, 0.69 ms a sub-problem at 1024 against
#: 0.90 at 256 (same 6,144 sub-problems, alternating, 2 threads, 2026-12-03) ...
BATCH = 1024
#: ... and at most this many ReLU neurons in one batch (parameters: rows x neurons per sub-problem).
BATCH_ELEMENTS = 2**22
#: Adam steps of alpha and beta per sub-problem (warm-started from its parent's; 4 against 10
#: doubled the sub-problems per second for a few more of them).
STEPS = 4


@dataclass
class _Owner:
    lo: Tensor  # (1, n) flat
    hi: Tensor
    depth: Tensor  # (1,)
    pre: dict[int, tuple[Tensor, Tensor]]  # its op input bounds, (1, *shape) each
    queued: int = 1
    bounded: int = 0


@dataclass
class _Sub:
    owner: int
    splits: dict[int, Tensor]  # (1, *shape) int8 per split op
    params: LeafParams | None = None
    first: bool = False  # the owner's box unsplit: its intermediate bounds are the owner's own


def unstable_counts(state, ops: list[int]) -> Tensor:
    """(m,) unstable neurons per leaf, summed over the split ops' input bounds."""
    counts = None
    for i in ops:
        l, u = state.pre[i]
        c = ((l < 0) & (u > 0)).flatten(1).sum(1)
        counts = c if counts is None else counts + c
    return counts


class LeafReluSplit:
    """ReLU branch-and-bound on the open leaves of an input-splitting search (module docstring).

    ``shape``: the model's input shape; boxes are handed over flat ``(k, n)`` in float64.
    """

    def __init__(self, bm: BoundedModel, cases: OutputCases, shape: tuple[int, ...], batch: int | None = None,
                 steps: int = STEPS, max_sub: int = MAX_SUB,
                 min_depth: int | None = None) -> None:  # fmt: skip
        self.bm, self.cases, self.shape = bm, cases, shape
        self.ops = bab.split_ops(bm)
        if batch is None:  # BATCH, fewer for wide networks (the parameters are rows x neurons each)
            neurons = sum(math.prod(bm.net.ops[i].in_shape) for i in self.ops)
            batch = min(BATCH, max(32, BATCH_ELEMENTS // max(neurons, 1)))
        self.batch, self.steps, self.max_sub = batch, steps, max_sub
        self.min_depth = MIN_DEPTH if min_depth is None else min_depth
        self.spec = (-cases.rows)[None].to(torch.float64)
        self.threshold = (-cases.offsets).to(torch.float64) + bab.MARGIN
        self.owners: dict[int, _Owner] = {}
        self.queue: list[_Sub] = []
        self.returned: list[_Owner] = []
        self._next = 0
        self.refuted = self.given_back = self.bounded = 0
        # The owners' op bounds can stand in for a first sub-problem's propagate when they cover
        # every op the engine tightens (a product op would also need its inputs' intervals).
        self.reuse_owner_bounds = not any(isinstance(op, ProductOp) for op in bm.net.ops)

    @property
    def empty(self) -> bool:
        return not self.owners

    @property
    def full(self) -> bool:
        """A whole batch is queued. Input splitting mostly waits for one while it has leaves of its
        own: on 4_2 prop 2 the same 56,667 sub-problems then went in 89 batches (637 on average)
        instead of 260 (218), and a sub-problem costs 0.69 ms in a batch of 1024 against 0.90 in
        one of 256 (2026-12-03)."""
        return len(self.queue) >= self.batch

    @property
    def open_volume(self) -> float:
        """Share of the input search's root box the owners still cover (``2^-depth`` each)."""
        return sum(float(torch.exp2(-o.depth.double())) for o in self.owners.values())

    def eligible(self, state, idx: Tensor, depth: Tensor, gap: Tensor) -> Tensor:
        """(k,) which of the open leaves ``idx`` of ``state`` (an input-splitting batch, with their
        depths and worst case gaps) to take."""
        count = unstable_counts(state, self.ops)[idx]
        few = (count <= FEW_UNSTABLE) & (depth >= min(FEW_DEPTH, self.min_depth))
        return few | ((count <= MAX_UNSTABLE) & (depth >= self.min_depth))

    def add(self, lo: Tensor, hi: Tensor, depth: Tensor, pre: dict[int, tuple[Tensor, Tensor]]) -> None:
        """Take over the leaves ``lo``/``hi`` (k, n) with their depths and op bounds."""
        for k in range(lo.shape[0]):
            sub_pre = {i: (l[k : k + 1], u[k : k + 1]) for i, (l, u) in pre.items()}
            self.owners[self._next] = _Owner(lo[k : k + 1], hi[k : k + 1], depth[k : k + 1], sub_pre)
            splits = {i: torch.zeros_like(sub_pre[i][0], dtype=torch.int8) for i in self.ops}
            self.queue.append(_Sub(self._next, splits, first=True))
            self._next += 1

    def take_returned(self) -> list[_Owner]:
        out, self.returned = self.returned, []
        return out

    def step(self) -> int:
        """Bound one batch of sub-problems (the newest first); returns how many."""
        todo: list[_Sub] = []
        while self.queue and len(todo) < self.batch:
            sub = self.queue.pop()
            if sub.owner in self.owners:  # else its owner was given back
                todo.append(sub)
        if not todo:
            return 0
        m, bm = len(todo), self.bm
        state, splits = self._state(todo)
        spec = self.spec.expand(m, -1, -1)
        start = start_params(bm, state, spec.shape[1], [s.params for s in todo], self.ops)
        record: dict[int, Tensor] = {}
        lb, best = leaf_bound(bm, state, spec, splits, start, self.steps, self.threshold, record, self._done)
        slack = lb - self.threshold
        ok = self._done(slack)
        if state.infeasible is not None:
            ok = ok | state.infeasible
        self.bounded += m
        want = (~ok).nonzero().squeeze(1).tolist()
        choices = dict(zip(want, branch_choices(bm, state, self.ops, want, record, slack < 0, _no_fallback)))
        okay = ok.tolist()
        for j, sub in enumerate(todo):
            owner = self.owners.get(sub.owner)
            if owner is None:  # given back by a batch-mate sub-problem of the same owner
                continue
            owner.queued -= 1
            owner.bounded += 1
            if okay[j]:
                if owner.queued == 0:
                    del self.owners[sub.owner]
                    self.refuted += 1
                continue
            choice = choices[j] if owner.bounded + owner.queued + 2 <= self.max_sub else None
            if choice is None:  # too many sub-problems, or nothing left to split: input splitting's turn
                del self.owners[sub.owner]
                self.returned.append(owner)
                self.given_back += 1
                continue
            i, idx = choice
            params = best.pick(j)
            for side in bab.SIDES:
                child = {o: t.clone() for o, t in sub.splits.items()}
                child[i].view(-1)[idx] = side
                self.queue.append(_Sub(sub.owner, child, params))
                owner.queued += 1
        return m

    def _state(self, todo: list[_Sub]) -> tuple[BoundState, dict[int, Tensor]]:
        """The sub-problems' CROWN state and splits, in one batch. A first sub-problem is its
        owner's box with nothing split, and the owner's bounds (its ``prior``) are CROWN's on that
        very box: they are used as they are, and only the others are propagated (a third of the
        sub-problems on ACAS Xu 4_2 prop 2); the relaxations of all of them are then made in one
        cheap sweep (``reuse``)."""
        m, bm = len(todo), self.bm
        own = [self.owners[s.owner] for s in todo]
        lo = torch.cat([o.lo for o in own]).reshape(m, *self.shape)
        hi = torch.cat([o.hi for o in own]).reshape(m, *self.shape)
        prior = {i: (torch.cat([o.pre[i][0] for o in own]), torch.cat([o.pre[i][1] for o in own]))
                 for i in own[0].pre}  # fmt: skip
        splits = {i: torch.cat([s.splits[i] for s in todo]) for i in self.ops}
        rest = [k for k, s in enumerate(todo) if not (s.first and self.reuse_owner_bounds)]
        with torch.no_grad():
            if len(rest) == m or not prior:
                return bm.propagate(lo, hi, "crown", splits=splits, prior=prior or None), splits
            return self._reuse(lo, hi, splits, prior, rest), splits

    def _reuse(self, lo: Tensor, hi: Tensor, splits: dict[int, Tensor],
               prior: dict[int, tuple[Tensor, Tensor]], rest: list[int]) -> BoundState:  # fmt: skip
        """The state with the ``prior`` bounds kept for all but the sub-problems ``rest``."""
        bm = self.bm
        pre = {i: (l.clone(), u.clone()) for i, (l, u) in prior.items()}
        infeasible = torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)
        if rest:
            idx = torch.tensor(rest, device=lo.device)
            part = bm.propagate(
                lo[idx], hi[idx], "crown",
                splits={i: s[idx] for i, s in splits.items()},
                prior={i: (l[idx], u[idx]) for i, (l, u) in prior.items()},
            )  # fmt: skip
            for i, (l, u) in part.pre.items():
                pre[i][0][idx], pre[i][1][idx] = l, u
            if part.infeasible is not None:
                infeasible[idx] = part.infeasible
        # Every op input the engine tightens has an entry (the owners' state covers every
        # nonlinear op); clipping the split neurons again is a no-op, the infeasible flags are
        # the propagate's (a clipped interval no longer shows that it was empty).
        state = bm.propagate(lo, hi, "crown", splits=splits, reuse=BoundState(lo, hi, pre, {}, {}))
        state.infeasible = infeasible
        return state

    def _done(self, slack: Tensor) -> Tensor:
        """(m,) every case has an atom whose bound clears the threshold."""
        return (slack[:, self.cases.index].max(-1).values >= 0).all(1)


def _no_fallback(i: int, l: Tensor, u: Tensor) -> Tensor:
    area = -l * u / (u - l).clamp(min=1e-30)
    return area


__all__ = ["MAX_SUB", "MAX_UNSTABLE", "LeafReluSplit", "unstable_counts"]
