"""Leaf bounds of ReLU branch-and-bound (alpha-beta-CROWN): sound on the leaf's region at any
slopes and multipliers in range, not dependent on the batch, tighter than CROWN's on split leaves,
and the root's alpha-CROWN intermediate bounds hold on every leaf."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform.engine.bounds import BoundedModel, margin_spec
from nonuniform.proof.bab import ReluSplit, split_ops
from nonuniform.proof.leaves import LeafParams, branch_choice, branch_choices, leaf_bound, start_params
from tests.nets import mlp


def values(bm: BoundedModel, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every op's output on the points ``x`` (the network's own forward pass)."""
    vals = {-1: x}
    for i, op in enumerate(bm.net.ops):
        vals[i] = op.forward(*(vals[k] for k in op.inputs))
    return vals


@pytest.fixture(scope="module")
def problem():
    """A 2-input ReLU net, a box with many unstable neurons, and 16 leaves with random splits."""
    model = mlp(nn.ReLU(), sizes=(2, 24, 24, 3), seed=4).double().eval()
    bm = BoundedModel(model, (2,), torch.float64)
    x = torch.tensor([[0.45, 0.55]], dtype=torch.float64)
    lo, hi = x - 0.2, x + 0.2
    spec = margin_spec(model(x).argmax(1), 3).double()
    ops = split_ops(bm)
    with torch.no_grad():
        root = bm.propagate(lo, hi, "crown")
    g = torch.Generator().manual_seed(0)
    m = 16
    splits = {}
    for i in ops:
        l, u = root.pre[i]
        unstable = ((l < 0) & (u > 0)).expand(m, -1)
        pick = (torch.rand(unstable.shape, generator=g) < 0.12) & unstable
        sign = torch.where(torch.rand(unstable.shape, generator=g) < 0.5, 1, -1)
        splits[i] = (pick * sign).to(torch.int8)
    return model, bm, lo, hi, spec, ops, splits


def leaf_state(bm, lo, hi, splits, m):
    with torch.no_grad():
        return bm.propagate(lo.expand(m, -1), hi.expand(m, -1), "crown", splits=splits)


def leaf_minimum(bm, lo, hi, spec, splits, k, n=40000, seed=1) -> torch.Tensor:
    """Smallest sampled ``spec @ f`` (per row) over points of the box inside leaf ``k``'s
    half-spaces (inf where no sample lands in the leaf)."""
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64)
    vals = values(bm, x)
    inside = torch.ones(n, dtype=torch.bool)
    for i, s in splits.items():
        z = vals[bm.net.ops[i].inputs[0]].flatten(1)
        side = s[k].flatten().to(torch.float64)
        inside &= ((z * side) >= 0).all(1)
    out = vals[len(bm.net.ops) - 1][inside] @ spec[0].T
    return out.min(0).values if len(out) else torch.full((spec.shape[1],), float("inf"))


def test_leaf_bounds_are_sound_at_optimised_and_random_parameters(problem):
    _model, bm, lo, hi, spec, ops, splits = problem
    m = next(iter(splits.values())).shape[0]
    state = leaf_state(bm, lo, hi, splits, m)
    spec_m = spec.expand(m, -1, -1)
    start = start_params(bm, state, spec.shape[1], [None] * m, ops)
    tuned, _ = leaf_bound(bm, state, spec_m, splits, start, steps=30)
    g = torch.Generator().manual_seed(2)
    wild = LeafParams(
        {j: torch.rand(t.shape, generator=g, dtype=t.dtype) for j, t in start.alpha.items()},
        {i: 5 * torch.rand(t.shape, generator=g, dtype=t.dtype) for i, t in start.beta.items()},
    )
    random_params, _ = leaf_bound(bm, state, spec_m, splits, wild, steps=0)
    crown, _ = leaf_bound(bm, state, spec_m, splits, start, steps=0)
    checked = 0
    for k in range(m):
        if state.infeasible is not None and state.infeasible[k]:
            continue
        low = leaf_minimum(bm, lo, hi, spec, splits, k)
        if torch.isinf(low).all():
            continue
        checked += 1
        assert (tuned[k] <= low + 1e-9).all(), (k, tuned[k], low)
        assert (random_params[k] <= low + 1e-9).all(), (k, random_params[k], low)
    assert checked >= 8, checked
    assert (tuned >= crown - 1e-9).all()
    assert float((tuned - crown).max()) > 1e-3  # the optimisation does something on split leaves


def test_leaf_bounds_do_not_depend_on_batch_mates(problem):
    _model, bm, lo, hi, spec, ops, splits = problem
    m = next(iter(splits.values())).shape[0]
    state = leaf_state(bm, lo, hi, splits, m)
    start = start_params(bm, state, spec.shape[1], [None] * m, ops)
    threshold = torch.tensor(-1.0, dtype=torch.float64)  # some leaves stop early, others do not
    together, _ = leaf_bound(bm, state, spec.expand(m, -1, -1), splits, start, 15, threshold)
    for k in (0, 3, 7, 11):
        one = {i: t[k : k + 1] for i, t in splits.items()}
        st = leaf_state(bm, lo, hi, one, 1)
        alone, _ = leaf_bound(
            bm, st, spec, one, start_params(bm, st, spec.shape[1], [None], ops), 15, threshold
        )
        torch.testing.assert_close(alone[0], together[k], rtol=0, atol=1e-9)


def _bounded(problem, steps: int):
    """The problem's leaves bounded from CROWN's slopes, with the final pass's coefficients."""
    _model, bm, lo, hi, spec, ops, splits = problem
    m = next(iter(splits.values())).shape[0]
    state = leaf_state(bm, lo, hi, splits, m)
    record: dict = {}
    start = start_params(bm, state, spec.shape[1], [None] * m, ops)
    lb, best = leaf_bound(bm, state, spec.expand(m, -1, -1), splits, start, steps, record=record)
    return bm, state, spec, ops, splits, lb, best, record


def test_warm_start_and_branching(problem):
    """A child started from its parent's parameters is at least as tight after the same steps
    here, and the branching choice is an unstable neuron of the leaf."""
    bm, state, spec, ops, splits, lb, best, record = _bounded(problem, 20)
    m = lb.shape[0]
    assert set(record) == set(ops)
    for k in range(m):
        i, idx = branch_choice(bm, state, ops, k, record, lb < 1e9, lambda i, l, u: torch.ones_like(l))
        l, u = (t[k].flatten() for t in state.pre[i])
        assert float(l[idx]) < 0 < float(u[idx])
    warm = start_params(bm, state, spec.shape[1], [best.pick(k) for k in range(m)], ops)
    again, _ = leaf_bound(bm, state, spec.expand(m, -1, -1), splits, warm, 0)
    torch.testing.assert_close(again, lb, rtol=0, atol=1e-5)  # float32 carry of the best iterate


def test_batched_branching_picks_each_leafs_best_scored_unstable_neuron(problem):
    """branch_choices scores all leaves at once: the same choice as scoring each leaf alone,
    op by op (BaBSR's intercept score on the failing rows; the area fallback where unrecorded)."""
    bm, state, _spec, ops, _splits, lb, _, record = _bounded(problem, 3)
    m = lb.shape[0]
    failing = lb < lb.median()
    partial = {ops[0]: record[ops[0]]}  # the other ops fall back to the relaxation's area
    area = lambda i, l, u: -l * u / (u - l).clamp(min=1e-30)  # noqa: E731

    def reference(k):
        best, choice = -1.0, None
        for i in ops:
            l, u = (t[k].flatten() for t in state.pre[i])
            if i in partial:
                lam = (partial[i][k] * failing[k].reshape(-1, *[1] * (partial[i].dim() - 2))).flatten(1)
                score = (-lam.clamp(max=0)).sum(0) * (-u * l / (u - l).clamp(min=1e-30))
            else:
                score = area(i, l, u)
            for n in ((l < 0) & (u > 0)).nonzero().flatten().tolist():
                if float(score[n]) > best:
                    best, choice = float(score[n]), (i, n)
        return choice

    rows = [k for k in range(m) if k % 3 != 1]
    got = branch_choices(bm, state, ops, rows, partial, failing, area)
    assert got == [reference(k) for k in rows]
    assert got == [branch_choice(bm, state, ops, k, partial, failing, area) for k in rows]
    assert any(c is not None for c in got)


def test_root_alpha_bounds_hold_on_the_box(problem):
    model, bm, lo, hi, spec, _ops, _splits = problem
    search = ReluSplit(bm, lo, hi, spec, 0.0)
    g = torch.Generator().manual_seed(3)
    x = lo + (hi - lo) * torch.rand(20000, 2, generator=g, dtype=torch.float64)
    vals = values(bm, x)
    with torch.no_grad():
        crown = bm.propagate(lo, hi, "crown")
    tighter = 0
    for i, (l, u) in search.prior.items():
        z = vals[bm.net.ops[i].inputs[0]].flatten(1)
        assert (z >= l.flatten(1) - 1e-9).all() and (z <= u.flatten(1) + 1e-9).all()
        cl, cu = crown.pre[i]
        tighter += int(((l > cl + 1e-9) | (u < cu - 1e-9)).sum())
    assert tighter > 0  # alpha-CROWN's intermediate bounds improve on CROWN's somewhere
