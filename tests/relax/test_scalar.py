"""Every scalar activation's lines hold on random intervals: narrow, wide, huge, points, both
signs, across kinks and inflection points, in float64 and float32 (lines rounded outward)."""

from __future__ import annotations

import math

import pytest
import torch

from nonuniform.relax.functions import (
    ELU,
    GELU,
    Hardswish,
    Mish,
    SiLU,
    Softplus,
    Softsign,
    clamp,
    hardsigmoid,
    leaky,
)

ACTS = {
    "gelu": lambda: GELU(),
    "gelu-tanh": lambda: GELU("tanh"),
    "silu": SiLU,
    "mish": Mish,
    "softplus": Softplus,
    "softplus-beta2-thr3": lambda: Softplus(2.0, 3.0),
    "elu": ELU,
    "elu-0.3": lambda: ELU(0.3),
    "elu-2": lambda: ELU(2.0),
    "selu": lambda: ELU(1.6732632423543772, 1.0507009873554805),
    "celu-0.5": lambda: ELU(0.5, celu=True),
    "relu6": lambda: clamp(0.0, 6.0),
    "hardtanh": lambda: clamp(-1.0, 1.0),
    "clamp-min": lambda: clamp(0.25, None),
    "clamp-max": lambda: clamp(None, -0.5),
    "hardsigmoid": hardsigmoid,
    "hardswish": Hardswish,
    "leaky-neg": lambda: leaky(-0.2),
    "leaky-steep": lambda: leaky(1.5),
    "softsign": Softsign,
}
#: The function exactly as PyTorch's modules compute it (what a user's model does).
TORCH = {
    "gelu": torch.nn.GELU(),
    "gelu-tanh": torch.nn.GELU("tanh"),
    "silu": torch.nn.SiLU(),
    "mish": torch.nn.Mish(),
    "softplus": torch.nn.Softplus(),
    "softplus-beta2-thr3": torch.nn.Softplus(2.0, 3.0),
    "elu": torch.nn.ELU(),
    "elu-0.3": torch.nn.ELU(0.3),
    "elu-2": torch.nn.ELU(2.0),
    "selu": torch.nn.SELU(),
    "celu-0.5": torch.nn.CELU(0.5),
    "relu6": torch.nn.ReLU6(),
    "hardtanh": torch.nn.Hardtanh(),
    "clamp-min": lambda z: torch.clamp(z, min=0.25),
    "clamp-max": lambda z: torch.clamp(z, max=-0.5),
    "hardsigmoid": torch.nn.Hardsigmoid(),
    "hardswish": torch.nn.Hardswish(),
    "leaky-neg": torch.nn.LeakyReLU(-0.2),
    "leaky-steep": torch.nn.LeakyReLU(1.5),
    "softsign": torch.nn.Softsign(),
}


def intervals(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) lower and upper ends of every kind of interval the engine meets."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for centre_scale, width_scale, n in [
        (3.0, 3.0, 300),  # ordinary
        (3.0, 1e-7, 100),  # very narrow
        (3.0, 0.0, 50),  # points: l = u
        (2.0, 40.0, 100),  # wide, both signs
        (1e4, 1e3, 50),  # huge |l|, |u|
        (25.0, 5.0, 50),  # around softplus's threshold and the tails
    ]:
        c = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * centre_scale
        w = torch.rand(n, generator=g, dtype=torch.float64) * width_scale
        parts.append((c - w, c + w))
    # intervals with an end exactly at a kink or inflection point
    for p in (-3.0, -math.sqrt(2), -1.0, 0.0, 0.25, 1.0, 3.0, 6.0, 2.399357280515468):
        w = torch.rand(20, generator=g, dtype=torch.float64) * 2
        parts += [(torch.full_like(w, p), p + w), (p - w, torch.full_like(w, p))]
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def points(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(n, 1051): ends, a dense grid and every kink/inflection point inside."""
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    grid = l[:, None] + (u - l)[:, None] * t
    special = torch.tensor(
        [-3.0, -2.4, -math.sqrt(2), -1.5, -1.0, 0.0, 0.25, 0.5, 1.0, 1.5, 3.0, 6.0], dtype=torch.float64
    )
    special = torch.cat([special, torch.linspace(-30, 30, 37, dtype=torch.float64)])
    inside = torch.minimum(torch.maximum(special[None, :], l[:, None]), u[:, None])
    return torch.cat([grid, inside], 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["crown", "fastlin"])
@pytest.mark.parametrize("name", sorted(ACTS))
def test_lines_and_interval_hold_everywhere(name, mode, dtype):
    act = ACTS[name]()
    l, u = intervals(seed=hash(name) % 1000)
    z = points(l, u)
    fz = TORCH[name](z)  # float64, as the user's module computes it
    assert torch.allclose(act.f(z), fz, rtol=1e-12, atol=1e-12), "f differs from PyTorch's"
    r = act.relax(l.to(dtype)[:, None], u.to(dtype)[:, None], mode)  # (n, 1, 1): batch, spec, feature
    lines = [t.double().reshape(-1, 1) for t in r.astuple()]
    s_lo, b_lo, s_hi, b_hi = lines
    lo_line, hi_line = s_lo * z + b_lo, s_hi * z + b_hi
    # the float32 relaxation is of the float32 interval: points of the float64 interval outside it
    # (a rounding of l, u) are not its business
    lf, uf = l.to(dtype).double()[:, None], u.to(dtype).double()[:, None]
    zz = torch.minimum(torch.maximum(z, lf), uf)
    fzz = TORCH[name](zz)
    lo_line, hi_line = s_lo * zz + b_lo, s_hi * zz + b_hi
    tol = 1e-12 * (1 + fzz.abs())
    assert (lo_line <= fzz + tol).all(), f"lower line above f: {float((lo_line - fzz).max())}"
    assert (hi_line >= fzz - tol).all(), f"upper line below f: {float((fzz - hi_line).max())}"
    ilo, ihi = (t.double()[:, None] for t in act.interval(l.to(dtype), u.to(dtype)))
    assert (ilo <= fzz + tol).all() and (ihi >= fzz - tol).all(), "interval misses f"


@pytest.mark.parametrize("name", sorted(ACTS))
def test_lines_are_tight_not_just_sound(name):
    """On ordinary intervals the gap at the centre is far below the interval bound's width."""
    act = ACTS[name]()
    l = torch.tensor([[-1.0], [0.5], [-4.0], [-0.3]], dtype=torch.float64)
    u = torch.tensor([[1.0], [2.0], [4.0], [0.2]], dtype=torch.float64)
    r = act.relax(l, u, "crown")
    mid = (l + u) / 2
    gap = (r.upper_slope[:, 0] * mid + r.upper_bias[:, 0]) - (r.lower_slope[:, 0] * mid + r.lower_bias[:, 0])
    lo, hi = act.interval(l, u)
    assert (gap <= (hi - lo) + 1e-9).all()
    assert float(gap.sum()) < float((hi - lo).sum())


def test_a_point_interval_gives_the_value():
    for name, make in ACTS.items():
        act = make()
        z = torch.tensor([[-2.5], [0.0], [0.7], [3.0]], dtype=torch.float64)
        r = act.relax(z, z, "crown")
        lo = r.lower_slope[:, 0] * z + r.lower_bias[:, 0]
        hi = r.upper_slope[:, 0] * z + r.upper_bias[:, 0]
        fz = TORCH[name](z)
        assert ((lo <= fz) & (fz <= hi)).all() and (hi - lo).max() < 1e-6, name


@pytest.mark.parametrize("name", ["gelu", "gelu-tanh", "silu", "mish", "hardswish", "softsign"])
def test_derivative_is_monotone_between_breakpoints(name):
    """The premise of the bisection: f' monotone on each piece (checked on a fine grid)."""
    act = ACTS[name]()
    edges = [-60.0, *act.breakpoints, 60.0]
    for a, b in zip(edges[:-1], edges[1:]):
        z = torch.linspace(a, b, 20001, dtype=torch.float64)[1:-1]
        d = torch.diff(act.df(z))
        assert (d >= -1e-15).all() or (d <= 1e-15).all(), (name, a, b)
        z.requires_grad_(True)
        (g,) = torch.autograd.grad(act.f(z).sum(), z)
        assert torch.allclose(g, act.df(z.detach()), atol=1e-9), "df is not f's derivative"


def test_inflection_points_are_found_under_no_grad():
    """The first use of SiLU may be inside certify's torch.no_grad(): the cached search must not
    depend on autograd being enabled by the caller."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from nonuniform.relax.functions import SiLU\n"
        "with torch.no_grad():\n"
        "    lo, hi = SiLU().interval(torch.tensor([[-3.0]]), torch.tensor([[1.0]]))\n"
        "assert float(lo) < -0.27 < float(hi)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
