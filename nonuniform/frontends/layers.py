"""PyTorch layers as ops: the converter shared by the ``nn.Sequential`` reader and the fx front end."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ir.graph_ops import CenterOp, MeanOp, ScaleShiftOp, SqueezeOp, UnsqueezeOp
from ..ir.ops import (
    Activation,
    ChannelAffineOp,
    ConvOp,
    FlattenOp,
    LinearOp,
    Op,
    ProductOp,
    UnsupportedModelError,
)
from ..modules import RECURRENT, Normalize
from ..relax.functions import Power, Square
from ..relax.pooling import MaxPool2d
from .activations import module_relaxation


class UnknownLayer(UnsupportedModelError):
    """A module type the layer converter does not know (a custom module: trace it instead)."""


SUPPORTED = (
    "Linear, Conv1d/2d (grouped too), Flatten, BatchNorm1d/2d (eval), AvgPool1d/2d, MaxPool1d/2d, "
    "Dropout, Identity, nonuniform.Normalize, nested nn.Sequential, and the activations of "
    "`nonuniform models --ops` (ReLU, LeakyReLU, ReLU6, Hardtanh, Sigmoid, Tanh, GELU, SiLU, ELU, ...)"
)


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        # _modules, not named_children(): the latter skips a module instance used twice
        # (a shared nn.ReLU() is common), which would silently drop a layer.
        for child_name, child in module._modules.items():
            if child is None:
                continue
            out.extend(_leaves(child, f"{prefix}.{child_name}" if prefix else child_name))
        return out
    return [(prefix or "<model>", module)]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _to(t: Tensor | None, dtype, device) -> Tensor | None:
    return None if t is None else t.detach().to(device=device, dtype=dtype)


def _convert(name: str, m: nn.Module, dtype, device) -> Op | None:
    kind = type(m).__name__
    if isinstance(m, (nn.Dropout, nn.Identity)):
        return None
    if isinstance(m, nn.Linear):
        return LinearOp(name, kind, _to(m.weight, dtype, device), _to(m.bias, dtype, device))
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise UnsupportedModelError(
                f"layer '{name}' (Conv2d) uses padding_mode='{m.padding_mode}'; only 'zeros' is "
                "supported by the bound engine"
            )
        padding = m.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise UnsupportedModelError(
                    f"layer '{name}' (Conv2d) uses padding='{padding}'; give explicit integer padding instead"
                )
            padding = (0, 0)
        return ConvOp(
            name,
            kind,
            _to(m.weight, dtype, device),
            _to(m.bias, dtype, device),
            _pair(m.stride),
            _pair(padding),
            _pair(m.dilation),
            m.groups,
        )
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.training or m.running_mean is None:
            raise UnsupportedModelError(
                f"layer '{name}' ({kind}) is in training mode or has no running statistics; "
                "call model.eval() before computing bounds"
            )
        inv = torch.rsqrt(m.running_var.detach().double() + m.eps)
        w = m.weight.detach().double() if m.weight is not None else torch.ones_like(inv)
        b = m.bias.detach().double() if m.bias is not None else torch.zeros_like(inv)
        scale = w * inv
        shift = b - m.running_mean.detach().double() * scale
        return ChannelAffineOp(name, kind, _to(scale, dtype, device), _to(shift, dtype, device))
    if isinstance(m, Normalize):
        scale = 1.0 / m.std.double()
        return ChannelAffineOp(
            name, kind, _to(scale, dtype, device), _to(-m.mean.double() * scale, dtype, device)
        )
    if isinstance(m, nn.Flatten):
        if m.start_dim == 0:
            raise UnsupportedModelError(
                f"layer '{name}' (Flatten) has start_dim=0 and would merge the batch axis; use "
                "nn.Flatten() (start_dim=1)"
            )
        return FlattenOp(name, kind, m.start_dim, m.end_dim)
    try:
        relaxation = module_relaxation(m)
    except ValueError as e:
        raise UnsupportedModelError(f"layer '{name}' ({kind}): {e}") from None
    if relaxation is not None:
        return Activation(name, kind, relaxation)
    if isinstance(m, nn.AvgPool2d):
        k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
        if m.ceil_mode or m.divisor_override is not None or (any(p) and not m.count_include_pad):
            raise UnsupportedModelError(
                f"layer '{name}' (AvgPool2d) uses ceil_mode, divisor_override or padding without "
                "count_include_pad; only the plain average (a fixed linear map) is supported"
            )
        # The channel count is only known from the input shape: built in Network.__init__.
        op = ConvOp(name, kind, torch.empty(0), None, s, p, (1, 1), 0)
        op.pool_kernel = k  # type: ignore[attr-defined]
        return op
    if isinstance(m, nn.MaxPool2d):
        if m.ceil_mode or _pair(m.dilation) != (1, 1) or m.return_indices:
            raise UnsupportedModelError(
                f"layer '{name}' (MaxPool2d) uses ceil_mode, dilation or return_indices; only plain "
                "max pooling (kernel, stride, padding) is supported"
            )
        relax = MaxPool2d(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding))
        return Activation(name, kind, relax)
    if isinstance(m, RECURRENT):
        raise UnsupportedModelError(
            f"layer '{name}' ({kind}) is recurrent: wrap it as nonuniform.SequenceClassifier(rnn, head) "
            "instead of putting it inside an nn.Sequential"
        )
    raise UnknownLayer(
        f"layer '{name}' ({kind}) is not supported by the bound engine. Supported: {SUPPORTED}. "
        "Other modules are traced by torch.fx (residual adds, concat, constants: see "
        "nonuniform.frontends.fx_trace) or can be exported to ONNX."
    )


def convert_layer(name: str, m: nn.Module, dtype, device) -> list[Op]:
    """``m`` as ops: most layers are one op (:func:`_convert`); 1-D convolutions and pooling run
    as their 2-D forms on a (C, 1, L) view (exact), between an unsqueeze and a squeeze."""
    if isinstance(m, (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d)):
        return [
            UnsqueezeOp(f"{name}.as2d", type(m).__name__, 1),
            _as_2d(name, m, dtype, device),
            SqueezeOp(f"{name}.as1d", type(m).__name__, 1),
        ]
    op = _convert(name, m, dtype, device)
    return [] if op is None else [op]


def _as_2d(name: str, m: nn.Module, dtype, device) -> Op:
    kind = type(m).__name__
    one = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
    if isinstance(m, nn.Conv1d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str) and m.padding != "valid":
            raise UnsupportedModelError(f"layer '{name}' (Conv1d): only zero padding given as a number")
        pad = 0 if isinstance(m.padding, str) else one(m.padding)
        return ConvOp(
            name, kind, _to(m.weight.unsqueeze(2), dtype, device), _to(m.bias, dtype, device),
            (1, one(m.stride)), (0, pad), (1, one(m.dilation)), m.groups,
        )  # fmt: skip
    k, s, p = one(m.kernel_size), one(m.stride or m.kernel_size), one(m.padding)
    if isinstance(m, nn.MaxPool1d):
        if m.ceil_mode or one(m.dilation) != 1 or m.return_indices:
            raise UnsupportedModelError(
                f"layer '{name}' (MaxPool1d) uses ceil_mode, dilation or return_indices"
            )
        return Activation(name, kind, MaxPool2d((1, k), (1, s), (0, p)))
    if m.ceil_mode or (p and not m.count_include_pad):
        raise UnsupportedModelError(
            f"layer '{name}' (AvgPool1d) uses ceil_mode or padding without count_include_pad"
        )
    op = ConvOp(name, kind, torch.empty(0), None, (1, s), (0, p), (1, 1), 0)
    op.pool_kernel = (1, k)  # type: ignore[attr-defined]
    return op


def layer_norm_graph(
    name: str, ndim: int, weight: Tensor | None, bias: Tensor | None, eps: float, dtype, device
) -> list[tuple[Op, list[int]]]:
    """LayerNorm over the last ``ndim`` axes as a small graph, each step with its own relaxation:
    centring (exact), square, mean, ``(v + eps)^-1/2``, the product of the centred input and that
    scale (McCormick), then the elementwise affine map. Returns ``(op, inputs)`` with inputs as
    positions in this list (-1: the layer's input)."""
    axes = tuple(range(-ndim, 0))
    steps: list[tuple[Op, list[int]]] = [
        (CenterOp(f"{name}.center", "LayerNorm", axes), [-1]),
        (Activation(f"{name}.square", "LayerNorm", Square()), [0]),
        (MeanOp(f"{name}.variance", "LayerNorm", axes, keepdim=True), [1]),
        (Activation(f"{name}.rsqrt", "LayerNorm", Power(-0.5, eps)), [2]),
        (ProductOp(f"{name}.scale", "LayerNorm"), [0, 3]),
    ]
    if weight is not None or bias is not None:
        affine = ScaleShiftOp(
            f"{name}.affine", "LayerNorm", _to(weight, dtype, device), _to(bias, dtype, device)
        )
        steps.append((affine, [4]))
    return steps


def global_avg_pool(name: str, kind: str, channels: int, kernel: tuple[int, int], dtype, device) -> ConvOp:
    """Average over ``kernel``-sized tiles (stride = kernel) as a depthwise convolution."""
    weight = torch.full((channels, 1, *kernel), 1.0 / math.prod(kernel), dtype=dtype, device=device)
    return ConvOp(name, kind, weight, None, kernel, (0, 0), (1, 1), channels)


def _fold_channel_affine(ops: list[Op]) -> list[Op]:
    """Merge ``ChannelAffine [-> Flatten] -> Linear`` into one Linear (exact algebra).

    A Normalize input layer otherwise costs a full pass over the widest tensor of every backward
    pass. Convolutions are not folded: zero padding would see the un-normalised zeros.
    """
    out: list[Op] = []
    i = 0
    while i < len(ops):
        op = ops[i]
        j = i + 1 + (i + 1 < len(ops) and isinstance(ops[i + 1], FlattenOp))
        if isinstance(op, ChannelAffineOp) and j < len(ops) and isinstance(ops[j], LinearOp):
            lin: LinearOp = ops[j]  # type: ignore[assignment]
            n = lin.in_shape[-1]
            per_channel = op.in_shape[0]
            reps = n // per_channel if n % per_channel == 0 else None
            if reps is not None and (j == i + 1) == (len(op.in_shape) == 1):
                # channel c covers flattened features [c*reps, (c+1)*reps) (channel-major order)
                scale = op.scale.repeat_interleave(reps) if op.scale.numel() > 1 else op.scale.expand(n)
                shift = op.shift.repeat_interleave(reps) if op.shift.numel() > 1 else op.shift.expand(n)
                bias = lin.weight @ shift + (lin.bias if lin.bias is not None else 0)
                folded = LinearOp(f"{op.name}+{lin.name}", f"{op.kind}+{lin.kind}", lin.weight * scale, bias)
                if j == i + 2:
                    out.append(ops[i + 1])
                    ops[i + 1].in_shape = op.in_shape
                folded.in_shape, folded.out_shape = lin.in_shape, lin.out_shape
                out.append(folded)
                i = j + 1
                continue
        out.append(op)
        i += 1
    return out
