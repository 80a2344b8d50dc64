"""ONNX operators beyond the core set: activations, the patterns exporters emit for activations
ONNX has no operator for (or had none before opset 20), 1-D convolution and pooling, layout and
reductions, and a final Softmax. A mixin of :class:`~nonuniform.frontends.onnx_read._Reader`.

Patterns (matched on the producers of a node's inputs; the matched nodes' own ops are pruned
because nothing else reads them): ``x * Sigmoid(x)`` is SiLU, ``x * Tanh(Softplus(x))`` is Mish,
``x * (Erf(x / sqrt 2) + 1)`` is twice GELU (the exporter multiplies by 0.5 next), and
``x / (Abs(x) + 1)`` is Softsign. Each is the function exactly, not an approximation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ir.graph_ops import CenterOp, MeanOp, ReshapeOp, ScaleShiftOp, SqueezeOp, UnsqueezeOp
from ..ir.ops import Activation, ConvOp, ProductOp, UnsupportedModelError
from ..relax.functions import GELU, Mish, Power, SiLU, Softplus, Softsign, Square
from ..relax.pooling import MaxPool2d
from .activations import onnx_relaxation
from .layers import layer_norm_graph

ACTIVATION_OPS = (
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "Gelu", "Mish", "Elu", "Selu", "Celu",
    "Softplus", "HardSigmoid", "HardSwish", "Softsign", "Abs", "Erf",
)  # fmt: skip
F64 = torch.float64


class MoreOps:
    """Handlers ``_<optype>`` returning an op, ``(op, inputs)`` or a list of ops (a chain)."""

    def _activation(self, node, attrs, ins, where):
        def const(i: int):
            return self._const(ins[i], where) if len(ins) > i and ins[i] else None

        relaxation = onnx_relaxation(node.op_type, attrs, const)
        return None if relaxation is None else Activation(node.name, node.op_type, relaxation)

    # -- exporters' activation patterns ---------------------------------------------------
    def _producer(self, name: str, op_type: str):
        node = self.producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def _is_const(self, name: str, value: float) -> bool:
        if name not in self.consts:
            return False
        v = np.asarray(self.consts[name], dtype=np.float64).reshape(-1)
        return v.size == 1 and abs(float(v[0]) - value) <= 1e-6 * max(1.0, abs(value))

    def _pattern(self, node, ins):
        """(activation, input, scale) when Mul/Div of two computed tensors is an activation."""
        a, c = ins
        for x, y in ((a, c), (c, a)):
            if (s := self._producer(y, "Sigmoid")) and s.input[0] == x:
                return SiLU(), x, 1.0
            if (t := self._producer(y, "Tanh")) and (sp := self._producer(t.input[0], "Softplus")):
                if sp.input[0] == x:
                    return Mish(), x, 1.0
            if (add := self._producer(y, "Add")) and node.op_type == "Mul":
                erf_in, one = add.input
                if not self._is_const(one, 1.0):
                    erf_in, one = one, erf_in
                erf = self._producer(erf_in, "Erf")
                if erf and self._is_const(one, 1.0):
                    div = self._producer(erf.input[0], "Div")
                    mul = self._producer(erf.input[0], "Mul")
                    if (div and div.input[0] == x and self._is_const(div.input[1], math.sqrt(2))) or (
                        mul and x in mul.input and any(self._is_const(i, 1 / math.sqrt(2)) for i in mul.input)
                    ):
                        return GELU(), x, 2.0
        if node.op_type == "Div" and (add := self._producer(c, "Add")):
            abs_in = [i for i in add.input if self._producer(i, "Abs")]
            other = [i for i in add.input if i not in abs_in]
            if abs_in and other and self._is_const(other[0], 1.0) and self.producers[abs_in[0]].input[0] == a:
                return Softsign(), a, 1.0
        return None

    def _computed_product(self, node, ins, where):
        found = self._pattern(node, ins)
        if found is None and node.op_type == "Mul":
            return self._product(node, ins, where)
        if found is None and (sqrt := self._producer(ins[1], "Sqrt")):  # x / sqrt(v): LayerNorm
            rsqrt = Activation(f"{node.name}.rsqrt", "Sqrt", Power(-0.5))
            out = node.output[0]
            return [(rsqrt, [sqrt.input[0]]), self._product(node, [ins[0], f"{out}#0"], where)]
        if found is None:
            raise UnsupportedModelError(
                f"{where}: division by a computed tensor is supported only as x / Sqrt(v) (LayerNorm) "
                "and in the activation patterns x / (|x| + 1)"
            )
        act, x, scale = found
        op = Activation(node.name, type(act).__name__, act)
        if scale == 1.0:
            return op, [x]
        return [(op, [x]), ScaleShiftOp(f"{node.name}.scale", "Mul", torch.tensor(scale, dtype=F64), None)]

    def _product(self, node, ins, where):
        """``x * y`` of computed tensors (the one with the result's shape first)."""
        a, c = ins
        sa, sc = self._shape_of(a), self._shape_of(c)
        out = tuple(np.broadcast_shapes(sa, sc))
        if sa == out:
            return ProductOp(node.name, "Mul"), [a, c]
        if sc == out:
            return ProductOp(node.name, "Mul"), [c, a]
        raise UnsupportedModelError(f"{where}: a product where neither factor has the result's shape {out}")

    def _shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self.shapes[name]) if name in self.shapes else ()

    def _centre(self, node, ins, where):
        """``x - ReduceMean(x, axes, keepdims=1)``: LayerNorm's centring (exact, one op)."""
        a, c = ins
        mean = self._producer(c, "ReduceMean")
        if mean is None or mean.input[0] != a:
            return None
        from onnx import helper

        attrs = {k.name: helper.get_attribute_value(k) for k in mean.attribute}
        axes = self._per_sample(self._axes(attrs, list(mean.input), where), len(self.shapes[a]), where)
        return CenterOp(node.name, "Sub", tuple(axes)), [a]

    def _pow(self, node, attrs, ins, where):
        e = self._const(ins[1], where).reshape(-1)
        if e.numel() != 1 or float(e[0]) not in (2.0, 0.5, -0.5):
            raise UnsupportedModelError(f"{where}: Pow is supported with exponents 2, 0.5 and -0.5")
        k = float(e[0])
        return Activation(node.name, "Pow", Square() if k == 2.0 else Power(k))

    def _sqrt(self, node, attrs, ins, where):
        return Activation(node.name, "Sqrt", Power(0.5))

    def _layernormalization(self, node, attrs, ins, where):
        shape = self.shapes[ins[0]]
        axis = attrs.get("axis", -1) % len(shape)
        if axis == 0:
            raise UnsupportedModelError(f"{where}: LayerNormalization over the batch axis")
        weight = self._const(ins[1], where) if len(ins) > 1 and ins[1] else None
        bias = self._const(ins[2], where) if len(ins) > 2 and ins[2] else None
        steps = layer_norm_graph(
            node.name, len(shape) - axis, weight, bias, attrs.get("epsilon", 1e-5), F64, "cpu"
        )
        out = node.output[0]
        names = [ins[0]] + [f"{out}#{k}" for k in range(len(steps))]
        return [(op, [names[j + 1] for j in inputs]) for op, inputs in steps]

    # -- layout and reductions -----------------------------------------------------------
    def _axes(self, attrs, ins, where) -> list[int]:
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1]:
            axes = [int(v) for v in np.asarray(self.consts[ins[1]]).reshape(-1)]
        if axes is None:
            raise UnsupportedModelError(f"{where}: the axes must be given")
        return list(axes)

    def _per_sample(self, axes: list[int], ndim: int, where: str) -> list[int]:
        out = sorted(a % ndim for a in axes)
        if 0 in out:
            raise UnsupportedModelError(f"{where} works along the batch axis")
        return [a - 1 for a in out]

    def _unsqueeze(self, node, attrs, ins, where):
        shape = list(self.shapes[ins[0]])
        axes = self._axes(attrs, ins, where)
        for a in sorted(a % (len(shape) + len(axes)) for a in axes):
            shape.insert(a, 1)
        if shape[0] != 1:
            raise UnsupportedModelError(f"{where} adds an axis before the batch axis")
        return ReshapeOp(node.name, "Unsqueeze", tuple(shape[1:]))

    def _squeeze(self, node, attrs, ins, where):
        shape = list(self.shapes[ins[0]])
        axes = (
            self._per_sample(self._axes(attrs, ins, where), len(shape), where)
            if attrs.get("axes") is not None or (len(ins) > 1 and ins[1])
            else [k - 1 for k in range(1, len(shape)) if shape[k] == 1]
        )
        kept = [s for k, s in enumerate(shape[1:]) if k not in axes]
        return ReshapeOp(node.name, "Squeeze", tuple(kept))

    def _reducemean(self, node, attrs, ins, where):
        if not attrs.get("axes") and not (len(ins) > 1 and ins[1]):
            raise UnsupportedModelError(f"{where}: ReduceMean over all axes includes the batch axis")
        axes = self._per_sample(self._axes(attrs, ins, where), len(self.shapes[ins[0]]), where)
        return MeanOp(node.name, "ReduceMean", tuple(axes), bool(attrs.get("keepdims", 1)))

    def _reducemax(self, node, attrs, ins, where):
        shape = self.shapes[ins[0]]
        axes = self._per_sample(self._axes(attrs, ins, where), len(shape), where)
        if len(shape) != 4 or axes != [1, 2]:
            raise UnsupportedModelError(
                f"{where}: ReduceMax only over the two spatial axes (global max pooling)"
            )
        pool = self._globalmaxpool(node, attrs, ins, where)
        if attrs.get("keepdims", 1):
            return pool
        return [pool, ReshapeOp(f"{node.name}.squeeze", "ReduceMax", (shape[1],))]

    def _greater(self, node, attrs, ins, where):
        """Only as the condition of Softplus's threshold switch (matched in ``_where``)."""
        if ins[1] not in self.consts:
            raise UnsupportedModelError(f"{where}: Greater is supported only against a constant")
        return "defer"

    def _where(self, node, attrs, ins, where):
        """``Where(x > t, x, Softplus(x))``: PyTorch's Softplus with threshold t (beta 1)."""
        cond, a, c = ins
        greater, soft = self._producer(cond, "Greater"), self._producer(c, "Softplus")
        if greater and soft and greater.input[0] == a and soft.input[0] == a:
            threshold = float(np.asarray(self.consts[greater.input[1]]).reshape(-1)[0])
            return Activation(node.name, "Softplus", Softplus(1.0, threshold)), [a]
        raise UnsupportedModelError(f"{where}: Where is supported only as Softplus's threshold switch")

    def _globalmaxpool(self, node, attrs, ins, where):
        _, _, h, w = self.shapes[ins[0]]
        return Activation(node.name, "GlobalMaxPool", MaxPool2d((h, w), (h, w), (0, 0)))

    def _softmax(self, node, attrs, ins, where):
        shape = self.shapes[ins[0]]
        if len(shape) != 2 or attrs.get("axis", -1) not in (1, -1):
            raise UnsupportedModelError(f"{where}: a Softmax is supported only over the output's classes")
        self.b.transform(node.output[0], "softmax" if node.op_type == "Softmax" else "log_softmax", ins[0])
        self.shapes[node.output[0]] = shape
        return "defer"

    _logsoftmax = _softmax

    # -- 1-D convolution and pooling as their 2-D forms on (C, 1, L) ------------------------
    def _conv1d(self, node, attrs, ins, where):
        w = self._const(ins[1], where)
        bias = self._const(ins[2], where) if len(ins) > 2 and ins[2] else None
        pads = list(attrs.get("pads", [0, 0]))
        if pads[0] != pads[1] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UnsupportedModelError(f"{where}: asymmetric or automatic pads {pads}")
        (s,), (d,) = attrs.get("strides", [1]), attrs.get("dilations", [1])
        conv = ConvOp(
            node.name, "Conv", w.unsqueeze(2), bias, (1, s), (0, pads[0]), (1, d), attrs.get("group", 1)
        )
        return self._as_2d(node, conv)

    def _pool1d(self, node, attrs, ins, where):
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1])):
            raise UnsupportedModelError(f"{where}: ceil_mode or dilations are not supported")
        (k,), (s,) = attrs["kernel_shape"], attrs.get("strides", [1])
        pads = list(attrs.get("pads", [0, 0]))
        if pads[0] != pads[1]:
            raise UnsupportedModelError(f"{where}: asymmetric pads {pads}")
        if node.op_type == "MaxPool":
            op = Activation(node.name, "MaxPool", MaxPool2d((1, k), (1, s), (0, pads[0])))
        else:
            if pads[0] and not attrs.get("count_include_pad", 0):
                raise UnsupportedModelError(
                    f"{where}: padding without count_include_pad is not a fixed average"
                )
            c = self.shapes[ins[0]][1]
            weight = torch.full((c, 1, 1, k), 1.0 / k, dtype=F64)
            op = ConvOp(node.name, "AveragePool", weight, None, (1, s), (0, pads[0]), (1, 1), c)
        return self._as_2d(node, op)

    def _as_2d(self, node, op):
        return [
            UnsqueezeOp(f"{node.name}.as2d", node.op_type, 1),
            op,
            SqueezeOp(f"{node.name}.as1d", node.op_type, 1),
        ]


for _name in ACTIVATION_OPS:
    setattr(MoreOps, f"_{_name.lower()}", MoreOps._activation)

__all__ = ["ACTIVATION_OPS", "MoreOps"]
