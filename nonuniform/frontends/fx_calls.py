"""fx function and method calls that are layers or layout: the converters of :mod:`.fx_trace`.

Each converter reads the node's constant arguments (numbers, or tensors held by the module:
``get_attr`` nodes) and its shapes from ``ShapeProp``, adds ops to the builder and returns True;
a call it does not know returns False. Shapes exclude the batch axis; every layout change must
keep the batch axis first (else a one-line refusal naming the node).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from ..ir.graph_model import GraphBuilder
from ..ir.graph_ops import AdaptiveAvgPoolOp, ConcatOp, MeanOp, PermuteOp, ReshapeOp
from ..ir.ops import Activation, ConvOp, LinearOp, ProductOp, UnsupportedModelError
from ..relax.pooling import MaxPool2d
from .layers import layer_norm_graph

LAYOUT_CALLS = (
    "flatten/view/reshape/squeeze/unsqueeze (any spelling), permute/transpose, contiguous, "
    "torch.cat, torch.stack, mean over axes"
)
RESHAPES = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
    "flatten", "view", "reshape", "squeeze", "unsqueeze", "view_as", "reshape_as",
}  # fmt: skip
PERMUTES = {torch.permute, torch.transpose, "permute", "transpose", "t"}
SOFTMAX = {F.softmax: "softmax", torch.softmax: "softmax", "softmax": "softmax"}
SOFTMAX.update({F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax", "log_softmax": "log_softmax"})


def shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def constant(gm: fx.GraphModule, a) -> Tensor | float | None:
    """A constant argument (number or get_attr tensor), else None."""
    if isinstance(a, bool):
        return None
    if isinstance(a, (int, float)):
        return float(a)
    if isinstance(a, fx.Node) and a.op == "get_attr":
        t = gm
        for part in str(a.target).split("."):
            t = getattr(t, part)
        return t.detach()
    return None


def _arg(node: fx.Node, i: int, key: str, default=None):
    if key in node.kwargs:
        return node.kwargs[key]
    return node.args[i] if len(node.args) > i else default


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(t) for t in v)


def _per_sample_dim(d: int, ndim: int, where: str) -> int:
    """A dim of the batched tensor (ndim axes) as a per-sample axis; the batch axis is refused."""
    d = d + ndim if d < 0 else d
    if d == 0:
        raise UnsupportedModelError(f"{where} works along the batch axis")
    return d - 1


def add_graph(b: GraphBuilder, steps: list, src: str, name: str) -> None:
    """Add ``(op, inputs)`` steps (inputs: positions in ``steps``, -1 = ``src``); the last is
    the value ``name``."""
    names = []
    for k, (op, inputs) in enumerate(steps):
        out = name if k == len(steps) - 1 else f"{name}.{k}"
        b.add(op, [src if j < 0 else names[j] for j in inputs], out)
        names.append(out)


def product(b: GraphBuilder, node: fx.Node, a0: fx.Node, a1: fx.Node, where: str) -> None:
    """``a0 * a1`` of two computed tensors: the one with the output's shape comes first."""
    out = shape(node)
    if shape(a0) == out:
        x, y = a0, a1
    elif shape(a1) == out:
        x, y = a1, a0
    else:
        raise UnsupportedModelError(f"{where}: a product where neither factor has the result's shape {out}")
    if shape(y)[0] != out[0]:
        raise UnsupportedModelError(f"{where}: a product that broadcasts over the batch")
    b.add(ProductOp(node.name, "mul"), [x.name, y.name], node.name)


def convert_call(gm: fx.GraphModule, b: GraphBuilder, node: fx.Node, where: str) -> bool:
    """Add the ops of a layer or layout call; False if ``node`` is not one."""
    t, name = node.target, node.name
    x = node.args[0]
    if t in RESHAPES:
        if shape(node)[0] != shape(x)[0]:
            raise UnsupportedModelError(f"{where} merges the batch axis (shape {shape(node)})")
        b.add(ReshapeOp(name, "reshape", shape(node)[1:]), [x.name], name)
    elif t in PERMUTES:
        n = len(shape(x))
        if t in ("transpose", torch.transpose, "t"):
            d0, d1 = (0, 1) if t == "t" else (int(_arg(node, 1, "dim0")), int(_arg(node, 2, "dim1")))
            perm = list(range(n))
            perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
        else:
            rest = node.args[1:] or (node.kwargs.get("dims"),)
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            perm = [int(d) % n for d in dims]
        if perm[0] != 0:
            raise UnsupportedModelError(f"{where} moves the batch axis (permutation {perm})")
        b.add(PermuteOp(name, "permute", tuple(perm)), [x.name], name)
    elif t in ("mean", torch.mean):
        n = len(shape(x))
        dims = _arg(node, 1, "dim", None)
        if dims is None:
            raise UnsupportedModelError(f"{where} averages over the batch axis (give dim=...)")
        dims = [dims] if isinstance(dims, int) else list(dims)
        axes = tuple(_per_sample_dim(int(d), n, where) for d in dims)
        b.add(MeanOp(name, "mean", axes, bool(_arg(node, 2, "keepdim", False))), [x.name], name)
    elif t is torch.cat or t == "cat":
        parts = list(node.args[0])
        dim = _per_sample_dim(int(_arg(node, 1, "dim", 0)), len(shape(node)), where)
        b.add(ConcatOp(name, "cat", dim + 1), [p.name for p in parts], name)
    elif t is torch.stack:
        parts = list(node.args[0])
        dim = _per_sample_dim(int(_arg(node, 1, "dim", 0)), len(shape(node)), where)
        names = []
        for k, p in enumerate(parts):
            s = list(shape(p)[1:])
            s.insert(dim, 1)
            b.add(ReshapeOp(f"{name}.{k}", "stack", tuple(s)), [p.name], f"{name}.{k}")
            names.append(f"{name}.{k}")
        b.add(ConcatOp(name, "stack", dim + 1), names, name)
    elif t in SOFTMAX:
        dim = int(_arg(node, 1, "dim", -1))
        if len(shape(node)) != 2 or dim not in (1, -1):
            raise UnsupportedModelError(
                f"{where}: a softmax is supported only over the classes of the output"
            )
        b.transform(name, SOFTMAX[t], x.name)
    elif t is F.linear:
        w, bias = constant(gm, _arg(node, 1, "weight")), constant(gm, _arg(node, 2, "bias"))
        if not isinstance(w, Tensor):
            raise UnsupportedModelError(f"{where}: F.linear needs a weight held by the module")
        b.add(LinearOp(name, "linear", w.double(), None if bias is None else bias.double()), [x.name], name)
    elif t is F.conv2d:
        w, bias = constant(gm, _arg(node, 1, "weight")), constant(gm, _arg(node, 2, "bias"))
        if not isinstance(w, Tensor) or isinstance(_arg(node, 4, "padding", 0), str):
            raise UnsupportedModelError(
                f"{where}: F.conv2d needs a weight held by the module and numeric padding"
            )
        stride, padding = _pair(_arg(node, 3, "stride", 1)), _pair(_arg(node, 4, "padding", 0))
        dilation, groups = _pair(_arg(node, 5, "dilation", 1)), int(_arg(node, 6, "groups", 1))
        bias = None if bias is None else bias.double()
        op = ConvOp(name, "conv2d", w.double(), bias, stride, padding, dilation, groups)
        b.add(op, [x.name], name)
    elif t is F.layer_norm:
        ndim = len(tuple(_arg(node, 1, "normalized_shape")))
        w, bias = constant(gm, _arg(node, 2, "weight")), constant(gm, _arg(node, 3, "bias"))
        eps = float(_arg(node, 4, "eps", 1e-5))
        to64 = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        add_graph(
            b, layer_norm_graph(name, ndim, to64(w), to64(bias), eps, torch.float64, "cpu"), x.name, name
        )
    elif t in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        b.add(pool(t, node, where), [x.name], name)
    else:
        return False
    return True


def pool(t, node: fx.Node, where: str):
    """The op of a functional pooling call (also used for AdaptiveAvg/MaxPool2d modules)."""
    (c, h, w), (ho, wo) = shape(node.args[0])[1:], shape(node)[2:]
    if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        if (h % ho or w % wo) and t is F.adaptive_avg_pool2d:
            return AdaptiveAvgPoolOp(node.name, "adaptive_avg_pool2d", (ho, wo))
        if h % ho or w % wo:
            raise UnsupportedModelError(
                f"{where}: adaptive pooling from {h}x{w} to {ho}x{wo} has unequal windows"
            )
        k = s = (h // ho, w // wo)
        p = (0, 0)
        is_max = t is F.adaptive_max_pool2d
    else:
        k = _pair(_arg(node, 1, "kernel_size"))
        s = _pair(_arg(node, 2, "stride", None) or k)
        p = _pair(_arg(node, 3, "padding", 0))
        is_max = t is F.max_pool2d
        if _arg(node, 5 if is_max else 4, "ceil_mode", False):
            raise UnsupportedModelError(f"{where}: ceil_mode=True is not supported")
        if is_max and _pair(_arg(node, 4, "dilation", 1)) != (1, 1):
            raise UnsupportedModelError(f"{where}: dilated max pooling is not supported")
        if not is_max and (
            _arg(node, 6, "divisor_override") or (any(p) and not _arg(node, 5, "count_include_pad", True))
        ):
            raise UnsupportedModelError(
                f"{where}: avg_pool2d with divisor_override or count_include_pad=False"
            )
    if is_max:
        return Activation(node.name, "max_pool2d", MaxPool2d(k, s, p))
    weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), dtype=torch.float64)
    return ConvOp(node.name, "avg_pool2d", weight, None, s, p, (1, 1), c)


__all__ = ["LAYOUT_CALLS", "add_graph", "constant", "convert_call", "pool", "product", "shape"]
