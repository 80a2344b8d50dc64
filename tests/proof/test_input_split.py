"""Input splitting: never proves what MILP refutes, a dropped half is caught, leaves are bounded
independently of their batch-mates, and the combined bound of a conjunction is sound."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

import nonuniform.proof.input_split as input_split
from nonuniform.engine.bounds import BoundedModel
from nonuniform.engine.specs import OutputCases
from nonuniform.proof.input_split import InputSplit, combined_gap
from nonuniform.proof.lp_leaf import ReluChainLP
from nonuniform.proof.milp import verify_box_milp
from tests.nets import mlp


def robustness_cases(label: int, classes: int) -> OutputCases:
    """The unsafe region 'some other class scores at least as high': OR_j (y_j - y_label >= 0)."""
    disjuncts = []
    for j in range(classes):
        if j != label:
            c = np.zeros(classes)
            c[j], c[label] = 1.0, -1.0
            disjuncts.append([(c, 0.0)])
    return OutputCases.from_disjuncts(disjuncts, classes)


@pytest.fixture(scope="module")
def toys():
    """Small 5-input ReLU nets, a point, its label, and MILP's robust/refuted radii (~3% apart)."""
    out = []
    for seed in range(3):
        model = mlp(nn.ReLU(), sizes=(5, 12, 12, 3), seed=seed).double().eval()
        x = torch.rand(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        label = int(model(x).argmax())
        lo, hi = 1e-3, 3.0
        for _ in range(8):
            mid = math.sqrt(lo * hi)
            robust = (
                verify_box_milp(model, (x - mid)[0], (x + mid)[0], label, time_limit=30).status == "robust"
            )
            lo, hi = (mid, hi) if robust else (lo, mid)
        out.append((model, BoundedModel(model, (5,), torch.float64), x, label, lo, hi))
    return out


def outcomes(
    toys, scales=(0.7, 0.97, 1.03, 1.5), branching: str = "sb", lp: bool = False
) -> tuple[int, int, int]:
    """(proofs at or beyond MILP's refuted radius, proofs, counterexamples that do not hold)."""
    bad = proved = false_points = 0
    for model, bm, x, label, lo_r, hi_r in toys:
        cases = robustness_cases(label, 3)
        for scale in scales:
            r = (lo_r if scale < 1 else hi_r) * scale
            search = InputSplit(bm, x - r, x + r, cases, batch=256, branching=branching,
                                lp=ReluChainLP(bm) if lp else None)  # fmt: skip
            point = search.run(time.perf_counter() + 3.0)
            if point is not None:
                inside = bool(((point >= x - r) & (point <= x + r)).all())
                holds = bool((cases.violation(model(point)) <= 0).any())
                false_points += not (inside and holds)
            if search.proved:
                proved += 1
                bad += r >= hi_r  # MILP found a counterexample at hi_r <= r
    return bad, proved, false_points


@pytest.mark.parametrize("branching,lp", [("sb", False), ("fsb", False), ("sb", True)])
def test_input_splitting_agrees_with_milp(toys, branching, lp):
    bad, proved, false_points = outcomes(toys, branching=branching, lp=lp)
    assert bad == 0 and false_points == 0
    assert proved >= 4, proved  # of 6 below MILP's radius, including boxes CROWN alone cannot prove


def test_a_dropped_half_is_caught(toys, monkeypatch):
    original = input_split.InputSplit._split

    def keep_left_half(self, lo, hi, depth, pre, dim, hold=None):  # unsound on purpose: right halves vanish
        original(self, lo, hi, depth, pre, dim, hold)
        n = lo.shape[0]
        self.lo, self.hi, self.depth, self.hold = self.lo[:-n], self.hi[:-n], self.depth[:-n], self.hold[:-n]
        self.prior = {i: (lb[:-n], ub[:-n]) for i, (lb, ub) in self.prior.items()}

    monkeypatch.setattr(input_split.InputSplit, "_split", keep_left_half)
    bad, _, _ = outcomes(toys, scales=(1.03, 1.5))
    assert bad > 0


def test_leaf_bounds_do_not_depend_on_batch_mates(toys):
    model, bm, x, label, lo_r, _ = toys[0]
    cases = robustness_cases(label, 3)
    g = torch.Generator().manual_seed(0)
    lo = x - lo_r * torch.rand(16, 5, dtype=torch.float64, generator=g) * 3
    hi = lo + lo_r * torch.rand(16, 5, dtype=torch.float64, generator=g) * 3
    spec = (-cases.rows)[None].expand(16, -1, -1)
    together, _ = bm.bounds(lo, hi, spec, "crown", bound_upper=False)
    alone = torch.cat([bm.bounds(lo[k : k + 1], hi[k : k + 1], spec[:1], "crown", bound_upper=False)[0]
                       for k in range(16)])  # fmt: skip
    assert torch.allclose(together, alone, rtol=0, atol=1e-10)


def test_combined_gap_is_a_lower_bound_of_the_max_and_beats_single_atoms():
    g = torch.Generator().manual_seed(1)
    m, atoms, n = 64, 4, 5
    a = torch.randn(m, atoms, n, dtype=torch.float64, generator=g)
    b = torch.randn(m, atoms, dtype=torch.float64, generator=g) + 2
    lo = -torch.rand(m, n, dtype=torch.float64, generator=g)
    hi = torch.rand(m, n, dtype=torch.float64, generator=g)
    index = torch.arange(atoms)[None]
    value = combined_gap(a, b, lo, hi, index)[:, 0]
    # the true minimum over the box of max_w (a_w . x + b_w) is at least the combined bound
    x = lo[:, None] + torch.rand(m, 20000, n, dtype=torch.float64, generator=g) * (hi - lo)[:, None]
    sampled = (torch.einsum("mwn,msn->msw", a, x) + b[:, None]).max(-1).values.min(1).values
    assert (value <= sampled + 1e-9).all()
    single = (torch.minimum(a * lo[:, None], a * hi[:, None]).sum(-1) + b).max(-1).values
    assert (value >= single - 1e-9).all() and (value > single + 1e-3).sum() >= 10


def test_float64_only_and_branching_names():
    model = mlp(nn.ReLU(), sizes=(5, 8, 3)).eval()
    cases = robustness_cases(0, 3)
    with pytest.raises(ValueError, match="float64"):
        InputSplit(BoundedModel(model, (5,)), torch.zeros(1, 5), torch.ones(1, 5), cases)
    with pytest.raises(ValueError, match="branching must be one of \\('sb', 'widest', 'fsb'\\)"):
        InputSplit(BoundedModel(model, (5,), torch.float64), torch.zeros(1, 5).double(),
                   torch.ones(1, 5).double(), cases, branching="random")  # fmt: skip


def test_a_parents_bounds_tighten_its_halves_soundly(toys):
    """propagate(prior=) with the parent's op bounds: never looser than without, and every
    sampled point of the half stays above the bound."""
    model, bm, x, label, lo_r, _ = toys[1]
    cases = robustness_cases(label, 3)
    lo, hi = x - 2 * lo_r, x + 2 * lo_r
    parent = bm.propagate(lo, hi, "crown")
    mid = (lo + hi) / 2
    spec = (-cases.rows)[None]
    for half_lo, half_hi in ((lo, mid), (mid, hi)):
        plain, _ = bm.bounds(half_lo, half_hi, spec, "crown", bound_upper=False)
        state = bm.propagate(half_lo, half_hi, "crown", prior=parent.pre)
        with_prior, _ = bm.bounds(half_lo, half_hi, spec, "crown", bound_upper=False, state=state)
        assert (with_prior >= plain - 1e-9).all()
        pts = half_lo + torch.rand(20000, 5, dtype=torch.float64) * (half_hi - half_lo)
        assert ((model(pts) @ spec[0].T).min(0).values >= with_prior[0] - 1e-9).all()


def test_a_portfolio_is_proved_when_one_search_is(toys):
    from nonuniform.proof.portfolio import Portfolio

    model, bm, x, label, lo_r, _ = toys[0]
    cases = robustness_cases(label, 3)
    r = 0.9 * lo_r
    both = Portfolio([InputSplit(bm, x - r, x + r, cases, branching=b) for b in ("sb", "fsb")])
    assert both.run(time.perf_counter() + 10) is None and both.proved and not both.exhausted
    assert both.stats.leaves >= 1


def test_a_dimension_too_thin_to_halve_falls_back_to_the_widest():
    model = mlp(nn.ReLU(), sizes=(3, 8, 3)).double().eval()
    bm = BoundedModel(model, (3,), torch.float64)
    lo = torch.tensor([[0.5, 0.0, -1.0]], dtype=torch.float64)
    hi = torch.tensor([[0.5, 1.0, 1.0]], dtype=torch.float64)  # X_0 fixed: zero width
    search = InputSplit(bm, lo, hi, robustness_cases(0, 3))
    search.lo, search.hi, search.depth, search.hold = (
        search.lo[:0],
        search.hi[:0],
        search.depth[:0],
        search.hold[:0],
    )
    half = torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64)  # a leaf: X_1 already halved once
    search._split(lo, half, torch.zeros(1, dtype=torch.long), {}, torch.tensor([0]))
    assert not search.exhausted and search.lo.shape[0] == 2
    assert search.hi[0].tolist() == [0.5, 0.5, 0.0] and search.lo[1].tolist() == [0.5, 0.0, 0.0]


def test_a_nan_bound_refutes_nothing(toys, monkeypatch):
    """Bounds that overflowed to NaN (every comparison false) must leave their leaves open."""
    model, bm, x, label, lo_r, _ = toys[0]
    original = input_split.InputSplit._bound

    def nan_bound(self, lo, hi, prior):
        case_gap, gap, a, state = original(self, lo, hi, prior)
        return torch.full_like(case_gap, math.nan), gap, a, state

    monkeypatch.setattr(input_split.InputSplit, "_bound", nan_bound)
    r = 0.5 * lo_r  # a box MILP calls robust: with real bounds it is proved at once
    search = InputSplit(bm, x - r, x + r, robustness_cases(label, 3), batch=64)
    search.run(time.perf_counter() + 0.5)
    assert not search.proved and search.stats.leaves > 0
