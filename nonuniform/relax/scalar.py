"""Sound lines for any scalar activation whose derivative is monotone between known breakpoints.

For a slope ``s`` the tightest lines ``s*z + b_lo <= f(z) <= s*z + b_up`` on ``[l, u]`` have
``b_up = max g`` and ``b_lo = min g`` with ``g(z) = f(z) - s*z``. Why these extremes can be
computed *exactly enough to be sound*: an extreme of ``g`` lies at ``l``, ``u``, a breakpoint (a
kink of ``f``), or a root of ``g' = f' - s``; between consecutive breakpoints ``f'`` is monotone
(the subclass declares the breakpoints: inflection points and kinks), so each piece holds at most
one sign change of ``g'``, found by bisection to a bracket ``[a, b]``. On that bracket
``g <= max(g(a), g(b)) + (b - a) * max(|g'(a)|, |g'(b)|)`` (mean value theorem, ``|g'|`` is
largest at a bracket end because ``g'`` is monotone there), and symmetrically for the minimum,
so the bracket's width never makes a line unsound, only looser by a negligible amount. The
offsets are computed in float64 and moved outward by the rounding of the slope and offset to the
caller's dtype (``outward``).

Any slope is sound with its own offsets, so the slope is free: CROWN's choice here is, for each
line, the best of the chord, ``f'(l)`` and ``f'(u)`` by the line's value at the interval's centre
(the area between line and function); Fast-Lin's is the chord for both. Intervals narrower than
``TINY_WIDTH`` use the derivative at the centre (the chord would cancel catastrophically).
Offsets are differentiable in ``l`` and ``u`` (through ``g(l)``, ``g(u)`` and the chord); the
bisection points carry no gradient (at an interior extreme ``g' = 0``: envelope theorem).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from .activations import TINY_WIDTH, LinearRelaxation, Relaxation

#: Bisection steps per piece (float64): brackets of width 2^-44 of the piece.
BISECTION_STEPS = 44


def outward(value: Tensor, scale: Tensor, dtype: torch.dtype, up: bool) -> Tensor:
    """``value`` (float64) in ``dtype``, moved outward past the rounding of a line whose terms are
    of size ``scale`` (4 units in the last place of ``dtype``)."""
    slack = 4 * torch.finfo(dtype).eps * (scale + value.abs()) + torch.finfo(dtype).tiny
    return (value + slack if up else value - slack).to(dtype)


class ScalarActivation(Relaxation):
    """A scalar activation ``f`` with derivative ``df``; ``f'`` is monotone between consecutive
    ``breakpoints`` (inflection points and kinks, ascending). ``jump``: the largest jump of ``f``
    itself at a breakpoint (e.g. torch's Softplus threshold), added to the offsets of intervals
    that hold a breakpoint."""

    breakpoints: tuple[float, ...] = ()
    jump: float = 0.0
    #: f is non-decreasing: its interval image is (f(l), f(u))
    monotone: ClassVar[bool] = False
    #: f is linear on every piece between breakpoints: no bisection needed
    piecewise_linear: ClassVar[bool] = False

    def df(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # -- the extremes of g = f - s z ----------------------------------------------------------
    def extremes(self, l: Tensor, u: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """(min, max) over [l, u] of f(z) - s*z, elementwise; float64 in, float64 out."""
        g_l, g_u = self.f(l) - s * l, self.f(u) - s * u
        lo, hi = torch.minimum(g_l, g_u), torch.maximum(g_l, g_u)
        edges = [-math.inf, *self.breakpoints, math.inf]
        for p in self.breakpoints:  # kinks: extremes may sit there
            inside = (l < p) & (p < u)
            if inside.any():
                pt = torch.full_like(l, p)
                g_p = self.f(pt) - s * pt
                lo = torch.where(inside, torch.minimum(lo, g_p), lo)
                hi = torch.where(inside, torch.maximum(hi, g_p), hi)
        if not self.piecewise_linear:
            for a_edge, b_edge in zip(edges[:-1], edges[1:]):
                a = torch.clamp(l, min=a_edge) if a_edge > -math.inf else l
                b = torch.clamp(u, max=b_edge) if b_edge < math.inf else u
                lo, hi = self._interior(a, b, s, lo, hi)
        jump = self._jump(l, u)
        return lo - jump, hi + jump

    def _jump(self, l: Tensor, u: Tensor) -> Tensor | float:
        """``jump`` where [l, u] holds a breakpoint (f is continuous elsewhere), else 0."""
        if not self.jump:
            return 0.0
        near = torch.zeros_like(l, dtype=torch.bool)
        for p in self.breakpoints:
            near = near | ((l <= p) & (p <= u))
        return torch.where(near, self.jump, 0.0).to(l.dtype)

    def _interior(self, a: Tensor, b: Tensor, s: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Fold in the extreme of g inside [a, b] (one piece: g' monotone) where g' changes sign."""
        with torch.no_grad():
            valid = a < b
            # one-sided derivatives: nudge inside the piece (a kink's value belongs to either side)
            a_in = torch.nextafter(a, b)
            b_in = torch.nextafter(b, a)
            h_a, h_b = self.df(a_in) - s, self.df(b_in) - s
            change = valid & (h_a * h_b < 0)
            if not change.any():
                return lo, hi
            za, zb = a_in.clone(), b_in.clone()
            rising = h_a < 0  # g' goes from negative to positive: a minimum of g
            for _ in range(BISECTION_STEPS):
                mid = (za + zb) / 2
                h_m = self.df(mid) - s
                left = torch.where(rising, h_m >= 0, h_m <= 0)  # the root is left of mid
                zb = torch.where(left, mid, zb)
                za = torch.where(left, za, mid)
            slope = torch.maximum((self.df(za) - s).abs(), (self.df(zb) - s).abs())
            spread = (zb - za) * slope
        g_a, g_b = self.f(za) - s * za, self.f(zb) - s * zb
        cand_hi = torch.maximum(g_a, g_b) + spread
        cand_lo = torch.minimum(g_a, g_b) - spread
        hi = torch.where(change, torch.maximum(hi, cand_hi), hi)
        lo = torch.where(change, torch.minimum(lo, cand_lo), lo)
        # also the bracket ends of the other pieces' points: [a, a_in] and [b_in, b] are one ulp
        return lo, hi

    # -- Relaxation interface --------------------------------------------------------------
    def interval(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        l64, u64 = l.double(), u.double()
        if self.monotone:
            jump = self._jump(l64, u64)
            lo, hi = self.f(l64) - jump, self.f(u64) + jump
        else:
            lo, hi = self.extremes(l64, u64, torch.zeros_like(l64))
        scale = torch.zeros_like(lo)
        return outward(lo, scale, l.dtype, up=False), outward(hi, scale, l.dtype, up=True)

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        wide = (u - l) > TINY_WIDTH
        if not self.piecewise_linear:
            return wide
        crosses = torch.zeros_like(wide)
        for p in self.breakpoints:
            crosses = crosses | ((l < p) & (p < u))
        return wide & crosses

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> LinearRelaxation:
        dtype = l.dtype
        l64, u64 = l.double(), u.double()
        width = u64 - l64
        narrow = width <= TINY_WIDTH
        mid = (l64 + u64) / 2
        chord = (self.f(u64) - self.f(l64)) / torch.where(narrow, torch.ones_like(width), width)
        chord = torch.where(narrow, self.df(mid).detach(), chord)
        if mode == "fastlin":
            candidates = [chord]
        else:
            candidates = [chord, self.df(torch.nextafter(l64, u64)), self.df(torch.nextafter(u64, l64))]
        best_lo = best_hi = None
        for s in candidates:
            s = torch.where(narrow, chord, s)
            g_lo, g_hi = self.extremes(l64, u64, s)
            if best_lo is None:
                best_lo, best_hi = (s, g_lo), (s, g_hi)
                continue
            # lower line: highest at the centre; upper line: lowest at the centre
            take_lo = s * mid + g_lo > best_lo[0] * mid + best_lo[1]
            take_hi = s * mid + g_hi < best_hi[0] * mid + best_hi[1]
            best_lo = (torch.where(take_lo, s, best_lo[0]), torch.where(take_lo, g_lo, best_lo[1]))
            best_hi = (torch.where(take_hi, s, best_hi[0]), torch.where(take_hi, g_hi, best_hi[1]))
        reach = torch.maximum(l64.abs(), u64.abs())
        s_lo, b_lo = best_lo
        s_hi, b_hi = best_hi
        return LinearRelaxation(
            s_lo.to(dtype).unsqueeze(1),
            outward(b_lo, s_lo.abs() * reach, dtype, up=False).unsqueeze(1),
            s_hi.to(dtype).unsqueeze(1),
            outward(b_hi, s_hi.abs() * reach, dtype, up=True).unsqueeze(1),
        )


__all__ = ["BISECTION_STEPS", "ScalarActivation", "outward"]
