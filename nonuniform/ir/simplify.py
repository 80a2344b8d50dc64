"""Exact rewrites of a shaped network that make every bound pass cheaper.

ONNX exporters often write a dense layer as ``MatMul`` then ``Add`` (and a scaling as ``Mul``):
every ACAS Xu network of VNN-COMP is six ``MatMul -> Add -> Relu`` blocks. Kept apart, each
backward pass visits two affine ops per layer, and the ``Add``'s bias term is an elementwise
product and a sum over the whole coefficient tensor instead of one matrix-vector product: on ACAS
Xu's ReLU splitting that was 5% of all time in ``bias_term`` alone (2026-12-03 profile).

:func:`fold_linear_scale_shift` merges ``Linear -> ScaleShift`` when the scale-shift alone reads
the linear op's output and its constants vary only along the last axis (what a bias can hold):
``(x W^T + b) * s + t = x (s W)^T + (s b + t)``. The constants are combined in float64 whatever
the network's dtype, so the folded layer is the original one up to one rounding of its weights.

:func:`fold_scale_shift_linear` merges an input normalisation into the dense layer after it:
``ScaleShift -> [flatten] -> Linear`` (ACAS Xu's ``Sub``/``Div`` of its five inputs, a
``Normalize`` before ``nn.Flatten`` and ``nn.Linear``) becomes ``[flatten] -> Linear`` with
``W' = W diag(s)``, ``b' = b + W t``. :func:`simplify` applies both.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from .graph_ops import ReshapeOp, ScaleShiftOp
from .ops import LinearOp, Op


def simplify(ops: list[Op]) -> list[Op]:
    """Every exact rewrite of this module, in order (the ops given are not modified)."""
    return fold_scale_shift_linear(fold_linear_scale_shift(ops))


def _readers(ops: list[Op]) -> dict[int, list[int]]:
    readers: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        for k in op.inputs:
            readers.setdefault(k, []).append(i)
    return readers


def fold_linear_scale_shift(ops: list[Op]) -> list[Op]:
    """``ops`` (shaped: ``in_shape``/``out_shape`` set) with every foldable ``Linear -> ScaleShift``
    pair replaced by one :class:`~nonuniform.ir.ops.LinearOp` at the scale-shift's place (so the
    output stays the last op). The ops given are not modified."""
    readers = _readers(ops)
    replace: dict[int, Op] = {}  # scale-shift index -> the folded op (reading the linear's inputs)
    alias: dict[int, int] = {}  # linear op -> its input (nothing reads it any more)
    for i, op in enumerate(ops):
        if not isinstance(op, ScaleShiftOp) or len(op.inputs) != 1 or op.inputs[0] < 0:
            continue
        k = op.inputs[0]
        lin = ops[k]
        if isinstance(lin, LinearOp) and readers.get(k) == [i] and k not in replace:
            folded = _fold(lin, op)
            if folded is not None:
                folded.inputs = list(lin.inputs)
                replace[i], alias[k] = folded, lin.inputs[0]
    return _rewire(ops, replace, alias)


def fold_scale_shift_linear(ops: list[Op]) -> list[Op]:
    """``ops`` with every ``ScaleShift -> [flatten] -> Linear`` chain (each op read only by the
    next, the scale-shift shape-preserving, the linear's input 1-D) written as ``[flatten] ->
    Linear`` with the constants in the linear's weights (repeatedly: ``Sub -> Div -> Flatten ->
    Gemm`` folds both). The ops given are not modified."""
    while True:
        folded = _fold_scale_shift_linear_once(ops)
        if folded is ops:
            return ops
        ops = folded


def _fold_scale_shift_linear_once(ops: list[Op]) -> list[Op]:
    readers = _readers(ops)
    replace: dict[int, Op] = {}  # linear op -> the folded op (same inputs)
    alias: dict[int, int] = {}  # scale-shift -> its input
    for i, ss in enumerate(ops):
        if not isinstance(ss, ScaleShiftOp) or len(ss.inputs) != 1 or ss.in_shape != ss.out_shape:
            continue
        nxt = readers.get(i, [])
        if len(nxt) == 1 and isinstance(ops[nxt[0]], ReshapeOp) and len(ops[nxt[0]].out_shape) == 1:
            nxt = readers.get(nxt[0], [])
        if len(nxt) != 1 or not isinstance(ops[nxt[0]], LinearOp) or nxt[0] in replace:
            continue
        lin = ops[nxt[0]]
        if len(lin.in_shape) != 1 or lin.weight.shape[1] != math.prod(ss.out_shape):
            continue
        folded = _fold_before(ss, lin)
        folded.inputs = list(lin.inputs)
        replace[nxt[0]], alias[i] = folded, ss.inputs[0]
    return _rewire(ops, replace, alias)


def _rewire(ops: list[Op], replace: dict[int, Op], alias: dict[int, int]) -> list[Op]:
    """``ops`` without the ops in ``alias`` (whose readers read ``alias[j]`` instead), with
    ``replace[i]`` at place ``i``; inputs renumbered (every op is copied: the given ones stay)."""
    if not replace and not alias:
        return ops
    kept = [i for i in range(len(ops)) if i not in alias]
    new_index = {-1: -1} | {i: n for n, i in enumerate(kept)}

    def resolve(j: int) -> int:
        while j in alias:
            j = alias[j]
        return new_index[j]

    out: list[Op] = []
    for i in kept:
        op = replace[i] if i in replace else copy.copy(ops[i])
        op.inputs = [resolve(j) for j in op.inputs]
        out.append(op)
    return out


def _fold_before(ss: ScaleShiftOp, lin: LinearOp) -> LinearOp:
    """The linear op computing ``lin(flatten(ss(x)))``: ``x (W diag(s))^T + (b + W t)``."""
    dt, features = lin.weight.dtype, lin.weight.shape[1]
    weight = lin.weight.to(torch.float64)
    bias = lin.bias.to(torch.float64) if lin.bias is not None else torch.zeros_like(weight[:, 0])
    if ss.shift is not None:
        shift = ss.shift.to(torch.float64).expand(ss.out_shape).reshape(features)
        bias = bias + weight @ shift
    if ss.scale is not None:
        weight = weight * ss.scale.to(torch.float64).expand(ss.out_shape).reshape(1, features)
    op = LinearOp(f"{ss.name}+{lin.name}", f"{ss.kind}+{lin.kind}", weight.to(dt), bias.to(dt))
    op.in_shape, op.out_shape = lin.in_shape, lin.out_shape
    return op


def _fold(lin: LinearOp, ss: ScaleShiftOp) -> LinearOp | None:
    """The single linear op computing ``ss(lin(x))``, or None when the constants vary along any
    axis but the last (or would broadcast the output to a larger shape)."""
    if tuple(ss.out_shape) != tuple(lin.out_shape):
        return None
    features = lin.weight.shape[0]
    scale = _per_feature(ss.scale, lin.out_shape, features)
    shift = _per_feature(ss.shift, lin.out_shape, features)
    if scale is None and ss.scale is not None or shift is None and ss.shift is not None:
        return None
    weight, dt = lin.weight.to(torch.float64), lin.weight.dtype
    bias = lin.bias.to(torch.float64) if lin.bias is not None else torch.zeros_like(weight[:, 0])
    if scale is not None:
        weight, bias = weight * scale[:, None], bias * scale
    if shift is not None:
        bias = bias + shift
    op = LinearOp(f"{lin.name}+{ss.name}", f"{lin.kind}+{ss.kind}", weight.to(dt), bias.to(dt))
    op.in_shape, op.out_shape = lin.in_shape, ss.out_shape
    return op


def _per_feature(t: Tensor | None, out_shape: tuple[int, ...], features: int) -> Tensor | None:
    """``t`` as ``(features,)`` float64 when it is constant along every axis of ``out_shape`` but
    the last; None otherwise (or when ``t`` is None)."""
    if t is None or t.dim() > len(out_shape) or any(d != 1 for d in t.shape[:-1]):
        return None
    if t.dim() > 0 and t.shape[-1] not in (1, features):
        return None
    return t.to(torch.float64).reshape(-1).expand(features).clone()


__all__ = ["fold_linear_scale_shift", "fold_scale_shift_linear", "simplify"]
