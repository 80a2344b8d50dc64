"""Max pooling: the one nonlinearity that mixes several inputs, and its linear relaxation.

``y = max_{i in W} x_i`` over each pooling window W, with every ``x_i`` in ``[l_i, u_i]``.

Lower line: ``y >= x_j`` for any ``j`` in the window (the max is at least each of its arguments);
``j`` is the input with the largest lower bound, the best choice in the worst case.

Upper line, with ``j`` the input with the largest upper bound ``u_j`` and ``u_2`` the largest
upper bound among the others:

* ``y <= x_j + max(0, u_2 - l_j)``. Proof: if the max is ``x_j`` the bias is >= 0; otherwise the
  max is some ``x_i <= u_i <= u_2``, and ``x_j + (u_2 - l_j) >= l_j + u_2 - l_j = u_2``. When
  ``u_2 <= l_j`` (``x_j`` dominates the window) the line is exact: ``y = x_j``.
* ``y <= u_j`` (a constant) -- the max never exceeds the largest upper bound.

Both are sound, so per window the one lower at the box centre is used. Padded positions are
``-inf`` (PyTorch's and ONNX's semantics) and are never selected.

Shapes: ``l, u`` ``(batch, C, H, W)``; lines are stored per output element ``(batch, 1, C, L)``
(``L = Ho * Wo``) with the flat input index each one reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import TINY_WIDTH, Relaxation


@dataclass
class PoolRelaxation:
    """``x[lo_idx] <= y <= up_slope * x[up_idx] + up_bias`` per output element."""

    lo_idx: Tensor  # (batch, C, L) flat index into H*W
    up_idx: Tensor  # (batch, C, L)
    up_slope: Tensor  # (batch, 1, C, L)
    up_bias: Tensor  # (batch, 1, C, L)
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    def detach(self) -> PoolRelaxation:
        return PoolRelaxation(
            self.lo_idx, self.up_idx, self.up_slope.detach(), self.up_bias.detach(), self.in_hw, self.out_hw
        )

    def backward(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``lam . y`` as ``lam' . x + bias``; lam ``(batch, specs, C, Ho, Wo)``."""
        n = self.lo_idx.shape[0]
        lam = lam.expand(n, *lam.shape[1:]) if lam.shape[0] != n else lam
        b, s, c = lam.shape[:3]
        lam = lam.reshape(b, s, c, -1)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        bias = (neg * self.up_bias).flatten(2).sum(-1)
        size = self.in_hw[0] * self.in_hw[1]
        out = lam.new_zeros(b, s, c, size)
        out = out.scatter_add(-1, self.lo_idx.unsqueeze(1).expand(b, s, c, -1), pos)
        out = out.scatter_add(-1, self.up_idx.unsqueeze(1).expand(b, s, c, -1), neg * self.up_slope)
        return out.reshape(b, s, c, *self.in_hw), bias


class MaxPool2d(Relaxation):
    """``F.max_pool2d`` with integer kernel, stride and padding (no dilation, no ceil mode)."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> None:
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def f(self, z: Tensor) -> Tensor:
        return F.max_pool2d(z, self.kernel, self.stride, self.padding)

    def interval(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return self.f(l), self.f(u)  # max is monotone in every argument

    def needs_bounds(self, l: Tensor, u: Tensor) -> Tensor:
        return (u - l) > TINY_WIDTH

    def _windows(self, t: Tensor, fill: float) -> Tensor:
        """(batch, C, H, W) -> (batch, C, K, L): the values of every window, padding = fill."""
        b, c = t.shape[:2]
        ph, pw = self.padding
        t = F.pad(t, (pw, pw, ph, ph), value=fill)
        cols = F.unfold(t.reshape(b * c, 1, *t.shape[2:]), self.kernel, stride=self.stride)
        return cols.reshape(b, c, cols.shape[1], cols.shape[2])

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> PoolRelaxation:
        b, c, h, w = l.shape
        pos = torch.arange(h * w, device=l.device, dtype=l.dtype).reshape(1, 1, h, w)
        idx = self._windows(pos, -1.0)[0, 0].long()  # (K, L) flat input index per window slot
        lw, uw = self._windows(l, -torch.inf), self._windows(u, -torch.inf)
        j_lo = lw.argmax(2)  # (b, c, L)
        top2 = uw.topk(min(2, uw.shape[2]), dim=2)
        j_up = top2.indices[:, :, 0]
        u1 = top2.values[:, :, 0]
        u2 = top2.values[:, :, 1] if uw.shape[2] > 1 else torch.full_like(u1, -torch.inf)
        l_j = lw.gather(2, j_up.unsqueeze(2)).squeeze(2)
        c_j = (l_j + u1) / 2
        line_bias = (u2 - l_j).clamp(min=0)
        use_line = c_j + line_bias <= u1
        slope = use_line.to(l.dtype)
        bias = torch.where(use_line, line_bias, u1)
        k_idx = idx.unsqueeze(0).unsqueeze(0).expand(b, c, -1, -1)
        lo_idx = k_idx.gather(2, j_lo.unsqueeze(2)).squeeze(2)
        up_idx = k_idx.gather(2, j_up.unsqueeze(2)).squeeze(2)
        ho = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        return PoolRelaxation(lo_idx, up_idx, slope.unsqueeze(1), bias.unsqueeze(1), (h, w), (ho, wo))


__all__ = ["MaxPool2d", "PoolRelaxation"]
