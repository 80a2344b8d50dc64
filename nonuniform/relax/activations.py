"""Linear relaxations of scalar activations, one class per nonlinearity.

Every relaxation answers one question: given elementwise pre-activation bounds ``l <= z <= u``,
which lines ``a_lo*z + b_lo <= act(z) <= a_up*z + b_up`` hold on the whole interval? The backward
pass of the bound engine only ever sees these four tensors, so adding a nonlinearity means adding
one class here.

Shapes: ``l`` and ``u`` are ``(batch, *features)``; the returned tensors are
``(batch, 1, *features)`` -- a spec axis of size one that broadcasts in the backward pass -- except
the lower slope under alpha-CROWN, which is per specification: ``(batch, specs, *features)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .rows import feature_dot, lower_plus

#: Intervals narrower than this are relaxed by the constant lines act(l) <= act(z) <= act(u)
#: (exact for monotone activations, and free of 0/0 in chord slopes).
TINY_WIDTH = 1e-6

#: The tangent points of S-shaped relaxations come from a table of d*(l) on [-TANGENT_RANGE, 0].
TANGENT_RANGE = 40.0
TANGENT_POINTS = 8193
#: Bisection steps below the table's range: (float32, float64).
TANGENT_REFINE = (16, 32)
#: Inside a table cell the interpolated point is raised by this much before the exact check.
TANGENT_NUDGE = 1e-6
_TANGENT_TABLES: dict = {}


@dataclass
class LinearRelaxation:
    """``lower_slope*z + lower_bias <= act(z) <= upper_slope*z + upper_bias`` elementwise."""

    lower_slope: Tensor
    lower_bias: Tensor
    upper_slope: Tensor
    upper_bias: Tensor
    #: the lower lines pass through the origin (ReLU, LeakyReLU): the backward pass skips them
    zero_lower_bias: bool = False

    def detach(self) -> LinearRelaxation:
        return LinearRelaxation(*(t.detach() for t in self.astuple()), zero_lower_bias=self.zero_lower_bias)

    def astuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.lower_slope, self.lower_bias, self.upper_slope, self.upper_bias

    def backward(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``lam . act(z)`` as ``lam' . z + bias``: returns (lam', bias (batch, specs)).

        Written as ``lam * a_lo + min(lam, 0) * (a_up - a_lo)`` with the bias as dot products:
        three passes over ``lam`` instead of nine (these tensors are the CNN bound's largest).
        """
        neg = lam.clamp(max=0)
        if self.zero_lower_bias:
            bias = feature_dot(neg, self.upper_bias)
        else:
            bias = feature_dot(lam, self.lower_bias) + feature_dot(neg, self.upper_bias - self.lower_bias)
        return lower_plus(lam, self.lower_slope, neg, self.upper_slope - self.lower_slope), bias


class Relaxation:
    """Interface: interval image, linear relaxation, and which neurons need tight bounds."""

    #: True when the lower slope of unstable neurons is a free parameter (alpha-CROWN).
    has_alpha: ClassVar[bool] = False

    def interval(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Exact image of the box under the (monotone) activation."""
        return self.f(l), self.f(u)

    def f(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> LinearRelaxation:
        """Sound lines on [l, u]. ``mode`` is ``"crown"`` or ``"fastlin"``.

        ``alpha`` (optional, ``(batch, specs, *features)``) overrides the lower slope of unstable
        neurons; it is clamped to the sound range, so every alpha gives a sound relaxation.
        """
        raise NotImplementedError  # pragma: no cover - interface

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        """Mask of neurons whose relaxation improves with tighter pre-activation bounds."""
        return (u - l) > TINY_WIDTH

    def to(self, dtype, device) -> Relaxation:
        """The relaxation for another dtype/device (stateless ones are shared)."""
        return self


class PiecewiseLinear(Relaxation):
    """``z >= 0: z; z < 0: negative_slope*z`` with ``0 <= negative_slope <= 1`` (ReLU, LeakyReLU).

    Unstable neurons (l < 0 < u): the upper line is the chord. The lower line passes through the
    origin with slope in [negative_slope, 1]: CROWN's adaptive choice (1 if u > -l else
    negative_slope), Fast-Lin's choice (the chord slope, parallel to the upper line), or alpha.
    """

    has_alpha = True

    def __init__(self, negative_slope: float = 0.0) -> None:
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(
                f"LeakyReLU negative_slope={negative_slope} is not supported: the relaxation "
                "assumes a convex activation (0 <= negative_slope <= 1)"
            )
        self.negative_slope = float(negative_slope)

    def f(self, z: Tensor) -> Tensor:
        if self.negative_slope == 0:  # one pass instead of three (same values and gradient, -0.0 aside)
            return z.clamp(min=0)
        return torch.where(z >= 0, z, z * self.negative_slope)

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        # Stable neurons are relaxed exactly whatever their bounds are.
        return (l < 0) & (u > 0)

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> LinearRelaxation:
        # Few passes, scalar operands and boolean masks: a CNN's relaxations are maps of hundreds of
        # thousands of neurons, and each pass (with a fresh allocation) is most of their cost.
        a = self.negative_slope
        unstable = (l < 0).logical_and_(u > 0)
        active = l >= 0
        one, slope = l.new_ones(()), l.new_full((), a)  # 0-dim: l's dtype (a Python float would be float32)
        stable_slope = active.to(l.dtype) if a == 0 else torch.where(active, one, slope)
        # the chord, used only where unstable; the safe denominator keeps the others' gradient finite
        chord = (u if a == 0 else u - a * l) / torch.where(unstable, u - l, one)
        upper_slope = torch.where(unstable, chord, stable_slope)
        # the chord through (l, a l): written as u - chord u it lost the whole intercept when u is huge
        # (u = 1e30, l = -3: chord rounds to 1, the line z missed f(-3) = 0 by 3)
        upper_bias = torch.where(unstable, (slope - chord).mul_(l), 0.0)
        if alpha is not None:
            lower_slope = torch.where(unstable.unsqueeze(1), alpha.clamp(a, 1.0), stable_slope.unsqueeze(1))
        elif mode == "fastlin":
            lower_slope = upper_slope.unsqueeze(1)
        elif a == 0:  # CROWN's adaptive slope: 1 where u > -l (unstable) or active, else 0
            lower_slope = (u > -l).logical_and_(unstable).logical_or_(active).to(l.dtype).unsqueeze(1)
        else:
            adaptive = torch.where(u > -l, one, slope)
            lower_slope = torch.where(unstable, adaptive, stable_slope).unsqueeze(1)
        return LinearRelaxation(
            lower_slope,
            torch.zeros_like(upper_bias).unsqueeze(1),
            upper_slope.unsqueeze(1),
            upper_bias.unsqueeze(1),
            zero_lower_bias=True,
        )

    def default_alpha(self, l: Tensor, u: Tensor) -> Tensor:
        """CROWN's adaptive lower slope: the starting point of alpha-CROWN."""
        return torch.where(u > -l, torch.ones_like(l), torch.full_like(l, self.negative_slope))


class SShaped(Relaxation):
    """Sigmoid-like activations: increasing, convex on z < 0, concave on z > 0,
    and point-symmetric: ``f(z) = s - f(-z)`` (s = 1 for sigmoid, 0 for tanh).

    Upper line on [l, u] (the lower line follows from the symmetry, applied on [-u, -l]):
      * u <= 0 (convex part): the chord;
      * l >= 0 (concave part): the tangent at the midpoint;
      * l < 0 < u: the chord if f'(u) >= chord slope (then f - chord is convex-then-concave with
        zeros at both ends and non-negative slope at u, hence <= 0); otherwise the tangent at the
        point d >= 0 whose tangent passes through (l, f(l)). d comes from a precomputed table
        and is never below the exact point, so the tangent passes through or *above* (l, f(l)):
        it is above f on [0, inf) (f concave there), and on [l, 0] f - tangent is convex and
        <= 0 at both ends. See :meth:`_tangent_point`.
    Intervals narrower than ``TINY_WIDTH`` use the constant lines f(l), f(u).
    """

    symmetry: ClassVar[float]

    def derivative(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def second_derivative(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _tangent_table(self, device) -> Tensor:
        """d*(l_k) on the grid l_k = -TANGENT_RANGE + k * step (float64), cached per class/device.

        d*(l) solves h(d) = f(d) + f'(d)(l - d) - f(l) = 0 on [0, |l|] (h increases in d there and
        h(|l|) >= 0 because f' is largest at 0); the bisection keeps the end with h >= 0.
        """
        key = (type(self), str(device))
        table = _TANGENT_TABLES.get(key)
        if table is None:
            grid = torch.linspace(-TANGENT_RANGE, 0.0, TANGENT_POINTS, dtype=torch.float64, device=device)
            lo, hi, f_l = torch.zeros_like(grid), -grid, self.f(grid)
            for _ in range(80):
                d = (lo + hi) / 2
                above = self.f(d) + self.derivative(d) * (grid - d) - f_l >= 0
                hi, lo = torch.where(above, d, hi), torch.where(above, lo, d)
            table = _TANGENT_TABLES[key] = hi
        return table

    def _tangent_point(self, l: Tensor, u: Tensor) -> Tensor:
        """A tangent point d >= d*(l) (so the tangent at d passes above (l, f(l))).

        d*(l) decreases in l (dd*/dl = -(f'(d*) - f'(l)) / (f''(d*)(l - d*)) < 0 since d* <= |l|),
        so for l in the grid cell [l_k, l_k+1] it lies in [table[k+1], table[k]], and table[k]
        is already sound. Inside that bracket the point is the linear interpolation, nudged up by
        TANGENT_NUDGE and kept only where it passes the exact test h(d) >= 0 (else table[k]): a
        dozen tensor operations instead of a bisection (the relaxation of an LSTM gate needs four
        tangent points, and a bound needs ~100 gates). Below the table (l < -TANGENT_RANGE) the
        bracket is [table[0], max(u, table[0])] (whenever the tangent, not the chord, is chosen,
        d*(l) <= u), refined by bisection.
        """
        table = self._tangent_table(l.device)
        step = TANGENT_RANGE / (TANGENT_POINTS - 1)
        # Always in float64: in float32, h's rounding error (~1e-7 * |l - d|) could accept a
        # point slightly below d*. The result is rounded *up* to the caller's dtype.
        l64, u64 = l.double(), u.double()
        pos = (l64 + TANGENT_RANGE) / step
        k = pos.floor().clamp(0, TANGENT_POINTS - 2)
        frac = (pos - k).clamp(0.0, 1.0)
        k = k.long()
        hi, lo = table[k], table[k + 1]
        fl = self.f(l64)

        def above(d: Tensor) -> Tensor:
            return self.f(d) + self.derivative(d) * (l64 - d) - fl >= 0

        guess = hi - frac * (hi - lo) + TANGENT_NUDGE
        d = torch.where((guess < hi) & above(guess), guess, hi)
        outside = l64 < -TANGENT_RANGE
        if bool(outside.any()):
            hi = torch.maximum(u64, table[0])
            lo = table[0].expand_as(hi)
            for _ in range(TANGENT_REFINE[l.dtype == torch.float64]):
                mid = (lo + hi) / 2
                ok = above(mid)
                hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
            d = torch.where(outside, hi, d)
        out = d.to(l.dtype)
        return torch.where(out.double() < d, torch.nextafter(out, torch.full_like(out, math.inf)), out)

    def _upper(self, l: Tensor, u: Tensor, s: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The upper line on [l, u]; ``s`` in [0, 1] (optional) places the tangent point where
        any tangent is sound: d = l + s (u - l) on the concave part (CROWN: s = 1/2, the
        midpoint), d = d* + s (u - d*) on straddling intervals that take a tangent (CROWN: s = 0;
        h(d) = f(d) + f'(d)(l - d) - f(l) increases for d > 0, so every d >= d* passes above
        (l, f(l)))."""
        fl, fu = self.f(l), self.f(u)
        tiny = (u - l) <= TINY_WIDTH
        width = torch.where(tiny, torch.ones_like(l), u - l)
        chord_slope = (fu - fl) / width
        chord_bias = fl - chord_slope * l

        mid = (l + u) / 2 if s is None else l + s * (u - l)
        mid_slope = self.derivative(mid)
        mid_bias = self.f(mid) - mid_slope * mid

        # Tangent point d >= 0 whose tangent passes through or above (l, f(l)), for straddling
        # intervals: a table lookup refined by bisection (see _tangent_point); never below d*(l).
        with torch.no_grad():
            ld = l.detach()
            d = self._tangent_point(ld, u.detach())
            # Implicit-function derivative dd/dl = -(dh/dl) / (dh/dd), attached below so that
            # the optimiser sees how the line moves with l (the value of d stays the bisected one).
            dh_dd = self.second_derivative(d) * (ld - d)
            safe = dh_dd.abs() > 1e-12
            dd_dl = torch.where(
                safe,
                (self.derivative(ld) - self.derivative(d)) / torch.where(safe, dh_dd, 1.0),
                0.0,
            )
        d = d + dd_dl * (l - ld)
        if s is not None:
            d = d + s * (u - d).clamp(min=0)
        tan_slope = self.derivative(d)
        tan_bias = self.f(d) - tan_slope * d

        straddle_chord = self.derivative(u) >= chord_slope
        slope = torch.where(l >= 0, mid_slope, torch.where((u <= 0) | straddle_chord, chord_slope, tan_slope))
        bias = torch.where(l >= 0, mid_bias, torch.where((u <= 0) | straddle_chord, chord_bias, tan_bias))
        slope = torch.where(tiny, torch.zeros_like(slope), slope)
        bias = torch.where(tiny, fu, bias)
        return slope, bias

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> LinearRelaxation:
        return self.relax_at(l, u)

    def relax_at(self, l: Tensor, u: Tensor, tangents: Tensor | None = None) -> LinearRelaxation:
        """CROWN's lines, or with ``tangents`` ``(batch, 2, *features)`` in [0, 1] the lines whose
        tangent points they place (lower line first; see :meth:`_upper`): alpha-CROWN's free
        parameters for S-shaped activations, sound for every value."""
        # Both lines in one call (the lower one is the upper line of f on [-u, -l]): half the
        # operations, which dominate for the small gate tensors of recurrent cells.
        s = None if tangents is None else torch.cat([tangents[:, 1], tangents[:, 0]])
        slope, bias = self._upper(torch.cat([l, -u]), torch.cat([u, -l]), s)
        (up_slope, neg_slope), (up_bias, neg_bias) = slope.chunk(2), bias.chunk(2)
        # f(z) = s - f(-z) >= s - (a*(-z) + b) = a*z + (s - b)
        low_slope, low_bias = neg_slope, self.symmetry - neg_bias
        return LinearRelaxation(*(t.unsqueeze(1) for t in (low_slope, low_bias, up_slope, up_bias)))

    def default_tangents(self, l: Tensor, u: Tensor) -> Tensor:
        """The ``tangents`` that give CROWN's lines: ``(batch, 2, *features)``."""
        half, zero = torch.full_like(l, 0.5), torch.zeros_like(l)
        return torch.stack([torch.where(u <= 0, half, zero), torch.where(l >= 0, half, zero)], 1)


class Sigmoid(SShaped):
    symmetry = 1.0

    def f(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def derivative(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)

    def second_derivative(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s) * (1 - 2 * s)


class Tanh(SShaped):
    symmetry = 0.0

    def f(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def derivative(self, z: Tensor) -> Tensor:
        return 1 - torch.tanh(z) ** 2

    def second_derivative(self, z: Tensor) -> Tensor:
        t = torch.tanh(z)
        return -2 * t * (1 - t**2)


class Identity(Relaxation):
    """``f(z) = z``, relaxed exactly: the second factor of ``sigmoid(x) * y`` gates."""

    def f(self, z: Tensor) -> Tensor:
        return z

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        return torch.zeros_like(l, dtype=torch.bool)

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> LinearRelaxation:
        one, zero = torch.ones_like(l).unsqueeze(1), torch.zeros_like(l).unsqueeze(1)
        return LinearRelaxation(one, zero, one, zero)


__all__ = [
    "LinearRelaxation",
    "Relaxation",
    "PiecewiseLinear",
    "SShaped",
    "Sigmoid",
    "Tanh",
    "Identity",
    "TINY_WIDTH",
]
