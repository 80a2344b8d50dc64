"""The two-variable gate relaxations: planes sound on the whole rectangle, and reasonably tight."""

from __future__ import annotations

import pytest
import torch

from nonuniform.relax.activations import Identity, Sigmoid, Tanh
from nonuniform.relax.gates import Product

GATES = {"sigmoid*tanh": Product(Sigmoid(), Tanh()), "sigmoid*y": Product(Sigmoid(), Identity())}


def _rectangles(n: int, seed: int, dtype=torch.float64):
    """Random rectangles of every kind: narrow and wide, on either side of 0 and straddling."""
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** (torch.rand(4, n, generator=g, dtype=dtype) * 3 - 2)  # widths 0.01 .. 10
    lx = torch.randn(n, generator=g, dtype=dtype) * 3
    ly = torch.randn(n, generator=g, dtype=dtype) * 3
    return lx, lx + scale[0], ly, ly + scale[1]


@pytest.mark.parametrize("name", list(GATES))
def test_planes_hold_on_dense_grid_of_random_rectangles(name):
    gate = GATES[name]
    lx, ux, ly, uy = _rectangles(2000, seed=0)
    planes = gate.relax(lx[:, None], ux[:, None], ly[:, None], uy[:, None])
    s = torch.linspace(0, 1, 41, dtype=torch.float64)
    sx, sy = torch.meshgrid(s, s, indexing="ij")  # includes the 4 corners and the edges
    x = lx[:, None] + sx.reshape(1, -1) * (ux - lx)[:, None]
    y = ly[:, None] + sy.reshape(1, -1) * (uy - ly)[:, None]
    v = gate.f(x, y)
    low = planes.lx[:, 0] * x + planes.ly[:, 0] * y + planes.lc[:, 0]
    up = planes.ux[:, 0] * x + planes.uy[:, 0] * y + planes.uc[:, 0]
    assert (v - low).min() >= -1e-12, f"{name}: lower plane above the surface"
    assert (up - v).min() >= -1e-12, f"{name}: upper plane below the surface"
    # Not vacuous: the planes touch the surface within a small gap on most rectangles.
    gap = torch.minimum((v - low).min(1).values, (up - v).min(1).values)
    assert gap.median() < 1e-2


@pytest.mark.parametrize("name", list(GATES))
def test_planes_survive_gradient_attack(name):
    """Projected gradient ascent on the violation from many starts per rectangle."""
    gate = GATES[name]
    lx, ux, ly, uy = _rectangles(500, seed=1)
    planes = gate.relax(lx[:, None], ux[:, None], ly[:, None], uy[:, None])
    g = torch.Generator().manual_seed(2)
    for sign in (1.0, -1.0):  # +1: surface below the lower plane; -1: above the upper plane
        t = torch.rand(500, 16, 2, generator=g, dtype=torch.float64).requires_grad_(True)
        opt = torch.optim.Adam([t], lr=0.05)
        for _ in range(100):
            x = lx[:, None] + t[..., 0].clamp(0, 1) * (ux - lx)[:, None]
            y = ly[:, None] + t[..., 1].clamp(0, 1) * (uy - ly)[:, None]
            v = gate.f(x, y)
            if sign > 0:
                viol = planes.lx[:, 0] * x + planes.ly[:, 0] * y + planes.lc[:, 0] - v
            else:
                viol = v - (planes.ux[:, 0] * x + planes.uy[:, 0] * y + planes.uc[:, 0])
            opt.zero_grad()
            (-viol.sum()).backward()
            opt.step()
            assert viol.max() <= 1e-12, f"{name}: violation {float(viol.max()):.3g} found"


@pytest.mark.parametrize("name", list(GATES))
def test_interval_is_exact_range(name):
    gate = GATES[name]
    lx, ux, ly, uy = _rectangles(300, seed=3)
    lo, hi = gate.interval(lx, ux, ly, uy)
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    x = lx[:, None] + s * (ux - lx)[:, None]
    y = ly[:, None] + s * (uy - ly)[:, None]
    v = gate.f(x[:, :, None], y[:, None, :]).flatten(1)
    assert torch.allclose(v.min(1).values, lo) and torch.allclose(v.max(1).values, hi)


def test_degenerate_rectangle_is_exact():
    gate = GATES["sigmoid*tanh"]
    x, y = (
        torch.tensor([[0.3], [-1.0]], dtype=torch.float64),
        torch.tensor([[0.7], [2.0]], dtype=torch.float64),
    )
    p = gate.relax(x, x, y, y)
    v = gate.f(x, y)
    assert torch.allclose(p.lower(x, y)[:, 0], v) and torch.allclose(p.upper(x, y)[:, 0], v)


def test_planes_are_differentiable_in_the_bounds():
    gate = GATES["sigmoid*tanh"]
    lx, ux, ly, uy = (t[:, None].float().requires_grad_(True) for t in _rectangles(50, seed=4))
    p = gate.relax(lx, ux, ly, uy)
    p.lower((lx + ux) / 2, (ly + uy) / 2).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (lx, ux, ly, uy))


@pytest.mark.parametrize("act", [Sigmoid(), Tanh()], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tangent_points_never_fall_below_the_exact_point(act, dtype):
    # h(d) = f(d) + f'(d)(l - d) - f(l) >= 0 means the tangent at d passes above (l, f(l)):
    # checked in float64 for table cells, cell edges and beyond the table's range.
    g = torch.Generator().manual_seed(5)
    l = torch.cat([-torch.rand(20000, generator=g, dtype=torch.float64) * 50, -torch.arange(0, 45, 0.005)])
    l = l.to(dtype)
    d = act._tangent_point(l, torch.full_like(l, 60.0)).double()
    l64 = l.double()
    h = act.f(d) + act.derivative(d) * (l64 - d) - act.f(l64)
    assert h.min() >= 0
    # Nearly exact inside the table: within 1e-5 of a 100-step float64 bisection on [0, |l|].
    sel = (l64 > -40) & (l64 < -0.01)
    lo, hi = torch.zeros_like(l64[sel]), -l64[sel]
    for _ in range(100):
        mid = (lo + hi) / 2
        above = act.f(mid) + act.derivative(mid) * (l64[sel] - mid) - act.f(l64[sel]) >= 0
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    assert (d[sel] - hi).abs().max() < 1e-5


@pytest.mark.parametrize("act", [Sigmoid(), Tanh()], ids=["sigmoid", "tanh"])
def test_optimisable_tangent_points_are_sound_for_every_value(act):
    """relax_at: lines with the tangent points placed by any value in [0, 1] (ends included)
    hold on the whole interval, and CROWN's values give CROWN's lines exactly."""
    g = torch.Generator().manual_seed(21)
    a = torch.randn(4000, generator=g, dtype=torch.float64) * 4
    b = a + torch.rand(4000, generator=g, dtype=torch.float64) * 8
    l, u = a[None], b[None]
    crown = act.relax(l, u, "crown")
    same = act.relax_at(l, u, act.default_tangents(l, u))
    for x, y in zip(crown.astuple(), same.astuple()):
        assert torch.allclose(x, y, atol=1e-12)
    z = l + (u - l) * torch.rand(64, 4000, generator=g, dtype=torch.float64)
    z = torch.cat([z, l, u])
    for seed in range(3):
        s = torch.rand(1, 2, 4000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        s = torch.where(s < 0.2, 0.0, torch.where(s > 0.8, 1.0, s))
        r = act.relax_at(l, u, s)
        f = act.f(z)
        assert (r.lower_slope[:, 0] * z + r.lower_bias[:, 0] <= f + 1e-12).all()
        assert (r.upper_slope[:, 0] * z + r.upper_bias[:, 0] >= f - 1e-12).all()
