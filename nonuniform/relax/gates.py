"""Two-variable nonlinearities: the gates ``p(x) * q(y)`` of LSTM and GRU cells, relaxed by planes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .activations import LinearRelaxation, Relaxation


@dataclass
class PlaneRelaxation:
    """``lx*x + ly*y + lc <= g(x, y) <= ux*x + uy*y + uc`` elementwise on a rectangle."""

    lx: Tensor
    ly: Tensor
    lc: Tensor
    ux: Tensor
    uy: Tensor
    uc: Tensor
    #: the weights of the first candidate plane, lower and upper: ``(batch, 2, *features)``
    weights: Tensor | None = None

    def lower(self, x: Tensor, y: Tensor) -> Tensor:
        return self.lx * x + self.ly * y + self.lc

    def upper(self, x: Tensor, y: Tensor) -> Tensor:
        return self.ux * x + self.uy * y + self.uc


class Product:
    """``g(x, y) = p(x) * q(y)`` for scalar activations p and q: the gates of LSTM and GRU cells,
    ``sigmoid(x) * tanh(y)`` and ``sigmoid(x) * y``.

    Construction of planes sound on the whole rectangle ``[lx, ux] x [ly, uy]``:

    1. Let ``a = p(x)`` in ``[aL, aU]`` and ``b = q(y)`` in ``[bL, bU]`` (exact intervals: p and q
       are monotone). McCormick's inequalities hold for every such (a, b), because
       ``(a - aL)(b - bL) >= 0`` and ``(aU - a)(bU - b) >= 0`` give the lower planes
       ``ab >= aL*b + bL*a - aL*bL`` and ``ab >= aU*b + bU*a - aU*bU``, and
       ``(aU - a)(b - bL) >= 0``, ``(a - aL)(bU - b) >= 0`` the upper planes
       ``ab <= aU*b + bL*a - aU*bL`` and ``ab <= aL*b + bU*a - aL*bU``.
    2. Each plane is linear in (a, b) with known coefficients ``k_a, k_b``. Replace ``a`` by the
       single-variable line of p that bounds ``k_a * a`` in the right direction (p's lower line
       when ``k_a >= 0`` for a lower plane, its upper line otherwise; mirrored for upper planes),
       and ``b`` likewise with q's lines. Each replacement is an inequality valid at every point
       of the rectangle, so the result is a plane in (x, y) that is sound on all of it.
    3. A convex combination of two sound planes is sound. Per side, weight the two candidates
       by how much tighter each is at the rectangle's centre: the mean of a plane over the
       rectangle is its value at the centre, so the tighter one has the smaller mean gap to g
       (the volume between plane and surface, which POPQORN's planes minimise by an inner
       optimisation). In (a, b) space the two McCormick planes tie exactly at the centre, so
       near-ties are common; a hard choice there makes the bound jump (by 0.03 in a margin of
       an MNIST LSTM between float32 and float64) and the box optimiser stumble. The weight
       ramps linearly over differences of one McCormick centre gap (aU-aL)(bU-bL)/4: the
       planes, hence the bounds, are continuous in the input bounds.

    Shapes: all bounds ``(batch, *features)``; the planes are ``(batch, 1, *features)``.
    """

    def __init__(self, p: Relaxation, q: Relaxation) -> None:
        self.p, self.q = p, q

    def f(self, x: Tensor, y: Tensor) -> Tensor:
        return self.p.f(x) * self.q.f(y)

    def interval(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
        """Exact range of p(x)*q(y): the extremes of a product of intervals are at corners."""
        aL, aU = self.p.interval(lx, ux)
        bL, bU = self.q.interval(ly, uy)
        corners = torch.stack([aL * bL, aL * bU, aU * bL, aU * bU])
        return corners.min(0).values, corners.max(0).values

    def relax(
        self,
        lx: Tensor,
        ux: Tensor,
        ly: Tensor,
        uy: Tensor,
        mode: str = "crown",
        rp: LinearRelaxation | None = None,
        rq: LinearRelaxation | None = None,
        weights: Tensor | None = None,
    ) -> PlaneRelaxation:
        """Planes on the rectangle; ``rp``/``rq`` are p's and q's lines on it when the caller
        already has them (the three sigmoid gates of an LSTM step are relaxed in one call).
        ``weights`` ``(batch, 2, *features)`` in [0, 1] replace the centre-gap blend of step 3
        (alpha-CROWN's free parameters: every convex combination is sound)."""
        aL, aU = self.p.interval(lx, ux)
        bL, bU = self.q.interval(ly, uy)
        rp = self.p.relax(lx, ux, mode) if rp is None else rp
        rq = self.q.relax(ly, uy, mode) if rq is None else rq
        pl, pu = (rp.lower_slope[:, 0], rp.lower_bias[:, 0]), (rp.upper_slope[:, 0], rp.upper_bias[:, 0])
        ql, qu = (rq.lower_slope[:, 0], rq.lower_bias[:, 0]), (rq.upper_slope[:, 0], rq.upper_bias[:, 0])
        xc, yc = (lx + ux) / 2, (ly + uy) / 2

        def plane(ka: Tensor, kb: Tensor, c: Tensor, lower: bool) -> tuple[Tensor, Tensor, Tensor]:
            # k*line when k >= 0 keeps the direction of the line's inequality; k < 0 flips it.
            (sa, oa), (sb, ob) = (pl, ql) if lower else (pu, qu)
            (fa, fa_b), (fb, fb_b) = (pu, qu) if lower else (pl, ql)
            a_s = torch.where(ka >= 0, sa, fa)
            a_o = torch.where(ka >= 0, oa, fa_b)
            b_s = torch.where(kb >= 0, sb, fb)
            b_o = torch.where(kb >= 0, ob, fb_b)
            return ka * a_s, kb * b_s, ka * a_o + kb * b_o + c

        # McCormick's gap at the centre of the (a, b) rectangle, the natural scale of differences.
        scale = (aU - aL) * (bU - bL) / 4 + 1e-12

        def blend(p1, p2, lower: bool) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
            if weights is not None:
                w = weights[:, 0 if lower else 1].clamp(0.0, 1.0)
            else:
                v1 = p1[0] * xc + p1[1] * yc + p1[2]
                v2 = p2[0] * xc + p2[1] * yc + p2[2]
                better = (v1 - v2) if lower else (v2 - v1)  # > 0 where the first plane is tighter
                w = (0.5 + better / (2 * scale)).clamp(0.0, 1.0)
            return tuple(w * t1 + (1 - w) * t2 for t1, t2 in zip(p1, p2)), w  # type: ignore[return-value]

        low, w_low = blend(plane(bL, aL, -aL * bL, True), plane(bU, aU, -aU * bU, True), True)
        up, w_up = blend(plane(bL, aU, -aU * bL, False), plane(bU, aL, -aL * bU, False), False)
        return PlaneRelaxation(*(t.unsqueeze(1) for t in (*low, *up)), weights=torch.stack([w_low, w_up], 1))


__all__ = ["PlaneRelaxation", "Product"]
