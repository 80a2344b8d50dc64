"""A model as a DAG of bound-aware operations, in topological order.

Every op reads the outputs of earlier ops (``op.inputs``: indices into ``Network.ops``, ``-1`` for
the model's input) and the last op is the model's output. An :class:`AffineOp` knows its forward
map, the forward map of ``|A|`` (for interval propagation), its transpose (for the backward linear
pass) and its bias; multi-input affine ops (the residual add, concat) return one backward
coefficient per input. A nonlinear op is an :class:`Activation` holding a relaxation
(:mod:`~nonuniform.relax.activations`, :mod:`~nonuniform.relax.pooling`).

The front ends (:mod:`nonuniform.frontends`) build it: an ``nn.Sequential`` becomes a chain, any
other ``nn.Module`` is traced by ``torch.fx`` and ONNX files are read into the same ops.

Shapes: op inputs/outputs are ``(N, *shape)``; backward inputs are ``(batch, specs, *out_shape)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .ops import (
    Activation,
    AffineOp,
    ChannelAffineOp,
    ConvOp,
    FlattenOp,
    LinearOp,
    Op,
    UnsupportedModelError,
)

__all__ = [
    "OUTPUT_TRANSFORMS",
    "Activation",
    "apply_output_transform",
    "AffineOp",
    "ChannelAffineOp",
    "ConvOp",
    "FlattenOp",
    "LinearOp",
    "Network",
    "Op",
    "UnsupportedModelError",
]


#: Final transforms of the logits that a front end may strip, and why that is exact for margins:
#: log_softmax(z) = z - logsumexp(z) * 1 leaves every specification row that sums to zero
#: unchanged (c . 1 = 0), so the bounds of such rows are the same numbers; softmax is strictly
#: increasing in each z_c - z_j, so the *sign* of every pairwise margin p_c - p_j is that of
#: z_c - z_j, which is all a robustness certificate states. Any other specification is refused.
OUTPUT_TRANSFORMS = (None, "softmax", "log_softmax")


def apply_output_transform(kind: str | None, logits: Tensor) -> Tensor:
    if kind == "softmax":
        return torch.softmax(logits, dim=1)
    if kind == "log_softmax":
        return torch.log_softmax(logits, dim=1)
    return logits


class Network:
    """A model as ops in topological order, with shapes recorded for one input shape.

    ``input_shape`` excludes the batch axis. Parameters are copied (detached) to ``dtype`` and
    ``device``: bounds in float64 need a float64 copy of the weights. :meth:`from_ops` takes ops
    whose ``inputs`` are set (every front end builds it that way).
    """

    #: A final softmax / log_softmax over the classes the front end stripped (see
    #: :data:`OUTPUT_TRANSFORMS`); the ops compute the logits before it.
    output_transform: str | None = None

    @classmethod
    def from_ops(
        cls,
        ops: list[Op],
        input_shape: tuple[int, ...],
        dtype=torch.float32,
        device="cpu",
        output_transform: str | None = None,
    ) -> Network:
        """A network from ops already in topological order with ``inputs`` set (front ends)."""
        if output_transform not in OUTPUT_TRANSFORMS:
            raise ValueError(f"unknown output transform {output_transform!r}")
        net = cls.__new__(cls)
        net._setup([op.to(dtype, device) for op in ops], input_shape, dtype, device)
        net.output_transform = output_transform
        return net

    def _setup(self, ops: list[Op], input_shape: tuple[int, ...], dtype, device) -> None:
        """Record every op's shapes by a forward pass on zeros; fail early with the op's name."""
        self.input_shape = tuple(input_shape)
        self.dtype, self.device = dtype, device
        if not ops:
            raise UnsupportedModelError("the model has no layers")
        x0 = torch.zeros((1, *self.input_shape), dtype=dtype, device=device)
        vals: dict[int, Tensor] = {-1: x0}
        for i, op in enumerate(ops):
            xs = [vals[k] for k in op.inputs]
            op.in_shape = tuple(xs[0].shape[1:])
            if getattr(op, "pool_kernel", None) is not None:
                c = op.in_shape[0]
                kh, kw = op.pool_kernel
                op.weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=dtype, device=device)
                op.groups = c
                op.pool_kernel = None
            try:
                vals[i] = op.forward(*xs)
            except RuntimeError as e:
                msg = str(e).splitlines()[0]
                shapes = ", ".join(str(tuple(x.shape[1:])) for x in xs)
                raise UnsupportedModelError(
                    f"{op.where()} cannot take an input of shape {shapes} "
                    f"(the model was given inputs of shape {self.input_shape}): {msg}"
                ) from None
            op.out_shape = tuple(vals[i].shape[1:])
        x = vals[len(ops) - 1]
        if x.dim() != 2:
            raise UnsupportedModelError(
                f"the model's output has shape {tuple(x.shape[1:])} per sample; a classifier must "
                "output one vector of logits (add nn.Flatten / a final nn.Linear)"
            )
        self.ops = ops
        self.num_classes = x.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        vals: dict[int, Tensor] = {-1: x}
        for i, op in enumerate(self.ops):
            vals[i] = op.forward(*(vals[k] for k in op.inputs))
        return vals[len(self.ops) - 1]

    @property
    def is_chain(self) -> bool:
        return all(op.inputs == [i - 1] for i, op in enumerate(self.ops))

    def consumers(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {i: [] for i in range(-1, len(self.ops))}
        for i, op in enumerate(self.ops):
            for k in op.inputs:
                out[k].append(i)
        return out

    def tape_bytes_per_sample(self, element_bytes: int = 4) -> int:
        """A quick upper estimate of one differentiable bound's memory per sample, with no work.

        CROWN tightens the input of each nonlinear op (up to 2 * size rows, lower and upper)
        through every earlier op; dense coefficients of (rows, size_j) per visit, 3 of them kept
        per visit. Patches, the unstable-neuron screen and freed temporaries make the real figure
        smaller (measured 16x on oval21's cifar_base_kw), so this only decides whether the
        measured estimate (:mod:`~nonuniform.certify.memory`) is worth making.
        """
        total, prefix = 0, math.prod(self.input_shape)
        for op in self.ops:
            if not isinstance(op, AffineOp):
                total += 2 * math.prod(op.in_shape) * prefix
            prefix += math.prod(op.out_shape)
        return 3 * element_bytes * total

    def max_width(self, stop: int) -> int:
        """Largest per-sample tensor size among the outputs of ops[:stop] and the input."""
        sizes = [math.prod(self.input_shape)] + [math.prod(op.out_shape) for op in self.ops[:stop]]
        return max(sizes)
