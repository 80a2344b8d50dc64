"""PyTorch front end: any ``nn.Module`` traced by ``torch.fx`` into the engine's graph of ops.

Supported (as modules, functions or tensor methods): every layer the ``nn.Sequential`` reader
knows (:mod:`.layers`, activations from :mod:`.activations`), functional layers and layout
(:mod:`.fx_calls`: F.linear, F.conv2d, pooling, permute/transpose, reshapes, cat/stack, mean),
+ and - of two computed tensors (residual blocks), +, -, *, / by constants, a final softmax /
log_softmax (stripped for margins), and :class:`~nonuniform.Normalize`. Anything else fails
before any bound is computed, naming the node, its target and its position.

Shapes come from one forward pass on an example batch (``ShapeProp``); a reshape keeps the batch
axis and takes its per-sample shape from that pass.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..ir.graph_model import GraphBuilder
from ..ir.graph_ops import AddOp, ScaleShiftOp
from ..ir.network import Activation, Network, UnsupportedModelError
from ..ir.simplify import simplify
from ..modules import Normalize
from .activations import call_relaxation
from .fx_calls import LAYOUT_CALLS, add_graph, constant, convert_call, pool, product, shape
from .layers import convert_layer, layer_norm_graph

SUPPORTED_FX = (
    "the layers of nn.Sequential models (Linear, Conv1d/2d, BatchNorm, pooling, the activations of "
    "`nonuniform models --ops`) as modules or F. functions, AdaptiveAvg/MaxPool2d, softmax at the "
    f"output, {LAYOUT_CALLS}, residual +/-, +-*/ by constants, Dropout, Identity, nonuniform.Normalize"
)
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div"}
_IDENTITY = {F.dropout, "contiguous", "clone", "detach", "float"}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def trace_network(model: nn.Module, input_shape: tuple[int, ...], dtype, device) -> Network:
    """The engine's graph for ``model`` at ``input_shape`` (raises UnsupportedModelError)."""
    ops, transform = trace(model, input_shape)
    net = Network.from_ops(ops, input_shape, dtype, device, transform)
    net.ops = simplify(net.ops)
    return net


def trace_ops(model: nn.Module, input_shape: tuple[int, ...]) -> list:
    """The ops of ``model`` (its final softmax, if any, stripped: see :func:`trace`)."""
    return trace(model, input_shape)[0]


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list, str | None]:
    """``model``'s ops and the final softmax / log_softmax stripped from them (or None)."""
    if model.training:
        model.eval()
    if _Tracer().is_leaf_module(model, ""):
        # A bare layer (nn.Linear as the whole model): fx would trace its forward into functions
        # (F.linear); as the only child of a Sequential it is converted like any layer.
        model = nn.Sequential(model)
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable code
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot be traced by torch.fx ({first[:200]}): data-dependent "
            "control flow is not supported; export the model to ONNX instead"
        ) from None
    gm = fx.GraphModule(model, graph)
    p = next(model.parameters(), None)
    example = torch.zeros((2, *input_shape), dtype=p.dtype if p is not None else torch.float32)
    if p is not None:
        example = example.to(p.device)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on an input of shape {tuple(input_shape)}: {first[:200]}"
        ) from None
    b = GraphBuilder()
    nodes = list(gm.graph.nodes)
    for pos, node in enumerate(nodes):
        if node.op == "placeholder":
            if -1 in b.index.values():
                raise UnsupportedModelError(
                    f"node '{node.name}': models with several inputs are not supported"
                )
            b.input(node.name)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise UnsupportedModelError("the model must return one tensor of logits")
            try:
                ops = b.finish(out.name)
            except ValueError as e:
                raise UnsupportedModelError(str(e)) from None
            return ops, b.output_transform
        elif node.op == "get_attr":
            continue  # constants are read where they are used
        else:
            _convert_node(gm, b, node, pos, len(nodes))
    raise UnsupportedModelError("the traced graph has no output")


def _where(node: fx.Node, pos: int, n: int) -> str:
    target = (
        node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    )
    return f"node '{node.name}' ({node.op} {target}, {pos + 1} of {n} in the traced graph)"


def _convert_node(gm: fx.GraphModule, b: GraphBuilder, node: fx.Node, pos: int, n: int) -> None:
    where = _where(node, pos, n)
    name = node.name
    tensors: list[fx.Node] = []
    fx.node.map_arg(node.args, lambda a: tensors.append(a) if b.has(a.name) else None)
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        src = node.args[0].name
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            fn = F.adaptive_avg_pool2d if isinstance(m, nn.AdaptiveAvgPool2d) else F.adaptive_max_pool2d
            b.add(pool(fn, node, where), [src], name)
        elif isinstance(m, nn.LayerNorm):
            w = None if m.weight is None else m.weight.detach().double()
            bias = None if m.bias is None else m.bias.detach().double()
            steps = layer_norm_graph(
                str(node.target), len(m.normalized_shape), w, bias, m.eps, torch.float64, "cpu"
            )
            add_graph(b, steps, src, name)
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            if len(shape(node)) != 2 or m.dim not in (1, -1):
                raise UnsupportedModelError(
                    f"{where}: a softmax is supported only over the classes of the output"
                )
            b.transform(name, "softmax" if isinstance(m, nn.Softmax) else "log_softmax", src)
        else:
            try:
                ops = convert_layer(str(node.target), m, torch.float64, "cpu")
            except UnsupportedModelError as e:
                raise UnsupportedModelError(f"{where}: {e}") from None
            if not ops:
                b.alias(name, src)
            for k, op in enumerate(ops):
                out = name if k == len(ops) - 1 else f"{name}.{k}"
                b.add(op, [src], out)
                src = out
        return
    t = node.target
    if not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
        return  # shape arithmetic (x.size(0), ...): only used as reshape arguments
    if node.op not in ("call_function", "call_method") or not tensors:
        raise UnsupportedModelError(f"{where} is not supported. Supported: {SUPPORTED_FX}")
    x = tensors[0].name
    try:
        relaxation = call_relaxation(t, tuple(node.args), dict(node.kwargs))
    except (ValueError, TypeError) as e:
        raise UnsupportedModelError(f"{where}: {e}") from None
    if relaxation is not None:
        kind = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        b.add(Activation(name, kind, relaxation), [x], name)
    elif t in _IDENTITY:
        b.alias(name, x)
    elif t in _ADD | _SUB | _MUL | _DIV:
        _arith(gm, b, node, t, where)
    elif not convert_call(gm, b, node, where):
        raise UnsupportedModelError(f"{where} is not supported. Supported: {SUPPORTED_FX}")


def _arith(gm: fx.GraphModule, b: GraphBuilder, node: fx.Node, t, where: str) -> None:
    a0, a1 = node.args[0], node.args[1]
    computed = [isinstance(a, fx.Node) and b.has(a.name) for a in (a0, a1)]
    sample_shape = shape(node)[1:]
    name = node.name
    if all(computed):
        if t in _MUL:
            product(b, node, a0, a1, where)
            return
        if t in _DIV:
            raise UnsupportedModelError(f"{where}: division by a computed tensor is not supported")
        if shape(a0) != shape(a1):
            raise UnsupportedModelError(f"{where}: adds tensors of shapes {shape(a0)} and {shape(a1)}")
        b.add(
            AddOp(name, "add" if t in _ADD else "sub", (1.0, 1.0 if t in _ADD else -1.0)),
            [a0.name, a1.name],
            name,
        )
        return
    x, c, first = (a0, constant(gm, a1), True) if computed[0] else (a1, constant(gm, a0), False)
    if c is None:
        raise UnsupportedModelError(f"{where}: an operand is neither computed nor a constant")
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() > len(sample_shape) + 1 or (c.dim() == len(sample_shape) + 1 and c.shape[0] != 1):
        raise UnsupportedModelError(
            f"{where}: a constant of shape {tuple(c.shape)} broadcasts over the batch"
        )
    c = c.reshape(c.shape[1:]) if c.dim() == len(sample_shape) + 1 else c
    if t in _ADD:
        op = ScaleShiftOp(name, "add", None, c)
    elif t in _SUB:
        op = ScaleShiftOp(name, "sub", None, -c) if first else ScaleShiftOp(name, "rsub", -torch.ones(()), c)
    elif t in _MUL:
        op = ScaleShiftOp(name, "mul", c, None)
    elif first:
        op = ScaleShiftOp(name, "div", 1.0 / c, None)
    else:
        raise UnsupportedModelError(f"{where}: division by a computed tensor is not supported")
    b.add(op, [x.name], name)
