"""The activations people use beyond ReLU, Sigmoid and Tanh, as :class:`ScalarActivation`\\ s.

Each class gives ``f`` (exactly as PyTorch computes it), ``df`` and the breakpoints between which
``df`` is monotone; :mod:`~nonuniform.relax.scalar` turns that into sound lines. Where the
inflection points have no closed form (SiLU, Mish, the tanh form of GELU) they are found once, in
float64, by bisection on a sign change of ``f''`` (``inflections``), and the test suite checks on
a fine grid that ``f'`` is monotone between them.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor

from .scalar import ScalarActivation

SQRT2 = math.sqrt(2.0)
GELU_TANH_K = math.sqrt(2.0 / math.pi)


@cache
def inflections(kind: str) -> tuple[float, ...]:
    """Points where f'' changes sign, by scanning [-20, 20] and bisecting (float64)."""
    act = {"silu": SiLU, "mish": Mish, "gelu-tanh": lambda: GELU("tanh", breakpoints=())}[kind]()
    z = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    d2 = _second(act, z)
    roots = []
    for i in torch.nonzero(torch.sign(d2[:-1]) * torch.sign(d2[1:]) < 0).flatten().tolist():
        a, b = z[i].clone(), z[i + 1].clone()
        sa = torch.sign(_second(act, a.reshape(1)))
        for _ in range(60):
            m = (a + b) / 2
            if torch.sign(_second(act, m.reshape(1))) == sa:
                a = m
            else:
                b = m
        roots.append(float((a + b) / 2))
    return tuple(roots)


def _second(act: ScalarActivation, z: Tensor) -> Tensor:
    """f'' by autograd of f' (enabled here: the first use may come under ``torch.no_grad``)."""
    with torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(act.df(z).sum(), z)
    return g.detach()


class GELU(ScalarActivation):
    """``x * Phi(x)`` (``approximate="none"``) or its tanh form. f'' = phi(x)(2 - x^2) for the
    exact form: f' is monotone on (-inf, -sqrt 2], [-sqrt 2, sqrt 2], [sqrt 2, inf)."""

    def __init__(self, approximate: str = "none", breakpoints: tuple[float, ...] | None = None) -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate={approximate!r}; expected 'none' or 'tanh'")
        self.approximate = approximate
        if breakpoints is None:
            breakpoints = (-SQRT2, SQRT2) if approximate == "none" else inflections("gelu-tanh")
        self.breakpoints = breakpoints

    def f(self, z: Tensor) -> Tensor:
        return torch.nn.functional.gelu(z, approximate=self.approximate)

    def df(self, z: Tensor) -> Tensor:
        if self.approximate == "none":
            return 0.5 * (1 + torch.erf(z / SQRT2)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        inner = GELU_TANH_K * (z + 0.044715 * z**3)
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * GELU_TANH_K * (1 + 3 * 0.044715 * z * z)


class SiLU(ScalarActivation):
    """``x * sigmoid(x)`` (Swish); inflection points near +-2.40."""

    @property
    def breakpoints(self) -> tuple[float, ...]:  # type: ignore[override]
        return inflections("silu")

    def f(self, z: Tensor) -> Tensor:
        return torch.nn.functional.silu(z)

    def df(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))


class Mish(ScalarActivation):
    """``x * tanh(softplus(x))``; inflection points found numerically."""

    @property
    def breakpoints(self) -> tuple[float, ...]:  # type: ignore[override]
        return inflections("mish")

    def f(self, z: Tensor) -> Tensor:
        return torch.nn.functional.mish(z)

    def df(self, z: Tensor) -> Tensor:
        sp = torch.nn.functional.softplus(z)
        t = torch.tanh(sp)
        return t + z * (1 - t * t) * torch.sigmoid(z)


class Softplus(ScalarActivation):
    """``log(1 + exp(beta x)) / beta``, and ``x`` where ``beta x > threshold`` (as PyTorch): convex
    with a jump of ``(log1p(exp(threshold)) - threshold) / beta`` (~2e-9) at the threshold."""

    monotone = True

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        if beta <= 0:
            raise ValueError(f"Softplus beta={beta} must be positive")
        self.beta, self.threshold = float(beta), float(threshold)
        if math.isfinite(self.threshold):
            self.breakpoints = (self.threshold / self.beta,)
            self.jump = (math.log1p(math.exp(self.threshold)) - self.threshold) / self.beta

    def f(self, z: Tensor) -> Tensor:
        if not math.isfinite(self.threshold):  # ONNX's Softplus: no switch to the identity
            return torch.logaddexp(self.beta * z, torch.zeros_like(z)) / self.beta
        return torch.nn.functional.softplus(z, self.beta, self.threshold)

    def df(self, z: Tensor) -> Tensor:
        return torch.where(self.beta * z > self.threshold, torch.ones_like(z), torch.sigmoid(self.beta * z))


class ELU(ScalarActivation):
    """ELU ``x if x > 0 else alpha (exp(x) - 1)``, times ``scale`` (SELU), or CELU
    ``x if x > 0 else alpha (exp(x / alpha) - 1)``; f' is monotone on either side of the kink at 0."""

    monotone = True

    def __init__(self, alpha: float = 1.0, scale: float = 1.0, celu: bool = False) -> None:
        if alpha < 0 or scale <= 0 or (celu and alpha == 0):
            raise ValueError(f"ELU alpha={alpha}, scale={scale}: need alpha >= 0 (> 0 for CELU), scale > 0")
        self.alpha, self.scale, self.celu = float(alpha), float(scale), celu
        self.breakpoints = (0.0,)

    def f(self, z: Tensor) -> Tensor:
        if self.celu:
            return torch.nn.functional.celu(z, self.alpha)
        return self.scale * torch.nn.functional.elu(z, self.alpha)

    def df(self, z: Tensor) -> Tensor:
        neg = torch.exp(z / self.alpha) if self.celu else self.alpha * torch.exp(z)
        return self.scale * torch.where(z > 0, torch.ones_like(z), neg)


class PiecewiseAffine(ScalarActivation):
    """A continuous piecewise-linear function: ``slopes[k]`` on the k-th piece between
    ``breakpoints`` and value ``value0`` at the first breakpoint (clamp, Hardtanh, ReLU6,
    Hardsigmoid, LeakyReLU/PReLU with any slope)."""

    piecewise_linear = True

    def __init__(self, breakpoints: tuple[float, ...], slopes: tuple[float, ...], value0: float) -> None:
        if len(slopes) != len(breakpoints) + 1 or list(breakpoints) != sorted(breakpoints):
            raise ValueError("need one slope more than breakpoints, breakpoints ascending")
        self.breakpoints, self.slopes, self.value0 = tuple(breakpoints), tuple(slopes), float(value0)
        self.monotone = all(s >= 0 for s in slopes)  # type: ignore[misc]

    def f(self, z: Tensor) -> Tensor:
        p0 = self.breakpoints[0]
        out = self.value0 + self.slopes[0] * (torch.clamp(z, max=p0) - p0)
        for k, p in enumerate(self.breakpoints):
            nxt = self.breakpoints[k + 1] if k + 1 < len(self.breakpoints) else math.inf
            out = out + self.slopes[k + 1] * (torch.clamp(z, min=p, max=nxt) - p)
        return out

    def df(self, z: Tensor) -> Tensor:
        out = torch.full_like(z, self.slopes[0])
        for k, p in enumerate(self.breakpoints):
            out = torch.where(z > p, torch.full_like(z, self.slopes[k + 1]), out)
        return out


def clamp(lo: float | None, hi: float | None) -> PiecewiseAffine:
    """``torch.clamp(x, lo, hi)`` (Hardtanh, ReLU6); one end may be None."""
    if lo is not None and hi is not None:
        if lo > hi:
            raise ValueError(f"clamp min {lo} is above max {hi}")
        return PiecewiseAffine((lo, hi), (0.0, 1.0, 0.0), lo)
    if lo is not None:
        return PiecewiseAffine((lo,), (0.0, 1.0), lo)
    if hi is not None:
        return PiecewiseAffine((hi,), (1.0, 0.0), hi)
    raise ValueError("clamp needs a min or a max")


def hardsigmoid() -> PiecewiseAffine:
    """``relu6(x + 3) / 6`` (PyTorch's Hardsigmoid)."""
    return PiecewiseAffine((-3.0, 3.0), (0.0, 1.0 / 6.0, 0.0), 0.0)


def leaky(negative_slope: float) -> PiecewiseAffine:
    """LeakyReLU / single-parameter PReLU with any slope (the convex ones use PiecewiseLinear)."""
    return PiecewiseAffine((0.0,), (float(negative_slope), 1.0), 0.0)


class Hardswish(ScalarActivation):
    """``x * relu6(x + 3) / 6``: 0, then ``x (x + 3) / 6`` on [-3, 3], then ``x``."""

    breakpoints = (-3.0, 3.0)

    def f(self, z: Tensor) -> Tensor:
        return torch.nn.functional.hardswish(z)

    def df(self, z: Tensor) -> Tensor:
        return torch.where(
            z < -3, torch.zeros_like(z), torch.where(z > 3, torch.ones_like(z), (2 * z + 3) / 6)
        )


class Erf(ScalarActivation):
    """The error function (the ONNX exporters' building block of GELU): S-shaped, kink-free."""

    monotone = True
    breakpoints = (0.0,)

    def f(self, z: Tensor) -> Tensor:
        return torch.erf(z)

    def df(self, z: Tensor) -> Tensor:
        return 2.0 / math.sqrt(math.pi) * torch.exp(-z * z)


class Square(ScalarActivation):
    """``x^2`` (LayerNorm's variance, ONNX ``Pow(x, 2)``): convex, f' = 2x monotone."""

    def f(self, z: Tensor) -> Tensor:
        return z * z

    def df(self, z: Tensor) -> Tensor:
        return 2 * z


class Power(ScalarActivation):
    """``(z + shift) ** power`` for z + shift > 0 (``power`` -0.5: 1/sqrt; 0.5: sqrt), f'
    monotone there. Only reached on non-negative arguments (a variance plus epsilon): bounds
    below ``-shift`` are raised to it, which is sound because no input takes such values."""

    monotone = False

    def __init__(self, power: float, shift: float = 0.0) -> None:
        self.power, self.shift = float(power), float(shift)
        self.monotone = power > 0  # type: ignore[misc]

    def _arg(self, z: Tensor) -> Tensor:
        return (z + self.shift).clamp(min=torch.finfo(z.dtype).tiny)

    def f(self, z: Tensor) -> Tensor:
        return self._arg(z) ** self.power

    def df(self, z: Tensor) -> Tensor:
        return self.power * self._arg(z) ** (self.power - 1)

    def interval(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return super().interval(l.clamp(min=-self.shift), u.clamp(min=-self.shift))

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None):
        return super().relax(l.clamp(min=-self.shift), u.clamp(min=-self.shift), mode)


class Softsign(ScalarActivation):
    """``x / (1 + |x|)``: f' = 1 / (1 + |x|)^2 rises to 0 and falls after."""

    monotone = True
    breakpoints = (0.0,)

    def f(self, z: Tensor) -> Tensor:
        return torch.nn.functional.softsign(z)

    def df(self, z: Tensor) -> Tensor:
        return 1.0 / (1.0 + z.abs()) ** 2


__all__ = [
    "ELU",
    "Power",
    "Square",
    "Erf",
    "GELU",
    "Hardswish",
    "Mish",
    "PiecewiseAffine",
    "SiLU",
    "Softplus",
    "Softsign",
    "clamp",
    "hardsigmoid",
    "inflections",
    "leaky",
]
