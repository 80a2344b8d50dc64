"""Elementwise activations, as PyTorch modules, PyTorch functions and ONNX operators, in one table.

Every front end asks :func:`module_relaxation`, :func:`call_relaxation` or
:func:`onnx_relaxation` for the relaxation of an activation; :data:`ACTIVATIONS` is also what
``nonuniform models --ops`` lists. Convex ReLU-family functions keep the ReLU relaxation (its
lower slope is alpha-optimisable); everything else is a
:class:`~nonuniform.relax.scalar.ScalarActivation`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..relax.activations import PiecewiseLinear, Relaxation, Sigmoid, Tanh
from ..relax.functions import (
    ELU,
    GELU,
    Erf,
    Hardswish,
    Mish,
    PiecewiseAffine,
    SiLU,
    Softplus,
    Softsign,
    clamp,
    hardsigmoid,
    leaky,
)

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805

#: (PyTorch module, PyTorch functions / methods, ONNX operator) of every supported activation
ACTIVATIONS: list[tuple[str, str, str]] = [
    ("ReLU", "F.relu, torch.relu, .relu(), .relu_()", "Relu"),
    ("LeakyReLU (any slope)", "F.leaky_relu", "LeakyRelu"),
    ("PReLU (one parameter)", "", "PRelu (scalar slope)"),
    ("ReLU6, Hardtanh", "F.relu6, F.hardtanh, torch.clamp / .clamp() / .clip()", "Clip"),
    ("Sigmoid", "torch.sigmoid, F.sigmoid", "Sigmoid"),
    ("Tanh", "torch.tanh, F.tanh", "Tanh"),
    ("GELU (erf and tanh forms)", "F.gelu", "Gelu (opset 20); x * (Erf(x / sqrt 2) + 1) * 0.5"),
    ("SiLU", "F.silu", "x * Sigmoid(x)"),
    ("Mish", "F.mish", "Mish, x * Tanh(Softplus(x))"),
    ("ELU, SELU, CELU", "F.elu, F.selu, F.celu", "Elu, Selu, Celu"),
    ("Softplus", "F.softplus", "Softplus, Where(x > t, x, Softplus(x))"),
    ("Hardsigmoid, Hardswish", "F.hardsigmoid, F.hardswish", "HardSigmoid, HardSwish"),
    ("Softsign", "F.softsign", "Softsign, x / (Abs(x) + 1)"),
    ("", "torch.abs, .abs()", "Abs"),
    ("", "torch.erf", "Erf"),
]


def _relu_family(slope: float) -> Relaxation:
    """The alpha-optimisable ReLU relaxation where it is sound (0 <= slope <= 1), else exact lines."""
    return PiecewiseLinear(slope) if 0.0 <= slope <= 1.0 else leaky(slope)


def module_relaxation(m: nn.Module) -> Relaxation | None:
    """The relaxation of an activation module, None if ``m`` is not one."""
    if isinstance(m, nn.ReLU):
        return PiecewiseLinear(0.0)
    if isinstance(m, nn.LeakyReLU):
        return _relu_family(float(m.negative_slope))
    if isinstance(m, nn.PReLU):
        if m.weight.numel() != 1:
            raise ValueError(
                f"PReLU with {m.weight.numel()} parameters (one per channel) is not supported; "
                "use PReLU() with one parameter"
            )
        return _relu_family(float(m.weight.detach().reshape(())))
    if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return clamp(float(m.min_val), float(m.max_val))
    if isinstance(m, nn.Sigmoid):
        return Sigmoid()
    if isinstance(m, nn.Tanh):
        return Tanh()
    if isinstance(m, nn.GELU):
        return GELU(m.approximate)
    if isinstance(m, nn.SiLU):
        return SiLU()
    if isinstance(m, nn.Mish):
        return Mish()
    if isinstance(m, nn.SELU):
        return ELU(SELU_ALPHA, SELU_SCALE)
    if isinstance(m, nn.CELU):
        return ELU(float(m.alpha), celu=True)
    if isinstance(m, nn.ELU):
        return ELU(float(m.alpha))
    if isinstance(m, nn.Softplus):
        return Softplus(float(m.beta), float(m.threshold))
    if isinstance(m, nn.Hardsigmoid):
        return hardsigmoid()
    if isinstance(m, nn.Hardswish):
        return Hardswish()
    if isinstance(m, nn.Softsign):
        return Softsign()
    return None


def _arg(args: tuple, kwargs: dict, i: int, key: str, default):
    if key in kwargs:
        return kwargs[key]
    return args[i] if len(args) > i else default


_SIMPLE_CALLS = {
    F.relu: lambda a, k: PiecewiseLinear(0.0),
    torch.relu: lambda a, k: PiecewiseLinear(0.0),
    torch.relu_: lambda a, k: PiecewiseLinear(0.0),
    F.relu_: lambda a, k: PiecewiseLinear(0.0),
    "relu": lambda a, k: PiecewiseLinear(0.0),
    "relu_": lambda a, k: PiecewiseLinear(0.0),
    torch.sigmoid: lambda a, k: Sigmoid(),
    F.sigmoid: lambda a, k: Sigmoid(),
    "sigmoid": lambda a, k: Sigmoid(),
    torch.tanh: lambda a, k: Tanh(),
    F.tanh: lambda a, k: Tanh(),
    "tanh": lambda a, k: Tanh(),
    F.leaky_relu: lambda a, k: _relu_family(float(_arg(a, k, 1, "negative_slope", 0.01))),
    F.relu6: lambda a, k: clamp(0.0, 6.0),
    F.hardtanh: lambda a, k: clamp(
        float(_arg(a, k, 1, "min_val", -1.0)), float(_arg(a, k, 2, "max_val", 1.0))
    ),
    F.gelu: lambda a, k: GELU(_arg(a, k, 1, "approximate", "none")),
    F.silu: lambda a, k: SiLU(),
    F.mish: lambda a, k: Mish(),
    F.elu: lambda a, k: ELU(float(_arg(a, k, 1, "alpha", 1.0))),
    F.selu: lambda a, k: ELU(SELU_ALPHA, SELU_SCALE),
    F.celu: lambda a, k: ELU(float(_arg(a, k, 1, "alpha", 1.0)), celu=True),
    F.softplus: lambda a, k: Softplus(
        float(_arg(a, k, 1, "beta", 1.0)), float(_arg(a, k, 2, "threshold", 20.0))
    ),
    F.hardsigmoid: lambda a, k: hardsigmoid(),
    F.hardswish: lambda a, k: Hardswish(),
    F.softsign: lambda a, k: Softsign(),
    torch.abs: lambda a, k: PiecewiseAffine((0.0,), (-1.0, 1.0), 0.0),
    "abs": lambda a, k: PiecewiseAffine((0.0,), (-1.0, 1.0), 0.0),
    torch.erf: lambda a, k: Erf(),
}
_CLAMPS = {
    torch.clamp,
    torch.clip,
    torch.clamp_min,
    torch.clamp_max,
    "clamp",
    "clip",
    "clamp_",
    "clamp_min",
    "clamp_max",
}


def call_relaxation(target, args: tuple, kwargs: dict) -> Relaxation | None:
    """The relaxation of an fx call (function or method name) with constant arguments ``args[1:]``
    and ``kwargs``; None if ``target`` is not an activation."""
    if target in _CLAMPS:
        name = target if isinstance(target, str) else target.__name__
        lo = _arg(args, kwargs, 1, "min", None)
        hi = _arg(args, kwargs, 2, "max", None)
        if name == "clamp_max":
            lo, hi = None, _arg(args, kwargs, 1, "max", None)
        for v in (lo, hi):
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError("clamp with tensor bounds is not supported (give numbers)")
        return clamp(None if lo is None else float(lo), None if hi is None else float(hi))
    make = _SIMPLE_CALLS.get(target)
    return None if make is None else make(args, kwargs)


def onnx_relaxation(op_type: str, attrs: dict, const) -> Relaxation | None:
    """The relaxation of an ONNX activation node; ``const(i)`` reads the node's i-th input as a
    constant (None if absent)."""
    if op_type == "Relu":
        return PiecewiseLinear(0.0)
    if op_type == "LeakyRelu":
        return _relu_family(float(attrs.get("alpha", 0.01)))
    if op_type == "PRelu":
        slope = const(1)
        if slope is None or slope.numel() != 1:
            raise ValueError("PRelu needs one constant slope (a per-channel slope is not supported)")
        return _relu_family(float(slope.reshape(())))
    if op_type == "Clip":
        lo, hi = const(1), const(2)
        if lo is None and "min" in attrs:  # opset < 11 keeps them as attributes
            lo, hi = torch.tensor(attrs["min"]), torch.tensor(attrs.get("max", math.inf))
        lo_f = None if lo is None or not math.isfinite(float(lo)) else float(lo)
        hi_f = None if hi is None or not math.isfinite(float(hi)) else float(hi)
        if lo_f is None and hi_f is None:
            return None
        return clamp(lo_f, hi_f)
    if op_type == "Sigmoid":
        return Sigmoid()
    if op_type == "Tanh":
        return Tanh()
    if op_type == "Gelu":
        approximate = attrs.get("approximate", "none")
        return GELU(approximate.decode() if isinstance(approximate, bytes) else approximate)
    if op_type == "Mish":
        return Mish()
    if op_type == "Elu":
        return ELU(float(attrs.get("alpha", 1.0)))
    if op_type == "Selu":
        return ELU(float(attrs.get("alpha", SELU_ALPHA)), float(attrs.get("gamma", SELU_SCALE)))
    if op_type == "Celu":
        return ELU(float(attrs.get("alpha", 1.0)), celu=True)
    if op_type == "Softplus":
        return Softplus(1.0, math.inf)
    if op_type == "HardSigmoid":
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        if alpha <= 0:
            raise ValueError(f"HardSigmoid alpha={alpha} must be positive")
        return PiecewiseAffine((-beta / alpha, (1 - beta) / alpha), (0.0, alpha, 0.0), 0.0)
    if op_type == "HardSwish":
        return Hardswish()
    if op_type == "Softsign":
        return Softsign()
    if op_type == "Erf":
        return Erf()
    if op_type == "Abs":
        return PiecewiseAffine((0.0,), (-1.0, 1.0), 0.0)
    return None


__all__ = ["ACTIVATIONS", "call_relaxation", "module_relaxation", "onnx_relaxation"]
