"""The graph engine: traced PyTorch modules with residual adds, concat, max-pooling and
constants match PyTorch, their bounds are sound, and a residual block agrees with the same
function written as a chain (whose CROWN is checked against a dense reference in test_bounds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform import METHODS, UnsupportedModelError, compute_bounds
from nonuniform.engine.bounds import BoundedModel
from nonuniform.relax.pooling import MaxPool2d
from tests.graph_nets import PoolNet, TinyResNet
from tests.nets import assert_bounds_sound, random_boxes

GRAPHS = {"resnet": TinyResNet(seed=1), "poolnet": PoolNet(seed=2)}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_traced_graph_matches_pytorch(name):
    model = GRAPHS[name]
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    bm = BoundedModel(model, (1, 8, 8), torch.float64)
    with torch.no_grad():
        ref = model.double()(x)
    model.float()
    assert torch.allclose(bm.net.forward(x), ref, atol=1e-12)


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.parametrize("method", METHODS)
def test_graph_bounds_hold_on_samples_corners_and_pgd(name, method):
    lower, upper = random_boxes((1, 8, 8), batch=3, seed=4, max_radius=0.12)
    assert_bounds_sound(GRAPHS[name], lower, upper, method, f"{name}/{method}", samples=3000)


class Residual(nn.Module):
    """h = relu(W0 x); y = relu(h + W2 relu(W1 h)); logits = W3 y."""

    def __init__(self, w0, w1, w2, w3):
        super().__init__()
        self.l0, self.l1, self.l2, self.l3 = (nn.Linear(w.shape[1], w.shape[0]) for w in (w0, w1, w2, w3))
        for lin, w in zip((self.l0, self.l1, self.l2, self.l3), (w0, w1, w2, w3)):
            lin.weight.data = w.clone()

    def forward(self, x):
        h = torch.relu(self.l0(x))
        return self.l3(torch.relu(h + self.l2(torch.relu(self.l1(h)))))


def test_residual_block_equals_its_chain_form():
    """Residual form vs chain form of one function: [h; W1 h] -> relu (h >= 0 is stable, exact)
    -> [I W2] -> relu. Intervals and CROWN rows coincide, so bounds must agree."""
    torch.manual_seed(3)
    d, k = 6, 5
    w0, w1, w2, w3 = torch.randn(d, 4), torch.randn(k, d), torch.randn(d, k), torch.randn(3, d)
    graph = Residual(w0, w1, w2, w3).double()
    l0 = nn.Linear(4, d)
    l0.weight.data, l0.bias.data = w0.clone(), graph.l0.bias.data.float().clone()
    up = nn.Linear(d, d + k)
    up.weight.data = torch.cat([torch.eye(d), w1])
    up.bias.data = torch.cat([torch.zeros(d), graph.l1.bias.data.float()])
    down = nn.Linear(d + k, d)
    down.weight.data = torch.cat([torch.eye(d), w2], 1)
    down.bias.data = graph.l2.bias.data.float().clone()
    head = nn.Linear(d, 3)
    head.weight.data, head.bias.data = w3.clone(), graph.l3.bias.data.float().clone()
    chain = nn.Sequential(l0, nn.ReLU(), up, nn.ReLU(), down, nn.ReLU(), head).double()
    lower, upper = random_boxes((4,), batch=5, seed=8, max_radius=0.3, dtype=torch.float64)
    x = (lower + upper) / 2
    assert torch.allclose(graph(x), chain(x), atol=1e-12)
    spec = BoundedModel(chain, (4,), torch.float64).default_spec(lower, upper)
    for method in ("ibp", "fastlin", "crown"):
        g_lb, g_ub = compute_bounds(graph, lower, upper, spec, method=method)
        c_lb, c_ub = compute_bounds(chain, lower, upper, spec, method=method)
        assert torch.allclose(g_lb, c_lb, atol=1e-9) and torch.allclose(g_ub, c_ub, atol=1e-9), method


def test_max_pool_relaxation_is_exact_on_dominated_windows_and_sound_elsewhere():
    pool = MaxPool2d((2, 2), (2, 2), (0, 0))
    g = torch.Generator().manual_seed(0)
    l = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)
    u = l + torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 0.5
    l[0, 0, 0, 0], u[0, 0, 0, 0] = 5.0, 6.0  # dominates its window
    r = pool.relax(l, u, "crown")
    assert r.up_slope[0, 0, 0, 0] == 1 and r.up_bias[0, 0, 0, 0] == 0
    pts = l + (u - l) * torch.rand(4000, *l.shape, generator=g, dtype=torch.float64)
    corners = torch.where(torch.rand(4000, *l.shape, generator=g) < 0.5, l, u)
    for x in (pts, corners):
        y = pool.f(x.reshape(-1, 4, 4).reshape(-1, 2, 4, 4)).reshape(4000, 3, 2, 4)
        xf = x.reshape(4000, 3, 2, 16)
        lo = xf.gather(-1, r.lo_idx.expand(4000, -1, -1, -1))
        hi = r.up_slope[:, 0] * xf.gather(-1, r.up_idx.expand(4000, -1, -1, -1)) + r.up_bias[:, 0]
        assert (lo <= y + 1e-12).all() and (y <= hi + 1e-12).all()
        # the dominated window is exact
        assert torch.allclose(hi[:, 0, 0, 0], y[:, 0, 0, 0]) and torch.allclose(lo[:, 0, 0, 0], y[:, 0, 0, 0])


class Untraceable(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True) if x.sum() > 0 else x


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return torch.exp(self.lin(x))


def test_unsupported_graphs_fail_before_any_work_naming_the_node():
    with pytest.raises(UnsupportedModelError, match="torch.fx"):
        compute_bounds(Untraceable(), torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(UnsupportedModelError, match=r"node 'exp' \(call_function exp, 3 of 4"):
        compute_bounds(Unsupported(), torch.zeros(1, 4), torch.ones(1, 4))


def test_a_bare_layer_is_a_model():
    """nn.Linear as the whole model (logistic regression): fx would trace it into F.linear."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    lower, upper = random_boxes((5,), batch=4, seed=1)
    bare = compute_bounds(lin, lower, upper, method="crown")
    wrapped = compute_bounds(nn.Sequential(lin), lower, upper, method="crown")
    for a, b in zip(bare, wrapped):
        assert torch.equal(a, b)
    # CROWN is exact on an affine map: each logit's lower bound is attained at a corner
    logits, _ = compute_bounds(lin, lower, upper, torch.eye(3).expand(4, 3, 3), method="crown")
    w = lin.weight.detach()
    centre, rad = (upper + lower) / 2, (upper - lower) / 2
    exact_lo = centre @ w.T + lin.bias.detach() - rad @ w.abs().T
    assert torch.allclose(logits, exact_lo, atol=1e-5)
