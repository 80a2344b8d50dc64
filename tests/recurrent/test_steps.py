"""Per-step robustness: sound, maximal up to the bisection's resolution, and clear on bad input."""

from __future__ import annotations

import pytest
import torch

from nonuniform import compute_bounds
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.engine.bounds import margin_spec
from nonuniform.recurrent.steps import step_robustness
from tests.nets import mlp
from tests.recurrent.test_recurrent import SHAPE, seq_model


def _step_box(x, t, r):
    mask = torch.zeros(SHAPE)
    mask[t] = 1.0
    return (x - r * mask).clamp(0, 1), (x + r * mask).clamp(0, 1)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-relu"])
def test_step_radii_are_certified_unbreakable_and_nearly_maximal(kind):
    model = seq_model(kind, seed=11)
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(12))
    res = step_robustness(model, x, method="crown", bisection_steps=12)
    assert res.radius.shape == (3, SHAPE[0]) and res.correct.all()
    assert (res.radius > 0).any() and (res.radius <= 1).all()
    preds = torch.as_tensor(res.preds)
    for t in range(SHAPE[0]):
        r = torch.as_tensor(res.radius[:, t], dtype=torch.float32)[:, None, None]
        lo, hi = _step_box(x, t, r)
        lb, _ = compute_bounds(model.double(), lo.double(), hi.double(), margin_spec(preds, 4).double())
        model.float()
        assert (lb.min(1).values > 0).all(), f"step {t}: reported radius not certified in float64"
        assert not falsify_boxes(model, lo, hi, preds, restarts=3, steps=30).broken.any()
        # A box 1.5x larger (when not already the whole domain) fails the certificate.
        grow = res.radius[:, t] < 0.6
        if grow.any():
            lo2, hi2 = _step_box(x[grow], t, 1.5 * r[grow])
            lb2, _ = compute_bounds(model, lo2, hi2, margin_spec(preds[grow], 4))
            assert (lb2.min(1).values < 1e-3).all(), f"step {t}: the bisection stopped short"


def test_misclassified_samples_get_zero_and_profile_skips_them():
    model = seq_model("gru", seed=13)
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(14))
    preds = model(x).argmax(1)
    wrong = (preds + 1) % 4
    labels = torch.where(torch.arange(4) < 2, preds, wrong)
    res = step_robustness(model, x, labels, bisection_steps=4)
    assert res.correct.tolist() == [True, True, False, False]
    assert (res.radius[2:] == 0).all() and (res.radius[:2] > 0).any()
    med, q1, q3 = res.profile()
    assert med.shape == (SHAPE[0],) and (q1 <= med).all() and (med <= q3).all()


def test_feedforward_model_is_rejected():
    with pytest.raises(TypeError, match="SequenceClassifier"):
        step_robustness(mlp(torch.nn.ReLU()), torch.rand(1, 6))


EMBEDDED = ["mnist-rnn"] + (
    ["mnist-lstm", "mnist-gru", "fashion-rnn", "fashion-lstm", "fashion-gru"]
    if int(__import__("os").environ.get("NONUNIFORM_SEEDS", "1")) > 1
    else []
)


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_step_radii_are_not_quantised_and_maximal(name):
    """Issue 13: batched per-step boxes made float32 bounds wrong, the float64 proof halved them,
    and radii came out as exact powers of two. Now none is, and 1.5x every radius fails."""
    import numpy as np

    from nonuniform import load_model
    from nonuniform.zoo.samples import load_samples

    model, _ = load_model(name)
    x, y = load_samples("fashion-mnist" if name.startswith("fashion") else "mnist")
    res = step_robustness(model, x[:1], y[:1], bisection_steps=10)
    assert res.correct.all()
    r = res.radius[0]
    logs = np.log2(r[r > 0])
    assert len(logs) > 20 and not (np.abs(logs - np.round(logs)) < 1e-9).any()
    pred = torch.as_tensor(res.preds[:1])
    grow = [t for t in range(28) if 0 < r[t] < 0.6]
    mask = torch.zeros(len(grow), 1, 28, 28)
    for i, t in enumerate(grow):
        mask[i, 0, t] = 1.5 * float(r[t])
    lo, hi = (x[:1] - mask).clamp(0, 1), (x[:1] + mask).clamp(0, 1)
    lb, _ = compute_bounds(model, lo, hi, margin_spec(pred.repeat(len(grow)), 10))
    assert (lb.min(1).values < 1e-3).all()
