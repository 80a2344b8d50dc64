"""Explanations: masked attacks stay in their set, certified <= attacked, ignored features."""

from __future__ import annotations

import numpy as np
import torch

from nonuniform import certify_boxes, load_model
from nonuniform.analysis.attribution import (
    DeepLift,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
    certified_complement_radius,
    evaluate_ranking,
    explanation_set,
    masked_pgd,
    min_attack_budget,
    robustness_attribution,
    top_k_mask,
)
from nonuniform.zoo.samples import load_samples


def test_masked_attack_never_moves_features_outside_the_set(monkeypatch):
    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    x, y = x[:4], y[:4]
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, 10:18, 10:18] = True
    seen = []
    real = model.forward

    def spy(inp):
        seen.append(inp.detach().clone())
        return real(inp)

    monkeypatch.setattr(model, "forward", spy)
    masked_pgd(model, x, y, mask, torch.full((4,), 0.5), steps=5, restarts=2)
    assert seen and all(torch.equal(s[~mask.expand_as(s)], x[~mask.expand_as(s)]) for s in seen)


def test_certified_complement_radius_below_attack_budget():
    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    x, y = x[:6], y[:6]
    imp = Saliency(model).attribute(x, y)
    free = torch.ones(x.shape[1:], dtype=torch.bool)
    for k in (0.1, 0.3):
        mask = top_k_mask(imp, k, free)
        cert = certified_complement_radius(model, x, y, mask)
        attack = min_attack_budget(model, x, y, ~mask, bisection=7, steps=15, restarts=2)
        assert (cert > 0).all() and (cert <= attack + 1e-6).all(), (cert, attack)


def test_ignored_features_get_largest_radii_and_stay_out_of_explanations():
    # A model that provably ignores the left half of the image (zero first-layer weights).
    torch.manual_seed(0)
    model, _ = load_model("mnist-mlp")
    with torch.no_grad():
        w = model[2].weight.view(100, 28, 28)
        w[:, :, :14] = 0.0
    x, _ = load_samples("mnist")
    # Predicted labels (zeroing weights changes some predictions); 200 iterations: at lr 0.05 in
    # log space, growing from the uniform radius (~0.02) to the domain edge takes ~80 steps.
    res = certify_boxes(model, x[:3], iterations=200)
    assert res.certified.all()
    radii = res.radii.reshape(3, 28, 28)
    # ignored features span the whole domain: half-width 0.5, the largest possible
    assert np.allclose(radii[:, :, :14], 0.5)
    assert (radii[:, :, :14].min(axis=(1, 2)) >= radii.reshape(3, -1).max(1) - 1e-7).all()
    from tests.certify.test_boxes import _assert_unbroken

    _assert_unbroken(model, res, restarts=2)  # boxes spanning whole columns must still hold
    for k in (0.05, 0.2, 0.45):
        sets = explanation_set(res, k).reshape(3, 28, 28)
        assert not sets[:, :, :14].any()


def test_baselines_shapes_and_evaluation_runs():
    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    x, y = x[:3], y[:3]
    methods = (Saliency(model), InputXGradient(model), IntegratedGradients(model, n_steps=8))
    for method in (*methods, DeepLift(model), Occlusion(model)):
        a = method.attribute(x, y)
        assert a.shape == x.shape and (a >= 0).all() and a.sum() > 0
    # Captum's numbers are the textbook quantities: |grad|, |x * grad|, and IG's completeness.
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, y[:, None]).sum(), xg)
    assert torch.allclose(methods[0].attribute(x, y), g.abs(), atol=1e-6)
    assert torch.allclose(methods[1].attribute(x, y), (x * g).abs(), atol=1e-6)
    import captum.attr

    ig = captum.attr.IntegratedGradients(model).attribute(x, target=y, n_steps=200)
    gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None])[:, 0]
    assert torch.allclose(ig.flatten(1).sum(1), gap, rtol=1e-2, atol=1e-2)
    res = certify_boxes(model, x, y, iterations=20)
    scores = evaluate_ranking(
        model,
        x,
        y,
        robustness_attribution(res),
        torch.ones(1, 28, 28, dtype=torch.bool),
        "ours",
        k_fractions=(0.05, 0.25),
        certified=True,
        steps=10,
        restarts=1,
    )
    assert scores.s_r.shape == (2, 3) and np.isfinite(scores.auc_s_r)
    # a larger set is easier to attack through; a smaller complement harder
    assert (scores.s_r[1] <= scores.s_r[0] + 1e-3).mean() >= 2 / 3
    assert (scores.certified_complement <= scores.s_r_complement + 1e-6).all()


def test_evaluation_stays_in_a_per_channel_domain(tmp_path):
    """Boxes certified in a per-channel domain (normalised inputs) are evaluated with that domain
    as tensors (the evaluation assumed [0, 1] before; a tensor domain broke its budget span)."""
    from nonuniform.analysis.explain import explain_boxes

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
    )
    net.eval()
    x = torch.rand(2, 3, 6, 6) * 4 - 2  # normalised values, outside [0, 1]
    domain = ([-2.0, -2.0, -2.0], [2.0, 2.0, 2.0])
    boxes = certify_boxes(net, x, None, domain=domain)
    assert boxes.certified.all()
    report = explain_boxes(boxes, tmp_path, [0.1], net, max_samples=2, attack_steps=3, bisection_steps=3)
    assert report["evaluation"], report
