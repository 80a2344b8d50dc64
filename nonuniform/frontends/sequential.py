"""An ``nn.Sequential`` as a chain of ops (the fast path: no tracing needed)."""

from __future__ import annotations

import torch
from torch import nn

from ..ir.network import Network
from .layers import _convert, _fold_channel_affine, _leaves


def read_sequential(
    model: nn.Module, input_shape: tuple[int, ...], dtype=torch.float32, device="cpu"
) -> Network:
    """``model``'s leaves in order (nested Sequentials flattened), each converted to an op; a
    per-channel affine map next to a linear or convolutional layer is folded into it."""
    leaves = _leaves(model, "")
    ops = [op for name, m in leaves if (op := _convert(name, m, dtype, device)) is not None]
    for i, op in enumerate(ops):
        op.inputs = [i - 1]
    net = Network.from_ops(ops, input_shape, dtype, device)
    net.ops = _fold_channel_affine(net.ops)
    for i, op in enumerate(net.ops):
        op.inputs = [i - 1]
    return net
