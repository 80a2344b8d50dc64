"""An ``nn.Sequential`` as a chain of ops (the fast path: no tracing needed)."""

from __future__ import annotations

import torch
from torch import nn

from ..ir.network import Network
from .layers import _fold_channel_affine, _leaves, convert_layer


def read_sequential(
    model: nn.Module, input_shape: tuple[int, ...], dtype=torch.float32, device="cpu"
) -> Network:
    """``model``'s leaves in order (nested Sequentials flattened), each converted to ops; a
    per-channel affine map next to a linear or convolutional layer is folded into it. A final
    Softmax / LogSoftmax over the classes is stripped (see ``ir.network.OUTPUT_TRANSFORMS``).
    Raises :class:`~nonuniform.frontends.layers.UnknownLayer` for a leaf it does not know (the
    caller then traces the model)."""
    leaves = _leaves(model, "")
    transform = None
    if leaves and isinstance(leaves[-1][1], (nn.Softmax, nn.LogSoftmax)) and leaves[-1][1].dim in (1, -1):
        transform = "softmax" if isinstance(leaves[-1][1], nn.Softmax) else "log_softmax"
        leaves = leaves[:-1]
    ops = [op for name, m in leaves for op in convert_layer(name, m, dtype, device)]
    for i, op in enumerate(ops):
        op.inputs = [i - 1]
    net = Network.from_ops(ops, input_shape, dtype, device, transform)
    net.ops = _fold_channel_affine(net.ops)
    for i, op in enumerate(net.ops):
        op.inputs = [i - 1]
    return net
