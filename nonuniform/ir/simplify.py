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
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .graph_ops import ScaleShiftOp
from .ops import LinearOp, Op


def fold_linear_scale_shift(ops: list[Op]) -> list[Op]:
    """``ops`` (shaped: ``in_shape``/``out_shape`` set) with every foldable ``Linear -> ScaleShift``
    pair replaced by one :class:`~nonuniform.ir.ops.LinearOp` at the scale-shift's place (so the
    output stays the last op). The ops given are not modified."""
    readers: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        for k in op.inputs:
            readers.setdefault(k, []).append(i)
    merged: dict[int, LinearOp] = {}  # scale-shift index -> the folded op
    for i, op in enumerate(ops):
        if not isinstance(op, ScaleShiftOp) or len(op.inputs) != 1 or op.inputs[0] < 0:
            continue
        k = op.inputs[0]
        lin = ops[k]
        if isinstance(lin, LinearOp) and readers.get(k) == [i] and k not in merged:
            folded = _fold(lin, op)
            if folded is not None:
                merged[i] = folded
    if not merged:
        return ops
    gone = {ops[i].inputs[0]: i for i in merged}  # linear op -> the scale-shift folded into it
    kept = [i for i in range(len(ops)) if i not in gone]
    new_index = {-1: -1} | {i: n for n, i in enumerate(kept)}
    new_index |= {k: new_index[i] for k, i in gone.items()}
    out: list[Op] = []
    for i in kept:
        if i in merged:
            op, inputs = merged[i], ops[ops[i].inputs[0]].inputs
        else:
            op, inputs = copy.copy(ops[i]), ops[i].inputs
        op.inputs = [new_index[j] for j in inputs]
        out.append(op)
    return out


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


__all__ = ["fold_linear_scale_shift"]
