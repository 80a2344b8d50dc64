"""ReLU splitting inside input-split leaves: never proves what MILP refutes, a dropped ReLU branch
is caught, and a sub-problem's outcome does not depend on its batch-mates."""

from __future__ import annotations

import time

import torch
from torch import Tensor

import nonuniform.proof.bab as bab
from nonuniform.proof.input_split import InputSplit
from nonuniform.proof.leaf_relu import LeafReluSplit, _Sub
from tests.proof.test_input_split import robustness_cases, toys  # noqa: F401 (a fixture)


def outcomes(toys, scales=(0.7, 0.97, 1.03, 1.5)) -> tuple[int, int, int, int]:  # noqa: F811
    """(proofs at or beyond MILP's refuted radius, proofs, false counterexamples, leaves that
    ReLU splitting refuted)."""
    bad = proved = false_points = relu_refuted = 0
    for model, bm, x, label, lo_r, hi_r in toys:
        cases = robustness_cases(label, 3)
        for scale in scales:
            r = (lo_r if scale < 1 else hi_r) * scale
            relu = LeafReluSplit(bm, cases, (5,), batch=32, max_sub=64, min_depth=0)
            search = InputSplit(bm, x - r, x + r, cases, batch=64, relu=relu)
            point = search.run(time.perf_counter() + 3.0)
            if point is not None:
                inside = bool(((point >= x - r) & (point <= x + r)).all())
                false_points += not (inside and bool((cases.violation(model(point)) <= 0).any()))
            relu_refuted += relu.refuted
            if search.proved:
                proved += 1
                bad += r >= hi_r  # MILP found a counterexample at hi_r <= r
    return bad, proved, false_points, relu_refuted


def test_relu_splitting_in_leaves_agrees_with_milp(toys):  # noqa: F811
    bad, proved, false_points, relu_refuted = outcomes(toys)
    assert bad == 0 and false_points == 0
    assert proved >= 4, proved  # of 6 below MILP's radius
    assert relu_refuted > 0  # the path under test did prove leaves


def test_a_dropped_relu_branch_is_caught(toys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(bab, "SIDES", (1,))  # every split keeps only z >= 0: unsound on purpose
    bad, _, _, _ = outcomes(toys, scales=(1.03, 1.5))
    assert bad > 0


def owner_boxes(toy, n: int, seed: int):
    """``n`` random boxes of up to 3x the toy's robust radius around its point, as owners: the
    bounded model, the robustness cases, the boxes and their CROWN state."""
    model, bm, x, label, lo_r, _ = toy
    g = torch.Generator().manual_seed(seed)
    lo = x - lo_r * torch.rand(n, 5, dtype=torch.float64, generator=g) * 3
    hi = lo + lo_r * torch.rand(n, 5, dtype=torch.float64, generator=g) * 3
    return bm, robustness_cases(label, 3), lo, hi, bm.propagate(lo, hi, "crown")


def test_sub_problems_do_not_depend_on_batch_mates(toys):  # noqa: F811
    """One step over eight owners together and over each alone: same refutations, same splits."""
    bm, cases, lo, hi, state = owner_boxes(toys[0], 8, seed=0)

    def outcome(ks: list[int]) -> list[tuple]:
        relu = LeafReluSplit(bm, cases, (5,), batch=64, min_depth=0)
        relu.add(lo[ks], hi[ks], torch.zeros(len(ks), dtype=torch.long),
                 {i: (l[ks], u[ks]) for i, (l, u) in state.pre.items()})  # fmt: skip
        relu.step()
        out = []
        for k in range(len(ks)):
            owner = relu.owners.get(k)
            splits = [s for s in relu.queue if s.owner == k]
            out.append(
                (owner is None, [{i: t.nonzero().tolist() for i, t in s.splits.items()} for s in splits])
            )
        return out

    together = outcome(list(range(8)))
    alone = [outcome([k])[0] for k in range(8)]
    assert together == alone
    assert any(done for done, _ in together) and any(not done for done, _ in together)


def test_first_sub_problems_take_their_owners_bounds(toys, monkeypatch):  # noqa: F811
    """An owner's first sub-problem is its own box unsplit: its bounds are the owner's, not
    propagated again. In batches that mix first and split sub-problems, the refutations and the
    splits made are those of propagating every sub-problem, and only the split ones were propagated."""
    bm, cases, lo, hi, state = owner_boxes(toys[1], 12, seed=1)
    sizes: list[tuple[int, bool]] = []
    propagate = bm.propagate

    def counted(lower, upper, *args, **kwargs):
        sizes.append((lower.shape[0], kwargs.get("reuse") is not None))
        return propagate(lower, upper, *args, **kwargs)

    monkeypatch.setattr(bm, "propagate", counted)

    def run(reuse: bool) -> list:
        relu = LeafReluSplit(bm, cases, (5,), batch=64, min_depth=0)
        relu.reuse_owner_bounds = reuse
        out = []
        for ks in (range(0, 4), range(4, 12), []):
            ks = list(ks)
            if ks:
                relu.add(lo[ks], hi[ks], torch.zeros(len(ks), dtype=torch.long),
                         {i: (l[ks], u[ks]) for i, (l, u) in state.pre.items()})  # fmt: skip
            out.append((relu.step(), relu.refuted, relu.given_back))
            out.append(sorted(str({i: t.nonzero().tolist() for i, t in s.splits.items()}) + str(s.owner)
                              for s in relu.queue))  # fmt: skip
        return out

    reused = run(True)
    with_reuse = list(sizes)
    assert reused == run(False)
    assert (4, True) in with_reuse  # the first batch: only the owners' bounds, one cheap sweep
    assert any(not r and n < m for (n, r), (m, _) in zip(with_reuse, with_reuse[1:]))  # a mixed batch

    # the state itself: a split sub-problem's bounds are those of propagating it, a first one's
    # are its owner's, which propagating again would not tighten (same box, same CROWN)
    relu = LeafReluSplit(bm, cases, (5,), batch=64, min_depth=0)
    relu.add(lo, hi, torch.zeros(12, dtype=torch.long), state.pre)
    todo = list(relu.queue)
    first_op = relu.ops[0]
    l, u = state.pre[first_op]
    unstable, stable = (l < 0) & (u > 0), (l > 0) | (u < 0)

    def sub(k: int, n: Tensor, side: int) -> _Sub:
        split = {i: torch.zeros_like(state.pre[i][0][:1], dtype=torch.int8) for i in relu.ops}
        split[first_op][(0, *n.tolist())] = side
        return _Sub(k, split)

    # split sub-problems of five owners (a first-layer neuron each), and an infeasible one: an
    # always active (inactive) neuron assumed off (on)
    todo += [sub(k, unstable[k].nonzero()[0], 1 if k % 2 else -1) for k in range(5)]
    k = int(stable.any(1).nonzero()[0])
    n = stable[k].nonzero()[0]
    todo.append(sub(k, n, -1 if l[(k, *n.tolist())] > 0 else 1))
    relu.reuse_owner_bounds = False
    full, _ = relu._state(todo)
    relu.reuse_owner_bounds = True
    quick, _ = relu._state(todo)
    first = torch.tensor([s.first for s in todo])
    owners = torch.tensor([s.owner for s in todo])
    moved = False
    for i, (l, u) in quick.pre.items():
        fl, fu = full.pre[i]
        torch.testing.assert_close(l[~first], fl[~first], rtol=0, atol=0)
        torch.testing.assert_close(u[~first], fu[~first], rtol=0, atol=0)
        torch.testing.assert_close(l[first], state.pre[i][0][owners[first]], rtol=0, atol=0)
        torch.testing.assert_close(l[first], fl[first], rtol=0, atol=1e-9)
        torch.testing.assert_close(u[first], fu[first], rtol=0, atol=1e-9)
        moved |= bool((fu[~first] < state.pre[i][1][owners[~first]] - 1e-6).any()) and i != first_op
    assert moved  # the splits tightened later layers: the split sub-problems were propagated
    assert quick.infeasible.tolist() == full.infeasible.tolist() == [False] * 17 + [True]


def test_the_verifier_with_relu_splitting_in_leaves(vnncomp_dir, monkeypatch):
    """ACAS Xu 1_1 prop 2 (unsat by every tool that decided it) with ``leaf_relu`` on: still
    unsat, and ReLU splitting took leaves (from depth 8 here: the default 30 is not reached)."""
    import nonuniform.proof.leaf_relu as leaf_relu
    from nonuniform import load_model

    monkeypatch.setattr(leaf_relu, "MIN_DEPTH", 8)
    from nonuniform.verify.decide import VerifierConfig, decide
    from nonuniform.verify.vnnlib import parse_vnnlib

    folder = vnncomp_dir / "acasxu"
    model, card = load_model(str(folder / "ACASXU_run2a_1_1_batch_2000.onnx"))
    res = decide(model, parse_vnnlib(folder / "prop_2.vnnlib"), card.input_shape, 60,
                 VerifierConfig(leaf_relu=True))  # fmt: skip
    assert res.status == "unsat", res
    assert res.details.get("relu_handed", 0) > 0, res.details


def test_with_relu_splitting_sb_does_not_drill_thin_inputs(toys):  # noqa: F811
    """sb alone may halve an input whose bound coefficient dominates however thin it is (ACAS Xu
    4_2's leaves were drilled to 2^-100 in one input); with ReLU splitting on, inputs narrower
    than RELU_DRILL_CAP of the widest are left alone."""
    import nonuniform.proof.input_split as input_split

    model, bm, x, label, lo_r, _ = toys[0]
    cases = robustness_cases(label, 3)
    lo, hi = x - lo_r, x + lo_r
    leaf_lo, leaf_hi = lo.clone(), hi.clone()
    leaf_hi[0, 2] = leaf_lo[0, 2] + 2 * lo_r * input_split.RELU_DRILL_CAP / 2  # input 2: below the cap
    coef = torch.tensor([[0.1, 0.1, 1e6, 0.1, 0.1]], dtype=torch.float64)  # ... but it dominates the bound
    plain = InputSplit(bm, lo, hi, cases)
    hybrid = InputSplit(bm, lo, hi, cases, relu=LeafReluSplit(bm, cases, (5,)))
    assert int(plain._choose(coef, leaf_lo, leaf_hi)[0]) == 2
    assert int(hybrid._choose(coef, leaf_lo, leaf_hi)[0]) != 2
