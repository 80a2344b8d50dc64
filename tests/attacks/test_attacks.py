"""The falsifier: smoothed rounds converge to the real network and only ever improve the attack."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform.attacks.pgd import falsify_boxes, margin_objective
from nonuniform.attacks.smoothed import smoothed_forward
from nonuniform.proof.milp import verify_box_milp
from tests.graph_nets import PoolNet, TinyResNet
from tests.nets import random_boxes


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
    than 5 plain restarts. Measured on this net, 200 boxes, radii 0.3/0.6/1.0 x seeds 1-3: 66 vs 65,
    137/134, 186/185, 56/54, 131/127, 182/174, 53/52, 132/126, 188/187 (a small, consistent gain;
    the 19 vs 12 quoted before came with the wrong margin objective)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    lower, upper = random_boxes((6,), batch=200, seed=2, max_radius=1.0)
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
    runner_up = out.scatter(1, labels[:, None], float("-inf")).max(1).values
    assert torch.allclose(true - runner_up, strong.margin, atol=1e-5)  # scored on the real network


def test_recurrent_models_fall_back_to_plain_pgd():
    from nonuniform import SequenceClassifier

    model = SequenceClassifier(nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)).eval()
    assert smoothed_forward(model, (5, 3), torch.float32, "cpu") is None
    lo = torch.zeros(2, 5, 3)
    f = falsify_boxes(model, lo, lo + 0.1, model(lo).argmax(1), restarts=1, steps=5, corners=4)
    assert f.margin.shape == (2,)


def test_margin_is_against_the_runner_up_class():
    """f_c - max_{j != c} f_j (sessions 1-4 had f_c - min_j f_j: the attack then only 'broke' a
    box where the predicted class fell to the bottom, and tightness.md's PGD column was ~5x)."""
    logits = torch.tensor([[1.0, 3.0, 2.0, -5.0], [1.0, 3.0, 2.0, -5.0]])
    obj = margin_objective(lambda x: x, torch.tensor([1, 0]))
    assert obj(logits).tolist() == [1.0, -2.0]


def test_attack_breaks_what_milp_refutes():
    """On 30 boxes of a small ReLU net, every box where MILP finds a clear counterexample (margin
    below -0.05) is broken by the falsifier, and no box MILP proves robust is."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    lower, upper = random_boxes((6,), batch=30, seed=2, max_radius=1.5)
    labels = net((lower + upper) / 2).argmax(1)
    f = falsify_boxes(net, lower, upper, labels, restarts=3, steps=30)
    exact = [verify_box_milp(net, lower[i], upper[i], int(labels[i]), time_limit=20) for i in range(30)]
    refuted = torch.tensor([e.status == "counterexample" and e.min_margin < -0.05 for e in exact])
    robust = torch.tensor([e.status == "robust" for e in exact])
    assert refuted.sum() >= 5 and robust.sum() >= 5, (refuted.sum(), robust.sum())
    assert f.broken[refuted].all() and not f.broken[robust].any()
