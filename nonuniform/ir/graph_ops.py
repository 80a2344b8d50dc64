"""Affine ops that only general graphs need: residual sums, concatenation, elementwise
constants, reshapes, layout permutations and constant padding.

Each is exact linear algebra (no relaxation): forward, ``|A|`` forward, transpose and bias, as
every :class:`~nonuniform.ir.network.AffineOp`. Multi-input ops (:class:`AddOp`, :class:`ConcatOp`)
implement ``backward_all``, one coefficient tensor per input; the engine sums the coefficients
that meet at a node with several consumers.

Shapes: per-sample shapes exclude the batch axis; backward inputs are ``(batch, specs, *out)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .network import AffineOp


class AddOp(AffineOp):
    """``y = sum_k w_k x_k`` of same-shaped computed tensors (a residual add; Sub is w = (1, -1))."""

    def __init__(self, name: str, kind: str, weights: tuple[float, ...]) -> None:
        super().__init__(name, kind)
        self.weights = tuple(float(w) for w in weights)

    def forward(self, *xs: Tensor) -> Tensor:
        return sum(w * x for w, x in zip(self.weights[1:], xs[1:])) + self.weights[0] * xs[0]

    def forward_abs(self, *rs: Tensor) -> Tensor:
        return sum(abs(w) * r for w, r in zip(self.weights[1:], rs[1:])) + abs(self.weights[0]) * rs[0]

    def backward_all(self, lam: Tensor) -> list[Tensor]:
        return [lam if w == 1.0 else w * lam for w in self.weights]


class ConcatOp(AffineOp):
    """``y = cat(x_1, ..., x_n)`` along a per-sample axis (``dim`` counts the batch axis)."""

    mixing = False

    def __init__(self, name: str, kind: str, dim: int) -> None:
        super().__init__(name, kind)
        if dim == 0:
            raise ValueError(f"layer '{name}' ({kind}) concatenates along the batch axis")
        self.dim = dim
        self.sizes: list[int] = []

    def forward(self, *xs: Tensor) -> Tensor:
        self.sizes = [x.shape[self.dim] for x in xs]
        return torch.cat(xs, self.dim)

    forward_abs = forward

    def backward_all(self, lam: Tensor) -> list[Tensor]:
        axis = self.dim + 1 if self.dim > 0 else self.dim  # lam has a spec axis after the batch
        return list(lam.split(self.sizes, axis))


class ScaleShiftOp(AffineOp):
    """``y = x * scale + shift`` with constants broadcast to the input (Mul/Div/Add/Sub by
    constants). ``scale``/``shift`` are per-sample shaped (no batch axis) or scalars."""

    mixing = False

    def __init__(self, name: str, kind: str, scale: Tensor | None, shift: Tensor | None) -> None:
        super().__init__(name, kind)
        self.scale, self.shift = scale, shift

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.scale is None else x * self.scale
        return y if self.shift is None else y + self.shift

    def forward_abs(self, r: Tensor) -> Tensor:
        return r if self.scale is None else r * self.scale.abs()

    def backward(self, lam: Tensor) -> Tensor:
        return lam if self.scale is None else lam * self.scale

    def bias_term(self, lam: Tensor) -> Tensor | None:
        if self.shift is None:
            return None
        return (lam * self.shift.expand(self.out_shape)).flatten(2).sum(-1)


class ReshapeOp(AffineOp):
    """Any per-sample reshape (Flatten, Reshape, View); the batch axis is kept."""

    mixing = False

    def __init__(self, name: str, kind: str, shape: tuple[int, ...]) -> None:
        super().__init__(name, kind)
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        return lam.reshape(*lam.shape[:2], *self.in_shape)


class UnsqueezeOp(AffineOp):
    """A new axis of size one at per-sample position ``axis`` (``x.unsqueeze(axis + 1)``)."""

    mixing = False

    def __init__(self, name: str, kind: str, axis: int) -> None:
        super().__init__(name, kind)
        self.axis = int(axis)

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(self.axis + 1)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        return lam.squeeze(self.axis + 2)


class SqueezeOp(AffineOp):
    """Removes the per-sample axis ``axis`` of size one."""

    mixing = False

    def __init__(self, name: str, kind: str, axis: int) -> None:
        super().__init__(name, kind)
        self.axis = int(axis)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.axis + 1] != 1:
            raise RuntimeError(f"axis {self.axis} has size {x.shape[self.axis + 1]}, not 1")
        return x.squeeze(self.axis + 1)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        return lam.unsqueeze(self.axis + 2)


class MeanOp(AffineOp):
    """The mean over per-sample ``axes`` (``x.mean(dims)``; global average pooling, token means,
    LayerNorm's statistics). Negative axes count from the end."""

    def __init__(self, name: str, kind: str, axes: tuple[int, ...], keepdim: bool = False) -> None:
        super().__init__(name, kind)
        self.axes, self.keepdim = tuple(int(a) for a in axes), bool(keepdim)

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(sorted(a % ndim for a in self.axes))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=tuple(a + 1 for a in self._axes(x.dim() - 1)), keepdim=self.keepdim)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        axes = self._axes(len(self.in_shape))
        n = 1
        for a in axes:
            n *= self.in_shape[a]
        if not self.keepdim:
            for a in axes:
                lam = lam.unsqueeze(a + 2)
        return (lam / n).expand(*lam.shape[:2], *self.in_shape)


class AdaptiveAvgPoolOp(AffineOp):
    """``F.adaptive_avg_pool2d`` to any output size (windows of unequal sizes): a fixed linear map
    per channel, applied as one (H*W, Ho*Wo) matrix built from the pool itself at set-up."""

    def __init__(self, name: str, kind: str, out_hw: tuple[int, int]) -> None:
        super().__init__(name, kind)
        self.out_hw = tuple(int(v) for v in out_hw)
        self._matrix: Tensor | None = None

    def matrix(self, like: Tensor) -> Tensor:
        h, w = self.in_shape[-2:] if self.in_shape else like.shape[-2:]
        if self._matrix is None or self._matrix.dtype != like.dtype or self._matrix.device != like.device:
            eye = torch.eye(h * w, dtype=like.dtype, device=like.device).reshape(h * w, 1, h, w)
            self._matrix = F.adaptive_avg_pool2d(eye, self.out_hw).reshape(h * w, -1)
        return self._matrix

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.out_hw)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        m = self.matrix(lam)  # (H*W, Ho*Wo): input position -> output position weights
        h, w = self.in_shape[-2:]
        return (lam.flatten(-2) @ m.T).unflatten(-1, (h, w))


class CenterOp(AffineOp):
    """``x - x.mean(axes)`` over per-sample ``axes`` (LayerNorm's centring; negative axes count from
    the end): a symmetric projection, so its transpose is itself."""

    def __init__(self, name: str, kind: str, axes: tuple[int, ...]) -> None:
        super().__init__(name, kind)
        self.axes = tuple(int(a) for a in axes)

    def _dims(self, t: Tensor, lead: int) -> tuple[int, ...]:
        return tuple(a % (t.dim() - lead) + lead for a in self.axes)

    def forward(self, x: Tensor) -> Tensor:
        return x - x.mean(dim=self._dims(x, 1), keepdim=True)

    def forward_abs(self, r: Tensor) -> Tensor:
        # |I - J/n| r = (1 - 2/n) r + (sum r) / n over the centred axes
        dims = self._dims(r, 1)
        n = 1
        for d in dims:
            n *= r.shape[d]
        return (1 - 2 / n) * r + r.sum(dim=dims, keepdim=True) / n if n > 1 else torch.zeros_like(r)

    def backward(self, lam: Tensor) -> Tensor:
        return lam - lam.mean(dim=self._dims(lam, 2), keepdim=True)


class PermuteOp(AffineOp):
    """A layout change (ONNX Transpose) that keeps the batch axis first."""

    mixing = False

    def __init__(self, name: str, kind: str, perm: tuple[int, ...]) -> None:
        super().__init__(name, kind)
        if perm[0] != 0:
            raise ValueError(f"layer '{name}' ({kind}) moves the batch axis (perm={list(perm)})")
        self.perm = tuple(perm)
        self.inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.perm)

    forward_abs = forward

    def backward(self, lam: Tensor) -> Tensor:
        return lam.permute(0, 1, *(i + 1 for i in self.inverse[1:]))


class PadOp(AffineOp):
    """Constant padding of the last axes: ``pads`` in F.pad order (last axis first)."""

    mixing = False

    def __init__(self, name: str, kind: str, pads: tuple[int, ...], value: float = 0.0) -> None:
        super().__init__(name, kind)
        if any(p < 0 for p in pads):
            raise ValueError(f"layer '{name}' ({kind}) crops (negative pads {list(pads)})")
        self.pads, self.value = tuple(pads), float(value)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads, value=self.value)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.pad(r, self.pads, value=0.0)

    def backward(self, lam: Tensor) -> Tensor:
        index = [slice(None), slice(None)] + [slice(None)] * len(self.in_shape)
        for k in range(len(self.pads) // 2):
            lo = self.pads[2 * k]
            axis = len(index) - 1 - k
            index[axis] = slice(lo, lo + self.in_shape[-1 - k])
        return lam[tuple(index)]

    def bias_term(self, lam: Tensor) -> Tensor | None:
        if self.value == 0.0:
            return None
        return self.value * (lam.flatten(2).sum(-1) - self.backward(lam).flatten(2).sum(-1))


__all__ = [
    "AdaptiveAvgPoolOp",
    "AddOp",
    "CenterOp",
    "ConcatOp",
    "MeanOp",
    "PadOp",
    "PermuteOp",
    "ReshapeOp",
    "ScaleShiftOp",
    "SqueezeOp",
    "UnsqueezeOp",
]
