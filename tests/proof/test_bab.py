"""Branch-and-bound: never proves a box that MILP refutes, proves more than CROWN, and a missing
branch is caught by the same checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import nonuniform.proof.bab as bab
from nonuniform.engine.bounds import BoundedModel, margin_spec
from nonuniform.proof.bab import bab_prove
from nonuniform.proof.milp import verify_box_milp
from tests.nets import mlp


def toy(seed: int):
    model = mlp(nn.ReLU(), sizes=(2, 16, 16, 3), seed=seed).double().eval()
    x = torch.rand(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    pred = model(x).argmax(1)
    return model, BoundedModel(model, (2,), torch.float64), x, pred, margin_spec(pred, 3).double()


def milp_radius(model, x, pred, steps: int = 9) -> tuple[float, float]:
    """(robust, refuted) uniform radii by MILP, ~1.5% apart (bisection in log-space)."""
    lo, hi = 1e-3, 2.0
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        robust = (
            verify_box_milp(model, (x - mid)[0], (x + mid)[0], int(pred), time_limit=30).status == "robust"
        )
        lo, hi = (mid, hi) if robust else (lo, mid)
    return lo, hi


def crown_proves(bm, x, r, spec) -> bool:
    lb, _ = bm.bounds(x - r, x + r, spec, "crown", bound_upper=False)
    return bool(lb.min() > 0)


@pytest.fixture(scope="module")
def toys():
    out = []
    for seed in range(3):
        model, bm, x, pred, spec = toy(seed)
        out.append((model, bm, x, pred, spec, *milp_radius(model, x, pred)))
    return out


def violations(toys, scales=(0.8, 0.95, 1.05, 1.3)) -> tuple[int, int, int]:
    """(boxes BaB proved at or beyond MILP's refuted radius, boxes proved, of which CROWN could not)."""
    bad = proved = gained = 0
    for _model, bm, x, _pred, spec, lo_r, hi_r in toys:
        for scale in scales:
            r = (lo_r if scale < 1 else hi_r) * scale
            res = bab_prove(bm, x - r, x + r, spec, 1e-6, time_budget=1.5)
            if res.proved[0]:
                proved += 1
                gained += not crown_proves(bm, x, r, spec)
                bad += r >= hi_r  # MILP found a counterexample at hi_r <= r
    return bad, proved, gained


def test_bab_never_proves_what_milp_refutes_and_proves_more_than_crown(toys):
    bad, proved, gained = violations(toys)
    assert bad == 0
    assert gained >= 3, (proved, gained)  # boxes between CROWN's and MILP's radius


def test_a_dropped_branch_is_caught(toys, monkeypatch):
    monkeypatch.setattr(bab, "SIDES", (1,))  # every split keeps only z >= 0: unsound on purpose
    bad, _, _ = violations(toys, scales=(1.05, 1.3))
    assert bad > 0


def test_bab_result_per_sample_and_float64_only():
    model, bm, x, pred, spec = toy(1)
    xs = torch.cat([x, x])
    r = torch.tensor([[0.01], [5.0]], dtype=torch.float64)  # tiny box: proved at once; huge: not
    res = bab_prove(bm, xs - r, xs + r, spec.expand(2, -1, -1), 1e-6, time_budget=1.0)
    assert res.proved.tolist() == [True, False]
    assert int(res.leaves[0]) == 1 and int(res.leaves[1]) > 1
    assert bool(res.timed_out[1] | res.exhausted[1])
    with pytest.raises(ValueError, match="float64"):
        bab_prove(BoundedModel(model.float(), (2,)), x.float() - 0.1, x.float() + 0.1, spec.float(), 0.0)


def test_certify_with_bab_grows_boxes_that_milp_and_verify_confirm():
    from nonuniform import certify_boxes, verify_boxes

    model = mlp(nn.ReLU(), sizes=(2, 16, 16, 3), seed=1).eval()
    x = torch.rand(6, 2, generator=torch.Generator().manual_seed(3))
    plain = certify_boxes(model, x, iterations=20)
    grown = certify_boxes(model, x, iterations=20, bab=True, bab_time=2.0)
    assert grown.settings["bab"] is True
    cert = grown.certified
    assert (cert == plain.certified).all() and cert.sum() >= 4
    gain = grown.log_volume[cert] - plain.log_volume[cert]
    assert (gain >= -1e-6).all() and (gain > 0.01).sum() >= 2, gain
    report = verify_boxes(model, grown)  # re-proves the grown boxes by branch-and-bound
    assert report.ok and report.bab_proved, report
    assert not verify_boxes(model, grown, bab=False).ok  # one bound alone cannot prove them
    for i in map(int, report.bab_proved):
        k = list(grown.indices).index(i)
        lo, hi = torch.tensor(grown.lower[k]), torch.tensor(grown.upper[k])
        r = verify_box_milp(model, lo, hi, int(grown.preds[k]), time_limit=30)
        assert r.status == "robust", (i, r)


def test_bab_is_refused_where_it_cannot_run():
    from nonuniform import certify_boxes

    x = torch.rand(2, 2)
    with pytest.raises(ValueError, match="ReLU/LeakyReLU"):
        certify_boxes(mlp(nn.Tanh(), sizes=(2, 8, 3)).eval(), x, bab=True, iterations=2)
    with pytest.raises(ValueError, match="float64"):
        certify_boxes(mlp(nn.ReLU(), sizes=(2, 8, 3)).eval(), x, bab=True, check_dtype="float32")


def test_cli_certify_bab_then_verify(tmp_path):
    from nonuniform_cli.main import app
    from typer.testing import CliRunner

    out = tmp_path / "run"
    args = ["certify", "mnist-mlp", "--out", str(out), "--count", "2", "--iterations", "5", "--no-figures"]
    r = CliRunner().invoke(app, [*args, "--bab", "--bab-time", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["options"]["bab"] is True
    r = CliRunner().invoke(app, ["verify", str(out / "boxes.npz"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"] is True


def test_input_split_box_proofs_never_prove_what_milp_refutes():
    """prove_boxes on a 2-input net (input splitting): every proved box has an exact minimum margin
    of at least the threshold; some boxes are proved and some are not (the test can fail)."""
    model = mlp(nn.ReLU(), sizes=(2, 16, 16, 3), seed=1).eval()
    bm64 = BoundedModel(model, (2,), torch.float64)
    g = torch.Generator().manual_seed(5)
    c = torch.rand(12, 2, generator=g, dtype=torch.float64)
    r = 0.02 + 0.3 * torch.rand(12, 1, generator=g, dtype=torch.float64)
    preds = model(c.float()).argmax(1)
    threshold = 0.05
    res = bab.prove_boxes(bm64, c - r, c + r, margin_spec(preds, 3).double(), threshold, time_budget=2.0)
    assert res.proved.any() and (~res.proved).any(), res.proved
    for k in range(len(c)):
        exact = verify_box_milp(
            model, (c[k] - r[k]).float(), (c[k] + r[k]).float(), int(preds[k]), time_limit=30
        )
        if res.proved[k]:
            assert exact.status == "robust" and exact.min_margin >= threshold - 1e-5, (k, exact)


def test_growth_by_input_splitting_is_sound_and_not_smaller_than_by_relu_splitting(monkeypatch):
    from nonuniform import certify_boxes, verify_boxes

    model = mlp(nn.ReLU(), sizes=(2, 16, 16, 3), seed=1).eval()
    x = torch.rand(6, 2, generator=torch.Generator().manual_seed(3))
    split = certify_boxes(model, x, iterations=20, bab=True, bab_time=2.0)
    assert verify_boxes(model, split).ok
    monkeypatch.setattr(bab, "INPUT_SPLIT_MAX", 0)  # the ReLU branch-and-bound instead
    relu = certify_boxes(model, x, iterations=20, bab=True, bab_time=2.0)
    cert = split.certified & relu.certified
    assert cert.sum() >= 4
    assert (split.log_volume[cert] >= relu.log_volume[cert] - 1e-6).all(), (split.log_volume, relu.log_volume)
