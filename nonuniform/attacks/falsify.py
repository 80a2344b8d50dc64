"""Falsifying a property: find a point of an input box where some output case holds.

Two searches, both scored by :meth:`~nonuniform.engine.specs.OutputCases.violation` (``<= 0``
means the case holds, so the point is a counterexample):

- :func:`sample`: uniform random points of the box (what finds ACAS Xu counterexamples that sit
  far from the box centre);
- :func:`adam_pgd`: projected Adam on coordinates normalised to ``[0, 1]`` per input dimension,
  so a step moves every dimension in proportion to its own range (five sensor values of very
  different widths and 784 pixels alike). Every start attacks one case; starts are the centre,
  hints (points the branch-and-bound leaves suggest) and random points.

Neither proves anything; the caller confirms a point by forward passes before reporting ``sat``.
Shapes: boxes ``(1, *input_shape)``; returned points ``(1, *input_shape)``.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from ..engine.specs import OutputCases


def _score(model: nn.Module, cases: OutputCases, x: Tensor) -> Tensor:
    """(n,) the smallest violation over cases at each point."""
    with torch.no_grad():
        return cases.violation(model(x)).min(1).values


def sample(
    model: nn.Module, lower: Tensor, upper: Tensor, cases: OutputCases, count: int, gen: torch.Generator,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The best of ``count`` uniform random points of the box: ``(point, violation)``."""
    best_x, best_v = (lower + upper) / 2, _score(model, cases, (lower + upper) / 2)[0]
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        u = torch.rand((n, *lower.shape[1:]), generator=gen, dtype=lower.dtype, device=lower.device)
        x = lower + u * (upper - lower)
        v = _score(model, cases, x)
        k = int(v.argmin())
        if v[k] < best_v:
            best_x, best_v = x[k : k + 1], v[k]
    return best_x, best_v


def adam_pgd(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    cases: OutputCases,
    gen: torch.Generator,
    starts: int = 8,
    steps: int = 50,
    lr: float = 0.1,
    hints: Tensor | None = None,
    deadline: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Projected Adam from ``starts`` points per case (the centre and ``hints`` first, then random
    points); returns the best point found and its violation. Stops early at ``deadline``
    (``time.perf_counter()`` seconds) or as soon as a start reaches a counterexample."""
    shape = lower.shape[1:]
    width = (upper - lower).clamp(min=0)
    g = cases.count
    firsts = [torch.full((1, *shape), 0.5, dtype=lower.dtype, device=lower.device)]
    if hints is not None and len(hints):
        firsts.append(((hints.to(lower.dtype) - lower) / width.clamp(min=1e-30)).clamp(0, 1))
    u0 = torch.cat(firsts)[:starts]
    rest = starts - u0.shape[0]
    if rest > 0:
        u0 = torch.cat(
            [u0, torch.rand((rest, *shape), generator=gen, dtype=lower.dtype, device=lower.device)]
        )
    # every start attacks every case: (starts * cases, *shape); row k attacks case k % g
    u = u0.repeat_interleave(g, 0).clone()
    which = torch.arange(u.shape[0], device=lower.device) % g
    m1, m2 = torch.zeros_like(u), torch.zeros_like(u)  # Adam's moments (torch.optim's first use costs ~2 s)
    best_x, best_v = (lower + upper) / 2, _score(model, cases, (lower + upper) / 2)[0]
    for t in range(steps + 1):
        u.requires_grad_(True)
        with torch.enable_grad():
            x = lower + u * width
            v_all = cases.violation(model(x))
            (grad,) = torch.autograd.grad(v_all.gather(1, which[:, None]).sum(), u)
        with torch.no_grad():
            u = u.detach()
            k = int(v_all.min(1).values.argmin())
            if v_all[k].min() < best_v:
                best_x, best_v = x[k : k + 1].detach().clone(), v_all[k].min().detach()
            if best_v <= 0 or t == steps or (deadline is not None and time.perf_counter() > deadline):
                break
            m1.mul_(0.9).add_(grad, alpha=0.1)
            m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
            step = (m1 / (1 - 0.9 ** (t + 1))) / ((m2 / (1 - 0.999 ** (t + 1))).sqrt() + 1e-12)
            u = (u - (lr * (1 - t / steps) + 1e-3) * step).clamp(0, 1)
    return best_x, best_v


__all__ = ["adam_pgd", "sample"]
