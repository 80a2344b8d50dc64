"""Boxes and specifications: validating a batch of boxes, and the margin specification."""

from __future__ import annotations

import torch
from torch import Tensor


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


__all__ = ["BoxError", "check_box", "margin_spec"]
