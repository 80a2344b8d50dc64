"""Certified non-uniform boxes: the largest-volume box around each input that the bound engine
proves robust (Liu, Tomioka & Cevher, ICML 2019), and the uniform baseline.

Problem, per sample x0 with predicted class c::

    maximise   (1/n) * sum_i log(hi_i - lo_i)                      (mean log-width = log-volume / n)
    subject to lower_bound(f_c - f_j over [lo, hi]) >= delta       for every j != c
    where      lo = max(x0 - r_lo, domain_lo),  hi = min(x0 + r_hi, domain_hi)   (clip=True)

Warm start: the uniform box, reshaped by the linearised problem (``shaped_start``) and grown by
damped fixed-point steps on the optimality conditions, each rescaled onto the constraint's
boundary (``balance``; with CROWN-type methods this is the whole optimisation by default,
see ``solver_defaults``).

Solver: the PHR augmented Lagrangian for inequality constraints with Adam steps on log-radii,
multiplier updates every ``update_every`` steps and penalty growth when the violation does not
shrink. Each sample has its own multipliers, penalty, Adam state and convergence test, and the
loss is a *sum* over samples, so no sample's dynamics depend on its batch (Liu et al.'s code
averaged over the batch). The iterate with the best objective among those the bound engine
certified is kept, starting from the best uniform box, so the result is never worse than uniform.

Finalisation (soundness): the returned box is re-checked by a fresh bound computation without a
gradient tape, in float64 by default, against a safety margin; a failing box is shrunk by
bisection on a common log-scale until it passes, and a sample whose box cannot be certified is
reported ``certified=False`` with a degenerate box.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.bounds import BoundedModel, margin_spec
from ..proof.bab import grow_boxes, split_ops
from ..runtime.device import resolve_device
from ..runtime.memory import out_of_memory
from .finalise import finalise, uniform_radius
from .memory import affordable_batch
from .optimiser import optimise, polish, shaped_start
from .problem import MIN_RADIUS, Problem, domain_tensors, radii
from .result import BoxesFileError, CertifiedBoxes
from .settings import UNIT_DOMAIN, CertifyConfig, solver_defaults
from .shapes import BoxShape, floor_fraction


def certify_boxes(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None = None,
    config: CertifyConfig | None = None,
    *,
    indices: Tensor | np.ndarray | None = None,
    callback: Callable[[CertifiedBoxes], None] | None = None,
    progress: Callable[[float], None] | None = None,
    **settings,
) -> CertifiedBoxes:
    """Largest certified non-uniform box around each input (see module docstring).

    ``inputs``: (N, *input_shape) in the settings' domain (default [0, 1]).
    ``labels``: optional true labels; misclassified samples are reported, not certified.
    ``config``: the settings (:class:`~nonuniform.certify.settings.CertifyConfig`); keyword
    ``settings`` are overrides of its fields (``method="alpha-crown"``, ``batch_size=50``, ...),
    validated once. ``callback`` receives the results of each finished batch (the CLI writes them
    to disk as they come); ``progress`` receives work done in samples (fractions within a
    batch), for progress bars.
    """
    cfg = CertifyConfig.build(config, **settings)
    if cfg.domain is None:
        cfg = CertifyConfig.build(cfg, domain=UNIT_DOMAIN)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device if cfg.device is not None else getattr(inputs, "device", "cpu"))
    x_all, y_all, bm, model = check_inputs_fit(model, inputs, labels, cfg, device)
    shape = tuple(x_all.shape[1:])
    check_dt = {"float64": torch.float64, "float32": torch.float32}[cfg.check_dtype]
    check_bm = BoundedModel(model, shape, check_dt, device) if check_dt != torch.float32 else bm
    batch_size = affordable_batch(bm, check_bm, x_all, cfg, cfg.batch_size)
    idx_all = np.arange(len(x_all)) if indices is None else np.asarray(indices)
    # exactly what a saved file will give back; the batch actually used
    recorded = {**cfg.to_dict(), "input_shape": list(shape), "batch_size": batch_size, "device": str(device)}
    parts = []
    start = 0
    while start < len(x_all):
        t0 = time.perf_counter()
        x0 = x_all[start : start + batch_size]
        y = None if y_all is None else y_all[start : start + batch_size]
        tally = _Tally(progress)
        try:
            part = _certify_batch(bm, check_bm, x0, y, cfg, tally)
        except (RuntimeError, MemoryError) as e:
            if not out_of_memory(e):
                raise
            tally.take_back()
            if batch_size == 1:
                raise ValueError(
                    "one sample's bounds do not fit in the free memory; everything certified so far is "
                    "kept (run directories: parts/); use a machine with more memory or a smaller model"
                ) from None
            batch_size = max(1, batch_size // 2)
            warnings.warn(
                f"out of memory: certifying in batches of {batch_size} (the same boxes up to float rounding)",
                stacklevel=2,
            )
            recorded = {**recorded, "batch_size": batch_size}
            gc.collect()
            continue
        part.seconds[:] = (time.perf_counter() - t0) / len(x0)
        part.indices = idx_all[start : start + len(x0)]
        part.settings = recorded
        parts.append(part)
        if callback is not None:
            callback(part)
        start += len(x0)
    return CertifiedBoxes.concat(parts)


class _Tally:
    """Progress of one batch, passed on as it comes and taken back if the batch is retried."""

    def __init__(self, progress: Callable[[float], None] | None) -> None:
        self.progress, self.done = progress, 0.0

    def __call__(self, n: float) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(n)

    def take_back(self) -> None:
        if self.progress is not None and self.done:
            self.progress(-self.done)
        self.done = 0.0


def check_inputs_fit(
    model: nn.Module, inputs, labels, cfg: CertifyConfig, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor | None, BoundedModel, nn.Module]:
    """Everything about the inputs that can be refused before any work (so a run directory is
    never started for them): batched shape the model takes, a domain that fits and contains them,
    labels per input, a classifier with two or more classes. Returns the inputs and labels on
    ``device``, the bounded model (float32) and the model certified (with the output-range head
    when the settings have one)."""
    x_all = torch.as_tensor(inputs, dtype=torch.float32).to(device)
    if x_all.dim() < 2 or len(x_all) == 0:
        raise ValueError(f"inputs must be a non-empty batch, (N, *input_shape); got {tuple(x_all.shape)}")
    if not torch.isfinite(x_all).all():
        first = int((~torch.isfinite(x_all)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"inputs hold NaN/inf values (first in sample {first})")
    domain = UNIT_DOMAIN if cfg.domain is None else cfg.domain
    lo_d, hi_d = domain_tensors(domain, x_all[0])
    outside = (x_all < lo_d) | (x_all > hi_d)
    if cfg.clip and outside.any():
        raise ValueError(
            f"{int(outside.any(0).sum())} input features lie outside the domain (data min "
            f"{float(x_all.min()):.3g}, max {float(x_all.max()):.3g}); give a domain that contains the "
            "data (--domain LO,HI / domain=(lo, hi)) or turn clipping off (--no-clip / clip=False)"
        )
    shape = BoxShape.build(cfg, x_all[:1])  # group maps and masks must fit one input
    if not bool((lo_d < hi_d)[~shape.frozen & ~shape.whole].any()):
        raise ValueError(
            "no feature is left to certify: every feature is frozen, whole-domain or fixed by the domain"
        )
    if cfg.output_range is not None:  # class 0 of the head is "in range"; any labels are targets
        labels = torch.zeros(len(x_all), dtype=torch.long)
    y_all = None if labels is None else torch.as_tensor(labels).long().to(device)
    if y_all is not None and y_all.shape != x_all.shape[:1]:
        raise ValueError(f"{len(y_all)} labels for {len(x_all)} inputs")
    bm = BoundedModel(model, tuple(x_all.shape[1:]), torch.float32, device)
    if cfg.output_range is not None:  # the plain model read first: its errors name its own layers
        model = cfg.for_output_range(model, x_all)
        bm = BoundedModel(model, tuple(x_all.shape[1:]), torch.float32, device)
    if bm.num_classes < 2:
        raise ValueError(
            f"the model has {bm.num_classes} output; certifying a prediction needs a classifier with at "
            "least two classes; for a regression model certify an output range instead "
            "(--output-range LO,HI / output_range=(lo, hi))"
        )
    if cfg.bab and not (hasattr(bm.net, "ops") and split_ops(bm)):
        raise ValueError("bab=True splits ReLU/LeakyReLU neurons of feedforward models; this model has none")
    return x_all, y_all, bm, model


def _certify_batch(
    bm: BoundedModel,
    check_bm: BoundedModel,
    x0: Tensor,
    y: Tensor | None,
    cfg: CertifyConfig,
    progress: Callable[[float], None] | None = None,
) -> CertifiedBoxes:
    b = len(x0)
    reported = [0.0]

    def tick(fraction: float) -> None:
        """Report ``fraction`` of this batch as done (never more than all of it)."""
        step = min(fraction, 1.0 - reported[0])
        reported[0] += step
        if progress is not None and step > 0:
            progress(step * b)

    preds = bm.predict(x0)
    spec = margin_spec(preds, bm.num_classes).to(x0.dtype)
    p = Problem(bm, x0, spec, cfg)
    correct = torch.ones(b, dtype=torch.bool, device=x0.device) if y is None else preds == y
    idx = correct.nonzero().squeeze(1)
    shape = (-1,) + (1,) * (x0.dim() - 1)

    # Uniform baseline (and warm start), certified like every returned box.
    r_u = torch.zeros(b, dtype=x0.dtype, device=x0.device)
    if len(idx):
        r_u[idx] = uniform_radius(p, idx)
    has_u = idx[r_u[idx] > 0]
    u_lo, u_hi = x0.clone(), x0.clone()
    u_ok = torch.zeros(b, dtype=torch.bool, device=x0.device)
    # The proved margin of each returned box: finalise's fresh float64 proof of exactly those arrays.
    margin = torch.full((b,), float("nan"), dtype=x0.dtype, device=x0.device)
    if len(has_u):
        r = r_u[has_u].reshape(shape).expand_as(x0[has_u])
        lo_, hi_, ok_, m_, scale = finalise(p, check_bm, r, r, has_u)
        u_lo[has_u], u_hi[has_u], u_ok[has_u], margin[has_u] = lo_, hi_, ok_, m_
        r_u[has_u] = r_u[has_u] * scale
    set_floors(p, r_u, u_ok)
    below = u_ok & (r_u < cfg.floor)  # not even the floor's uniform box is certified: no box is
    u_ok &= ~below
    u_lo[below], u_hi[below], margin[below] = x0[below], x0[below], float("nan")
    with torch.no_grad():
        u_lv = p.mean_log_width(u_lo, u_hi) * p.n_free

    # Non-uniform optimisation from the uniform box.
    rho0 = torch.log(r_u.clamp(min=MIN_RADIUS)).reshape(shape).expand_as(x0).clone()
    if cfg.asymmetric:
        rho0 = torch.stack([rho0, rho0.clone()], 1)
    start = u_ok.nonzero().squeeze(1)
    al_share = 0.65 if cfg.iterations else 0.0  # progress: the rest goes to the warm start
    tick(0.1)  # the uniform box
    warm = crown_problem(p) if cfg.method == "alpha-crown" and cfg.crown_start else p
    crown_shape = None  # alpha-crown: CROWN's optimised shape, a candidate of the final scaling
    if cfg.shaped_start and len(start):
        step_share = (0.8 - al_share) / max(warm.cfg.shape_steps, 1)
        shaped = shaped_start(warm, start, rho0[start], on_step=lambda: tick(step_share))
        with torch.no_grad():
            gain = p.mean_log_width(*p.box(*radii(p, shaped, start), x0[start])) > u_lv[start] / max(
                p.n_free, 1
            )
        rho0[start[gain]] = shaped[gain]
        if warm is not p:
            crown_shape = rho0.clone()
    active = u_ok.clone()
    tick(max(0.9 - al_share - reported[0], 0.0))  # the warm start, also where its steps stopped early
    best_rho, iters, last_rho = optimise(p, rho0, active, lambda: tick(al_share / max(cfg.iterations, 1)))
    lower, upper = u_lo.clone(), u_hi.clone()
    certified = u_ok.clone()
    used_uniform = u_ok.clone()
    opt_idx = u_ok.nonzero().squeeze(1)
    if len(opt_idx):
        if cfg.polish:
            # Without AL iterations the last iterate is the start: one candidate.
            last = (last_rho[opt_idx],) if cfg.iterations else ()
            last += (crown_shape[opt_idx],) if crown_shape is not None else ()
            best_rho[opt_idx] = polish(p, opt_idx, best_rho[opt_idx], *last)
        r_lo, r_hi = radii(p, best_rho[opt_idx], opt_idx)
        lo_, hi_, ok_, m_, applied = finalise(p, check_bm, r_lo, r_hi, opt_idx)
        with torch.no_grad():
            lv = p.mean_log_width(lo_, hi_) * p.n_free
        take = ok_ & (lv > u_lv[opt_idx])
        if p.shape.floors:  # a box the final proof had to shrink may have lost its floor
            take &= applied >= 1
        sel = take.reshape(shape)
        lower[opt_idx] = torch.where(sel, lo_, u_lo[opt_idx])
        upper[opt_idx] = torch.where(sel, hi_, u_hi[opt_idx])
        margin[opt_idx] = torch.where(take, m_, margin[opt_idx])
        used_uniform[opt_idx] = ~take
    margin[~certified] = float("nan")
    cert_idx = certified.nonzero().squeeze(1)
    if len(cert_idx):
        assert (margin[cert_idx] >= cfg.check_margin).all(), "internal error: unsound box"
        if cfg.bab:  # grow further where branch-and-bound proves it (every leaf in float64)
            c = cert_idx
            lo_g, hi_g, m_g, leaves, _ = grow_boxes(
                check_bm, x0[c], lower[c], upper[c], p.spec[c], p.box, cfg.check_margin, cfg.bab_time
            )
            grown = leaves > 0
            assert (m_g[grown] >= cfg.check_margin).all(), "internal error: unsound BaB box"
            g = cert_idx[grown]
            lower[g], upper[g], margin[g] = lo_g[grown], hi_g[grown], m_g[grown].to(margin.dtype)
    with torch.no_grad():
        lv_final = p.mean_log_width(lower, upper) * p.n_free
        half = ((upper - lower) / 2).flatten(1)[:, p.free.flatten()]
        apothem = half.min(1).values if half.shape[1] else torch.zeros(b, device=x0.device)
    neg_inf = torch.full_like(lv_final, -math.inf)
    tick(1.0)
    return CertifiedBoxes(
        inputs=x0.cpu().numpy(),
        lower=lower.cpu().numpy(),
        upper=upper.cpu().numpy(),
        labels=(y if y is not None else torch.full((b,), -1)).cpu().numpy().astype(np.int64),
        preds=preds.cpu().numpy().astype(np.int64),
        certified=certified.cpu().numpy(),
        log_volume=torch.where(certified, lv_final, neg_inf).cpu().numpy(),
        uniform_radius=r_u.cpu().numpy(),
        uniform_log_volume=torch.where(certified, u_lv, neg_inf).cpu().numpy(),
        apothem=torch.where(certified, apothem, 0.0).cpu().numpy(),
        margin=margin.cpu().numpy(),
        used_uniform=(used_uniform & certified).cpu().numpy(),
        iterations=iters.cpu().numpy(),
        seconds=np.zeros(b),
        indices=np.arange(b),
        free=p.free.cpu().numpy(),
    )


def set_floors(p: Problem, r_u: Tensor, ok: Tensor) -> None:
    """The radius floor of every sample whose uniform box is certified: the larger of the
    absolute ``floor`` and the objective's fraction of the uniform radius (see
    :mod:`~nonuniform.certify.shapes`). The uniform box meets it whenever ``floor <= r_u``."""
    frac = floor_fraction(p.cfg.objective)
    if frac == 0 and p.cfg.floor == 0:
        return
    floor = torch.clamp(frac * r_u, min=max(p.cfg.floor, MIN_RADIUS))
    p.shape.log_floor = torch.where(ok, floor.log(), torch.full_like(floor, -math.inf))


def crown_problem(p: Problem) -> Problem:
    """The same batch under CROWN with CROWN's solver defaults (alpha-crown's warm start)."""
    cfg = replace(p.cfg, method="crown", alpha_steps=None, alpha_steps_check=None, joint_slopes=None)
    cfg = replace(cfg, **{k: v for k, v in solver_defaults("crown").items() if k == "shape_steps"})
    q = Problem(p.bm, p.x0, p.spec, cfg)
    q.shape = p.shape  # the same floors (set on p once the uniform radii are known)
    return q


__all__ = [
    "BoxesFileError",
    "CertifiedBoxes",
    "CertifyConfig",
    "certify_boxes",
    "check_inputs_fit",
    "domain_tensors",
]
