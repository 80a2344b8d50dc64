"""Bound-aware operations: affine maps (forward, |A| forward, transpose, bias) and activations.

Shapes: op inputs/outputs are ``(N, *shape)``; backward inputs are ``(batch, specs, *out_shape)``.
Each op records ``inputs`` (op indices in its :class:`~nonuniform.ir.network.Network`, -1 = the
model input) and the per-sample shapes of its first input and its output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..relax.activations import Relaxation


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
    """``x @ W.T + b`` on the last axis (any leading per-sample axes: tokens, time steps)."""

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
        if self.bias is None:
            return None
        out = lam @ self.bias  # (batch, specs, *leading axes): a linear map on the last axis
        return out.flatten(2).sum(-1) if out.dim() > 2 else out


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
        rows = lam.reshape(b * s, *self.out_shape)
        c_in = self.in_shape[0]
        if c_in == 1 and self.groups == 1 and tuple(self.dilation) == (1, 1):
            # One input channel (grey images): conv_transpose2d's kernel is slow here (~4x on
            # (1540, 16, 14, 14) -> (1, 28, 28)); one matmul to columns plus col2im is not.
            cols = self.weight.reshape(self.weight.shape[0], -1).t() @ rows.flatten(2)
            x = F.fold(cols, (h_in, w_in), (kh, kw), stride=self.stride, padding=self.padding)
            return x.reshape(b, s, *self.in_shape)
        if c_in >= 3:  # oneDNN's channels-last transposed convolution: ~2x faster here (8 -> 3
            # channels on resnet_2b's 16x16 maps: 54 -> 26 ms for 774 rows)
            rows = rows.contiguous(memory_format=torch.channels_last)
        x = F.conv_transpose2d(
            rows,
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


class ProductOp(Op):
    """``x * y`` of two computed tensors (inputs ``[x, y]``; ``y`` broadcasts over ``x``'s shape,
    which is the output's): LayerNorm's per-sample scale, gating. Relaxed by McCormick planes
    (:mod:`~nonuniform.relax.product`)."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x * y
