"""The certification problem of one batch: settings, input domain, box parametrisation and margins.

Log-radii ``rho`` (``(n, *input_shape)``, or ``(n, 2, *input_shape)`` for asymmetric radii) define
the box ``[x0 - exp(rho_lo), x0 + exp(rho_hi)]``, intersected with the domain when ``clip``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .bounds import METHODS, BoundedModel

#: Radii are kept in [MIN_RADIUS, MAX_RADIUS_FACTOR * domain span]: keeps log-radii finite.
MIN_RADIUS = 1e-7
MAX_RADIUS_FACTOR = 4.0


def solver_defaults(method: str) -> dict[str, int]:
    """Warm-start balancing steps and augmented-Lagrangian iterations when none are given.

    Measured in session 9 (docs/NOTES.md; mean log half-width, s per image): from the shaped
    start, 8 balancing steps (:func:`~nonuniform.optimiser.balance`) and no AL iterations beat
    the former 60 AL iterations on every model tried -- mnist-cnn-small -3.619 vs -3.633 at about
    half the time, cifar_base_kw -1.316 vs -1.353, mnist-mlp -3.893 vs -3.897 at a third -- and
    10-20 AL iterations after them add under 0.001. alpha-crown keeps 60 AL iterations and no
    balancing: its slopes are optimised jointly with the radii only inside the AL loop
    (mnist-mlp: -3.878 that way, -3.884 with balancing alone).
    """
    if method == "alpha-crown":
        return {"shape_steps": 0, "iterations": 60}
    return {"shape_steps": 8, "iterations": 0}


@dataclass
class CertifyConfig:
    """Settings of :func:`certify_boxes` (all recorded in the results)."""

    method: str = "crown"
    asymmetric: bool = False
    clip: bool = True
    #: (lo, hi): floats, or arrays shaped like one input for per-feature domains
    domain: tuple = (0.0, 1.0)
    per_logit: bool = False
    delta: float = 1e-3  # margin the optimiser must keep
    check_margin: float = 1e-4  # margin the final (float64) check must prove
    check_dtype: str = "float64"
    # None: solver_defaults(method) (the AL iterations after the warm start's balancing steps).
    iterations: int | None = None
    lr: float = 0.05
    mu_init: float = 1.0
    mu_growth: float = 2.0
    mu_max: float = 1e4
    update_every: int = 10
    tol: float = 1e-3  # max constraint violation for convergence
    ftol: float = 1e-3  # objective change (mean log-width) over one outer step for convergence
    uniform_rtol: float = 1e-3  # relative tolerance of the uniform-radius bisection
    shrink_steps: int = 14
    shaped_start: bool = True  # warm start from the linearised problem (see shaped_start)
    shape_steps: int | None = None  # balancing steps after the shaped start (optimiser.balance)
    polish: bool = True  # scale the optimised shapes to their largest certified scale (see polish)
    # Branch-and-bound growth (nonuniform.bab.grow_boxes): each certified box is scaled up by the
    # largest factor BaB proves in float64 within `bab_time` seconds per sample. Boxes then
    # depend on the machine's speed (a time budget).
    bab: bool = False
    bab_time: float = 10.0
    alpha_steps: int = 5  # alpha-CROWN slope steps per bound call (searches, and non-joint mode)
    # ... and in the final check, from CROWN's slopes (50 steps reach what the joint optimiser's
    # slopes prove on mnist-mlp boxes; 20 fell short by up to 0.005 in the margin)
    alpha_steps_check: int = 50
    # alpha-CROWN: the optimiser carries one slope set per sample and updates it with the
    # log-radii in the same Adam loop (one bound pass per iteration), warm-started from CROWN's
    # slopes at the start box; False re-optimises slopes from CROWN's at every bound call.
    joint_slopes: bool = True
    alpha_lr: float = 0.1

    def __post_init__(self) -> None:
        for key, value in solver_defaults(self.method).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.method not in METHODS:
            raise ValueError(f"unknown bound method '{self.method}'; choose one of {METHODS}")
        if self.bab and self.check_dtype != "float64":
            raise ValueError("bab=True proves its leaves in float64: keep check_dtype='float64'")
        lo, hi = (np.asarray(d, dtype=np.float64) for d in self.domain)
        if (lo > hi).any():
            raise ValueError(f"domain: lower end above upper end in {int((lo > hi).sum())} features")
        if lo.ndim or hi.ndim:
            self.domain = (lo.tolist(), hi.tolist())


def domain_tensors(domain, like: Tensor) -> tuple[Tensor, Tensor]:
    """The domain's lower and upper ends, broadcast to the shape of one input ``like``."""
    try:
        lo, hi = (torch.as_tensor(d, dtype=like.dtype, device=like.device).expand_as(like) for d in domain)
    except RuntimeError:
        raise ValueError(f"domain arrays must broadcast to one input's shape {tuple(like.shape)}") from None
    return lo, hi


class Problem:
    """Everything about one batch that does not change during optimisation."""

    def __init__(self, bm: BoundedModel, x0: Tensor, spec: Tensor, cfg: CertifyConfig):
        self.bm, self.x0, self.spec, self.cfg = bm, x0, spec, cfg
        self.dl, self.du = domain_tensors(cfg.domain, x0[0])
        self.free = (self.du > self.dl) if cfg.clip else torch.ones_like(self.dl, dtype=torch.bool)
        self.n_free = int(self.free.sum())
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
        return lo, hi

    def mean_log_width(self, lo: Tensor, hi: Tensor) -> Tensor:
        width = (hi - lo).flatten(1)[:, self.free.flatten()]
        return torch.log(width.clamp(min=1e-30)).mean(1)

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


def radii(p: Problem, rho: Tensor) -> tuple[Tensor, Tensor]:
    r = rho.exp()
    return (r[:, 0], r[:, 1]) if p.cfg.asymmetric else (r, r)
