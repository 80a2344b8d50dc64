"""Branch-and-bound on ReLU neurons: prove what one linear bound cannot.

A box that CROWN cannot certify may still be robust: CROWN relaxes every unstable ReLU at once.
Branch-and-bound splits one unstable ReLU z into the sub-problems z >= 0 (ReLU = identity) and
z <= 0 (ReLU = 0, or the negative slope), each bounded again with the split neuron exact and every
later layer's intermediate bounds recomputed under it, until every leaf is proved or time runs out.

Why it is sound: a split is enforced by clipping the neuron's pre-activation interval at 0
(:meth:`BoundedModel.propagate`'s ``splits``), and the final bound adds beta-CROWN's terms
(:mod:`~nonuniform.proof.leaves`, sound for any beta >= 0 and any slope in range). Every bound of
the leaf then holds on the box intersected with the leaf's half-spaces, and the leaves'
half-spaces cover the box, so proving every leaf proves the box. A leaf whose bounds miss one of its
half-spaces (``BoundState.infeasible``) is empty and proved. A leaf with no unstable neuron
left cannot be split further: when it still fails, the box is reported as not proved
(``exhausted``; a counterexample may or may not exist).

Run it with a float64 :class:`BoundedModel` and the final check's threshold: every leaf's proof
is then the fresh float64 proof the rest of the package requires (:func:`bab_prove` refuses other
dtypes). Branching: BaBSR's intercept score from the leaf's final pass
(:func:`~nonuniform.proof.leaves.branch_choices`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.alpha import optimised_bound
from ..engine.bounds import BoundedModel
from ..engine.interval import intersect
from ..engine.specs import OutputCases
from ..ir.ops import Activation
from ..relax.activations import PiecewiseLinear
from .input_split import MARGIN, InputSplit
from .leaves import ALPHA_LR, CARRY_BYTES, LeafParams, branch_choices, leaf_bound, start_params
from .portfolio import Portfolio

#: Boxes with at most this many input values are proved by splitting the input box (as the
#: complete verifier does, ``VerifierConfig.input_split_max``); larger ones by ReLU splitting.
INPUT_SPLIT_MAX = 32

#: The two branches of a split neuron (z >= 0, z <= 0). Both are needed for a proof; the tests
#: drop one on purpose to show that the soundness checks catch a missing branch.
SIDES = (1, -1)

#: alpha-CROWN steps at the root of a ReLU split (its intermediate bounds bound every leaf).
ROOT_ALPHA_STEPS = 20
#: Branching rules of :class:`ReluSplit`: BaBSR's intercept score from the leaf's final pass, or
#: the relaxation area times the outgoing weight (the rule before the final pass was recorded).
BRANCHING = ("babsr", "area")
#: Box growth stops refining once the proved and the refused factor are this close.
GROW_RESOLUTION = 1.01
#: A leaf with nothing left to split is a linear program over box and half-spaces, whose dual
#: optimum the multipliers reach with enough steps: it gets this many before BaB gives up.
EXHAUSTED_BETA_STEPS = 300


@dataclass
class BabResult:
    """Per sample: proved or not, leaves bounded, worst open leaf, whether time ran out."""

    proved: Tensor  # (n,) bool
    leaves: Tensor  # (n,) long: sub-problems bounded (1 = the first bound proved it)
    margin: Tensor  # (n,) smallest margin bound over proved leaves (or the worst open leaf)
    timed_out: Tensor  # (n,) bool
    exhausted: Tensor  # (n,) bool: a leaf without unstable neurons still fails (no proof this way)


def split_ops(bm: BoundedModel) -> list[int]:
    """Indices of the ops that can be split: ReLU-family activations on an affine op's output."""
    return [
        i
        for i, op in enumerate(bm.net.ops)
        if isinstance(op, Activation) and isinstance(op.relaxation, PiecewiseLinear)
    ]


def bab_prove(
    bm: BoundedModel,
    lower: Tensor,
    upper: Tensor,
    spec: Tensor,
    threshold: float,
    time_budget: float = 10.0,
    batch: int = 64,
    max_leaves: int = 20000,
    beta_steps: int = 20,
) -> BabResult:
    """Prove ``spec @ f(x) >= threshold`` (every row) on each box by branch-and-bound.

    ``lower``/``upper``: (n, *input_shape); ``spec``: (n, s, classes). Samples are independent:
    each has its own queue and ``time_budget`` seconds; the sub-problems of one sample are
    bounded ``batch`` at a time.
    """
    if bm.net.dtype != torch.float64:
        raise ValueError("bab_prove needs a float64 BoundedModel: its leaves are the final proof")
    n = lower.shape[0]
    proved = torch.zeros(n, dtype=torch.bool)
    leaves = torch.zeros(n, dtype=torch.long)
    margin = torch.full((n,), float("nan"), dtype=torch.float64)
    timed_out = torch.zeros(n, dtype=torch.bool)
    exhausted = torch.zeros(n, dtype=torch.bool)
    for k in range(n):
        search = ReluSplit(bm, lower[k : k + 1], upper[k : k + 1], spec[k : k + 1], threshold, batch,
                           max_leaves, beta_steps)  # fmt: skip
        search.run(time.perf_counter() + time_budget)
        proved[k], leaves[k], exhausted[k] = search.proved, search.leaves, search.stuck
        timed_out[k] = not search.proved and not search.stuck
        margin[k] = threshold + (search.worst_proved if search.proved else search.worst_open)
    return BabResult(proved, leaves, margin, timed_out, exhausted)


def prove_boxes(
    bm: BoundedModel, lower: Tensor, upper: Tensor, spec: Tensor, threshold: float, time_budget: float = 10.0
) -> BabResult:
    """Prove ``spec @ f(x) >= threshold`` (every row) on each box by the branch-and-bound that
    suits the input: input splitting (sb and fsb in turns) up to :data:`INPUT_SPLIT_MAX` input
    values, :func:`bab_prove` otherwise. Same shapes and result as :func:`bab_prove`; an
    input-split proof's margin is ``threshold`` plus its safety margin (what every leaf cleared)."""
    n_in = lower[0].numel()
    if n_in > INPUT_SPLIT_MAX:
        return bab_prove(bm, lower, upper, spec, threshold, time_budget)
    n = lower.shape[0]
    res = BabResult(torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long),
                    torch.full((n,), float("nan"), dtype=torch.float64), torch.zeros(n, dtype=torch.bool),
                    torch.zeros(n, dtype=torch.bool))  # fmt: skip
    for k in range(n):
        rows = spec[k].to(torch.float64)
        # a case per row, "row . y <= threshold": refuted on a leaf when row . y > threshold + MARGIN
        cases = OutputCases(-rows, torch.full((len(rows),), -threshold, dtype=torch.float64),
                            torch.arange(len(rows))[:, None])  # fmt: skip
        lo, hi = lower[k : k + 1].to(torch.float64), upper[k : k + 1].to(torch.float64)
        fsb_batch = max(1024 // (2 * n_in), 1)  # each fsb leaf bounds both halves of every dimension
        search = Portfolio([InputSplit(bm, lo, hi, cases, branching="sb"),
                            InputSplit(bm, lo, hi, cases, batch=fsb_batch, branching="fsb")])  # fmt: skip
        deadline = time.perf_counter() + time_budget
        found = None
        while found is None and not search.proved and not search.exhausted and time.perf_counter() < deadline:
            found = search.run(deadline)  # a point where some row is <= threshold: no proof here
        res.proved[k], res.leaves[k] = search.proved, max(search.stats.leaves, 1)
        res.exhausted[k] = search.exhausted or found is not None
        res.timed_out[k] = not (search.proved or res.exhausted[k])
        res.margin[k] = threshold + MARGIN if search.proved else float("nan")
    return res


@dataclass
class _Leaf:
    """A sub-problem: the split of every ReLU-family op (``(1, *shape)`` int8, 0 = not split) and
    the parameters its parent's bound ended with (its warm start; None: CROWN's)."""

    splits: dict[int, Tensor]
    params: LeafParams | None = None


class ReluSplit:
    """A resumable ReLU branch-and-bound on one box: prove ``spec @ f >= threshold`` (every row;
    ``threshold`` a number or one per row). :meth:`run` works until a deadline and keeps its queue,
    so a scheduler can interleave it with attacks. ``proved``: every leaf done; ``exhausted``: a
    leaf with nothing left to split still fails (no proof this way), or ``max_leaves`` is spent.

    The root is bounded by alpha-CROWN (``root_alpha_steps``, slopes for every intermediate bound
    target); its intermediate bounds bound every leaf too (a leaf is a subset of the root box) and
    its final slopes start the root leaf. Leaves: :func:`~nonuniform.proof.leaves.leaf_bound`
    (``leaf_alpha=False``: CROWN's slopes, beta only); ``branching``: one of :data:`BRANCHING`."""

    def __init__(self, bm: BoundedModel, lo: Tensor, hi: Tensor, spec: Tensor, threshold: float | Tensor,
                 batch: int = 64, max_leaves: int = 20000, beta_steps: int = 20,
                 root_alpha_steps: int = ROOT_ALPHA_STEPS, branching: str = "babsr",
                 leaf_alpha: bool = True) -> None:  # fmt: skip
        if branching not in BRANCHING:
            raise ValueError(f"branching must be one of {', '.join(BRANCHING)}, got {branching!r}")
        if bm.net.dtype != torch.float64:
            raise ValueError("ReluSplit needs a float64 BoundedModel: its leaves are the final proof")
        self.bm, self.lo, self.hi, self.spec = bm, lo, hi, spec
        self.threshold = torch.as_tensor(threshold, dtype=torch.float64, device=lo.device)
        self.batch, self.max_leaves, self.beta_steps = batch, max_leaves, beta_steps
        self.branching, self.leaf_alpha = branching, leaf_alpha
        self.ops = split_ops(bm)
        shapes = {i: bm.net.ops[bm.net.ops[i].inputs[0]].out_shape for i in self.ops}
        root = {i: torch.zeros((1, *shapes[i]), dtype=torch.int8, device=lo.device) for i in self.ops}
        self.prior, params = self._root(root_alpha_steps)
        self.queue = [_Leaf(root, params)]
        self.leaves, self.stuck = 0, False
        self.worst_proved, self.worst_open = float("inf"), float("inf")  # slack over the threshold

    def _root(self, steps: int) -> tuple[dict | None, LeafParams | None]:
        """alpha-CROWN at the root: (intermediate bounds for every leaf, the root leaf's start)."""
        if steps <= 0 or not self.ops:
            return None, None
        bm, lo, hi = self.bm, self.lo, self.hi
        with torch.no_grad():
            crown = bm.propagate(lo, hi, "crown")
        _, slopes = optimised_bound(bm, self.spec.to(torch.float64), crown, steps, ALPHA_LR)
        with torch.no_grad():
            tuned = bm.propagate(lo, hi, "crown", slopes=slopes)
        prior = {i: intersect(*crown.pre[i], *tuned.pre[i]) for i in crown.pre}
        final = {j: slopes.final[j].detach().float() for j in self.ops if j in slopes.final}
        return prior, LeafParams(final, {})

    @property
    def proved(self) -> bool:
        return not self.queue and not self.stuck

    @property
    def exhausted(self) -> bool:
        return self.stuck or (bool(self.queue) and self.leaves >= self.max_leaves)

    def run(self, deadline: float) -> None:
        """Bound leaves until ``deadline``; a batch is cut to what the measured seconds per leaf
        say fits before it (one leaf of a CIFAR ResNet takes seconds: 64 would overrun)."""
        while self.queue and not self.exhausted and (left := deadline - time.perf_counter()) > 0:
            if self._per_leaf and left < 0.8 * self._per_leaf:
                return  # one more leaf would overrun the deadline (seconds per leaf on a ResNet)
            fits = int(left / self._per_leaf) if self._per_leaf else self.batch
            t = time.perf_counter()
            m = self._step(max(1, min(self.batch, fits)))
            self._per_leaf = (time.perf_counter() - t) / m

    _per_leaf = 0.0

    def _bound(self, todo: list[_Leaf], steps: int, record: dict | None = None):
        """(state, lower bounds (m, s), best parameters) of the leaves ``todo``."""
        bm, m = self.bm, len(todo)
        splits = {i: torch.cat([leaf.splits[i] for leaf in todo]) for i in self.ops}
        lo_m, hi_m = self.lo.expand(m, *self.lo.shape[1:]), self.hi.expand(m, *self.hi.shape[1:])
        spec_m = self.spec.expand(m, *self.spec.shape[1:]).to(torch.float64)
        with torch.no_grad():
            state = bm.propagate(lo_m, hi_m, "crown", splits=splits, prior=self.prior)
        start = start_params(bm, state, spec_m.shape[1], [leaf.params for leaf in todo], self.ops)
        if not self.leaf_alpha:  # CROWN's slopes stay (beta multipliers only)
            start.alpha = {}
        lb, best = leaf_bound(bm, state, spec_m, splits, start, steps, self.threshold, record)
        return state, lb, best

    def _step(self, count: int) -> int:
        todo, self.queue = self.queue[:count], self.queue[count:]
        m = len(todo)
        record: dict[int, Tensor] = {}
        state, lb, best = self._bound(todo, self.beta_steps, record)
        self.leaves += m
        slack = lb - self.threshold
        worst = slack.min(1).values
        empty_leaf = torch.zeros(m, dtype=torch.bool, device=self.lo.device)
        if state.infeasible is not None:
            empty_leaf = state.infeasible
        ok = empty_leaf | (worst >= 0)
        bounded = ok & ~empty_leaf
        if bounded.any():
            self.worst_proved = min(self.worst_proved, float(worst[bounded].min()))
        carry = None
        rows = (~ok).nonzero().squeeze(1).tolist()
        scores = record if self.branching == "babsr" else {}
        choices = branch_choices(self.bm, state, self.ops, rows, scores, slack < 0, self._fallback)
        for j, choice in zip(rows, choices):
            self.worst_open = min(self.worst_open, float(worst[j]))
            if choice is None:  # nothing left to split: push the multipliers to the LP's optimum
                last = self._last_try(todo[j], best.pick(j))
                if last >= 0:
                    self.worst_proved = min(self.worst_proved, last)
                    continue
                self.worst_open, self.stuck = last, True
                return m
            i, idx = choice
            params = best.pick(j)
            if carry is None:
                carry = CARRY_BYTES // max(params.nbytes(), 1)
            for side in SIDES:
                child = {o: t.clone() for o, t in todo[j].splits.items()}
                child[i].view(-1)[idx] = side
                self.queue.append(_Leaf(child, params if len(self.queue) < carry else None))
        return m

    def _last_try(self, leaf: _Leaf, params: LeafParams) -> float:
        """Smallest slack of one leaf without unstable neurons, multipliers run to convergence."""
        state, lb, _ = self._bound([_Leaf(leaf.splits, params)], EXHAUSTED_BETA_STEPS)
        if state.infeasible is not None and bool(state.infeasible.all()):
            return float("inf")
        return float((lb - self.threshold).min())

    def _fallback(self, i: int, l: Tensor, u: Tensor) -> Tensor:
        """Branching score without the pass's coefficients: relaxation area times the neuron's
        outgoing weight (where the next op exposes it)."""
        area = -l * u / (u - l).clamp(min=1e-30)
        return area * _out_weight(self.bm, i, l.shape[-1])


def _out_weight(bm: BoundedModel, i: int, size: int) -> Tensor:
    """|outgoing weight| per neuron of op ``i`` when the next op is a dense layer, else ones."""
    ops = bm.net.ops
    cache = bm.__dict__.setdefault("_bab_out_weight", {})
    if i not in cache:
        w = torch.ones(size, dtype=bm.net.dtype, device=bm.net.device)
        nxt = [op for op in ops if i in getattr(op, "inputs", ())]
        weight = getattr(nxt[0], "weight", None) if len(nxt) == 1 else None
        if weight is not None and weight.dim() == 2 and weight.shape[1] == size:
            w = weight.abs().sum(0).to(bm.net.dtype)
        cache[i] = w
    return cache[i]


def grow_boxes(
    bm: BoundedModel,
    x0: Tensor,
    lower: Tensor,
    upper: Tensor,
    spec: Tensor,
    box,
    threshold: float,
    time_budget: float,
    scales: tuple[float, ...] = (1.02, 1.05, 1.1, 1.2, 1.4, 2.0),
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Grow certified boxes by the largest factor in ``scales`` that branch-and-bound proves
    (:func:`prove_boxes`: input splitting for small inputs, ReLU splitting otherwise).

    Each sample's half-widths (below and above ``x0``) are scaled by 1.02, 1.05, ... in turn,
    ``box(r_lo, r_hi, x0)`` applies the input domain, and the first factor BaB cannot prove
    within its share of ``time_budget`` (per sample; a share is ``1 / (len(scales) + 1)`` of it)
    ends the ladder; the rest of the budget bisects between the largest proved factor and it.
    Returns the new lower and upper ends, the proved margin, the leaves of the proof (0 where the
    box did not grow) and the scale applied.
    """
    n = x0.shape[0]
    lower, upper = lower.clone(), upper.clone()
    margin = torch.full((n,), float("nan"), dtype=bm.net.dtype, device=x0.device)
    leaves = torch.zeros(n, dtype=torch.long, device=x0.device)
    applied = torch.ones(n, dtype=bm.net.dtype, device=x0.device)
    for k in range(n):
        c = x0[k : k + 1]
        found = _grow_one(bm, c, c - lower[k : k + 1], upper[k : k + 1] - c, spec[k : k + 1], box,
                          threshold, time_budget, scales)  # fmt: skip
        if found is not None:
            lower[k : k + 1], upper[k : k + 1], margin[k], leaves[k], applied[k] = found
    return lower, upper, margin, leaves, applied


def _grow_one(bm, c, r_lo, r_hi, spec, box, threshold, budget, scales):
    """The largest proved scaling of one box (see :func:`grow_boxes`), or None."""
    dt = bm.net.dtype
    best = None
    deadline = time.perf_counter() + budget
    share = budget / (len(scales) + 1)

    def attempt(s: float, seconds: float) -> bool:
        nonlocal best
        lo_s, hi_s = box(r_lo * s, r_hi * s, c)
        res = prove_boxes(bm, lo_s.to(dt), hi_s.to(dt), spec.to(dt), threshold, time_budget=seconds)
        if res.proved[0]:
            best = (lo_s, hi_s, res.margin[0], res.leaves[0], s)
        return bool(res.proved[0])

    good, bad = 1.0, None
    for s in scales:
        if not attempt(s, min(share, max(deadline - time.perf_counter(), 0.0))):
            bad = s
            break
        good = s
    # bisect (in log-scale) between the largest proved and the first refused factor with what is
    # left: half of it per attempt, so a proof that needs more time than the ladder's share can
    # still land; stop below a tenth of a share or once the factors are within 1%
    while (
        bad is not None
        and bad / good > GROW_RESOLUTION
        and (left := deadline - time.perf_counter()) > share / 10
    ):
        mid = (good * bad) ** 0.5
        if attempt(mid, left / 2 if left > share else left):
            good = mid
        else:
            bad = mid
    return best


__all__ = ["INPUT_SPLIT_MAX", "BabResult", "ReluSplit", "bab_prove", "grow_boxes", "prove_boxes", "split_ops"]
