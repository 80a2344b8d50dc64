"""``GraphModel``: a model given as a graph of ops (an ONNX file, a traced module) that behaves
as an ``nn.Module``.

Attacks, explanations and plots call the model as a function; the bound engine reads its ops
directly (:func:`~nonuniform.engine.bounds.to_network`). The ops are kept in float64 on the CPU as the
master copy and converted per (dtype, device) on first use, so ``model(x)`` runs in ``x``'s dtype
and on its device (``model.double()`` and ``model.to(device)`` are not needed and change nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .network import Network, Op, UnsupportedModelError, apply_output_transform
from .simplify import simplify


class GraphModel(nn.Module):
    """A feedforward classifier as ops in topological order (see :mod:`~nonuniform.ir.network`)."""

    def __init__(
        self,
        ops: list[Op],
        input_shape: tuple[int, ...],
        source: str = "",
        output_transform: str | None = None,
    ) -> None:
        super().__init__()
        self.ops = [op.to(torch.float64, "cpu") for op in ops]
        self.input_shape = tuple(input_shape)
        self.source = source
        #: the file's final softmax / log_softmax: applied by forward(), stripped for the engine
        self.output_transform = output_transform
        self._cache: dict[tuple, Network] = {}
        self.network(self.input_shape, torch.float64, "cpu")  # validates shapes now, with op names

    def network(self, input_shape: tuple[int, ...], dtype, device) -> Network:
        key = (tuple(input_shape), dtype, str(device))
        if key not in self._cache:
            net = Network.from_ops(self.ops, tuple(input_shape), dtype, device, self.output_transform)
            net.ops = simplify(net.ops)
            self._cache[key] = net
        return self._cache[key]

    @property
    def num_classes(self) -> int:
        return self.network(self.input_shape, torch.float64, "cpu").num_classes

    def forward(self, x: Tensor) -> Tensor:
        logits = self.network(tuple(x.shape[1:]), x.dtype, x.device).forward(x)
        return apply_output_transform(self.output_transform, logits)

    def extra_repr(self) -> str:
        kinds = ", ".join(op.kind for op in self.ops[:12]) + (", ..." if len(self.ops) > 12 else "")
        return f"{self.source or 'graph'}: input {self.input_shape}, {len(self.ops)} ops [{kinds}]"


__all__ = ["GraphModel"]


class GraphBuilder:
    """Collects ops from a front end: values are named, ops read named values, aliases (Identity,
    Dropout) cost nothing, and :meth:`finish` keeps only the ops the output depends on."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.index: dict[str, int] = {}  # value name -> op index (-1 = model input)
        self.transforms: dict[str, tuple[str, str]] = {}  # value -> (softmax kind, its input value)
        #: the final transform of the graph built by :meth:`finish` (None: logits)
        self.output_transform: str | None = None

    def transform(self, name: str, kind: str, of: str) -> None:
        """``name`` = softmax/log_softmax of ``of`` over the classes: allowed as the output only."""
        self.transforms[name] = (kind, of)

    def input(self, name: str) -> None:
        self.index[name] = -1

    def has(self, name: str) -> bool:
        return name in self.index

    def alias(self, name: str, of: str) -> None:
        self.index[name] = self.index[of]

    def add(self, op: Op, inputs: list[str], output: str) -> None:
        for k in inputs:
            if k in self.transforms:
                raise UnsupportedModelError(
                    f"{op.where()} reads the {self.transforms[k][0]} of '{self.transforms[k][1]}': a "
                    "softmax is supported only as the model's last operation"
                )
        op.inputs = [self.index[k] for k in inputs]
        self.ops.append(op)
        self.index[output] = len(self.ops) - 1

    def finish(self, output: str) -> list[Op]:
        if output in self.transforms:
            self.output_transform, output = self.transforms[output]
        out = self.index[output]
        if out < 0:
            raise ValueError("the model's output is its input: nothing to bound")
        keep: set[int] = set()
        stack = [out]
        while stack:
            k = stack.pop()
            if k >= 0 and k not in keep:
                keep.add(k)
                stack.extend(self.ops[k].inputs)
        order = sorted(keep)
        new = {old: i for i, old in enumerate(order)} | {-1: -1}
        ops = []
        for old in order:
            op = self.ops[old]
            op.inputs = [new[k] for k in op.inputs]
            ops.append(op)
        if order[-1] != out:  # the output must be the last op (ops are topologically sorted)
            raise ValueError("internal: the output is not the last op of the graph")
        return ops
