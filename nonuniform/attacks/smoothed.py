"""A smoothed copy of a feedforward network, for attacks that plain PGD cannot finish.

PGD on a ReLU network follows a piecewise-constant gradient and stalls where it is zero or
misleading. Replacing every ReLU (LeakyReLU) by a Softplus of sharpness ``beta`` and every max-pool
by a log-sum-exp of the same sharpness gives a smooth function that tends to the network as beta
grows; following its gradient with a schedule of increasing beta reaches points plain PGD misses.
The attack always *scores* points on the real network (:func:`~nonuniform.attacks.pgd.falsify_boxes`).

Works on every feedforward model the engine reads (``nn.Sequential``, traced modules, ONNX);
recurrent models get None (plain PGD only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.bounds import to_network
from ..ir.network import Activation, Network, UnsupportedModelError
from ..relax.activations import PiecewiseLinear
from ..relax.pooling import MaxPool2d


def _smooth(op: Activation, z: Tensor, beta: float) -> Tensor:
    r = op.relaxation
    if isinstance(r, PiecewiseLinear):
        a = r.negative_slope
        return a * z + (1 - a) * F.softplus(z, beta=beta)
    if isinstance(r, MaxPool2d):
        b, c = z.shape[:2]
        (ph, pw), (kh, kw) = r.padding, r.kernel
        padded = F.pad(z, (pw, pw, ph, ph), value=-1e4)  # log-sum-exp ignores these
        cols = F.unfold(padded.reshape(b * c, 1, *padded.shape[2:]), (kh, kw), stride=r.stride)
        out = torch.logsumexp(beta * cols, dim=1) / beta
        ho = (z.shape[2] + 2 * ph - kh) // r.stride[0] + 1
        return out.reshape(b, c, ho, -1)
    return op.forward(z)


def smoothed_forward(model: nn.Module, input_shape: tuple[int, ...], dtype, device) -> Callable | None:
    """``f(x, beta)``: the network with ReLUs and max-pools smoothed at sharpness ``beta``."""
    try:
        net: Network = to_network(model, tuple(input_shape), dtype, device)
    except (UnsupportedModelError, TypeError, AttributeError):
        return None

    def forward(x: Tensor, beta: float) -> Tensor:
        vals = {-1: x}
        for i, op in enumerate(net.ops):
            xs = [vals[k] for k in op.inputs]
            vals[i] = _smooth(op, xs[0], beta) if isinstance(op, Activation) else op.forward(*xs)
        return vals[len(net.ops) - 1]

    return forward


__all__ = ["smoothed_forward"]
