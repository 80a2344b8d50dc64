"""alpha-CROWN for recurrent models: optimisable relaxations through the unrolled recurrence.

CROWN fixes every relaxation by a rule; each of these families is sound for *any* value of its
parameter, so the parameters can be tuned by gradient ascent on the bound (as alpha-CROWN does for
ReLU slopes, and as R2 tunes convex combinations of candidate bounds for recurrent nets):

* gate products ``p(x) * q(y)`` (:class:`~nonuniform.relax.gates.Product`): the weight of the first of
  the two candidate planes per side, in [0, 1] (a convex combination of sound planes is sound);
  CROWN's value is the centre-gap blend;
* S-shaped lines (tanh/sigmoid, on their own or inside a gate): the tangent point of each line
  wherever a tangent is sound (on the concave side of the upper line anywhere in [l, u]; on a
  straddling interval anywhere in [d*(l), u]), in [0, 1] across that range
  (:meth:`~nonuniform.relax.activations.SShaped.relax_at`); CROWN's values are the midpoint and d*.
  (A first version blended CROWN's line with the flat line f(l)/f(u): it gained nothing on the
  tanh RNN.);
* ReLU/LeakyReLU lines: the lower slope in [negative_slope, 1] (CROWN's value: its adaptive one).

One parameter set per sample and neuron is shared by every bound target (the final pass and the
CROWN pass behind each intermediate bound) -- auto_LiRPA's "shared alpha" -- so a set stays small
(``(batch, 2, n)`` per node) and means the same thing when the box changes: the box optimiser
carries one per sample (joint mode). ``bm`` is a
:class:`~nonuniform.recurrent.engine.RecurrentBoundedModel` (passed in: the engine calls this module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.alpha import maximise
from ..relax.activations import LinearRelaxation, PiecewiseLinear, Relaxation, SShaped


@dataclass
class RecurrentParams:
    """Relaxation parameters by key: ``plane:k`` (product node k) ``(batch, 2, n)`` lower/upper
    weights; ``line:j:Act`` (activation Act on node j) ``(batch, 2, n)`` for S-shaped lines,
    ``(batch, n)`` lower slopes for ReLU-family lines. ``ranges`` holds each key's sound range.
    The interface matches :class:`~nonuniform.engine.alpha.Slopes` (the box optimiser uses both)."""

    values: dict[str, Tensor]
    ranges: dict[str, tuple[float, float]]

    def tensors(self) -> list[Tensor]:
        return list(self.values.values())

    def map(self, fn) -> RecurrentParams:
        return RecurrentParams({k: fn(t) for k, t in self.values.items()}, self.ranges)

    def select(self, idx: Tensor) -> RecurrentParams:
        return self.map(lambda t: t[idx])

    def assign(self, idx: Tensor, other: RecurrentParams, mask: Tensor | None = None) -> None:
        """Write ``other``'s rows into samples ``idx`` (where ``mask``, if given)."""
        sel = idx if mask is None else idx[mask]
        for k, t in self.values.items():
            t[sel] = other.values[k] if mask is None else other.values[k][mask]

    def project(self, _ops=None) -> None:
        """Clamp in place to each parameter's sound range."""
        with torch.no_grad():
            for k, t in self.values.items():
                t.clamp_(*self.ranges[k])

    def lines(self, node: int, act: Relaxation, l: Tensor, u: Tensor) -> LinearRelaxation | None:
        """``act``'s lines on node ``node`` (bounds ``l``, ``u`` ``(batch, n)``) with the
        parameters, or None when there are none for it (then CROWN's)."""
        t = self.values.get(line_key(node, act))
        if t is None:
            return None
        if isinstance(act, PiecewiseLinear):
            return act.relax(l, u, "crown", alpha=t.unsqueeze(1))
        return act.relax_at(l, u, t)  # type: ignore[attr-defined]

    def plane_weights(self, node: int) -> Tensor | None:
        return self.values.get(f"plane:{node}")


def line_key(node: int, act: Relaxation) -> str:
    return f"line:{node}:{type(act).__name__}"


def initial_params(state) -> RecurrentParams:
    """CROWN's parameters at the boxes of ``state`` (a CROWN :class:`RecurrentState`)."""
    values: dict[str, Tensor] = {}
    ranges: dict[str, tuple[float, float]] = {}
    for k, rel in state.relax.items():
        if getattr(rel, "weights", None) is not None:
            values[f"plane:{k}"], ranges[f"plane:{k}"] = rel.weights.detach().clone(), (0.0, 1.0)
    for node, act in state.lines:
        l, u = state.lower[node].detach(), state.upper[node].detach()
        key = line_key(node, act)
        if isinstance(act, PiecewiseLinear):
            values[key], ranges[key] = act.default_alpha(l, u), (act.negative_slope, 1.0)
        elif isinstance(act, SShaped):
            values[key], ranges[key] = act.default_tangents(l, u), (0.0, 1.0)
    return RecurrentParams(values, ranges)


def params_bound(bm, lam: Tensor, lower: Tensor, upper: Tensor, params: RecurrentParams) -> Tensor:
    """One bound pass with the given parameters: (batch, specs), differentiable in the box and in
    the parameters."""
    state = bm.propagate(lower, upper, "crown", params=params)
    return bm.final_bound(lam, state, lower, upper)


def optimised_bound(
    bm, lam: Tensor, lower: Tensor, upper: Tensor, steps: int, lr: float, init: RecurrentParams | None = None
) -> Tensor:
    """The alpha-CROWN bound of ``lam @ f`` on the boxes: (batch, specs).

    ``init`` with ``steps <= 0``: the single pass with those parameters (the box optimiser's joint
    mode). Otherwise :func:`~nonuniform.engine.alpha.maximise` from ``init`` (default CROWN's
    parameters), each sample keeping its best parameters; with a gradient tape on the
    box those are used once more with the tape, without one the best bound of each specification
    over all iterates is returned (each iterate is a proof).
    """
    if init is not None and steps <= 0:
        return params_bound(bm, lam, lower, upper, init)
    lam_d, lo_d, up_d = lam.detach(), lower.detach(), upper.detach()
    if init is None:
        with torch.no_grad():
            init = initial_params(bm.propagate(lo_d, up_d, "crown"))
    best, best_out = maximise(init, lambda p: params_bound(bm, lam_d, lo_d, up_d, p), steps, lr)
    if torch.is_grad_enabled() and (lower.requires_grad or upper.requires_grad):
        return params_bound(bm, lam, lower, upper, best)
    return best_out


__all__ = ["RecurrentParams", "initial_params", "optimised_bound", "params_bound"]
