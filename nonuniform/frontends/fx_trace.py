"""PyTorch front end: any ``nn.Module`` traced by ``torch.fx`` into the engine's graph of ops.

Supported (as modules, functions or tensor methods): Linear, Conv2d, BatchNorm1d/2d (eval),
ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (whole-number ratios),
Flatten/flatten/view/reshape, torch.cat, + and - of two computed tensors (residual blocks), +, -,
*, / by constants, Dropout, Identity, contiguous, and :class:`~nonuniform.Normalize`. Anything
else fails before any bound is computed, naming the node, its target and its position.

Shapes come from one forward pass on an example batch (``ShapeProp``); a reshape keeps the batch
axis and takes its per-sample shape from that pass.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..ir.graph_model import GraphBuilder
from ..ir.graph_ops import AddOp, ConcatOp, ReshapeOp, ScaleShiftOp
from ..ir.network import Activation, Network, UnsupportedModelError
from ..modules import Normalize
from ..relax.activations import PiecewiseLinear, Sigmoid, Tanh
from .layers import _convert, global_avg_pool

SUPPORTED_FX = (
    "Linear, Conv2d, BatchNorm (eval), ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, "
    "AdaptiveAvgPool2d, Flatten/view/reshape, torch.cat, residual +/-, +-*/ by constants, Dropout, "
    "Identity, nonuniform.Normalize"
)
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div"}
_RESHAPE = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_IDENTITY = {F.dropout, "contiguous", "clone", "detach"}
_ACTS = {
    F.relu: PiecewiseLinear,
    torch.relu: PiecewiseLinear,
    "relu": PiecewiseLinear,
    torch.sigmoid: Sigmoid,
    F.sigmoid: Sigmoid,
    "sigmoid": Sigmoid,
    torch.tanh: Tanh,
    F.tanh: Tanh,
    "tanh": Tanh,
}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def trace_network(model: nn.Module, input_shape: tuple[int, ...], dtype, device) -> Network:
    """The engine's graph for ``model`` at ``input_shape`` (raises UnsupportedModelError)."""
    return Network.from_ops(trace_ops(model, input_shape), input_shape, dtype, device)


def trace_ops(model: nn.Module, input_shape: tuple[int, ...]) -> list:
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
            return b.finish(out.name)
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


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _const(gm: fx.GraphModule, a) -> Tensor | float | None:
    """A constant argument (number or get_attr tensor), else None."""
    if isinstance(a, (int, float)):
        return float(a)
    if isinstance(a, fx.Node) and a.op == "get_attr":
        t = gm
        for part in str(a.target).split("."):
            t = getattr(t, part)
        return t.detach()
    return None


def _convert_node(gm: fx.GraphModule, b: GraphBuilder, node: fx.Node, pos: int, n: int) -> None:
    where = _where(node, pos, n)
    name = node.name
    tensors: list[fx.Node] = []
    fx.node.map_arg(node.args, lambda a: tensors.append(a) if b.has(a.name) else None)
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        src = node.args[0].name
        if isinstance(m, nn.AdaptiveAvgPool2d):
            b.add(_adaptive(str(node.target), _shape(node.args[0]), _shape(node), where), [src], name)
        else:
            try:
                op = _convert(str(node.target), m, torch.float64, "cpu")
            except UnsupportedModelError as e:
                raise UnsupportedModelError(f"{where}: {e}") from None
            if op is None:
                b.alias(name, src)
            else:
                b.add(op, [src], name)
        return
    t = node.target
    if not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
        return  # shape arithmetic (x.size(0), ...): only used as reshape arguments
    if node.op not in ("call_function", "call_method") or not tensors:
        raise UnsupportedModelError(f"{where} is not supported. Supported: {SUPPORTED_FX}")
    x = tensors[0].name
    if t in _IDENTITY:
        b.alias(name, x)
    elif t in _ACTS:
        b.add(Activation(name, str(getattr(t, "__name__", t)), _ACTS[t]()), [x], name)
    elif t in (F.leaky_relu, "leaky_relu"):
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        b.add(Activation(name, "leaky_relu", PiecewiseLinear(slope)), [x], name)
    elif t in _RESHAPE:
        if _shape(node)[0] != _shape(tensors[0])[0]:
            raise UnsupportedModelError(f"{where} merges the batch axis (shape {_shape(node)})")
        b.add(ReshapeOp(name, "reshape", _shape(node)[1:]), [x], name)
    elif t in (torch.cat, "cat"):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        parts = [a.name for a in node.args[0]]
        b.add(ConcatOp(name, "cat", dim if dim >= 0 else dim + len(_shape(node))), parts, name)
    elif t in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d):
        raise UnsupportedModelError(f"{where}: use the nn.MaxPool2d / nn.AvgPool2d modules instead")
    elif t in _ADD | _SUB | _MUL | _DIV:
        _arith(gm, b, node, t, where)
    else:
        raise UnsupportedModelError(f"{where} is not supported. Supported: {SUPPORTED_FX}")


def _arith(gm: fx.GraphModule, b: GraphBuilder, node: fx.Node, t, where: str) -> None:
    a0, a1 = node.args[0], node.args[1]
    computed = [isinstance(a, fx.Node) and b.has(a.name) for a in (a0, a1)]
    shape = _shape(node)[1:]
    name = node.name
    if all(computed):
        if t in _MUL | _DIV:
            raise UnsupportedModelError(f"{where}: the product of two computed tensors is not supported")
        if _shape(a0) != _shape(a1):
            raise UnsupportedModelError(f"{where}: adds tensors of shapes {_shape(a0)} and {_shape(a1)}")
        b.add(
            AddOp(name, "add" if t in _ADD else "sub", (1.0, 1.0 if t in _ADD else -1.0)),
            [a0.name, a1.name],
            name,
        )
        return
    x, c, first = (a0, _const(gm, a1), True) if computed[0] else (a1, _const(gm, a0), False)
    if c is None:
        raise UnsupportedModelError(f"{where}: an operand is neither computed nor a constant")
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() > len(shape) or (c.dim() == len(shape) + 1 and c.shape[0] != 1):
        raise UnsupportedModelError(
            f"{where}: a constant of shape {tuple(c.shape)} broadcasts over the batch"
        )
    c = c.reshape(c.shape[1:]) if c.dim() == len(shape) + 1 else c
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


def _adaptive(name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], where: str):
    (c, h, w), (ho, wo) = in_shape[1:], out_shape[2:]
    if h % ho or w % wo:
        raise UnsupportedModelError(
            f"{where}: AdaptiveAvgPool2d from {h}x{w} to {ho}x{wo} is not a fixed-size average"
        )
    return global_avg_pool(name, "AdaptiveAvgPool2d", c, (h // ho, w // wo), torch.float64, "cpu")
