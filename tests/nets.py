"""Seeded random networks covering every layer type the engine supports."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform import Normalize


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
