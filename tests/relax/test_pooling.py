"""Max-pooling's compact backward step through its input activation equals the two dense steps."""

from __future__ import annotations

import pytest
import torch

from nonuniform.engine import bounds as bounds_module
from nonuniform.engine.bounds import BoundedModel
from nonuniform.engine.fusion import fused_inner
from nonuniform.relax.activations import PiecewiseLinear, Sigmoid
from nonuniform.relax.pooling import MaxPool2d
from tests.graph_nets import TinyResNet


def _maps(seed: int, shape=(3, 2, 9, 9)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    l = torch.randn(shape, generator=gen, dtype=torch.float64)
    u = l + torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    u[:, :, ::4] = l[:, :, ::4]  # some point intervals
    return l, u


@pytest.mark.parametrize(
    "pool", [((2, 2), (2, 2), (0, 0)), ((3, 3), (3, 3), (1, 1)), ((3, 2), (3, 2), (0, 1))]
)
@pytest.mark.parametrize("inner", ["relu", "leaky", "alpha", "sigmoid"])
def test_compact_step_equals_pool_then_activation(pool, inner) -> None:
    z_l, z_u = _maps(0)
    z_l.requires_grad_(True)
    b, c = z_l.shape[:2]
    s = 4
    act = {"relu": PiecewiseLinear(), "leaky": PiecewiseLinear(0.1), "alpha": PiecewiseLinear()}.get(
        inner, Sigmoid()
    )
    alpha = torch.rand(b, s, *z_l.shape[1:], dtype=torch.float64) if inner == "alpha" else None
    inner_rel = act.relax(z_l, z_u, "crown", alpha)
    x_l, x_u = act.interval(z_l, z_u)
    mp = MaxPool2d(*pool)
    rel = mp.relax(x_l, x_u, "crown")
    assert rel.disjoint
    ho, wo = rel.out_hw
    lam = torch.randn(b, s, c, ho, wo, dtype=torch.float64)
    lam[:, :, :, 0] = 0.0  # zero coefficients take neither line
    fused, fused_bias = rel.backward_through(lam, inner_rel)
    mid, bias1 = rel.backward(lam)
    dense, bias2 = inner_rel.backward(mid)
    torch.testing.assert_close(fused, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(fused_bias, bias1 + bias2, rtol=0, atol=1e-12)
    (g_fused,) = torch.autograd.grad((fused.sum() + fused_bias.sum()), z_l, retain_graph=True)
    (g_dense,) = torch.autograd.grad((dense.sum() + bias1.sum() + bias2.sum()), z_l)
    torch.testing.assert_close(g_fused, g_dense, rtol=0, atol=1e-10)


def test_overlapping_windows_take_the_dense_steps() -> None:
    l, u = _maps(1)
    rel = MaxPool2d((3, 3), (2, 2), (1, 1)).relax(l.relu(), u.relu(), "crown")
    assert not rel.disjoint
    assert fused_inner(type("Net", (), {"ops": []})(), 0, {0: rel}) is None


def test_fused_bounds_and_gradients_equal_the_dense_pass(monkeypatch) -> None:
    """TinyResNet's ReLU -> 2x2 max-pool is crossed in one compact step; switching the fusion off
    gives the same bounds and box gradients (float64)."""
    net = TinyResNet(seed=3).double()
    bm = BoundedModel(net, (1, 8, 8), torch.float64)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    results = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(bounds_module, "fused_inner", lambda *a: None)
        lo, hi = (x - 0.05).requires_grad_(True), (x + 0.05).requires_grad_(True)
        lb, _ = bm.bounds(lo, hi, None, "crown", bound_upper=False)
        lb.sum().backward()
        results.append((lb.detach(), lo.grad, hi.grad))
    used = [j for j in range(len(bm.net.ops)) if bm.net.__dict__.get("_fusable_inner", {}).get(j) is not None]
    assert used, "the ReLU under the max-pool was not fused"
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
