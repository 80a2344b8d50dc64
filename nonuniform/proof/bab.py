"""Branch-and-bound on ReLU neurons: prove what one linear bound cannot.

A box that CROWN cannot certify may still be robust: CROWN relaxes every unstable ReLU at once.
Branch-and-bound splits one unstable ReLU z into the sub-problems z >= 0 (ReLU = identity) and
z <= 0 (ReLU = 0, or the negative slope), each bounded again with the split neuron exact and every
later layer's intermediate bounds recomputed under it, until every leaf is proved or time runs out.

Why it is sound without beta-CROWN's Lagrange terms: a split is enforced by clipping the neuron's
pre-activation interval at 0 (:meth:`BoundedModel.propagate`'s ``splits``). Every bound of the
leaf then holds on the box intersected with the leaf's half-spaces, and the leaves' half-spaces
cover the box, so proving every leaf proves the box. A leaf whose bounds miss one of its
half-spaces (``BoundState.infeasible``) is empty and proved. A leaf with no unstable neuron
left cannot be split further: when it still fails, the box is reported as not proved
(``exhausted``; a counterexample may or may not exist).

Run it with a float64 :class:`BoundedModel` and the final check's threshold: every leaf's proof
is then the fresh float64 proof the rest of the package requires (:func:`bab_prove` refuses other
dtypes). Branching: the unstable neuron with the largest relaxation area ``-l u / (u - l)``
scaled by the size of its coefficient in the next layer (a cheap stand-in for BaBSR's score).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.bounds import BoundedModel
from ..engine.specs import OutputCases
from ..ir.ops import Activation
from ..relax.activations import PiecewiseLinear
from .input_split import MARGIN, InputSplit, Portfolio

#: Boxes with at most this many input values are proved by splitting the input box (as the
#: complete verifier does, ``VerifierConfig.input_split_max``); larger ones by ReLU splitting.
INPUT_SPLIT_MAX = 32

#: The two branches of a split neuron (z >= 0, z <= 0). Both are needed for a proof; the tests
#: drop one on purpose to show that the soundness checks catch a missing branch.
SIDES = (1, -1)

#: Adam's step for the split multipliers. Margins are O(1-10) and so are the multipliers that
#: prove a leaf: at 0.05, 20 steps left a leaf of a 784-16-16-10 net at -0.15 that 0.3 proves
#: at +15 (the dual is piecewise linear; Adam with a small step crawls along it).
BETA_LR = 0.3
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


class ReluSplit:
    """A resumable ReLU branch-and-bound on one box: prove ``spec @ f >= threshold`` (every row;
    ``threshold`` a number or one per row). :meth:`run` works until a deadline and keeps its queue,
    so a scheduler can interleave it with attacks. ``proved``: every leaf done; ``exhausted``: a
    leaf with nothing left to split still fails (no proof this way), or ``max_leaves`` is spent."""

    def __init__(self, bm: BoundedModel, lo: Tensor, hi: Tensor, spec: Tensor, threshold: float | Tensor,
                 batch: int = 64, max_leaves: int = 20000, beta_steps: int = 20) -> None:  # fmt: skip
        if bm.net.dtype != torch.float64:
            raise ValueError("ReluSplit needs a float64 BoundedModel: its leaves are the final proof")
        self.bm, self.lo, self.hi, self.spec = bm, lo, hi, spec
        self.threshold = torch.as_tensor(threshold, dtype=torch.float64, device=lo.device)
        self.batch, self.max_leaves, self.beta_steps = batch, max_leaves, beta_steps
        self.ops = split_ops(bm)
        shapes = {i: bm.net.ops[bm.net.ops[i].inputs[0]].out_shape for i in self.ops}
        self.queue = [{i: torch.zeros((1, *shapes[i]), dtype=torch.int8, device=lo.device) for i in self.ops}]
        self.leaves, self.stuck = 0, False
        self.worst_proved, self.worst_open = float("inf"), float("inf")  # slack over the threshold

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

    def _step(self, count: int) -> int:
        bm, lo, hi, spec = self.bm, self.lo, self.hi, self.spec
        todo, self.queue = self.queue[:count], self.queue[count:]
        m = len(todo)
        splits = {i: torch.cat([d[i] for d in todo]) for i in self.ops}
        lo_m, hi_m = lo.expand(m, *lo.shape[1:]), hi.expand(m, *hi.shape[1:])
        spec_m = spec.expand(m, *spec.shape[1:])
        with torch.no_grad():
            state = bm.propagate(lo_m, hi_m, "crown", splits=splits)
            lb, _ = bm.bounds(lo_m, hi_m, spec_m, "crown", bound_upper=False, state=state)
        if self.beta_steps and ((lb - self.threshold).min(1).values < 0).any():
            lb = torch.maximum(lb, beta_bound(bm, state, spec_m, splits, self.beta_steps))
        self.leaves += m
        worst = (lb - self.threshold).min(1).values
        empty_leaf = torch.zeros(m, dtype=torch.bool, device=lo.device)
        if state.infeasible is not None:
            empty_leaf = state.infeasible
        ok = empty_leaf | (worst >= 0)
        bounded = ok & ~empty_leaf
        if bounded.any():
            self.worst_proved = min(self.worst_proved, float(worst[bounded].min()))
        for j in (~ok).nonzero().squeeze(1).tolist():
            self.worst_open = min(self.worst_open, float(worst[j]))
            choice = _branch(bm, state, self.ops, j)
            if choice is None:  # nothing left to split: push the multipliers to the LP's optimum
                last = _last_try(bm, lo, hi, spec, todo[j], self.threshold)
                if last >= 0:
                    self.worst_proved = min(self.worst_proved, last)
                    continue
                self.worst_open, self.stuck = last, True
                return m
            i, idx = choice
            for side in SIDES:
                child = {o: t.clone() for o, t in todo[j].items()}
                child[i].view(-1)[idx] = side
                self.queue.append(child)
        return m


def _last_try(bm: BoundedModel, lo: Tensor, hi: Tensor, spec: Tensor, splits: dict[int, Tensor],
              threshold: Tensor) -> float:  # fmt: skip
    """Smallest slack of one leaf without unstable neurons, multipliers run to convergence."""
    with torch.no_grad():
        state = bm.propagate(lo, hi, "crown", splits=splits)
    if state.infeasible is not None and bool(state.infeasible.all()):
        return float("inf")
    return float((beta_bound(bm, state, spec, splits, EXHAUSTED_BETA_STEPS) - threshold).min())


def beta_bound(
    bm: BoundedModel, state, spec: Tensor, splits: dict[int, Tensor], steps: int, lr: float = BETA_LR
) -> Tensor:
    """Lower bounds of ``spec @ f`` on each leaf, using its split constraints (beta-CROWN).

    On a leaf every split neuron satisfies ``s z >= 0`` (s = +1 or -1), so for any beta >= 0,
    ``spec @ f >= spec @ f - sum beta s z`` there, and the CROWN bound of the right-hand side
    (same relaxations, the extra terms enter the backward pass at z) is a valid lower bound for
    every beta >= 0. Plain CROWN is beta = 0; beta is improved by ``steps`` of projected Adam
    and the best bound per row kept. Without this the split constraints would only act through
    the clipped intervals and the final concretisation would still range over the whole box.
    """
    ops = bm.net.ops
    last = len(ops) - 1
    m, s = spec.shape[:2]
    dt, dev = bm.net.dtype, spec.device
    signs = {i: t.to(dt).unsqueeze(1) for i, t in splits.items() if t.any()}
    best = torch.full((m, s), -torch.inf, dtype=dt, device=dev)
    if not signs:
        return best
    betas = {
        i: torch.zeros(m, s, *t.shape[2:], dtype=dt, device=dev, requires_grad=True) for i, t in signs.items()
    }
    opt = torch.optim.Adam(list(betas.values()), lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            pending = {last: spec.to(dt)}
            for i, beta in betas.items():
                src = ops[i].inputs[0]
                term = -beta * signs[i]
                pending[src] = pending[src] + term if src in pending else term
            zero = torch.zeros(m, s, dtype=dt, device=dev)
            out = bm._backward(pending, last, state.relaxations, state.lower, state.upper, None, zero)
            best = torch.maximum(best, out.detach())
            opt.zero_grad()
            (-out.sum()).backward()
        opt.step()
        with torch.no_grad():
            for beta in betas.values():
                beta.clamp_(min=0)
    return best


def _branch(bm: BoundedModel, state, ops: list[int], j: int) -> tuple[int, int] | None:
    """The unstable neuron of leaf ``j`` to split next: largest relaxation area times the size
    of the neuron's outgoing weights (where the next op exposes them), else the area alone."""
    best, choice = 0.0, None
    for i in ops:
        l, u = (t[j].flatten() for t in state.pre[i])
        unstable = (l < 0) & (u > 0)
        if not unstable.any():
            continue
        area = torch.where(unstable, -l * u / (u - l).clamp(min=1e-30), torch.zeros_like(l))
        score = area * _out_weight(bm, i, l.numel())
        k = int(score.argmax())
        if float(score[k]) > best:
            best, choice = float(score[k]), (i, k)
    return choice


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
    within its share of ``time_budget`` (per sample, split evenly) ends the search; the larger of
    its neighbours is then tried once more half-way. Returns the new lower and upper ends, the
    proved margin, the leaves of the proof (0 where the box did not grow) and the scale applied.
    """
    n = x0.shape[0]
    lower, upper = lower.clone(), upper.clone()
    margin = torch.full((n,), float("nan"), dtype=bm.net.dtype, device=x0.device)
    leaves = torch.zeros(n, dtype=torch.long, device=x0.device)
    applied = torch.ones(n, dtype=bm.net.dtype, device=x0.device)
    share = time_budget / (len(scales) + 1)
    for k in range(n):
        c = x0[k : k + 1]
        found = _grow_one(bm, c, c - lower[k : k + 1], upper[k : k + 1] - c, spec[k : k + 1], box,
                          threshold, share, scales)  # fmt: skip
        if found is not None:
            lower[k : k + 1], upper[k : k + 1], margin[k], leaves[k], applied[k] = found
    return lower, upper, margin, leaves, applied


def _grow_one(bm, c, r_lo, r_hi, spec, box, threshold, share, scales):
    """The largest proved scaling of one box (see :func:`grow_boxes`), or None."""
    dt = bm.net.dtype
    best = None

    def attempt(s: float) -> bool:
        nonlocal best
        lo_s, hi_s = box(r_lo * s, r_hi * s, c)
        res = prove_boxes(bm, lo_s.to(dt), hi_s.to(dt), spec.to(dt), threshold, time_budget=share)
        if res.proved[0]:
            best = (lo_s, hi_s, res.margin[0], res.leaves[0], s)
        return bool(res.proved[0])

    good, bad = 1.0, None
    for s in scales:
        if not attempt(s):
            bad = s
            break
        good = s
    if bad is not None and bad / good > 1.02:
        attempt((good * bad) ** 0.5)
    return best


__all__ = ["INPUT_SPLIT_MAX", "BabResult", "ReluSplit", "bab_prove", "grow_boxes", "prove_boxes", "split_ops"]
