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

from .activations import TINY_WIDTH, LinearRelaxation, Relaxation


@dataclass
class PoolRelaxation:
    """``x[lo_idx] <= y <= up_slope * x[up_idx] + up_bias`` per output element."""

    lo_idx: Tensor  # (batch, C, L) flat index into H*W
    up_idx: Tensor  # (batch, C, L)
    up_slope: Tensor  # (batch, 1, C, L)
    up_bias: Tensor  # (batch, 1, C, L)
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    disjoint: bool = False  # no two windows share an input (stride >= kernel)

    def detach(self) -> PoolRelaxation:
        return PoolRelaxation(
            self.lo_idx,
            self.up_idx,
            self.up_slope.detach(),
            self.up_bias.detach(),
            self.in_hw,
            self.out_hw,
            self.disjoint,
        )

    def _lines(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """lam (batch, specs, C, Ho, Wo) -> (lam (batch, specs, C, L), its negative part, the bias,
        the (batch, specs, C, L) index expander)."""
        n = self.lo_idx.shape[0]
        lam = lam.expand(n, *lam.shape[1:]) if lam.shape[0] != n else lam
        b, s, c = lam.shape[:3]
        lam = lam.reshape(b, s, c, -1)
        neg = lam.clamp(max=0)
        return (
            lam,
            neg,
            (neg * self.up_bias).flatten(2).sum(-1),
            lambda idx: idx.unsqueeze(1).expand(b, s, c, -1),
        )

    def backward(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``lam . y`` as ``lam' . x + bias``; lam ``(batch, specs, C, Ho, Wo)``."""
        lam, neg, bias, rows = self._lines(lam)
        out = lam.new_zeros(*lam.shape[:3], self.in_hw[0] * self.in_hw[1])
        out.scatter_add_(-1, rows(self.lo_idx), lam.clamp(min=0))  # in place: out-of-place copied
        out.scatter_add_(-1, rows(self.up_idx), neg * self.up_slope)
        return out.reshape(*lam.shape[:3], *self.in_hw), bias

    def backward_through(self, lam: Tensor, inner: LinearRelaxation) -> tuple[Tensor, Tensor]:
        """:meth:`backward` followed by ``inner.backward`` (the elementwise relaxation of the pool's
        input ``x = act(z)``): lower bound of ``lam . y`` as ``lam' . z + bias``. Only for disjoint
        windows: each input then gets the coefficient of at most one window -- ``lam`` at the lower
        line's input where ``lam > 0``, ``lam * up_slope`` at the upper line's where ``lam < 0`` --
        so the activation's lines are read at those inputs only, and every other ``z`` gets 0, as
        the dense step gives it."""
        lam, neg, bias, rows = self._lines(lam)
        b, s, c, _ = lam.shape
        idx = torch.where(lam > 0, rows(self.lo_idx), rows(self.up_idx))
        v = torch.where(lam > 0, lam, neg * self.up_slope)  # the coefficient of x[idx]

        flat = idx.transpose(1, 2).reshape(b, c, -1)  # (batch, C, specs * L)

        def at(t: Tensor) -> Tensor:  # t (batch, 1 or specs, C, H, W) read at idx
            t = t.expand(b, *t.shape[1:]).reshape(b, t.shape[1], c, -1)
            if t.shape[1] == s:
                return t.gather(-1, idx)
            # shared by the rows: one gather per channel map (its gradient stays map-sized)
            return t[:, 0].gather(-1, flat).reshape(b, c, s, -1).transpose(1, 2)

        v_neg = v.clamp(max=0)
        lo_slope = at(inner.lower_slope)
        out_v = v * lo_slope + v_neg * (at(inner.upper_slope) - lo_slope)
        bias = bias + (v_neg * at(inner.upper_bias)).flatten(2).sum(-1)
        if not inner.zero_lower_bias:
            bias = bias + ((v - v_neg) * at(inner.lower_bias)).flatten(2).sum(-1)
        out = lam.new_zeros(b, s, c, self.in_hw[0] * self.in_hw[1]).scatter_(-1, idx, out_v)
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
        # one unfold over (batch, C) maps: rows come channel-major, K per channel
        cols = F.unfold(t, self.kernel, stride=self.stride)
        return cols.reshape(b, c, -1, cols.shape[2])

    def relax(self, l: Tensor, u: Tensor, mode: str, alpha: Tensor | None = None) -> PoolRelaxation:
        b, c, h, w = l.shape
        pos = torch.arange(h * w, device=l.device, dtype=l.dtype).reshape(1, 1, h, w)
        idx = self._windows(pos, -1.0)[0, 0].long()  # (K, L) flat input index per window slot
        lw, uw = self._windows(l, -torch.inf), self._windows(u, -torch.inf)
        # max over the strided window axis: ``max`` is ~4x faster than ``argmax``/``topk`` there
        j_lo = lw.max(2).indices  # (b, c, L), the first maximal slot
        u1, j_up = uw.max(2)
        u2 = uw.scatter(2, j_up.unsqueeze(2), -torch.inf).amax(2)  # runner-up (-inf for 1-slot windows)
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
        disjoint = all(s >= k for s, k in zip(self.stride, self.kernel))
        return PoolRelaxation(
            lo_idx, up_idx, slope.unsqueeze(1), bias.unsqueeze(1), (h, w), (ho, wo), disjoint
        )


__all__ = ["MaxPool2d", "PoolRelaxation"]
