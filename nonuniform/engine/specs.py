"""Boxes and specifications: validating a batch of boxes, the margin specification, and output
cases (a VNN-LIB unsafe region as OR of AND of linear atoms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..ir.network import UnsupportedModelError


class BoxError(ValueError):
    """A malformed box: shapes differ, NaN/inf values, or lower > upper."""


def check_box(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a batch of boxes and return them as tensors (same dtype/device)."""
    lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
    if lower.shape != upper.shape:
        raise BoxError(f"lower has shape {tuple(lower.shape)} but upper has {tuple(upper.shape)}")
    if lower.dim() < 2:
        raise BoxError(
            f"boxes must be batched, shaped (batch, *input_shape); got shape {tuple(lower.shape)}"
            " (add a batch axis with x.unsqueeze(0))"
        )
    if not lower.is_floating_point():
        lower, upper = lower.float(), upper.float()
    upper = upper.to(dtype=lower.dtype, device=lower.device)
    for name, t in (("lower", lower), ("upper", upper)):
        bad = ~torch.isfinite(t)
        if bad.any():
            raise BoxError(f"{name} has {int(bad.sum())} NaN/inf entries")
    inverted = lower > upper
    if inverted.any():
        raise BoxError(
            f"lower > upper in {int(inverted.sum())} entries (largest gap "
            f"{float((lower - upper).max()):.3g}); each interval must satisfy lower <= upper"
        )
    return lower, upper


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """Rows ``e_c - e_j`` for every ``j != c`` in class order: ``(batch, classes-1, classes)``."""
    b = labels.shape[0]
    eye = torch.eye(num_classes, device=labels.device)
    others = torch.arange(num_classes, device=labels.device).expand(b, -1)
    others = others[others != labels[:, None]].reshape(b, num_classes - 1)
    return eye[labels][:, None, :] - eye[others]


__all__ = ["BoxError", "check_box", "check_transform_spec", "margin_spec"]


@dataclass
class OutputCases:
    """An unsafe output region: OR over cases of AND of linear atoms ``c . y >= d``.

    A property is violated at ``x`` when some case has all its atoms true at ``y = f(x)``.
    ``rows`` (atoms, outputs) hold the ``c``, ``offsets`` (atoms,) the ``d``; ``index`` (cases,
    width) lists each case's atoms, short cases padded by repeating their first atom (a case with
    no atom gets the always-true atom ``0 . y >= 0``).
    """

    rows: Tensor
    offsets: Tensor
    index: Tensor

    @classmethod
    def from_disjuncts(cls, disjuncts, n_outputs: int, dtype=torch.float64) -> OutputCases:
        rows, offsets, index = [], [], []
        for conj in disjuncts:
            conj = conj or [(np.zeros(n_outputs), 0.0)]
            index.append(list(range(len(rows), len(rows) + len(conj))))
            rows += [np.asarray(c, dtype=np.float64) for c, _ in conj]
            offsets += [float(d) for _, d in conj]
        width = max(len(g) for g in index)
        padded = [g + [g[0]] * (width - len(g)) for g in index]
        return cls(torch.tensor(np.array(rows), dtype=dtype), torch.tensor(offsets, dtype=dtype),
                   torch.tensor(padded, dtype=torch.long))  # fmt: skip

    @property
    def count(self) -> int:
        return self.index.shape[0]

    def violation(self, y: Tensor) -> Tensor:
        """(n, cases): the largest ``d - c . y`` over each case's atoms; <= 0 where the case holds."""
        gap = self.offsets.to(y.dtype) - y @ self.rows.to(y.dtype).T  # (n, atoms)
        return gap[:, self.index].max(-1).values

    def subset(self, keep: list[int]) -> OutputCases:
        """The cases numbered ``keep`` (atoms renumbered)."""
        used = sorted({int(a) for k in keep for a in self.index[k]})
        new = {a: i for i, a in enumerate(used)}
        index = torch.tensor([[new[int(a)] for a in self.index[k]] for k in keep], dtype=torch.long)
        return OutputCases(self.rows[used], self.offsets[used], index)


def check_transform_spec(transform: str | None, spec: Tensor) -> None:
    """Refuse specifications for which stripping the model's final softmax is not exact (see
    :data:`~nonuniform.ir.network.OUTPUT_TRANSFORMS`): log_softmax needs rows that sum to zero,
    softmax pairwise margins (one +c and one -c per row); their bounds are of the logits' margins."""
    if transform is None:
        return
    if transform == "log_softmax":
        ok = spec.sum(-1).abs() <= 1e-9 * spec.abs().sum(-1).clamp(min=1)
    else:
        nonzero = spec != 0
        pair = nonzero.sum(-1) == 2
        ok = pair & ((spec.sum(-1)).abs() <= 1e-9 * spec.abs().sum(-1).clamp(min=1))
    if not bool(ok.all()):
        raise UnsupportedModelError(
            f"the model ends in {transform}, which is stripped only for margins (rows "
            f"{'summing to zero' if transform == 'log_softmax' else 'f_c - f_j'}); bound the logits "
            "model without it for other specifications (per_logit too)"
        )
