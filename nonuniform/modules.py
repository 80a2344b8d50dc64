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


RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


class SequenceClassifier(nn.Module):
    """A recurrent module followed by a head on the last time step: the common sequence classifier.

    ``rnn`` is PyTorch's own ``nn.RNN`` (tanh or relu), ``nn.LSTM`` or ``nn.GRU`` (any number of
    layers, ``batch_first`` either way, uni- or bidirectional, no LSTM projection). Inputs may have any
    shape ``(batch, *dims)`` whose per-sample size is a multiple of ``rnn.input_size``: they are
    read row-major as ``(batch, time, rnn.input_size)``, so a ``(batch, 1, 28, 28)`` image is
    28 steps of 28 pixels (sequential MNIST) and image tools work on sequence models unchanged.
    ``head`` (optional) maps the top layer's last hidden state to logits; without it the hidden
    state itself is the output. A bidirectional ``rnn`` hands the head both directions' states
    after reading the whole sequence: ``[forward at the last step, backward at the first step]``
    (PyTorch's ``out[:, -1]`` would give the backward direction only the last input).
    """

    def __init__(self, rnn: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(rnn, RECURRENT):
            raise TypeError(
                f"SequenceClassifier needs an nn.RNN, nn.LSTM or nn.GRU, got {type(rnn).__name__}"
            )
        if getattr(rnn, "proj_size", 0):
            raise ValueError("SequenceClassifier: LSTM with proj_size > 0 is not supported")
        self.rnn = rnn
        self.head = head if head is not None else nn.Identity()

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(batch, time, features)``, with a clear error when it does not fit."""
        d = self.rnn.input_size
        per_sample = x[0].numel() if x.dim() > 1 else 0
        if x.dim() < 2 or per_sample % d:
            raise ValueError(
                f"SequenceClassifier: input of shape {tuple(x.shape)} cannot be read as "
                f"(batch, time, {d}); each sample needs a multiple of {d} values"
            )
        return x.reshape(x.shape[0], -1, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.sequence(x)
        out, _ = self.rnn(seq if self.rnn.batch_first else seq.transpose(0, 1))
        out = out if self.rnn.batch_first else out.transpose(0, 1)
        last = out[:, -1]
        if self.rnn.bidirectional:
            h = self.rnn.hidden_size
            last = torch.cat([out[:, -1, :h], out[:, 0, h:]], 1)
        return self.head(last)
