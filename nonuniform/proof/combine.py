"""A case (an AND of atoms) refuted by a combination of its atoms' linear bounds."""

from __future__ import annotations

import torch
from torch import Tensor


def combined_gap(a: Tensor, b: Tensor, lo: Tensor, hi: Tensor, index: Tensor, steps: int = 12) -> Tensor:
    """(m, cases) lower bounds of ``max`` over each case's atoms of the refutation gap, from the
    atoms' linear bounds ``gap_w(x) >= a_w . x + b_w`` (a: (m, atoms, n), b: (m, atoms)).

    A case (an AND) is refuted where *some* atom is false at every point, but the atom may change
    from point to point: near the border of two output classes no single atom is false on the
    whole leaf. For weights ``lam`` on the simplex, ``max_w gap_w >= sum_w lam_w gap_w``, whose
    minimum over the box is the concretisation of the combined linear bound; every ``lam`` gives
    a sound bound, the best (the LP value ``min_x max_w``) is sought by a few ascent steps on
    ``softmax(theta)`` and the best value seen is kept."""
    aw, bw = a[:, index], b[:, index]  # (m, G, W, n), (m, G, W)
    theta = torch.zeros(bw.shape, dtype=a.dtype, device=a.device, requires_grad=True)
    lo_, hi_ = lo[:, None, :], hi[:, None, :]
    best = torch.full(bw.shape[:2], -torch.inf, dtype=a.dtype, device=a.device)
    for _ in range(steps):
        with torch.enable_grad():
            lam = torch.softmax(theta, -1)
            alpha = (lam[..., None] * aw).sum(2)  # (m, G, n)
            h = (lam * bw).sum(-1) + torch.minimum(alpha * lo_, alpha * hi_).sum(-1)
            (g,) = torch.autograd.grad(h.sum(), theta)
        best = torch.maximum(best, h.detach())
        with torch.no_grad():
            theta = (theta + 4.0 * g / g.abs().amax(-1, keepdim=True).clamp(min=1e-12)).requires_grad_(True)
    return best


__all__ = ["combined_gap"]
