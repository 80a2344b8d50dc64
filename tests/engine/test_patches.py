"""Patch rows for convolutional chains give the dense rows' bounds (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nonuniform.engine.tighten as engine
from nonuniform import compute_bounds
from nonuniform.engine.bounds import BoundedModel
from nonuniform.engine.patches import patch_size
from nonuniform.ir.graph_ops import AddOp
from tests.graph_nets import StridedResNet, TinyResNet
from tests.nets import cnn, random_boxes


def strided_cnn(seed: int) -> nn.Sequential:
    """Two strided, padded convolutions (BN, LeakyReLU, tanh) on 1x12x12: patches 4x4 -> 10x10."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.BatchNorm2d(4).eval(),
        nn.LeakyReLU(0.1),
        nn.Conv2d(4, 6, 4, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 5, 2, stride=1, padding=0),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 3),
    ).eval()


MODELS = {
    "cnn-avgpool-bn": (cnn(nn.ReLU(), seed=21, pool=True, bn=True), (1, 8, 8)),
    "cnn-sigmoid": (cnn(nn.Sigmoid(), seed=22, pool=False, bn=False), (1, 8, 8)),
    "strided": (strided_cnn(23), (1, 12, 12)),
    "resnet": (TinyResNet(seed=24), (1, 8, 8)),
    "resnet-strided": (StridedResNet(seed=25), (1, 24, 24)),
}


def _bounds(model, lower, upper, method, patches: bool):
    engine.PATCHES = patches
    try:
        lo, hi = lower.clone().requires_grad_(True), upper.clone().requires_grad_(True)
        lb, ub = compute_bounds(model, lo, hi, method=method)
        (lb.sum() - ub.sum()).backward()
        return lb.detach(), ub.detach(), lo.grad, hi.grad
    finally:
        engine.PATCHES = True


@pytest.mark.parametrize("name", list(MODELS))
# Not alpha-crown: dense rows carry their own slopes there (full alpha-CROWN), patches keep CROWN's.
@pytest.mark.parametrize("method", ["fastlin", "crown"])
def test_patch_rows_equal_dense_rows(name, method):
    model, shape = MODELS[name]
    model = model.double()
    lower, upper = random_boxes(shape, batch=3, seed=5, max_radius=0.1, dtype=torch.float64)
    dense = _bounds(model, lower, upper, method, False)
    patch = _bounds(model, lower, upper, method, True)
    for a, b in zip(dense, patch):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9), (name, method, (a - b).abs().max())
    model.float()


def test_patches_are_used_where_they_apply():
    bm = BoundedModel(strided_cnn(0), (1, 12, 12))
    state = bm.propagate(*random_boxes((1, 12, 12), batch=1, seed=0, max_radius=0.05))
    # the input of the second and third activations comes through convolutional chains
    convs_below = [i for i in state.pre if patch_size(bm.net, bm.net.ops[i].inputs[0], state.relaxations)]
    assert len(convs_below) == 2


def test_patches_go_through_residual_adds():
    """Both blocks' adds (strided 1x1 and identity shortcuts) are below patch-row targets."""
    bm = BoundedModel(StridedResNet(0), (1, 24, 24))
    state = bm.propagate(*random_boxes((1, 24, 24), batch=1, seed=0, max_radius=0.05))
    adds = [i for i, op in enumerate(bm.net.ops) if isinstance(op, AddOp)]
    below_add = [
        i
        for i in state.pre
        if any(a <= bm.net.ops[i].inputs[0] for a in adds)
        and patch_size(bm.net, bm.net.ops[i].inputs[0], state.relaxations)
    ]
    assert len(adds) == 2 and len(below_add) >= 2
