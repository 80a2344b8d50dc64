"""Certified explanations (issue 35): proved, subset-minimal (each feature tested), sound under
attack and MILP, batch independent, cheaper than one call per feature; witnesses are real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nonuniform import certify_boxes
from nonuniform.analysis.sufficient import CertifiedExplainer, Explanations, verify_explanations
from nonuniform.attacks.pgd import margin_objective, pgd_minimize
from nonuniform.engine.bounds import BoundedModel, margin_spec
from nonuniform.proof.milp import verify_box_milp
from tests.nets import cnn, mlp


def _inputs(shape, n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small():
    model = mlp(nn.ReLU(), sizes=(10, 24, 24, 3), seed=7)
    x = _inputs((10,), 6, seed=3)
    return model, x, CertifiedExplainer(model).explain(x, eps=0.4, order="random", seed=1)


def _proved(model, lo, hi, pred) -> float:
    bm = BoundedModel(model, tuple(lo.shape[1:]), torch.float64)
    spec = margin_spec(pred, bm.num_classes).double()
    return float(bm.bounds(lo.double(), hi.double(), spec, "crown", bound_upper=False)[0].min())


def test_explanations_are_proved_minimal_and_sound(small):
    model, x, ex = small
    assert ex.proved.all() and ex.minimal.all()
    assert (ex.size < 1).all() and (ex.size > 0).any()
    for i in range(len(x)):
        s = ex.sets[i]
        # the region: S at the input, the rest over x0 +- eps within [0, 1]
        lo_f, hi_f = np.maximum(ex.inputs[i] - 0.4, 0), np.minimum(ex.inputs[i] + 0.4, 1)
        assert np.allclose(ex.lower[i], np.where(s, ex.inputs[i], lo_f))
        assert np.allclose(ex.upper[i], np.where(s, ex.inputs[i], hi_f))
        pred = torch.tensor([int(ex.preds[i])])
        assert _proved(model, torch.tensor(ex.lower[i : i + 1]), torch.tensor(ex.upper[i : i + 1]), pred) > 0
        for k in np.nonzero(s)[0]:  # minimality: freeing any one feature of S is not proved
            lo, hi = ex.lower[i].copy(), ex.upper[i].copy()
            lo[k], hi[k] = lo_f[k], hi_f[k]
            assert _proved(model, torch.tensor(lo[None]), torch.tensor(hi[None]), pred) <= 1e-3
    # attacks inside every region never flip the prediction
    lo, hi = torch.tensor(ex.lower), torch.tensor(ex.upper)
    _, val = pgd_minimize(margin_objective(model, torch.tensor(ex.preds)), lo, hi, steps=60, restarts=8)
    assert (val > 0).all()
    corners = lo + (hi - lo) * torch.randint(
        0, 2, (512, *lo.shape), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits = model(corners.reshape(-1, 10)).reshape(512, len(x), -1)
    assert (logits.argmax(-1) == torch.tensor(ex.preds)).all()


def test_milp_confirms_the_regions(small):
    model, _, ex = small
    for i in range(len(ex)):
        r = verify_box_milp(model, torch.tensor(ex.lower[i]), torch.tensor(ex.upper[i]), int(ex.preds[i]))
        assert r.status == "robust", (i, r.status)


def test_witnesses_flip_by_moving_only_their_set(small):
    model, _, ex = small
    has = np.nonzero(ex.witness_preds >= 0)[0]
    assert len(has), "on this net some prediction can be flipped within eps"
    for i in has:
        moved = ex.witnesses[i] != ex.inputs[i]
        assert not (moved & ~ex.witness_sets[i]).any() and ex.witness_sets[i].any()
        assert (ex.witness_sets[i] <= ex.sets[i]).all()  # T is part of S
        with torch.no_grad():
            assert int(model(torch.tensor(ex.witnesses[i][None])).argmax()) != int(ex.preds[i])


def test_batch_independence_and_round_trip(small, tmp_path):
    model, x, ex = small
    alone = [
        CertifiedExplainer(model).explain(x[i : i + 1], eps=0.4, order="random", seed=1 + i) for i in (0, 1)
    ]
    batched = CertifiedExplainer(model).explain(x[:2], eps=0.4, order="random", seed=1, batch_size=1)
    for i in (0, 1):
        assert (alone[i].sets[0] == batched.sets[i]).all()
    ex.save(tmp_path / "e.npz")
    back = Explanations.load(tmp_path / "e.npz")
    assert (back.sets == ex.sets).all() and back.settings["eps"] == 0.4
    rep = verify_explanations(model, back)
    assert rep["ok"], rep
    # a region with one feature of S freed on purpose is caught by the float64 re-proof
    i = int(np.nonzero(back.sets.reshape(len(back), -1).any(1))[0][0])
    k = int(np.nonzero(back.sets[i])[0][0])
    back.lower[i, k], back.upper[i, k] = max(back.inputs[i, k] - 0.4, 0), min(back.inputs[i, k] + 0.4, 1)
    assert i in verify_explanations(model, back)["bound_failures"]


def test_box_order_on_a_cnn_needs_few_calls_and_is_proved():
    model = cnn(nn.ReLU(), seed=2, pool=False, bn=False)
    x = _inputs((1, 8, 8), 3, seed=4)
    boxes = certify_boxes(model, x)
    ex = CertifiedExplainer(model).explain(x, eps=0.3, order="box", boxes=boxes)
    assert ex.proved.all() and ex.minimal.all()
    # galloping: fewer traversal calls than one per feature (minimality tests come on top: |S|)
    traversal = ex.calls - ex.sets.reshape(3, -1).sum(1)
    assert (traversal < 64).all(), traversal
    full = CertifiedExplainer(model).explain(x, eps=None, order="sensitivity", contrastive=False)
    assert full.proved.all() and (full.size >= ex.size - 1e-9).mean() > 0.5  # the whole domain needs more


def test_bad_arguments():
    model = mlp(nn.ReLU(), sizes=(4, 8, 3), seed=0)
    x = _inputs((4,), 1)
    with pytest.raises(ValueError, match="order"):
        CertifiedExplainer(model).explain(x, order="saliency")
    with pytest.raises(ValueError, match="boxes"):
        CertifiedExplainer(model).explain(x, order="box")
    with pytest.raises(ValueError, match="eps"):
        CertifiedExplainer(model).explain(x, eps=-1.0, order="random")
