"""Concretisation over a box: the hand-written gradient equals autograd's through the formula."""

from __future__ import annotations

import torch

from nonuniform.engine.interval import _plain, concretise


def test_concretise_value_and_gradients_match_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    lam = torch.randn(3, 5, 2, 4, 4, generator=gen, dtype=torch.float64)
    lam[:, :, 0] = 0.0  # coefficient exactly 0: any point of [l, u] is a minimiser
    lower = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    upper = lower + torch.rand(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    upper[:, 1] = lower[:, 1]  # point intervals
    grads = []
    for fn in (concretise, lambda a, b, c: _plain(a.flatten(2), b.flatten(1), c.flatten(1))):
        args = [t.clone().requires_grad_(True) for t in (lam, lower, upper)]
        out = fn(*args)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (out * w).sum().backward()
        grads.append((out.detach(), *(a.grad for a in args)))
    for mine, ref in zip(*grads):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    # the value is the minimum: no corner of the box goes below it
    corners = torch.where(
        torch.rand(64, *lower.shape, generator=gen, dtype=torch.float64) < 0.5, lower, upper
    )
    vals = torch.einsum("bsf,nbf->nbs", lam.flatten(2), corners.flatten(2))
    assert bool((vals >= grads[0][0] - 1e-12).all())


def test_concretise_of_shared_rows_broadcasts_over_the_batch() -> None:
    lam = torch.randn(1, 4, 6, dtype=torch.float64)
    lower = torch.randn(3, 6, dtype=torch.float64)
    upper = lower + 1
    with torch.enable_grad():
        out = concretise(lam, lower, upper)
    assert out.shape == (3, 4)
    for b in range(3):
        torch.testing.assert_close(out[b], concretise(lam, lower[b : b + 1], upper[b : b + 1])[0])
