"""Small classifiers written the way people write them (the compatibility zoo).

Every entry is ``name -> (factory, input_shape)``; factories are seeded and return models in
eval mode with BatchNorm statistics that are not the identity. ``tests/frontends/test_zoo.py``
loads each from Python and from its ONNX export, checks bounds against sampled points, corners
and PGD (alone and in a batch), and certifies boxes that ``verify`` passes;
``experiments/compat.py`` writes the table ``experiments/results/compat.md`` from the same list.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _bn_stats(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm running statistics that are not (0, 1): a real model's are not."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


class TorchvisionNorm(nn.Module):
    """The most common normalisation: buffers of shape (1, C, 1, 1)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class NormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = TorchvisionNorm([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.norm(x)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


class FunctionalMLP(nn.Module):
    """Parameters used through F.linear; in-place ReLU; view(-1, ...)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = nn.Parameter(torch.randn(32, 64, generator=g) / 8)
        self.b1 = nn.Parameter(torch.zeros(32))
        self.w2 = nn.Parameter(torch.randn(5, 32, generator=g) / 6)

    def forward(self, x):
        x = x.view(-1, 64)
        x = F.relu(F.linear(x, self.w1, self.b1), inplace=True)
        return F.linear(x, self.w2)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).view(x.size(0), -1))


class MobileNetTiny(nn.Module):
    """Depthwise-separable blocks with ReLU6, global average pooling, dropout."""

    def __init__(self) -> None:
        super().__init__()

        def dw(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.ReLU6(inplace=True),
                nn.Conv2d(c_in, c_out, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU6(inplace=True),
            )

        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(inplace=True),
            dw(8, 16, 1),
            dw(16, 16, 2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        x = self.features(x)
        x = x.mean([2, 3])
        return self.classifier(x)


class ChannelsLast(nn.Module):
    """Inputs as (H, W, C) images (TensorFlow habit), permuted inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 6 * 6, 4)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).contiguous()
        x = torch.relu(self.conv(x))
        return self.fc(x.reshape(x.shape[0], -1))


class Probabilities(nn.Module):
    """Returns softmax probabilities (or log-probabilities)."""

    def __init__(self, log: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 6))
        self.log = log

    def forward(self, x):
        logits = self.net(x)
        return F.log_softmax(logits, dim=1) if self.log else F.softmax(logits, dim=-1)


class TimeSeriesCNN(nn.Module):
    """1-D convolutions over (channels, time)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2)
        self.pool = nn.MaxPool1d(2)
        self.head = nn.Linear(8 * 7, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        return self.head(x.flatten(1))


class VGGTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = [8, "M", 16, "M"]
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10)
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class DenseTiny(nn.Module):
    """DenseNet-style: every layer sees the concatenation of all before it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.l1 = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.l2 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
        self.trans = nn.AvgPool2d(2)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], dim=1)
        return self.fc(self.trans(x).flatten(1))


class Mixer(nn.Module):
    """An attention-free token mixer: patches, token-mixing and channel-mixing MLPs (no norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, stride=4)  # 8x8 image -> 4 tokens of 8 channels
        self.token = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
        self.channel = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, tokens, channels)
        x = x + self.token(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.channel(x)
        return self.head(x.mean(dim=1))


class InputClip(nn.Module):
    """Clips its input to [0, 1] first (a common guard) and adds a learned bias."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.bias = nn.Parameter(torch.full((16,), 0.05))
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.clamp(x.flatten(1), 0.0, 1.0)
        h = self.fc1(x) + self.bias
        h = F.hardtanh(h)
        h += 0.5
        return self.fc2(h)


class UnsqueezeConv(nn.Module):
    """A flat input made an image inside the model; squeeze/unsqueeze; global max pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = x.view(x.size(0), 8, 8).unsqueeze(1)
        x = F.leaky_relu(self.conv(x), 0.1)
        return self.fc(self.pool(x).squeeze(-1).squeeze(-1))


class StackBranches(nn.Module):
    """Two branches stacked on a new axis, then flattened (torch.stack as layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = x.flatten(1)
        y = torch.stack([F.elu(self.a(x)), F.silu(self.b(x))], dim=1)
        return self.head(y.flatten(1))


def mlp(act: nn.Module, d_in: int = 64) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(d_in, 32), act, nn.Linear(32, 32), type(act)(*_args(act)), nn.Linear(32, 10)
    )


def _args(act: nn.Module) -> tuple:
    """The constructor arguments of an activation module (to make a second one)."""
    if isinstance(act, nn.LeakyReLU):
        return (act.negative_slope,)
    if isinstance(act, nn.GELU):
        return (act.approximate,)
    if isinstance(act, nn.ELU | nn.CELU):
        return (act.alpha,)
    if isinstance(act, nn.Softplus):
        return (act.beta, act.threshold)
    if isinstance(act, nn.Hardtanh) and not isinstance(act, nn.ReLU6):
        return (act.min_val, act.max_val)
    return ()


def layernorm_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10))


class MixerLN(Mixer):
    """The token mixer with pre-norm LayerNorms, as MLP-Mixer has them."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel(self.norm2(x))
        return self.head(x.mean(dim=1))


class SqueezeExcite(nn.Module):
    """A convolution gated per channel by a squeeze-excitation branch (a product of two computed
    tensors, the gate broadcast over the map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(4, 2), nn.Linear(2, 4)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
        h = h * s.view(-1, 4, 1, 1)
        return self.head(h.flatten(1))


#: name -> (factory, input shape). Inputs are in [0, 1].
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "torchvision-norm-cnn": (NormCNN, (3, 8, 8)),
    "sequential-custom-child": (
        lambda: nn.Sequential(
            TorchvisionNorm([0.5], [0.25]), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)
        ),
        (1, 8, 8),
    ),
    "functional-mlp": (FunctionalMLP, (1, 8, 8)),
    "resnet-basic-block": (ResNetTiny, (3, 8, 8)),
    "mobilenet-depthwise-relu6": (MobileNetTiny, (3, 8, 8)),
    "channels-last": (ChannelsLast, (8, 8, 3)),
    "softmax-output": (lambda: Probabilities(log=False), (1, 8, 8)),
    "log-softmax-output": (lambda: Probabilities(log=True), (1, 8, 8)),
    "conv1d-time-series": (TimeSeriesCNN, (2, 32)),
    "vgg-style": (VGGTiny, (3, 8, 8)),
    "densenet-style": (DenseTiny, (1, 8, 8)),
    "mixer": (Mixer, (1, 8, 8)),
    "input-clamp-hardtanh": (InputClip, (1, 8, 8)),
    "unsqueeze-global-maxpool": (UnsqueezeConv, (64,)),
    "stack-branches": (StackBranches, (1, 4, 4)),
    "mlp-gelu": (mlp(nn.GELU()), (1, 8, 8)),
    "mlp-gelu-tanh": (mlp(nn.GELU("tanh")), (1, 8, 8)),
    "mlp-silu": (mlp(nn.SiLU()), (1, 8, 8)),
    "mlp-elu": (mlp(nn.ELU()), (1, 8, 8)),
    "mlp-selu": (mlp(nn.SELU()), (1, 8, 8)),
    "mlp-celu": (mlp(nn.CELU(0.5)), (1, 8, 8)),
    "mlp-softplus": (mlp(nn.Softplus()), (1, 8, 8)),
    "mlp-hardtanh": (mlp(nn.Hardtanh()), (1, 8, 8)),
    "mlp-relu6": (mlp(nn.ReLU6()), (1, 8, 8)),
    "mlp-hardswish": (mlp(nn.Hardswish()), (1, 8, 8)),
    "mlp-hardsigmoid": (mlp(nn.Hardsigmoid()), (1, 8, 8)),
    "mlp-mish": (mlp(nn.Mish()), (1, 8, 8)),
    "mlp-leaky-relu": (mlp(nn.LeakyReLU(0.2)), (1, 8, 8)),
    "mlp-softsign": (mlp(nn.Softsign()), (1, 8, 8)),
    "mlp-tanh": (mlp(nn.Tanh()), (1, 8, 8)),
    "layernorm-mlp": (layernorm_mlp, (1, 8, 8)),
    "mixer-layernorm": (MixerLN, (1, 8, 8)),
    "squeeze-excitation": (SqueezeExcite, (1, 8, 8)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The zoo's model ``name`` with seeded weights and non-trivial BatchNorm statistics."""
    factory, _ = ZOO[name]
    torch.manual_seed(seed)
    return _bn_stats(factory(), seed)
