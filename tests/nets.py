"""Seeded random networks covering every layer type the engine supports."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform import Normalize, compute_bounds
from nonuniform.attacks.pgd import pgd_minimize
from nonuniform.engine.bounds import BoundedModel


def mlp(act: nn.Module, sizes=(6, 16, 16, 4), seed: int = 0, bn: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [Normalize(0.3, 0.5), nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act)
    model = nn.Sequential(*layers)
    _randomise_bn(model)
    return model.eval()


def cnn(act: nn.Module = None, seed: int = 0, pool: bool = True, bn: bool = True) -> nn.Sequential:
    """1x8x8 input: conv(stride 2, padding 1) -> BN -> act -> [avgpool] -> conv -> act -> linear."""
    torch.manual_seed(seed)
    act = act or nn.ReLU()
    layers: list[nn.Module] = [Normalize([0.5], [0.25]), nn.Conv2d(1, 4, 3, stride=2, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [act, nn.Dropout(0.2)]
    if pool:
        layers.append(nn.AvgPool2d(2, stride=1))
    layers += [
        nn.Sequential(nn.Conv2d(4, 6, 2, stride=1, padding=0), act, nn.Identity()),
        nn.Flatten(),
    ]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        n = model(torch.zeros(1, 1, 8, 8)).shape[1]
    model.append(nn.Linear(n, 16))
    model.append(act)
    model.append(nn.Linear(16, 5))
    _randomise_bn(model)
    return model.eval()


def _randomise_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def random_boxes(shape, batch: int, seed: int = 0, max_radius: float = 0.15, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand((batch, *shape), generator=g, dtype=dtype)
    r_lo = torch.rand((batch, *shape), generator=g, dtype=dtype) * max_radius
    r_hi = torch.rand((batch, *shape), generator=g, dtype=dtype) * max_radius
    return centre - r_lo, centre + r_hi


def assert_bounds_sound(model, lower, upper, method: str, tag: str, samples: int = 10_000) -> None:
    """Bounds of the default margins must hold at uniform samples, random corners and under
    batched PGD on every (sample, spec row, sign) -- one attack row per objective."""
    shape = tuple(lower.shape[1:])
    lb, ub = compute_bounds(model, lower, upper, method=method)
    spec = BoundedModel(model, shape).default_spec(lower, upper)
    g = torch.Generator().manual_seed(2)
    for b in range(lower.shape[0]):
        lo, hi, sp = lower[b], upper[b], spec[b]
        u = torch.rand((samples, *shape), generator=g)
        corner = torch.rand((samples // 4, *shape), generator=g) < 0.5
        pts = torch.cat([lo + u * (hi - lo), torch.where(corner, hi, lo)])
        with torch.no_grad():
            vals = torch.einsum("sk,nk->ns", sp, model(pts))
        assert (vals >= lb[b] - 1e-5).all(), f"{tag}: lower bound violated by sampling"
        assert (vals <= ub[b] + 1e-5).all(), f"{tag}: upper bound violated by sampling"
    n_b, n_s = spec.shape[:2]
    rows_spec = torch.cat([spec, -spec], 1).reshape(n_b * 2 * n_s, -1)  # minimise +s and -s
    rows_lo = lower.repeat_interleave(2 * n_s, 0)
    rows_hi = upper.repeat_interleave(2 * n_s, 0)

    def obj(x):
        return (model(x) * rows_spec).sum(1)

    _, v = pgd_minimize(obj, rows_lo, rows_hi, steps=40, restarts=3)
    v = v.reshape(n_b, 2, n_s)
    assert (v[:, 0] >= lb - 1e-5).all(), f"{tag}: PGD below the lower bound"
    assert (-v[:, 1] <= ub + 1e-5).all(), f"{tag}: PGD above the upper bound"
