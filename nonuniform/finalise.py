"""The uniform baseline and the final proof of every box.

``largest_scale`` finds, by bisection, the largest certified scale of a box shape (the uniform
radius is the scale of the flat shape); ``finalise`` re-proves each returned box with a fresh,
tape-free bound in the check dtype and shrinks failures on a common log-scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bounds import BoundedModel
from .problem import Problem, radii


def largest_scale(p: Problem, idx: Tensor, log_shape: Tensor) -> Tensor:
    """Largest certified log-scale t per sample for the box with log-radii ``t + log_shape``
    (``log_shape``: (n, *input_shape), or (n, 2, *input_shape) for asymmetric radii), by
    bisection to a relative tolerance ``uniform_rtol``; -inf where even the smallest box fails."""
    cfg = p.cfg
    x0, spec = p.x0[idx], p.spec[idx]
    n = len(idx)
    shape = (n,) + (1,) * (log_shape.dim() - 1)

    def ok(t: Tensor) -> Tensor:
        rho = (t.reshape(shape) + log_shape).clamp(p.log_min, p.log_max)
        with torch.no_grad():
            lo, hi = p.box(*radii(p, rho), x0)
            return (p.margins(lo, hi, spec) >= cfg.delta).all(1)

    span = log_shape.flatten(1)
    lo_t = torch.full((n,), p.log_min, dtype=x0.dtype, device=x0.device) - span.max(1).values
    hi_t = torch.full((n,), p.log_max, dtype=x0.dtype, device=x0.device) - span.min(1).values
    top, bottom = ok(hi_t), ok(lo_t)
    while True:
        open_ = ~top & bottom & ((hi_t - lo_t) > math.log1p(cfg.uniform_rtol))
        if not open_.any():
            break
        mid = (lo_t + hi_t) / 2
        good = ok(mid)
        lo_t = torch.where(open_ & good, mid, lo_t)
        hi_t = torch.where(open_ & ~good, mid, hi_t)
    t = torch.where(top, hi_t, lo_t)
    return torch.where(bottom | top, t, torch.full_like(t, -math.inf))


def uniform_radius(p: Problem, idx: Tensor) -> Tensor:
    """Largest certified uniform radius per sample (0 where even the smallest radius fails)."""
    x0 = p.x0[idx]
    flat = torch.zeros_like(x0)
    t = largest_scale(p, idx, torch.stack([flat, flat], 1) if p.cfg.asymmetric else flat)
    return t.exp()


def proved_margin(p: Problem, check_bm: BoundedModel, lo: Tensor, hi: Tensor, idx: Tensor) -> Tensor:
    """Fresh, tape-free bound in the check dtype: the proof behind ``certified``.
    Returns the certified minimum margin per sample."""
    dt = check_bm.net.dtype
    with torch.no_grad():
        lb = p.margins(
            lo.to(dt),
            hi.to(dt),
            p.spec[idx].to(dt),
            bm=check_bm,
            alpha_steps=p.cfg.alpha_steps_check,
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
