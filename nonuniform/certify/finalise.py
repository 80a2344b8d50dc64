"""The uniform baseline and the final proof of every box.

``largest_scale`` finds, by a bracketed search, the largest certified scale of a box shape (the uniform
radius is the scale of the flat shape); ``finalise`` re-proves each returned box with a fresh,
tape-free bound in the check dtype and shrinks failures on a common log-scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..engine.bounds import BoundedModel
from .problem import Problem, radii


def largest_scale(
    p: Problem,
    idx: Tensor,
    log_shape: Tensor,
    guess: Tensor | None = None,
    method: str | None = None,
    step: float = math.log(4.0),
    rtol: float | None = None,
) -> Tensor:
    """Largest certified log-scale t per sample for the box with log-radii ``t + log_shape``
    (``log_shape``: (n, *input_shape), or (n, 2, *input_shape) for asymmetric radii), to a
    relative tolerance ``rtol`` (default ``uniform_rtol``); -inf where even the smallest box fails.

    Why not plain bisection: each step is a full bound call (seconds on a CNN), and bisection over
    the whole range of radii (1e-7 to the domain's span) needs ~17 of them. Here the search starts
    at ``guess`` (default: the middle of the range) and models the margin's loss against the point
    box (radius 0) as ``c * scale^k``, which fits CROWN's margins well (k grows from ~1.2 to ~1.6
    toward the root on mnist-cnn-small). With one end known it steps to that model's root with
    k = 1.5 (at most twice ``step``, doubling, away) until the threshold is bracketed; then it fits
    k to both ends and probes half a tolerance past the root, away from the end that moved last
    (a probe outside the bracket falls back to bisection in log-space): 5-7 calls where Illinois
    steps took 8-12. Only samples still searching are bounded. The margin is assumed monotone in
    the scale, as bisection also assumes.
    """
    cfg = p.cfg
    x0, spec = p.x0[idx], p.spec[idx]
    n, dev, dt = len(idx), x0.device, x0.dtype
    span = log_shape.flatten(1)
    t_min = p.log_min - span.max(1).values
    t_max = p.log_max - span.min(1).values

    def slack(t: Tensor, sel: Tensor) -> Tensor:  # min margin bound - delta (>= 0: certified)
        rho = (t.reshape((-1,) + (1,) * (log_shape.dim() - 1)) + log_shape[sel]).clamp(p.log_min, p.log_max)
        with torch.no_grad():
            lo, hi = p.box(*radii(p, rho, idx[sel]), x0[sel])
            return (
                p.margins(lo, hi, spec[sel], method=method, **start_slopes(p, idx[sel])).min(1).values
                - cfg.delta
            )

    # The point box's slack (the margin at x0): the third point of the model below.
    with torch.no_grad():
        g0 = p.margins(x0, x0, spec, method="ibp").min(1).values.to(dt) - cfg.delta
    inf = torch.full((n,), math.inf, dtype=dt, device=dev)
    a, b = -inf, inf.clone()  # largest certified scale, smallest refuted scale
    va, vb = torch.zeros_like(a), torch.zeros_like(a)  # their slacks
    side = torch.zeros(n, dtype=torch.long, device=dev)  # last end moved: 1 = a, -1 = b
    steps = torch.zeros_like(a)  # outward steps taken (at most log 4 * 2^k each)
    t0 = ((t_min + t_max) / 2 if guess is None else guess.to(dt)).clamp(t_min, t_max)
    tol = math.log1p(cfg.uniform_rtol if rtol is None else rtol)
    for _ in range(64):
        lo_known, hi_known = torch.isfinite(a), torch.isfinite(b)
        done = (
            (lo_known & hi_known & (b - a <= tol)) | (~lo_known & (b <= t_min)) | (~hi_known & (a >= t_max))
        )
        if done.all():
            break
        out = step * 2.0**steps
        # The margin's loss g0 - slack modelled as c * scale^k: k from the two ends (1.5 while one
        # is unknown: CROWN margins are convex in the scale), the root where the loss reaches g0.
        da, db = (g0 - va).clamp(min=1e-30), (g0 - vb).clamp(min=1e-30)
        k = torch.where(lo_known & hi_known, torch.log(db / da) / (b - a).clamp(min=1e-12), 1.5)
        valid = (g0 > 0) & (k > 0.05)
        root_a = a + torch.log(g0.clamp(min=1e-30) / da) / k
        root_b = b + torch.log(g0.clamp(min=1e-30) / db) / k
        # Aim half a tolerance past the root, away from the end that moved last, so the bracket
        # closes from both sides; snapped to a grid of tol/16, so rounding noise in the margins
        # (which differs with the batch a sample is in) rarely changes the points tried.
        bias = torch.where(side == 1, tol / 2, -tol / 2)
        guess_t = torch.round((torch.where(lo_known, root_a, root_b) + bias) / (tol / 16)) * (tol / 16)
        up = torch.where(valid, torch.minimum((guess_t - a).clamp(min=tol), 2 * out), out)
        down = torch.where(valid, torch.minimum((b - guess_t).clamp(min=tol), 2 * out), out)
        inside = valid & (guess_t > a) & (guess_t < b)
        t = torch.where(
            ~lo_known & ~hi_known,
            t0,
            torch.where(
                ~lo_known,
                (b - down).clamp(min=t_min),
                torch.where(~hi_known, (a + up).clamp(max=t_max), torch.where(inside, guess_t, (a + b) / 2)),
            ),
        )
        sel = (~done).nonzero().squeeze(1)
        g = slack(t[sel], sel)
        good = torch.zeros(n, dtype=torch.bool, device=dev)
        bad = torch.zeros_like(good)
        good[sel], bad[sel] = g >= 0, g < 0
        val = torch.zeros_like(a)
        val[sel] = g.to(dt)
        steps = torch.where(lo_known ^ hi_known, steps + 1, steps)
        a, va = torch.where(good, t, a), torch.where(good, val, va)
        b, vb = torch.where(bad, t, b), torch.where(bad, val, vb)
        side = torch.where(good, 1, torch.where(bad, -1, side))
    return torch.where(torch.isfinite(a), a, torch.full_like(a, -math.inf))


def uniform_radius(p: Problem, idx: Tensor) -> Tensor:
    """Largest certified uniform radius per sample (0 where even the smallest radius fails).

    The search starts from the interval (IBP) radius: it costs almost nothing, and every linear
    method's bound is at least IBP's, so it is a lower end the real search only moves up from.
    """
    x0 = p.x0[idx]
    flat = torch.zeros_like(x0)
    shape = torch.stack([flat, flat], 1) if p.cfg.asymmetric else flat
    guess = largest_scale(p, idx, shape, method="ibp") if p.cfg.method != "ibp" else None
    if guess is not None:
        guess = torch.where(torch.isfinite(guess), guess, torch.full_like(guess, p.log_min))
    return largest_scale(p, idx, shape, guess).exp()


def start_slopes(p: Problem, idx: Tensor) -> dict:
    """Keyword arguments that start the searches' alpha-CROWN from the joint optimiser's slopes
    of samples ``idx`` (any slopes are sound: this only decides where the slope optimisation
    starts; the final proof does not use them)."""
    if p.slopes is None or p.cfg.method != "alpha-crown":
        return {}
    return {"slopes": p.slopes.select(idx), "alpha_steps": p.cfg.alpha_steps}


def proved_margin(p: Problem, check_bm: BoundedModel, lo: Tensor, hi: Tensor, idx: Tensor) -> Tensor:
    """Fresh, tape-free bound in the check dtype: the proof behind ``certified``.
    Returns the certified minimum margin per sample."""
    dt = check_bm.net.dtype
    # alpha-crown starts from CROWN's slopes here, never from the optimiser's: the proof is a
    # function of the box alone, so `verify` reproduces it from the saved box and settings.
    with torch.no_grad():
        lb = p.margins(
            lo.to(dt), hi.to(dt), p.spec[idx].to(dt), bm=check_bm, alpha_steps=p.cfg.alpha_steps_check
        )
    return lb.min(1).values.to(lo.dtype)


def finalise(
    p: Problem, check_bm: BoundedModel, r_lo: Tensor, r_hi: Tensor, idx: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Certify boxes with radii (r_lo, r_hi); shrink failures by a common log-scale.
    Returns lower, upper, certified mask, certified margin and the scale applied to the radii."""
    cfg = p.cfg
    x0 = p.x0[idx]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    lo, hi = p.box(r_lo, r_hi, x0)
    margin = proved_margin(p, check_bm, lo, hi, idx)
    ok = margin >= cfg.check_margin
    applied = torch.ones(len(idx), dtype=x0.dtype, device=x0.device)
    if not ok.all():
        bad = (~ok).nonzero().squeeze(1)
        # Bisection on log s in [log(1e-6), 0]; s_lo is the largest scale known to pass.
        s_lo = torch.full((len(bad),), -math.inf, dtype=x0.dtype, device=x0.device)
        s_hi = torch.zeros(len(bad), dtype=x0.dtype, device=x0.device)
        s_try = torch.full_like(s_hi, math.log(1e-6))
        for step in range(cfg.shrink_steps + 1):
            scale = s_try.exp().reshape(shape)
            l_, h_ = p.box(r_lo[bad] * scale, r_hi[bad] * scale, x0[bad])
            m_ = proved_margin(p, check_bm, l_, h_, idx[bad])
            good = m_ >= cfg.check_margin
            s_lo = torch.where(good, s_try, s_lo)
            s_hi = torch.where(good, s_hi, s_try)
            if step == 0:
                s_try = torch.where(good, s_try / 2, s_try)  # first probe: the smallest scale
                if not good.any():
                    break
            else:
                s_try = (torch.where(torch.isinf(s_lo), s_try * 2, s_lo) + s_hi) / 2
        passed = torch.isfinite(s_lo)
        scale = torch.where(passed, s_lo, torch.zeros_like(s_lo)).exp().reshape(shape)
        l_, h_ = p.box(r_lo[bad] * scale, r_hi[bad] * scale, x0[bad])
        m_ = proved_margin(p, check_bm, l_, h_, idx[bad])
        passed = passed & (m_ >= cfg.check_margin)
        lo[bad] = torch.where(passed.reshape(shape), l_, x0[bad])
        hi[bad] = torch.where(passed.reshape(shape), h_, x0[bad])
        margin[bad] = m_
        ok[bad] = passed
        applied[bad] = torch.where(passed, scale.flatten(), torch.zeros_like(scale.flatten()))
    return lo, hi, ok, margin, applied
