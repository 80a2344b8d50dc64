"""Per-time-step robustness of sequence classifiers (POPQORN's per-step quantification).

For each sample and each time step t: the largest certified L-inf radius eps such that *only*
the features of step t move, inside the input domain, and the prediction provably stays. A small
radius marks a step the decision hangs on; comparing steps shows where in the sequence a model is
fragile (for a row-by-row image reader: which rows).

Shapes: inputs ``(N, *input_shape)`` read as ``(N, T, rnn.input_size)``; radii ``(N, T)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..certify.problem import domain_tensors
from ..engine.bounds import BoundedModel, margin_spec
from ..modules import SequenceClassifier
from ..runtime.device import resolve_device

#: Smallest radius the bisection distinguishes from zero.
MIN_STEP_RADIUS = 1e-5
#: Successive shrink factors for radii the float64 proof rejects (cumulative: 0.99 ... 0.11).
SHRINK_FACTORS = (0.99, 0.97, 0.9, 0.7, 0.5, 0.25)


@dataclass
class StepRobustness:
    """Certified per-step radii; ``radius[i, t]`` is 0 where no radius could be certified (also
    for misclassified samples, whose ``correct`` is False)."""

    radius: np.ndarray  # (N, T)
    preds: np.ndarray  # (N,)
    labels: np.ndarray  # (N,), -1 when not given
    correct: np.ndarray  # (N,) bool
    method: str
    span: float  # the domain's width: a radius equal to it means the whole step is free

    @classmethod
    def concat(cls, parts: list[StepRobustness]) -> StepRobustness:
        """Results of consecutive batches as one (same method and domain)."""
        return cls(
            *(
                np.concatenate([getattr(p, k) for p in parts])
                for k in ("radius", "preds", "labels", "correct")
            ),
            method=parts[0].method,
            span=parts[0].span,
        )

    def profile(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Median and quartiles of log10 radius per step over correctly classified samples."""
        r = np.log10(np.maximum(self.radius[self.correct], MIN_STEP_RADIUS))
        if len(r) == 0:
            nan = np.full(self.radius.shape[1], np.nan)
            return nan, nan, nan
        return np.median(r, 0), np.quantile(r, 0.25, 0), np.quantile(r, 0.75, 0)


def step_robustness(
    model: SequenceClassifier,
    inputs: Tensor,
    labels: Tensor | None = None,
    method: str = "crown",
    domain: tuple[float, float] = (0.0, 1.0),
    bisection_steps: int = 12,
    delta: float = 1e-3,
    batch_size: int = 2,
    device: str | torch.device | None = None,
) -> StepRobustness:
    """Certified radius per (sample, step) by bisection on log(eps) in [MIN_STEP_RADIUS, span].

    Each tried radius must give every margin a lower bound >= ``delta`` (float32); the returned
    radius is then re-proved by a float64 bound (margin > 0), shrunk by ``SHRINK_FACTORS`` until
    it is, else set to 0.
    ``batch_size`` samples are processed together, i.e. ``batch_size * T`` boxes per bound call.
    """
    if not isinstance(model, SequenceClassifier):
        raise TypeError(f"step_robustness needs a nonuniform.SequenceClassifier, got {type(model).__name__}")
    device = resolve_device(device if device is not None else "cpu")
    x_all = torch.as_tensor(inputs, dtype=torch.float32).to(device)
    shape = tuple(x_all.shape[1:])
    d = model.rnn.input_size
    n_feat = math.prod(shape)
    if n_feat % d:
        raise ValueError(f"inputs of shape {shape} cannot be read as steps of {d} features")
    steps = n_feat // d
    model = model.to(device).eval()
    bm = BoundedModel(model, shape, torch.float32, device)
    bm64 = BoundedModel(model, shape, torch.float64, device)
    dl, du = domain_tensors(domain, x_all[0])
    span = float(domain[1] - domain[0])
    # (T, *shape): mask of the features of each step
    masks = torch.zeros(steps, n_feat, device=device)
    masks[torch.arange(steps).repeat_interleave(d), torch.arange(n_feat)] = 1.0
    masks = masks.reshape(steps, *shape)

    preds = bm.predict(x_all)
    y = preds if labels is None else torch.as_tensor(labels).long().to(device)
    correct = preds == y
    radius = torch.zeros(len(x_all), steps, dtype=torch.float64)

    def boxes(x: Tensor, eps: Tensor, dtype) -> tuple[Tensor, Tensor]:
        """x: (n, *shape), eps: (n, T) -> boxes (n*T, *shape)."""
        xr = x.to(dtype).repeat_interleave(steps, 0)
        e = eps.to(dtype).reshape(-1, *([1] * len(shape))) * masks.to(dtype).repeat(len(x), *[1] * len(shape))
        return torch.maximum(xr - e, dl.to(dtype)), torch.minimum(xr + e, du.to(dtype))

    def margins(model_b: BoundedModel, x: Tensor, eps: Tensor, spec: Tensor) -> Tensor:
        lo, hi = boxes(x, eps, model_b.net.dtype)
        with torch.no_grad():
            lb, _ = model_b.bounds(lo, hi, spec.to(lo.dtype), method, bound_upper=False)
        return lb.min(1).values.reshape(len(x), steps)

    for start in range(0, len(x_all), batch_size):
        sel = torch.arange(start, min(start + batch_size, len(x_all)), device=device)
        sel = sel[correct[sel]]
        if len(sel) == 0:
            continue
        x = x_all[sel]
        spec = margin_spec(preds[sel], bm.num_classes).repeat_interleave(steps, 0)
        n = len(sel)
        log_lo = torch.full((n, steps), math.log(MIN_STEP_RADIUS), device=device)
        log_hi = torch.full((n, steps), math.log(span), device=device)
        full = margins(bm, x, log_hi.exp(), spec) >= delta
        some = margins(bm, x, log_lo.exp(), spec) >= delta
        for _ in range(bisection_steps):
            mid = (log_lo + log_hi) / 2
            ok = margins(bm, x, mid.exp(), spec) >= delta
            log_lo, log_hi = torch.where(ok, mid, log_lo), torch.where(ok, log_hi, mid)
        eps = torch.where(full, log_hi.exp(), torch.where(some, log_lo.exp(), torch.zeros_like(log_lo)))
        eps = eps.double()
        # The float64 proof. A margin can jump at a radius (a relaxation switches, e.g. the
        # 1.4 -> -24 cliff of fashion-rnn's row 6), and float32 and float64 may land on either
        # side of it: shrink what float64 cannot confirm by small, then larger, factors (halving
        # here made radii exact powers of two, up to 2x too small).
        for factor in SHRINK_FACTORS:
            proved = margins(bm64, x, eps, spec) > 0
            if proved.all():
                break
            eps = torch.where(proved, eps, eps * factor)
        eps = torch.where(margins(bm64, x, eps, spec) > 0, eps, torch.zeros_like(eps))
        radius[sel.cpu()] = eps.cpu()
    return StepRobustness(
        radius=radius.numpy(),
        preds=preds.cpu().numpy(),
        labels=(torch.full_like(preds, -1) if labels is None else y).cpu().numpy(),
        correct=correct.cpu().numpy(),
        method=method,
        span=span,
    )


def steps_run(
    model: SequenceClassifier,
    card,
    inputs,
    out: str | Path,
    method: str = "crown",
    bisection_steps: int = 12,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[StepRobustness, dict]:
    """:func:`step_robustness` over ``inputs`` (a :class:`~nonuniform.zoo.inputs.Inputs`) in
    batches, written to ``out``: ``steps.npz`` (radius (N, T), preds, labels, correct, indices),
    ``steps.json`` (summary: median log10 radius per step) and ``steps.png`` (the profile).
    ``progress`` is told how many samples each batch finished."""
    from ..report.plots import step_profile_figure
    from ..runs.rundir import model_record

    if not isinstance(model, SequenceClassifier):
        raise ValueError(
            f"{card.name} ({card.arch}) is not a recurrent model; per-step radii need one (e.g. mnist-lstm)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x, y = inputs.x, inputs.y
    parts = []
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        parts.append(
            step_robustness(model, x[sl], None if y is None else y[sl], method, card.domain, bisection_steps,
                            device=device)
        )  # fmt: skip
        if progress is not None:
            progress(len(x[sl]))
    res = StepRobustness.concat(parts)
    np.savez_compressed(
        out / "steps.npz", radius=res.radius, preds=res.preds, labels=res.labels, correct=res.correct,
        indices=inputs.indices,
    )  # fmt: skip
    med, _, _ = res.profile()
    summary = {
        "model": model_record(card),
        "data": inputs.source,
        "method": method,
        "samples": len(x),
        "correct": int(res.correct.sum()),
        "median_log10_radius_per_step": [None if np.isnan(v) else round(float(v), 4) for v in med],
        "wall_seconds": round(time.time() - t0, 2),
    }
    (out / "steps.json").write_text(json.dumps(summary, indent=2))
    step_profile_figure(
        {card.name: res}, out / "steps.png", f"{card.name}: certified radius per step ({method})"
    )
    return res, summary
