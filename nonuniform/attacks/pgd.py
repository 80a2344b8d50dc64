"""Attacks that try to break a box: PGD restricted to the box, and corner sampling.

They are falsifiers, not certifiers: finding nothing proves nothing, but one point with a
negative margin inside a box reported as certified is a soundness bug.

Shapes: boxes ``(batch, *input_shape)``; objectives map ``(n, *input_shape) -> (n,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Objective = Callable[[Tensor], Tensor]


def margin_objective(model: nn.Module, labels: Tensor) -> Objective:
    """``min_{j != c} f_c(x) - f_j(x)``: negative exactly when the prediction changes."""

    def objective(x: Tensor) -> Tensor:
        logits = model(x)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf"))
        return true - others.max(1).values

    return objective


def pgd_minimize(
    objective: Objective,
    lower: Tensor,
    upper: Tensor,
    steps: int = 50,
    restarts: int = 5,
    step_size: float = 0.1,
    seed: int | None = 0,
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise ``objective`` over each box by signed-gradient steps projected onto the box.

    Steps are scaled per feature by the box width (``step_size * (upper - lower)``), so narrow
    and wide features move in proportion. The first restart starts at the centre, the others at
    uniform random points; the step size decays linearly. Returns the best point and value per
    sample: ``(batch, *input_shape)`` and ``(batch,)``. ``start`` replaces the centre as the
    first restart's starting point.
    """
    gen = torch.Generator(device=lower.device)
    if seed is not None:
        gen.manual_seed(seed)
    lower, upper = lower.detach(), upper.detach()
    width = upper - lower
    best_x = ((lower + upper) / 2 if start is None else start.detach()).clone()
    with torch.no_grad():
        best_v = objective(best_x)
    for r in range(restarts):
        if r == 0:
            x = best_x.clone()
        else:
            noise = torch.rand(lower.shape, generator=gen, device=lower.device, dtype=lower.dtype)
            x = lower + noise * width
        for t in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                v = objective(x)
                (g,) = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                better = v < best_v
                best_v = torch.where(better, v.detach(), best_v)
                best_x[better] = x.detach()[better]
                eta = step_size * (1 - t / steps) + 1e-3
                x = torch.min(torch.max(x.detach() - eta * width * g.sign(), lower), upper)
        with torch.no_grad():
            v = objective(x)
            better = v < best_v
            best_v = torch.where(better, v, best_v)
            best_x[better] = x[better]
    return best_x, best_v


def corner_minimize(
    objective: Objective, lower: Tensor, upper: Tensor, samples: int = 256, seed: int | None = 0
) -> tuple[Tensor, Tensor]:
    """Evaluate ``samples`` random vertices of each box; return the best per sample."""
    gen = torch.Generator(device=lower.device)
    if seed is not None:
        gen.manual_seed(seed)
    best_x = lower.clone()
    best_v = torch.full(lower.shape[:1], float("inf"), dtype=lower.dtype, device=lower.device)
    with torch.no_grad():
        for _ in range(samples):
            pick = torch.rand(lower.shape, generator=gen, device=lower.device) < 0.5
            x = torch.where(pick, upper, lower)
            v = objective(x)
            better = v < best_v
            best_v = torch.where(better, v, best_v)
            best_x[better] = x[better]
    return best_x, best_v


@dataclass
class Falsification:
    """Result of attacking a batch of boxes; ``broken[i]`` means a counterexample was found."""

    broken: Tensor  # (batch,) bool
    margin: Tensor  # (batch,) smallest margin found
    point: Tensor  # (batch, *input_shape) where it was found


def falsify_boxes(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    labels: Tensor,
    restarts: int = 5,
    steps: int = 50,
    corners: int = 128,
    seed: int = 0,
    smoothing: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0),
) -> Falsification:
    """PGD with restarts, random corners, and rounds of PGD on a smoothed copy of the network
    (Softplus / log-sum-exp of increasing sharpness ``smoothing``;
    :mod:`~nonuniform.attacks.smoothed`), each round
    starting from the best point so far. Every point is scored on the real network."""
    from .smoothed import smoothed_forward

    obj = margin_objective(model, labels)
    x1, v1 = pgd_minimize(obj, lower, upper, steps=steps, restarts=restarts, seed=seed)
    x2, v2 = corner_minimize(obj, lower, upper, samples=corners, seed=seed)
    take2 = v2 < v1
    shape = (-1, *([1] * (lower.dim() - 1)))
    point = torch.where(take2.reshape(shape), x2, x1)
    margin = torch.minimum(v1, v2)
    smooth = smoothed_forward(model, tuple(lower.shape[1:]), lower.dtype, lower.device) if smoothing else None
    for k, beta in enumerate(smoothing if smooth is not None else ()):
        sobj = margin_objective(lambda x, beta=beta: smooth(x, beta), labels)
        x, _ = pgd_minimize(sobj, lower, upper, steps=steps, restarts=1, seed=seed + 1 + k, start=point)
        with torch.no_grad():
            v = obj(x)
        better = v < margin
        point = torch.where(better.reshape(shape), x, point)
        margin = torch.where(better, v, margin)
    return Falsification(margin < 0, margin, point)
