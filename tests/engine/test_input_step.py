"""The input step (the affine ops that read the box, concretised at their output) gives the
generic backward pass's bounds and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform import Normalize
from nonuniform.engine import bounds as bounds_module
from nonuniform.engine import input_step
from nonuniform.engine.bounds import BoundedModel
from nonuniform.relax.rows import channels_last, feature_dot, flat_features
from tests.graph_nets import TinyResNet


def _nets():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4)
    )
    cnn = nn.Sequential(
        Normalize([0.4], [0.3]),
        nn.Conv2d(1, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(54, 4),
    )
    return {"mlp": (mlp, (1, 6, 6)), "cnn": (cnn, (1, 6, 6)), "resnet": (TinyResNet(seed=1), (1, 8, 8))}


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("chunk", [1, 2**18])
def test_input_step_equals_the_generic_pass(name, chunk, monkeypatch) -> None:
    net, shape = _nets()[name]
    net = net.double().eval()
    bm = BoundedModel(net, shape, torch.float64)
    assert input_step.input_chain(bm.net), "the input's affine chain was not found"
    monkeypatch.setattr(input_step, "CHUNK", chunk)  # 1: one sample per chunk
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = 0.08 * torch.rand(5, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = []
    for generic in (False, True):
        if generic:
            monkeypatch.setattr(bounds_module, "input_chain", lambda net: [])
        lo, hi = (x - r).requires_grad_(True), (x + r).requires_grad_(True)
        lb, ub = bm.bounds(lo, hi, None, "crown")
        (lb.sum() - 0.5 * ub.sum()).backward()
        results.append((lb.detach(), ub.detach(), lo.grad, hi.grad))
    for mine, ref in zip(*results):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-9)


def test_an_input_read_twice_has_no_chain() -> None:
    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x) + torch.relu(self.b(x))

    bm = BoundedModel(TwoReaders(), (4,))
    assert input_step.input_chain(bm.net) == []


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 1, 5, 6), (3, 4, 1, 1), (3, 4, 1, 6)])
def test_channels_last_rows_are_read_in_their_own_order(shape) -> None:
    """Rows stored channels-last (what the transposed convolutions return) are flattened in
    (H, W, C) order without a copy: the dot products and their gradients are unchanged."""
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    w = torch.randn(2, 1, *shape[1:], generator=g, dtype=torch.float64)
    stored = rows.reshape(6, *shape[1:]).contiguous(memory_format=torch.channels_last).reshape(rows.shape)
    for a in (rows, stored, stored[:, 1:]):
        a = a.detach().requires_grad_(True)
        got = feature_dot(a, w)
        want = (a.detach() * w).flatten(2).sum(-1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        flat, _ = flat_features(a, w)
        if channels_last(a):
            assert flat.data_ptr() == a.data_ptr() and flat._base is not None  # a view, no copy
        got.sum().backward()
        torch.testing.assert_close(a.grad, w.expand_as(a), rtol=0, atol=0)
    assert channels_last(stored) == (shape[1] > 1 and shape[2:] != (1, 1))  # else both orders agree
