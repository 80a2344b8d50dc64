"""ONNX front end: an ``.onnx`` file read with the ``onnx`` package into the engine's ops.

Supported operators: :data:`SUPPORTED_ONNX` (activations, exporters' activation patterns, 1-D
convolutions, layout and reductions in :mod:`.onnx_ops`). Add and Sub take two computed tensors or
a constant, Mul and Div a constant (or an activation pattern), Transpose must keep the batch
axis, a Softmax is stripped at the output (see ``ir.network.OUTPUT_TRANSFORMS``). Nodes whose
inputs are all constants (shape arithmetic such as Shape -> Gather -> Concat -> Reshape) are
evaluated once with onnx's reference evaluator. Anything else fails before any bound is
computed, naming the node, its operator and its position.

The first axis of the graph's input is the batch axis; the per-sample input shape comes from the
file (or ``input_shape`` when the file leaves it symbolic). ONNX files carry no input domain:
callers give it (``load_model(..., domain=)``, ``--domain``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..ir.graph_model import GraphBuilder, GraphModel
from ..ir.graph_ops import AddOp, ConcatOp, PadOp, PermuteOp, ReshapeOp, ScaleShiftOp
from ..ir.network import (
    Activation,
    ChannelAffineOp,
    ConvOp,
    LinearOp,
    UnsupportedModelError,
)
from ..relax.pooling import MaxPool2d
from .layers import global_avg_pool
from .onnx_ops import ACTIVATION_OPS, MoreOps

SUPPORTED_ONNX = (
    "Gemm, MatMul (by a constant), Add, Sub, Mul, Div, Conv (1-D, 2-D, grouped), BatchNormalization, "
    "MaxPool, AveragePool (1-D, 2-D), GlobalAveragePool, GlobalMaxPool, ReduceMean, Flatten, Reshape, "
    "Squeeze, Unsqueeze, Transpose, Concat, Pad, Constant, Identity, Dropout, Softmax/LogSoftmax "
    f"(output), {', '.join(ACTIVATION_OPS)}, and the SiLU/Mish/GELU/Softsign patterns"
)
F64 = torch.float64


def load_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None) -> GraphModel:
    """The model in ``path`` as a :class:`GraphModel` (raises UnsupportedModelError)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for damaged files
        raise UnsupportedModelError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    g = proto.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    recurrent = next((n for n in g.node if n.op_type in ("LSTM", "GRU", "RNN", "Loop", "Scan")), None)
    if recurrent is not None:
        raise UnsupportedModelError(
            f"{path}: node '{recurrent.name}' is a recurrent {recurrent.op_type}: recurrent ONNX models are "
            "not supported; in Python, wrap the PyTorch RNN/LSTM/GRU as "
            "nonuniform.SequenceClassifier(rnn, head)"
        )
    if not inputs:
        raise UnsupportedModelError(f"{path}: the graph has no input (an empty or constant graph)")
    if len(inputs) != 1:
        raise UnsupportedModelError(f"{path}: the graph has {len(inputs)} inputs; one is supported")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if input_shape is None:
        if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
            raise UnsupportedModelError(
                f"{path}: input '{inputs[0].name}' has shape {dims}; give the per-sample input shape "
                "(--input-shape C,H,W)"
            )
        input_shape = tuple(int(d) for d in dims[1:])
    elif len(dims) >= 2 and all(d for d in dims[1:]) and math.prod(dims[1:]) != math.prod(input_shape):
        raise UnsupportedModelError(
            f"{path}: input shape {tuple(input_shape)} does not fit the file's {dims}"
        )
    b = GraphBuilder()
    b.input(inputs[0].name)
    reader = _Reader(b, consts, {inputs[0].name: (1, *input_shape)}, str(path))
    for pos, node in enumerate(g.node):
        reader.convert(node, pos, len(g.node))
    if len(g.output) != 1:
        raise UnsupportedModelError(
            f"{path}: the graph has {len(g.output)} outputs; one (logits) is supported"
        )
    try:
        ops = b.finish(g.output[0].name)
    except (KeyError, ValueError) as e:
        raise UnsupportedModelError(f"{path}: the output does not depend on the input ({e})") from None
    return GraphModel(ops, tuple(input_shape), source=str(path), output_transform=b.output_transform)


class _Reader(MoreOps):
    def __init__(self, b: GraphBuilder, consts: dict, shapes: dict, path: str) -> None:
        self.b, self.consts, self.shapes, self.path = b, consts, shapes, path
        self.producers: dict = {}  # computed value -> the node that made it (for patterns)

    def convert(self, node, pos: int, n: int) -> None:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        where = f"{self.path}: node '{node.name or node.output[0]}' ({node.op_type}, {pos + 1} of {n})"
        ins = [i for i in node.input]
        out = node.output[0]
        op_type = node.op_type
        if op_type == "Constant":
            from onnx import numpy_helper

            self.consts[out] = (
                numpy_helper.to_array(attrs["value"])
                if "value" in attrs
                else np.array(attrs.get("value_float", attrs.get("value_int", 0)))
            )
            return
        computed = [i for i in ins if i and (self.b.has(i) or i in self.producers)]
        if op_type == "Shape" and computed:
            self.consts[out] = np.array(self.shapes[ins[0]], dtype=np.int64)
            return
        if not computed:
            self._fold(node, where)
            return
        x = computed[0]
        self.producers[out] = node
        try:
            handler = getattr(self, f"_{op_type.lower()}")
        except AttributeError:
            raise UnsupportedModelError(f"{where} is not supported. Supported: {SUPPORTED_ONNX}") from None
        try:
            op = handler(node, attrs, ins, where)
        except UnsupportedModelError:
            raise
        except (ValueError, KeyError, IndexError) as e:
            raise UnsupportedModelError(f"{where}: {e}") from None
        if op == "defer":  # recorded elsewhere (a final softmax) or matched by a consumer
            return
        if op is None:
            self.b.alias(out, x)
            self.shapes[out] = self.shapes[x]
            return
        chain = op if isinstance(op, list) else [op]
        for k, step in enumerate(chain):
            step, srcs = step if isinstance(step, tuple) else (step, [x])
            name = out if k == len(chain) - 1 else f"{out}#{k}"
            self._emit(step, srcs, name, where)
            x = name

    def _emit(self, op, srcs: list[str], out: str, where: str) -> None:
        """Add ``op`` reading ``srcs`` as value ``out``, recording its shapes (zeros forward)."""
        for s in srcs:
            if not self.b.has(s):
                kind = self.producers[s].op_type if s in self.producers else "?"
                raise UnsupportedModelError(
                    f"{where} reads '{s}' ({kind}), which is supported only as a pattern"
                )
        self.b.add(op, srcs, out)
        with torch.no_grad():
            zs = [torch.zeros(self.shapes[s], dtype=F64) for s in srcs]
            op.in_shape = tuple(zs[0].shape[1:])
            try:
                y = op.forward(*zs)
            except RuntimeError as e:
                raise UnsupportedModelError(f"{where}: {str(e).splitlines()[0]}") from None
        op.out_shape = tuple(y.shape[1:])
        self.shapes[out] = tuple(y.shape)

    def _fold(self, node, where: str) -> None:
        """Evaluate a node whose inputs are all constants (shape arithmetic) once."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        ins = [i for i in node.input if i]
        missing = [i for i in ins if i not in self.consts]
        if missing:
            raise UnsupportedModelError(f"{where}: input '{missing[0]}' is neither computed nor constant")
        graph = helper.make_graph(
            [node],
            "fold",
            [
                helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(self.consts[i].dtype), None)
                for i in ins
            ],
            [helper.make_tensor_value_info(o, 0, None) for o in node.output],
        )
        try:
            outs = ReferenceEvaluator(helper.make_model(graph)).run(None, {i: self.consts[i] for i in ins})
        except Exception as e:  # noqa: BLE001
            raise UnsupportedModelError(f"{where}: cannot evaluate on constants ({e})") from None
        for name, v in zip(node.output, outs):
            self.consts[name] = np.asarray(v)

    def _const(self, name: str, where: str) -> torch.Tensor:
        if name not in self.consts:
            raise UnsupportedModelError(f"{where}: '{name}' must be a constant (an initializer)")
        return torch.as_tensor(np.array(self.consts[name], dtype=np.float64))

    # -- operators -------------------------------------------------------------------------
    def _identity(self, node, attrs, ins, where):
        return None

    _dropout = _identity

    def _gemm(self, node, attrs, ins, where):
        if attrs.get("transA", 0):
            raise UnsupportedModelError(f"{where}: transA=1 is not supported")
        w = self._const(ins[1], where) * attrs.get("alpha", 1.0)
        w = w if attrs.get("transB", 0) else w.T
        bias = None
        if len(ins) > 2 and ins[2]:
            bias = (self._const(ins[2], where) * attrs.get("beta", 1.0)).expand(w.shape[0]).clone()
        return LinearOp(node.name, "Gemm", w.contiguous(), bias)

    def _matmul(self, node, attrs, ins, where):
        if self._const(ins[1], where).dim() != 2:
            raise UnsupportedModelError(
                f"{where}: MatMul by a constant of {self._const(ins[1], where).dim()} axes"
            )
        return LinearOp(node.name, "MatMul", self._const(ins[1], where).T.contiguous(), None)

    def _conv(self, node, attrs, ins, where):
        w = self._const(ins[1], where)
        if w.dim() == 3:
            return self._conv1d(node, attrs, ins, where)
        if w.dim() != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UnsupportedModelError(f"{where}: only 2-D convolutions with explicit pads are supported")
        bias = self._const(ins[2], where) if len(ins) > 2 and ins[2] else None
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise UnsupportedModelError(f"{where}: asymmetric pads {pads}")
        s, d = tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("dilations", [1, 1]))
        return ConvOp(node.name, "Conv", w, bias, s, tuple(pads[:2]), d, attrs.get("group", 1))

    def _batchnormalization(self, node, attrs, ins, where):
        scale, shift, mean, var = (self._const(i, where) for i in ins[1:5])
        k = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
        return ChannelAffineOp(node.name, "BatchNormalization", k, shift - mean * k)

    def _pool_args(self, attrs, where):
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise UnsupportedModelError(f"{where}: ceil_mode or dilations are not supported")
        k = tuple(attrs["kernel_shape"])
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(k) != 2 or pads[:2] != pads[2:]:
            raise UnsupportedModelError(f"{where}: only 2-D pooling with symmetric pads is supported")
        return k, tuple(attrs.get("strides", [1, 1])), tuple(pads[:2])

    def _maxpool(self, node, attrs, ins, where):
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedModelError(f"{where}: the Indices output is not supported")
        if len(attrs["kernel_shape"]) == 1:
            return self._pool1d(node, attrs, ins, where)
        return Activation(node.name, "MaxPool", MaxPool2d(*self._pool_args(attrs, where)))

    def _averagepool(self, node, attrs, ins, where):
        if len(attrs["kernel_shape"]) == 1:
            return self._pool1d(node, attrs, ins, where)
        k, s, p = self._pool_args(attrs, where)
        if any(p) and not attrs.get("count_include_pad", 0):
            raise UnsupportedModelError(f"{where}: padding without count_include_pad is not a fixed average")
        c = self.shapes[ins[0]][1]
        weight = torch.full((c, 1, *k), 1.0 / math.prod(k), dtype=F64)
        return ConvOp(node.name, "AveragePool", weight, None, s, p, (1, 1), c)

    def _globalaveragepool(self, node, attrs, ins, where):
        _, c, h, w = self.shapes[ins[0]]
        return global_avg_pool(node.name, "GlobalAveragePool", c, (h, w), F64, "cpu")

    def _flatten(self, node, attrs, ins, where):
        if attrs.get("axis", 1) != 1:
            raise UnsupportedModelError(f"{where}: Flatten with axis={attrs['axis']} merges the batch axis")
        return ReshapeOp(node.name, "Flatten", (math.prod(self.shapes[ins[0]][1:]),))

    def _reshape(self, node, attrs, ins, where):
        target = [int(t) for t in np.array(self.consts.get(ins[1], [])).reshape(-1)]
        if not target:
            raise UnsupportedModelError(f"{where}: the target shape must be a constant")
        shape = self.shapes[ins[0]]
        target = [shape[i] if t == 0 and not attrs.get("allowzero", 0) else t for i, t in enumerate(target)]
        out = np.empty(shape).reshape(target).shape
        if out[0] != 1:
            raise UnsupportedModelError(f"{where}: Reshape to {target} merges the batch axis")
        return ReshapeOp(node.name, "Reshape", tuple(out[1:]))

    def _transpose(self, node, attrs, ins, where):
        return PermuteOp(node.name, "Transpose", tuple(attrs["perm"]))

    def _concat(self, node, attrs, ins, where):
        if not all(self.b.has(i) for i in ins):
            raise UnsupportedModelError(f"{where}: Concat of computed tensors with constants")
        axis = attrs["axis"] % len(self.shapes[ins[0]])
        return ConcatOp(node.name, "Concat", axis), list(ins)

    def _pad(self, node, attrs, ins, where):
        if attrs.get("mode", b"constant") not in (b"constant", "constant"):
            raise UnsupportedModelError(f"{where}: only constant padding is supported")
        pads = attrs.get("pads")
        if pads is None:
            pads = [int(p) for p in self.consts[ins[1]]]
        value = attrs.get("value", 0.0)
        if len(ins) > 2 and ins[2]:
            value = float(np.array(self.consts[ins[2]]).reshape(-1)[0])
        nd = len(pads) // 2
        if pads[0] or pads[nd]:
            raise UnsupportedModelError(f"{where}: pads the batch axis")
        torch_pads = []
        for axis in range(nd - 1, 0, -1):
            torch_pads += [pads[axis], pads[axis + nd]]
        return PadOp(node.name, "Pad", tuple(torch_pads), value)

    def _binary(self, node, ins, where, kind: str):
        a, c = ins
        if self.b.has(a) and self.b.has(c):
            if kind in ("Mul", "Div"):
                return self._computed_product(node, ins, where)
            if (
                self.shapes[a] != self.shapes[c]
                and kind == "Sub"
                and (centred := self._centre(node, ins, where))
            ):
                return centred
            if self.shapes[a] != self.shapes[c]:
                raise UnsupportedModelError(
                    f"{where}: {kind} of shapes {self.shapes[a]} and {self.shapes[c]}"
                )
            return AddOp(node.name, kind, (1.0, 1.0 if kind == "Add" else -1.0)), [a, c]
        first = self.b.has(a)
        x, k = (a, self._const(c, where)) if first else (c, self._const(a, where))
        nd = len(self.shapes[x])
        if k.dim() == nd:
            if k.shape[0] != 1:
                raise UnsupportedModelError(f"{where}: a constant of shape {tuple(k.shape)} spans the batch")
            k = k[0]
        if kind == "Add":
            return ScaleShiftOp(node.name, kind, None, k), [x]
        if kind == "Sub":
            op = (
                ScaleShiftOp(node.name, kind, None, -k)
                if first
                else ScaleShiftOp(node.name, kind, -torch.ones(()), k)
            )
            return op, [x]
        if kind == "Mul":
            return ScaleShiftOp(node.name, kind, k, None), [x]
        if not first:
            raise UnsupportedModelError(f"{where}: division by a computed tensor is not supported")
        return ScaleShiftOp(node.name, kind, 1.0 / k, None), [x]

    def _add(self, node, attrs, ins, where):
        return self._binary(node, ins, where, "Add")

    def _sub(self, node, attrs, ins, where):
        return self._binary(node, ins, where, "Sub")

    def _mul(self, node, attrs, ins, where):
        return self._binary(node, ins, where, "Mul")

    def _div(self, node, attrs, ins, where):
        return self._binary(node, ins, where, "Div")


__all__ = ["load_onnx", "SUPPORTED_ONNX"]
