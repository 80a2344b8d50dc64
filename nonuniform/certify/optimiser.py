"""The PHR augmented-Lagrangian solver on log-radii and its warm start.

See :mod:`~nonuniform.certify.boxes` for the problem."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..engine.alpha import Slopes
from .finalise import largest_scale
from .problem import Problem, radii


def shaped_start(p: Problem, idx: Tensor, rho_u: Tensor, on_step: Callable[[], None] | None = None) -> Tensor:
    """Warm start from the linearised problem at the uniform box.

    Near the uniform box, CROWN's bound of the tightest margin is about ``const - sum_i s_i r_i``
    with ``s_i = -d bound / d r_i >= 0``; maximising ``sum_i log r_i`` under one such linear
    constraint gives ``r_i proportional to 1 / s_i``. The scale of that shape is then certified by
    bisection, and grown by :func:`balance` (``on_step`` is called after each of its steps) --
    from the uniform box instead where the shape's box is not larger.
    Returns log-radii shaped like ``rho_u`` (-inf rows where nothing certifies).
    """
    rho = rho_u.clone().requires_grad_(True)
    with torch.enable_grad():
        lo, hi = p.box(*radii(p, rho, idx), p.x0[idx])
        worst = p.margins(lo, hi, p.spec[idx]).min(1).values
        (grad,) = torch.autograd.grad(worst.sum(), rho)
    # d bound / d log r = r * d bound / d r, so s_i = -grad_i / r_i.
    sens = (-grad / rho_u.exp()).clamp(min=0)
    log_shape = -torch.log(sens.clamp(min=1e-12))
    mask = p.free.expand_as(log_shape)  # trailing dims align for both layouts
    centre = (log_shape * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
    log_shape = (log_shape - centre.reshape((-1,) + (1,) * (log_shape.dim() - 1))).clamp(-12, 12)
    t = largest_scale(p, idx, log_shape, guess=rho_u.flatten(1)[:, 0])  # the uniform box's scale
    rho = (t.reshape((-1,) + (1,) * (log_shape.dim() - 1)) + log_shape).clamp(p.log_min, p.log_max)
    # The linearisation can overshoot far: where the bound has kinks the gradient does not see
    # (a max-pool window of tied bounds passes its gradient to one input; ReLUs that flip), the
    # shape lands below the uniform box (every box of verivital's Convnet_maxpool did). The
    # balancing steps then start from the uniform box, where their damped steps still gain.
    with torch.no_grad():
        shaped, uniform = (p.mean_log_width(*p.box(*radii(p, r, idx), p.x0[idx])) for r in (rho, rho_u))
    rho = torch.where((shaped > uniform).reshape((-1,) + (1,) * (rho.dim() - 1)), rho, rho_u)
    return balance(p, idx, rho, on_step) if p.cfg.shape_steps else rho


#: Damping of :func:`balance`'s first step (halved per sample after each step that fails to grow
#: its box; the sample stops below BALANCE_MIN_STEP) and the largest change of one log-radius.
BALANCE_STEP, BALANCE_MIN_STEP, BALANCE_MAX_MOVE = 0.5, 0.1, 8.0
#: Relative tolerance of each step's rescale (the final polish rescales to ``uniform_rtol``):
#: 1e-2 lost 0.002 in mean log half-width on mnist-cnn-small, 1e-3 took 13% longer for 0.0005.
BALANCE_RTOL = 3e-3


def balance(p: Problem, idx: Tensor, rho: Tensor, on_step: Callable[[], None] | None = None) -> Tensor:
    """Grow certified boxes (log-radii ``rho`` of the samples ``idx``) by damped fixed-point
    steps on the optimality conditions, each followed by an exact rescale to the boundary.

    At a box of largest volume under the tightest margin's constraint, every free log-radius
    has ``d volume / d rho_i = lambda * (-d margin / d rho_i)`` with one multiplier: a radius
    whose share of the volume outweighs its share of the margin's loss should grow, the others
    shrink. A step moves ``rho_i`` by ``beta * log(ratio_i)`` (centred; :func:`shaped_start` is
    the undamped first step from the uniform box), then :func:`largest_scale` puts the new shape
    on the boundary, so every accepted iterate is certified. A sample keeps a step only if its
    box grows; otherwise its ``beta`` halves. It stops when ``beta`` falls below
    ``BALANCE_MIN_STEP``, after ``cfg.shape_steps`` steps, or when a step grows the mean
    log-width by less than ``cfg.ftol``. Why: each step costs one bound with the gradient plus
    a short search (~5 bounds without it), and on mnist-cnn-small four steps reach larger boxes
    than 60 augmented-Lagrangian iterations (docs/NOTES.md, commit 19aca7b).
    """
    cfg = p.cfg
    rho = rho.clone()
    one = (-1,) + (1,) * (rho.dim() - 1)
    beta = torch.full((len(idx),), BALANCE_STEP, dtype=rho.dtype, device=rho.device)
    act = torch.arange(len(idx), device=rho.device)

    def width(r: Tensor, sel: Tensor) -> Tensor:
        with torch.no_grad():
            return p.mean_log_width(*p.box(*radii(p, r, idx[sel]), p.x0[idx[sel]]))

    for _ in range(cfg.shape_steps):
        if len(act) == 0:
            break
        r = rho[act].clone().requires_grad_(True)
        with torch.enable_grad():
            lo, hi = p.box(*radii(p, r, idx[act]), p.x0[idx[act]])
            worst = p.margins(lo, hi, p.spec[idx[act]]).min(1).values
            obj = p.mean_log_width(lo, hi)
            # the volume's small graph first: the bound's tape is then freed by its own gradient
            # (kept alive into the next step's bound, it doubled the batch's peak memory)
            (vol_grad,) = torch.autograd.grad(obj.sum(), r, retain_graph=True)
            (loss_grad,) = torch.autograd.grad(worst.sum(), r)
        free = vol_grad > 0  # radii the box's width still depends on (not clipped away)
        ratio = vol_grad.clamp(min=1e-30).log() - (-loss_grad).clamp(min=1e-30).log()
        ratio = torch.where(free, ratio, 0.0)
        centre = ratio.flatten(1).sum(1) / free.flatten(1).sum(1).clamp(min=1)
        move = torch.where(free, ratio - centre.reshape(one), 0.0).clamp(-BALANCE_MAX_MOVE, BALANCE_MAX_MOVE)
        shape = rho[act] + beta[act].reshape(one) * move
        zero = torch.zeros(len(act), dtype=rho.dtype, device=rho.device)
        t = largest_scale(p, idx[act], shape, guess=zero, step=0.05, rtol=BALANCE_RTOL)
        ok = torch.isfinite(t)
        new = (shape + torch.where(ok, t, zero).reshape(one)).clamp(p.log_min, p.log_max)
        gain = width(new, act) - width(rho[act], act)
        better = ok & (gain > 0)
        rho[act[better]] = new[better]
        beta[act[~better]] /= 2
        act = act[(beta[act] >= BALANCE_MIN_STEP) & ~(better & (gain < cfg.ftol))]
        if on_step is not None:
            on_step()
    return rho


class SampleAdam:
    """Elementwise Adam with a per-sample step count, so frozen samples stay frozen."""

    def __init__(self, param: Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)

    def step(self, param: Tensor, grad: Tensor, idx: Tensor) -> None:
        self.t[idx] += 1
        t = self.t[idx].reshape((-1,) + (1,) * (param.dim() - 1))
        self.m[idx] = self.b1 * self.m[idx] + (1 - self.b1) * grad
        self.v[idx] = self.b2 * self.v[idx] + (1 - self.b2) * grad**2
        m_hat = self.m[idx] / (1 - self.b1**t)
        v_hat = self.v[idx] / (1 - self.b2**t)
        param[idx] = param[idx] - self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def reset(self, idx: Tensor) -> None:
        self.m[idx], self.v[idx], self.t[idx] = 0.0, 0.0, 0.0


def optimise(
    p: Problem, rho: Tensor, active: Tensor, on_iteration: Callable[[], None] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """PHR augmented Lagrangian; returns the best certified log-radii, the iterations used and
    the last iterate (whose shape :func:`polish` may scale into a larger certified box).

    With alpha-crown (joint mode) the slopes are parameters too, updated by their own per-sample
    Adam from the same loss; the slopes of each sample's best box are left in ``p.slopes``, where
    the later searches and the final check start their own slope optimisation."""
    cfg = p.cfg
    b = rho.shape[0]
    n_con = p.spec.shape[1]
    dev, dt = rho.device, rho.dtype
    lam = torch.zeros(b, n_con, dtype=dt, device=dev)
    mu = torch.full((b,), cfg.mu_init, dtype=dt, device=dev)
    adam = SampleAdam(rho, cfg.lr)
    slopes = joint_slopes(p, rho)
    slope_adams = [SampleAdam(t, cfg.alpha_lr) for t in slopes.tensors()] if slopes else []
    p.slopes = slopes.map(torch.clone) if slopes else None  # those of each sample's best box
    best_rho = rho.clone()
    with torch.no_grad():
        best_obj = p.mean_log_width(*p.box(*radii(p, rho)))
    prev_obj, prev_viol = best_obj.clone(), torch.full((b,), float("inf"), dtype=dt, device=dev)
    iters = torch.zeros(b, dtype=torch.long, device=dev)
    for it in range(cfg.iterations):
        if on_iteration is not None:
            on_iteration()
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        iters[idx] += 1
        rho_a = rho[idx].clone().requires_grad_(True)
        s_a = slopes.select(idx).map(torch.Tensor.requires_grad_) if slopes else None
        with torch.enable_grad():
            lo, hi = p.box(*radii(p, rho_a, idx), p.x0[idx])
            g = p.margins(lo, hi, p.spec[idx], slopes=s_a) - cfg.delta  # (A, n_con), feasible when >= 0
            obj = p.mean_log_width(lo, hi)
            mu_a, lam_a = mu[idx, None], lam[idx]
            penalty = (torch.relu(lam_a - mu_a * g) ** 2 - lam_a**2).sum(1) / (2 * mu_a[:, 0])
            loss = -obj + penalty
            grad, *s_grads = torch.autograd.grad(loss.sum(), [rho_a, *(s_a.tensors() if s_a else [])])
        with torch.no_grad():
            g, obj = g.detach(), obj.detach()
            feasible = (g >= 0).all(1)
            better = feasible & (obj > best_obj[idx])
            best_obj[idx[better]] = obj[better]
            best_rho[idx[better]] = rho_a.detach()[better]
            if slopes:
                p.slopes.assign(idx, s_a.map(torch.Tensor.detach), better)
            # Guard against blow-ups at high penalty: restart the sample from its best point.
            bad = ~torch.isfinite(loss) | ~torch.isfinite(grad.flatten(1)).all(1)
            if bad.any():
                rho[idx[bad]] = best_rho[idx[bad]]
                adam.reset(idx[bad])
                mu[idx[bad]] = (mu[idx[bad]] / cfg.mu_growth).clamp(min=cfg.mu_init)
                grad[bad] = 0.0
                for sg in s_grads:
                    sg[bad] = 0.0
            adam.step(rho, grad, idx)
            for opt, t, sg in zip(slope_adams, slopes.tensors() if slopes else [], s_grads):
                opt.step(t, torch.nan_to_num(sg), idx)
            if slopes:
                slopes.project(getattr(p.bm.net, "ops", None))
            rho.clamp_(p.log_min, p.log_max)
            if (it + 1) % cfg.update_every == 0:
                lam[idx] = torch.relu(lam_a - mu_a * g)
                viol = torch.relu(-g).max(1).values
                grow = viol > 0.25 * prev_viol[idx]
                mu[idx] = torch.where(grow, (mu[idx] * cfg.mu_growth).clamp(max=cfg.mu_max), mu[idx])
                done = (viol <= cfg.tol) & ((obj - prev_obj[idx]).abs() < cfg.ftol)
                active[idx[done]] = False
                prev_obj[idx], prev_viol[idx] = obj, viol
    return best_rho, iters, rho


def joint_slopes(p: Problem, rho: Tensor) -> Slopes | None:
    """alpha-CROWN's slopes for the joint optimisation, CROWN's at the start boxes (None when
    the method is not alpha-crown, joint mode is off, or the model has no ReLU-family neuron)."""
    cfg = p.cfg
    if cfg.method != "alpha-crown" or not cfg.joint_slopes or cfg.per_logit:
        return None
    with torch.no_grad():
        lo, hi = p.box(*radii(p, rho))
        slopes = p.bm.start_slopes(lo, hi, p.spec.shape[1])
    return slopes if slopes.tensors() else None


def polish(p: Problem, idx: Tensor, *candidates: Tensor) -> Tensor:
    """The largest certified box among ``candidates`` (log-radii of the samples ``idx``), each
    first scaled to the largest certified scale of its shape.

    Why: the augmented Lagrangian ends near, not on, the constraint (the best certified iterate
    keeps some slack, the last iterate is often slightly infeasible although its shape is good);
    one short search per shape (starting at scale 1, steps of 5%) recovers both.
    """
    k, n = len(candidates), len(idx)
    shapes = torch.cat(candidates)
    zero = torch.zeros(k * n, dtype=shapes.dtype, device=shapes.device)
    t = largest_scale(p, idx.repeat(k), shapes, guess=zero, step=0.05)
    ok = torch.isfinite(t)
    one = (-1,) + (1,) * (shapes.dim() - 1)
    scaled = (shapes + torch.where(ok, t, zero).reshape(one)).clamp(p.log_min, p.log_max)
    with torch.no_grad():
        x0 = p.x0[idx].repeat((k,) + (1,) * (p.x0.dim() - 1))
        width = p.mean_log_width(*p.box(*radii(p, scaled, idx.repeat(k)), x0))
    width = torch.where(ok, width, torch.full_like(width, -math.inf)).reshape(k, n)
    best = width.argmax(0)
    out = scaled.reshape(k, n, *shapes.shape[1:])[best, torch.arange(n, device=shapes.device)]
    return torch.where(torch.isfinite(width.max(0).values).reshape(one), out, candidates[0])
