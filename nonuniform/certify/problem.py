"""The certification problem of one batch: settings, input domain, box parametrisation and margins.

Log-radii ``rho`` (``(n, *input_shape)``, or ``(n, 2, *input_shape)`` for asymmetric radii) define
the box ``[x0 - exp(rho_lo), x0 + exp(rho_hi)]``, intersected with the domain when ``clip``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..engine.bounds import BoundedModel
from .settings import UNIT_DOMAIN, CertifyConfig
from .shapes import BoxShape

#: Radii are kept in [MIN_RADIUS, MAX_RADIUS_FACTOR * domain span]: keeps log-radii finite.
MIN_RADIUS = 1e-7
MAX_RADIUS_FACTOR = 4.0


def domain_tensors(domain, like: Tensor) -> tuple[Tensor, Tensor]:
    """The domain's lower and upper ends, broadcast to the shape of one input ``like``.

    Each end is a number, an array shaped like one input (or with as many values, e.g. a flat
    VNN-LIB box), or one value per channel (the first axis) that broadcasts over the others."""
    ends = []
    for d in domain:
        t = torch.as_tensor(d, dtype=like.dtype, device=like.device)
        if t.dim() and t.shape != like.shape:
            if t.numel() == like.numel():  # as many values as one input: a flat box
                t = t.reshape(like.shape)
            elif like.dim() and t.numel() == like.shape[0] and t.shape[0] == like.shape[0]:  # per channel
                t = t.reshape(-1, *([1] * (like.dim() - 1)))
        try:
            ends.append(t.expand_as(like))
        except RuntimeError:
            raise ValueError(
                f"the domain's ends have shape {tuple(t.shape)}, which does not fit one input of shape "
                f"{tuple(like.shape)}: give one (lo, hi) pair per channel ({like.shape[0]} here), an array "
                "shaped like one input, or one pair for all features (--domain 0,1 / domain=(0, 1))"
            ) from None
    lo, hi = ends
    if like.dtype != torch.float64:  # round the ends inwards: a box clipped to them stays inside
        lo = _inward(lo, _as_ends(domain[0], lo), +1)
        hi = _inward(hi, _as_ends(domain[1], hi), -1)
    return lo, hi


def _as_ends(d, like: Tensor) -> Tensor:
    """One end of the domain in float64, shaped like ``like`` (the same reading as above)."""
    return domain_tensors((d, d), like.to(torch.float64))[0]


def _inward(t: Tensor, exact: Tensor, direction: int) -> Tensor:
    """``t`` (rounded from ``exact``) moved one step towards ``direction`` where rounding moved it
    outwards (float32 ends of a float64 domain can lie just outside it)."""
    out = t.to(torch.float64) < exact if direction > 0 else t.to(torch.float64) > exact
    if not bool(out.any()):
        return t
    step = torch.nextafter(t, torch.full_like(t, math.inf * direction))
    return torch.where(out, step, t)


class Problem:
    """Everything about one batch that does not change during optimisation."""

    def __init__(self, bm: BoundedModel, x0: Tensor, spec: Tensor, cfg: CertifyConfig):
        self.bm, self.x0, self.spec, self.cfg = bm, x0, spec, cfg
        self.dl, self.du = domain_tensors(UNIT_DOMAIN if cfg.domain is None else cfg.domain, x0[0])
        self.shape = BoxShape.build(cfg, x0)
        # Features the objective and the reported volume count: those whose box can have a width
        # of its own (not a point domain, not frozen, not fixed to the whole domain).
        free = (self.du > self.dl) if cfg.clip else torch.ones_like(self.dl, dtype=torch.bool)
        self.free = free & ~self.shape.frozen & ~self.shape.whole
        self.n_free = int(self.free.sum())
        self._w = self.shape.weight.flatten()[self.free.flatten()]
        span = float((self.du - self.dl).max())
        span = span if span > 0 else 1.0
        self.log_min, self.log_max = math.log(MIN_RADIUS), math.log(MAX_RADIUS_FACTOR * span)
        #: alpha-crown: per-sample slopes left by the joint optimiser (a start for later bounds)
        self.slopes = None

    def box(self, r_lo: Tensor, r_hi: Tensor, x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x0 = self.x0 if x0 is None else x0
        lo, hi = x0 - r_lo, x0 + r_hi
        if self.cfg.clip:
            lo, hi = torch.maximum(lo, self.dl), torch.minimum(hi, self.du)
        return self.shape.apply(lo, hi, x0, self.dl, self.du)

    def mean_log_width(self, lo: Tensor, hi: Tensor) -> Tensor:
        """The objective: the (weighted) mean log-width over the counted features."""
        width = (hi - lo).flatten(1)[:, self.free.flatten()]
        logs = torch.log(width.clamp(min=1e-30))
        if self.cfg.weights is None:
            return logs.mean(1)
        return (logs * self._w).sum(1) / self._w.sum().clamp(min=1e-30)

    def margins(
        self,
        lo: Tensor,
        hi: Tensor,
        spec: Tensor,
        bm=None,
        alpha_steps=None,
        method: str | None = None,
        slopes=None,
    ) -> Tensor:
        """Lower bounds of the margins: (batch, classes - 1); ``method`` overrides the setting.
        ``slopes`` (alpha-crown, for these rows): with ``alpha_steps`` unset, one bound pass with
        these slopes (joint optimisation); else where the slope optimisation starts."""
        bm = bm or self.bm
        if alpha_steps is None:
            alpha_steps = 0 if slopes is not None else self.cfg.alpha_steps
        lb, _ = bm.bounds(
            lo,
            hi,
            spec,
            method or self.cfg.method,
            per_logit=self.cfg.per_logit,
            bound_upper=False,
            alpha_steps=alpha_steps,
            alpha_lr=self.cfg.alpha_lr,
            slopes=slopes,
        )
        return lb


def radii(p: Problem, rho: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Radii below and above ``x0`` of log-radii ``rho`` of the samples ``idx`` (None: all), with
    the problem's box shape (tied groups, floors) applied."""
    r = p.shape.radii(rho, idx).exp()
    return (r[:, 0], r[:, 1]) if p.cfg.asymmetric else (r, r)
