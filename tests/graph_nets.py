"""Small non-Sequential PyTorch models (residual blocks, max-pooling, concat, constants) for the
graph engine's tests."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform import Normalize


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.short = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.conv2(y) + self.short(x))


class TinyResNet(nn.Module):
    """1x8x8 -> conv -> maxpool -> residual block -> residual block (identity shortcut) -> head."""

    def __init__(self, seed: int = 0, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.norm = Normalize([0.5], [0.3])
        self.stem = nn.Conv2d(1, 4, 3, 1, 1)
        self.pool = nn.MaxPool2d(2)
        self.b1 = Block(4, 6, 2)
        self.b2 = Block(6, 6, 1)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6 + 6 * 2 * 2, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x):
        x = torch.relu(self.stem(self.norm(x)))
        x = self.pool(x)
        x = self.b2(self.b1(x))
        feats = torch.cat([self.avg(x).flatten(1), x.view(x.size(0), -1)], dim=1)
        return self.fc(feats * 0.5 - 0.1)


class StridedResNet(nn.Module):
    """resnet_2b's shape at 1x24x24: strided convs, a block with a strided 1x1 shortcut, a block
    with an identity shortcut, then a dense head -- residual adds where patch rows apply."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(1, 3, 3, 2, 1)
        self.b1 = Block(3, 4, 2)
        self.b2 = Block(4, 4, 1)
        self.fc = nn.Linear(4 * 6 * 6, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x):
        return self.fc(self.b2(self.b1(torch.relu(self.stem(x)))).flatten(1))


class PoolNet(nn.Module):
    """A chain with overlapping max-pool windows and padding, sigmoid and a subtraction."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 3, 3, 1, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.lin = nn.Linear(3 * 4 * 4, 12)
        self.out = nn.Linear(12, 3)
        self.eval()

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x - 0.5)))
        return self.out(torch.sigmoid(self.lin(torch.flatten(x, 1))))
