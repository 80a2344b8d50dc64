"""Box shapes: which radii are tied, fixed or free, how features weigh, and radius floors.

Users of per-feature certificates ask for more than "every feature on its own" (issue 34):

* **groups** -- one radius shared by a group of features: ``"channel"`` (the first axis of an
  input), ``"patch:HxW"`` (squares of the last two axes, across all channels: superpixels),
  ``"time"`` (the first axis of a sequence: one radius per step), or an integer map shaped like
  one input (any ids). A group of k features weighs k in the volume.
* **frozen** features keep radius 0 (the certificate is about the others); **whole** features
  range over their whole domain (the certificate holds for every value they take). Neither
  counts in the objective nor in the reported volume.
* **weights** -- per-feature weights of the objective (>= 0).
* **floors** -- every radius at least a value: ``floor`` (absolute) or, by the ``objective``,
  a fraction of the sample's best uniform radius: ``apothem`` (= 1: the box contains the best
  uniform box, so its smallest half-width is the largest any certified box has -- the
  lexicographic apothem optimum -- and the volume is grown above that), ``blend:B`` (B in
  (0, 1]: a floor at B times the uniform radius, trading smallest side for volume), ``volume``
  (no floor: today's objective).

The optimiser never sees any of this: :meth:`BoxShape.radii` ties and floors log-radii and
:meth:`BoxShape.apply` fixes frozen and whole features, so every box any search builds has the
shape (and every gradient respects it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

OBJECTIVES = ("volume", "apothem", "blend:B")


def floor_fraction(objective: str) -> float:
    """The floor as a fraction of the uniform radius that ``objective`` asks for (0: none)."""
    if objective == "volume":
        return 0.0
    if objective == "apothem":
        return 1.0
    m = re.fullmatch(r"blend:([0-9.eE+-]+)", objective)
    if m:
        try:
            b = float(m.group(1))
        except ValueError:
            b = math.nan
        if 0.0 < b <= 1.0:
            return b
    raise ValueError(f"`objective` must be volume, apothem or blend:B with 0 < B <= 1, got {objective!r}")


def group_map(spec, input_shape: tuple[int, ...]) -> np.ndarray:
    """Integer group ids 0..K-1 shaped like one input, from a spec or a given map (ids renumbered)."""
    shape = tuple(input_shape)
    if isinstance(spec, str):
        if spec in ("channel", "time"):
            if len(shape) < 2:
                raise ValueError(
                    f"`groups` {spec} needs inputs with at least two axes (the first is the "
                    f"{spec} axis); these inputs have shape {shape}"
                )
            ids = np.arange(shape[0]).reshape(-1, *[1] * (len(shape) - 1))
            return np.broadcast_to(ids, shape).copy()
        m = re.fullmatch(r"patch:(\d+)x(\d+)", spec)
        if m:
            ph, pw = int(m.group(1)), int(m.group(2))
            if len(shape) < 2 or ph < 1 or pw < 1:
                raise ValueError(
                    f"`groups` {spec} needs image inputs (C, H, W) and sizes >= 1; shape {shape}"
                )
            h, w = shape[-2:]
            rows, cols = np.arange(h) // ph, np.arange(w) // pw
            ids = rows[:, None] * (-(-w // pw)) + cols[None, :]
            return np.broadcast_to(ids, shape).copy()
        raise ValueError(f"`groups` must be channel, time, patch:HxW or an integer map, got {spec!r}")
    arr = np.asarray(spec)
    if arr.size != math.prod(shape) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"a group map must hold {math.prod(shape)} integers (one input of shape {shape}); "
            f"got {arr.size} values of type {arr.dtype}"
        )
    return np.unique(arr.reshape(shape), return_inverse=True)[1].reshape(shape)


def feature_mask(values, input_shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size != math.prod(input_shape):
        raise ValueError(f"the {name} mask has {arr.size} values; one input of shape {input_shape} has "
                         f"{math.prod(input_shape)}")  # fmt: skip
    return arr.reshape(input_shape).astype(bool)


@dataclass
class BoxShape:
    """The shape rules of one problem, as tensors on its device (see the module docstring).

    ``group`` (F,) long ids over the flattened features or None; ``counts`` (K,) group sizes;
    ``frozen``/``whole`` bool and ``weight`` float, shaped like one input; ``log_floor`` (n,)
    per-sample log floor of the radii (-inf: none), set once the uniform radii are known.
    """

    group: Tensor | None
    counts: Tensor | None
    frozen: Tensor
    whole: Tensor
    weight: Tensor
    log_floor: Tensor

    @classmethod
    def build(cls, cfg, x0: Tensor) -> BoxShape:
        shape = tuple(x0.shape[1:])
        like = x0[0]
        group = counts = None
        if cfg.groups is not None:
            ids = torch.as_tensor(group_map(cfg.groups, shape), dtype=torch.long, device=x0.device).flatten()
            group, counts = ids, torch.bincount(ids).to(x0.dtype)
        frozen = torch.zeros_like(like, dtype=torch.bool)
        whole = torch.zeros_like(like, dtype=torch.bool)
        if cfg.frozen is not None:
            frozen = torch.as_tensor(feature_mask(cfg.frozen, shape, "frozen"), device=x0.device)
        if cfg.whole is not None:
            whole = torch.as_tensor(feature_mask(cfg.whole, shape, "whole"), device=x0.device)
        if bool((frozen & whole).any()):
            raise ValueError(f"{int((frozen & whole).sum())} features are both frozen and whole-domain")
        weight = torch.ones_like(like)
        if cfg.weights is not None:
            w = np.asarray(cfg.weights, dtype=np.float64)
            if w.size != like.numel() or not np.isfinite(w).all() or (w < 0).any():
                raise ValueError(
                    f"`weights` must be {like.numel()} finite values >= 0 (one input of shape {shape})"
                )
            weight = torch.as_tensor(w.reshape(shape), dtype=x0.dtype, device=x0.device)
        log_floor = torch.full((len(x0),), -math.inf, dtype=x0.dtype, device=x0.device)
        return cls(group, counts, frozen, whole, weight, log_floor)

    @property
    def floors(self) -> bool:
        return bool(torch.isfinite(self.log_floor).any())

    def tie(self, rho: Tensor) -> Tensor:
        """Each group's mean log-radius on all its features: (n, [2,] *input_shape)."""
        if self.group is None:
            return rho
        n_in = self.frozen.dim()
        flat = rho.flatten(-n_in) if n_in else rho.unsqueeze(-1)
        sums = torch.zeros(*flat.shape[:-1], len(self.counts), dtype=rho.dtype, device=rho.device)
        sums = sums.index_add(-1, self.group, flat)
        return (sums / self.counts).index_select(-1, self.group).reshape(rho.shape)

    def radii(self, rho: Tensor, idx: Tensor | None) -> Tensor:
        """Tied and floored log-radii of the samples ``idx`` (None: all)."""
        rho = self.tie(rho)
        if not self.floors:
            return rho
        floor = self.log_floor if idx is None else self.log_floor[idx]
        return torch.maximum(rho, floor.reshape((-1,) + (1,) * (rho.dim() - 1)))

    def apply(self, lo: Tensor, hi: Tensor, x0: Tensor, dl: Tensor, du: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen features at ``x0``, whole ones over ``[dl, du]``."""
        if bool(self.frozen.any()):
            lo, hi = torch.where(self.frozen, x0, lo), torch.where(self.frozen, x0, hi)
        if bool(self.whole.any()):
            lo, hi = torch.where(self.whole, dl, lo), torch.where(self.whole, du, hi)
        return lo, hi


__all__ = ["OBJECTIVES", "BoxShape", "feature_mask", "floor_fraction", "group_map"]
