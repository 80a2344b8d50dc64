"""ReLU and LeakyReLU lines on the intervals where a rewrite goes wrong: points (``l = u``, also at
0), one end at 0, tiny and huge (1e30) ends; every mode, both dtypes; the activation at +-inf."""

from __future__ import annotations

import pytest
import torch

from nonuniform.relax.activations import PiecewiseLinear

ENDS = [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 3.0, -3.0, 1e30, -1e30]


def _intervals(dtype) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = torch.cartesian_prod(torch.tensor(ENDS, dtype=dtype), torch.tensor(ENDS, dtype=dtype))
    l, u = pairs.min(1).values, pairs.max(1).values
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 500, generator=g, dtype=dtype) * torch.logspace(-6, 6, 500, dtype=dtype)
    return torch.cat([l, r.min(0).values])[None], torch.cat([u, r.max(0).values])[None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("negative_slope", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("mode", ["crown", "fastlin", "alpha"])
def test_lines_are_the_textbook_lines_and_hold(dtype, negative_slope, mode):
    act = PiecewiseLinear(negative_slope)
    l, u = _intervals(dtype)
    alpha = torch.linspace(-0.5, 1.5, l.shape[1], dtype=dtype).expand(1, 1, -1) if mode == "alpha" else None
    rel = act.relax(l, u, "crown" if mode == "alpha" else mode, alpha)
    assert all(t.dtype == dtype for t in rel.astuple())
    a = negative_slope
    unstable, active = (l < 0) & (u > 0), l >= 0
    stable = torch.where(active, torch.tensor(1.0, dtype=dtype), torch.tensor(a, dtype=dtype))
    up, ub = rel.upper_slope[:, 0], rel.upper_bias[:, 0]
    # stable neurons: the activation itself, exactly; unstable ones: the chord through both ends
    assert torch.equal(up[~unstable], stable[~unstable]) and bool((ub[~unstable] == 0).all())
    chord = (u - a * l) / (u - l)
    assert torch.equal(up[unstable], chord[unstable])
    lo = rel.lower_slope[:, 0]
    assert torch.equal(lo[~unstable], stable[~unstable]) and bool((rel.lower_bias == 0).all())
    assert bool(((lo >= a) & (lo <= 1)).all())
    # sound at the ends and inside, where the numbers are finite (f never NaN at infinities)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        z = l + t * (u - l)
        ok = z.isfinite() & up.isfinite() & ub.isfinite()
        f = act.f(z)
        slack = 1e-6 * (1 + z.abs()) if dtype == torch.float32 else 1e-12 * (1 + z.abs())
        assert bool((lo * z <= f + slack)[ok].all()) and bool((f <= up * z + ub + slack)[ok].all())
    assert not act.f(torch.tensor([-float("inf"), float("inf")], dtype=dtype)).isnan().any()


def test_gradients_stay_finite_on_points_and_stable_intervals():
    """The chord is not used where l = u, but its gradient is taken there: a 0/0 would poison it."""
    l, u = (t.clone().requires_grad_(True) for t in _intervals(torch.float64))
    finite = l.abs().lt(1e20) & u.abs().lt(1e20)
    for a in (0.0, 0.2):
        rel = PiecewiseLinear(a).relax(l, u, "crown")
        (gl, gu) = torch.autograd.grad(sum(t.sum() for t in rel.astuple()), (l, u))
        assert bool(gl[finite].isfinite().all()) and bool(gu[finite].isfinite().all())
