"""The product ``x * y`` of two computed tensors (LayerNorm's scale, gating), relaxed by McCormick
planes: :class:`~nonuniform.relax.gates.Product` with identities for p and q (its docstring has
the proof). ``y`` may broadcast over ``x`` (a per-sample scale).

Shapes: ``x`` bounds ``(batch, *out)``; ``y`` bounds ``(batch, *y_shape)`` with ``y_shape``
broadcastable to ``out``; the planes ``(batch, 1, *out)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .activations import Identity
from .gates import PlaneRelaxation, Product

_MCCORMICK = Product(Identity(), Identity())


@dataclass
class ProductRelaxation:
    """Planes ``z >= lx*x + ly*y + lc`` and ``z <= ux*x + uy*y + uc`` of ``z = x * y``."""

    planes: PlaneRelaxation
    y_shape: tuple[int, ...]

    def backward(self, lam: Tensor) -> tuple[list[Tensor], Tensor]:
        """Lower bound of ``lam . z`` as ``lam_x . x + lam_y . y + bias``: lower planes where
        ``lam >= 0``, upper planes where it is negative; ``lam_y`` summed back to y's shape."""
        p = self.planes
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        lam_x = pos * p.lx + neg * p.ux
        lam_y = pos * p.ly + neg * p.uy
        bias = (pos * p.lc + neg * p.uc).flatten(2).sum(-1)
        return [lam_x, reduce_to(lam_y, self.y_shape)], bias


def reduce_to(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum ``t`` (batch, specs, *out) over the axes that ``shape`` broadcast (the transpose of
    broadcasting)."""
    extra = t.dim() - 2 - len(shape)
    if extra:
        t = t.sum(dim=tuple(range(2, 2 + extra)))
    axes = tuple(k + 2 for k, s in enumerate(shape) if s == 1 and t.shape[k + 2] != 1)
    return t.sum(dim=axes, keepdim=True) if axes else t


def relax_product(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, mode: str = "crown") -> ProductRelaxation:
    y_shape = tuple(ly.shape[1:])
    ly, uy = ly.expand_as(lx), uy.expand_as(lx)
    return ProductRelaxation(_MCCORMICK.relax(lx, ux, ly, uy, mode), y_shape)


def product_interval(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    return _MCCORMICK.interval(lx, ux, ly.expand_as(lx), uy.expand_as(lx))


__all__ = ["ProductRelaxation", "product_interval", "reduce_to", "relax_product"]
