"""The certified LP leaf: its bound holds at sampled points whatever multipliers the solver
returns (so the solver is not trusted), it is at least as tight as CROWN's per-atom bound, and
it refuses networks that are not ReLU chains."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

import nonuniform.proof.lp_leaf as lp_leaf
from nonuniform.engine.bounds import BoundedModel
from nonuniform.proof.lp_leaf import ReluChainLP, pre_lists
from tests.nets import mlp


def leaves(seed: int, m: int = 12):
    """A 5-12-12-3 ReLU net, m random sub-boxes, their CROWN op bounds, and the case 'class 1 is
    the maximum' (an AND of two atoms): (model, bm, lo, hi, state, rows, offsets)."""
    model = mlp(nn.ReLU(), sizes=(5, 12, 12, 3), seed=seed).double().eval()
    bm = BoundedModel(model, (5,), torch.float64)
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(m, 5, dtype=torch.float64, generator=g)
    r = 0.05 + 0.4 * torch.rand(m, 5, dtype=torch.float64, generator=g)
    lo, hi = centre - r, centre + r
    state = bm.propagate(lo, hi, "crown")
    rows = np.array([[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]])  # y1 - y0 >= 0 and y1 - y2 >= 0
    return model, bm, lo, hi, state, rows, np.zeros(2)


def true_minimum(model, lo, hi, rows, offsets, k: int, n: int = 20000) -> float:
    """Sampled min over leaf k of max_w (d_w - c_w . y), an upper bound of the true minimum."""
    g = torch.Generator().manual_seed(k)
    x = lo[k] + torch.rand(n, 5, dtype=torch.float64, generator=g) * (hi[k] - lo[k])
    corners = torch.where(torch.rand(256, 5, generator=g, dtype=torch.float64) < 0.5, lo[k], hi[k])
    with torch.no_grad():
        y = model(torch.cat([x, corners]))
    return float((torch.as_tensor(offsets) - y @ torch.as_tensor(rows).T).max(1).values.min())


@pytest.mark.parametrize("seed", [0, 1])
def test_certificate_holds_at_sampled_points_and_beats_crown(seed):
    model, bm, lo, hi, state, rows, offsets = leaves(seed)
    lp = ReluChainLP(bm)
    spec = -torch.as_tensor(rows)[None].expand(lo.shape[0], -1, -1)
    crown, _ = bm.bounds(lo, hi, spec, "crown", bound_upper=False)  # lower bounds of -c . y
    tighter = 0
    for k in range(lo.shape[0]):
        cert = lp.refute(lo[k].numpy(), hi[k].numpy(), pre_lists(state.pre, lp.acts, k), rows, offsets)
        assert cert <= true_minimum(model, lo, hi, rows, offsets, k) + 1e-9
        best_atom = float((crown[k] + torch.as_tensor(offsets)).max())
        assert cert >= best_atom - 1e-7  # the LP mixes atoms and keeps every chord: never looser
        tighter += cert > best_atom + 1e-4
    assert tighter >= 3, tighter


def test_any_multipliers_give_a_valid_bound(monkeypatch):
    """The solver's duals replaced by random ones (either sign): the bound stays below the
    sampled minimum, because wrong-signed multipliers are clipped and the rest is weak duality."""
    model, bm, lo, hi, state, rows, offsets = leaves(2)
    lp = ReluChainLP(bm)
    real = scipy.optimize.linprog
    g = np.random.default_rng(0)

    def scrambled(*args, **kwargs):
        res = real(*args, **kwargs)
        res.ineqlin.marginals = g.normal(size=res.ineqlin.marginals.shape) * 0.3 - 0.1
        res.eqlin.marginals = g.normal(size=res.eqlin.marginals.shape) * 0.3
        return res

    monkeypatch.setattr(lp_leaf, "linprog", scrambled)
    finite = 0
    for k in range(lo.shape[0]):
        cert = lp.refute(lo[k].numpy(), hi[k].numpy(), pre_lists(state.pre, lp.acts, k), rows, offsets)
        assert cert <= true_minimum(model, lo, hi, rows, offsets, k) + 1e-9
        finite += np.isfinite(cert)
    assert finite >= 6  # the random multipliers were used, not rejected


def test_refuses_what_is_not_a_relu_chain():
    with pytest.raises(ValueError, match="ReLU networks only"):
        ReluChainLP(BoundedModel(mlp(nn.Tanh(), sizes=(5, 8, 3)).double(), (5,), torch.float64))
