"""The falsifier: smoothed rounds converge to the real network and only ever improve the attack."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform.attacks import falsify_boxes
from nonuniform.smoothed import smoothed_forward

from .graph_nets import PoolNet, TinyResNet
from .nets import random_boxes


def test_smoothed_copy_tends_to_the_network():
    for net, shape in ((TinyResNet(seed=2), (1, 8, 8)), (PoolNet(seed=3), (1, 8, 8))):
        f = smoothed_forward(net, shape, torch.float64, "cpu")
        x = torch.rand(5, *shape, dtype=torch.float64)
        with torch.no_grad():
            real = net.double()(x)
        with torch.no_grad():
            errors = [float((f(x, beta) - real).abs().max()) for beta in (1.0, 10.0, 1000.0)]
        net.float()
        assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2


def test_smoothed_rounds_never_hurt_and_break_more_boxes():
    """Same step budget (5 x 10 PGD steps): 1 plain restart + 4 smoothed rounds break more boxes
    than 5 plain restarts (measured: 19 vs 12, 28 vs 18, 5 vs 3 over three random nets)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    lower, upper = random_boxes((6,), batch=200, seed=1, max_radius=2.0)
    labels = net((lower + upper) / 2).argmax(1)
    plain = falsify_boxes(net, lower, upper, labels, restarts=5, steps=10, corners=0, smoothing=())
    strong = falsify_boxes(net, lower, upper, labels, restarts=1, steps=10, corners=0)
    assert strong.broken.sum() > plain.broken.sum()
    alone = falsify_boxes(net, lower, upper, labels, restarts=1, steps=10, corners=0, smoothing=())
    assert (strong.margin <= alone.margin + 1e-6).all()  # the rounds only replace by better points
    inside = (strong.point >= lower - 1e-7) & (strong.point <= upper + 1e-7)
    assert inside.all()
    with torch.no_grad():
        out = net(strong.point)
    true = out.gather(1, labels[:, None])[:, 0]
    others = out.scatter(1, labels[:, None], float("inf")).min(1).values
    assert torch.allclose(true - others, strong.margin, atol=1e-5)  # scored on the real network


def test_recurrent_models_fall_back_to_plain_pgd():
    from nonuniform import SequenceClassifier

    model = SequenceClassifier(nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)).eval()
    assert smoothed_forward(model, (5, 3), torch.float32, "cpu") is None
    lo = torch.zeros(2, 5, 3)
    f = falsify_boxes(model, lo, lo + 0.1, model(lo).argmax(1), restarts=1, steps=5, corners=4)
    assert f.margin.shape == (2,)
