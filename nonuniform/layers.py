"""Layers the package provides so that models take inputs in their natural domain."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer of a model.

    Keeping normalisation inside the model lets boxes live in the raw input domain
    (pixels in [0, 1]), which is where a user reasons about perturbations. The channel
    axis is dim 1; a single mean/std broadcasts over all channels.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise ValueError(f"Normalize: mean has {mean_t.numel()} values but std has {std_t.numel()}")
        if (std_t <= 0).any():
            raise ValueError("Normalize: every std must be > 0")
        n = max(mean_t.numel(), std_t.numel())
        self.register_buffer("mean", mean_t.expand(n).clone())
        self.register_buffer("std", std_t.expand(n).clone())

    def channel_view(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Reshape per-channel ``values`` to broadcast against ``x`` (channels at dim 1)."""
        return values.reshape((1, -1) + (1,) * (x.dim() - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.channel_view(x, self.mean)) / self.channel_view(x, self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
