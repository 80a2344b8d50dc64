"""A model as a DAG of bound-aware operations, in topological order.

Every op reads the outputs of earlier ops (``op.inputs``: indices into ``Network.ops``, ``-1`` for
the model's input) and the last op is the model's output. An :class:`AffineOp` knows its forward
map, the forward map of ``|A|`` (for interval propagation), its transpose (for the backward linear
pass) and its bias; multi-input affine ops (the residual add, concat) return one backward
coefficient per input. A nonlinear op is an :class:`Activation` holding a relaxation
(:mod:`.relaxations`, :mod:`.pooling`).

Front ends: this module turns an ``nn.Sequential`` into a chain; :mod:`.fx_import` traces any
``nn.Module`` and :mod:`.onnx_import` reads ONNX files into the same ops.

Shapes: op inputs/outputs are ``(N, *shape)``; backward inputs are ``(batch, specs, *out_shape)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import RECURRENT, Normalize
from .pooling import MaxPool2d
from .relaxations import PiecewiseLinear, Relaxation, Sigmoid, Tanh

SUPPORTED = (
    "Linear, Conv2d, Flatten, ReLU, LeakyReLU, Sigmoid, Tanh, BatchNorm1d/2d (eval), AvgPool2d, MaxPool2d, "
    "Dropout, Identity, nonuniform.Normalize, nested nn.Sequential"
)


class UnsupportedModelError(ValueError):
    """The model contains a layer (or a layer configuration) the bound engine cannot bound."""


@dataclass
class Op:
    name: str  # dotted path of the module in the model, e.g. "features.3"
    kind: str  # class name of the module
    in_shape: tuple[int, ...] = field(default=(), init=False)  # of the first input
    out_shape: tuple[int, ...] = field(default=(), init=False)
    inputs: list[int] = field(default_factory=list, init=False)  # op indices, -1 = model input

    def where(self) -> str:
        return f"layer '{self.name}' ({self.kind})"

    def to(self, dtype, device) -> Op:
        """A shallow copy whose floating-point tensors are converted (parameters stay detached)."""
        new = copy.copy(self)
        for k, v in vars(self).items():
            if isinstance(v, Tensor) and v.is_floating_point():
                setattr(new, k, v.detach().to(device=device, dtype=dtype))
            elif isinstance(v, Relaxation):
                setattr(new, k, v.to(dtype, device))
        return new


class AffineOp(Op):
    """``y = A x + b``. ``mixing`` is False for maps where interval propagation is exact
    (diagonal scalings and reshapes); two mixing maps in a row make IBP inexact."""

    mixing: bool = True

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def forward_abs(self, r: Tensor) -> Tensor:
        """``|A| r`` (no bias): the radius of the image of a box of radius r."""
        raise NotImplementedError  # pragma: no cover - interface

    def backward(self, lam: Tensor) -> Tensor:
        """``lam @ A``: (batch, specs, *out_shape) -> (batch, specs, *in_shape)."""
        raise NotImplementedError  # pragma: no cover - interface

    def bias_term(self, lam: Tensor) -> Tensor | None:
        """``lam @ b``: (batch, specs, *out_shape) -> (batch, specs), or None without bias."""
        return None

    def backward_all(self, lam: Tensor) -> list[Tensor]:
        """One ``lam @ A_k`` per input (multi-input ops override; one input by default)."""
        return [self.backward(lam)]

    def interval(self, *bounds: Tensor) -> tuple[Tensor, Tensor]:
        """Interval image: ``bounds`` are ``l0, u0, l1, u1, ...`` for the op's inputs."""
        ls, us = bounds[0::2], bounds[1::2]
        c = self.forward(*((u + l) / 2 for l, u in zip(ls, us)))
        r = self.forward_abs(*((u - l) / 2 for l, u in zip(ls, us)))
        return c - r, c + r


class LinearOp(AffineOp):
    def __init__(self, name: str, kind: str, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__(name, kind)
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.linear(r, self.weight.abs())

    def backward(self, lam: Tensor) -> Tensor:
        return lam @ self.weight

    def bias_term(self, lam: Tensor) -> Tensor | None:
        return None if self.bias is None else lam @ self.bias


class ConvOp(AffineOp):
    """2-D convolution; the transpose is a transposed convolution, never a dense matrix."""

    def __init__(
        self,
        name: str,
        kind: str,
        weight: Tensor,
        bias: Tensor | None,
        stride,
        padding,
        dilation,
        groups: int,
    ) -> None:
        super().__init__(name, kind)
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.conv2d(r, self.weight.abs(), None, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, lam: Tensor) -> Tensor:
        b, s = lam.shape[:2]
        _, h_in, w_in = self.in_shape
        _, h_out, w_out = self.out_shape
        kh, kw = self.weight.shape[-2:]
        out_pad = tuple(
            size_in - ((size_out - 1) * st - 2 * p + d * (k - 1) + 1)
            for size_in, size_out, st, p, d, k in zip(
                (h_in, w_in), (h_out, w_out), self.stride, self.padding, self.dilation, (kh, kw)
            )
        )
        x = F.conv_transpose2d(
            lam.reshape(b * s, *self.out_shape),
            self.weight,
            None,
            self.stride,
            self.padding,
            out_pad,
            self.groups,
            self.dilation,
        )
        return x.reshape(b, s, *self.in_shape)

    def bias_term(self, lam: Tensor) -> Tensor | None:
        return None if self.bias is None else lam.sum((-2, -1)) @ self.bias


class ChannelAffineOp(AffineOp):
    """``y = x * scale[c] + shift[c]`` along dim 1 (Normalize, BatchNorm in eval mode)."""

    mixing = False

    def __init__(self, name: str, kind: str, scale: Tensor, shift: Tensor) -> None:
        super().__init__(name, kind)
        self.scale, self.shift = scale, shift

    def _view(self, t: Tensor, ndim: int) -> Tensor:
        return t.reshape((-1,) + (1,) * (ndim - 1))

    def forward(self, x: Tensor) -> Tensor:
        n = x.dim() - 1
        return x * self._view(self.scale, n) + self._view(self.shift, n)

    def forward_abs(self, r: Tensor) -> Tensor:
        return r * self._view(self.scale.abs(), r.dim() - 1)

    def backward(self, lam: Tensor) -> Tensor:
        return lam * self._view(self.scale, lam.dim() - 2)

    def bias_term(self, lam: Tensor) -> Tensor | None:
        return (lam * self._view(self.shift, lam.dim() - 2)).flatten(2).sum(-1)


class FlattenOp(AffineOp):
    mixing = False

    def __init__(self, name: str, kind: str, start_dim: int, end_dim: int) -> None:
        super().__init__(name, kind)
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        return lam.reshape(*lam.shape[:2], *self.in_shape)


class Activation(Op):
    def __init__(self, name: str, kind: str, relaxation: Relaxation) -> None:
        super().__init__(name, kind)
        self.relaxation = relaxation

    def forward(self, x: Tensor) -> Tensor:
        return self.relaxation.f(x)


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
    if isinstance(m, nn.ReLU):
        return Activation(name, kind, PiecewiseLinear(0.0))
    if isinstance(m, nn.LeakyReLU):
        try:
            return Activation(name, kind, PiecewiseLinear(m.negative_slope))
        except ValueError as e:
            raise UnsupportedModelError(f"layer '{name}' (LeakyReLU): {e}") from None
    if isinstance(m, nn.Sigmoid):
        return Activation(name, kind, Sigmoid())
    if isinstance(m, nn.Tanh):
        return Activation(name, kind, Tanh())
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
    raise UnsupportedModelError(
        f"layer '{name}' ({kind}) is not supported by the bound engine. Supported: {SUPPORTED}. "
        "Other modules are traced by torch.fx (residual adds, concat, constants: see "
        "nonuniform.fx_import) or can be exported to ONNX."
    )


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


class Network:
    """A model as ops in topological order, with shapes recorded for one input shape.

    ``input_shape`` excludes the batch axis. Parameters are copied (detached) to ``dtype`` and
    ``device``: bounds in float64 need a float64 copy of the weights. ``Network(model, ...)``
    reads an ``nn.Sequential`` (a chain); :meth:`from_ops` takes ops whose ``inputs`` are set.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], dtype=torch.float32, device="cpu"
    ) -> None:
        leaves = _leaves(model, "")
        ops = [op for name, m in leaves if (op := _convert(name, m, dtype, device)) is not None]
        for i, op in enumerate(ops):
            op.inputs = [i - 1]
        self._setup(ops, input_shape, dtype, device)
        self.ops = _fold_channel_affine(self.ops)
        for i, op in enumerate(self.ops):
            op.inputs = [i - 1]

    @classmethod
    def from_ops(
        cls, ops: list[Op], input_shape: tuple[int, ...], dtype=torch.float32, device="cpu"
    ) -> Network:
        """A network from ops already in topological order with ``inputs`` set (front ends)."""
        net = cls.__new__(cls)
        net._setup([op.to(dtype, device) for op in ops], input_shape, dtype, device)
        return net

    def _setup(self, ops: list[Op], input_shape: tuple[int, ...], dtype, device) -> None:
        """Record every op's shapes by a forward pass on zeros; fail early with the op's name."""
        self.input_shape = tuple(input_shape)
        self.dtype, self.device = dtype, device
        if not ops:
            raise UnsupportedModelError("the model has no layers")
        x0 = torch.zeros((1, *self.input_shape), dtype=dtype, device=device)
        vals: dict[int, Tensor] = {-1: x0}
        for i, op in enumerate(ops):
            xs = [vals[k] for k in op.inputs]
            op.in_shape = tuple(xs[0].shape[1:])
            if getattr(op, "pool_kernel", None) is not None:
                c = op.in_shape[0]
                kh, kw = op.pool_kernel
                op.weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=dtype, device=device)
                op.groups = c
                op.pool_kernel = None
            try:
                vals[i] = op.forward(*xs)
            except RuntimeError as e:
                msg = str(e).splitlines()[0]
                shapes = ", ".join(str(tuple(x.shape[1:])) for x in xs)
                raise UnsupportedModelError(
                    f"{op.where()} cannot take an input of shape {shapes} "
                    f"(the model was given inputs of shape {self.input_shape}): {msg}"
                ) from None
            op.out_shape = tuple(vals[i].shape[1:])
        x = vals[len(ops) - 1]
        if x.dim() != 2:
            raise UnsupportedModelError(
                f"the model's output has shape {tuple(x.shape[1:])} per sample; a classifier must "
                "output one vector of logits (add nn.Flatten / a final nn.Linear)"
            )
        self.ops = ops
        self.num_classes = x.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        vals: dict[int, Tensor] = {-1: x}
        for i, op in enumerate(self.ops):
            vals[i] = op.forward(*(vals[k] for k in op.inputs))
        return vals[len(self.ops) - 1]

    @property
    def is_chain(self) -> bool:
        return all(op.inputs == [i - 1] for i, op in enumerate(self.ops))

    def consumers(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {i: [] for i in range(-1, len(self.ops))}
        for i, op in enumerate(self.ops):
            for k in op.inputs:
                out[k].append(i)
        return out

    def max_width(self, stop: int) -> int:
        """Largest per-sample tensor size among the outputs of ops[:stop] and the input."""
        sizes = [math.prod(self.input_shape)] + [math.prod(op.out_shape) for op in self.ops[:stop]]
        return max(sizes)
