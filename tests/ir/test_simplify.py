"""Folding ``Linear -> ScaleShift`` (ONNX MatMul -> Add/Mul) into one linear op: exact, and only
where it is (the linear output read once, constants constant along all but the last axis)."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform.engine.bounds import BoundedModel
from nonuniform.ir.graph_model import GraphModel
from nonuniform.ir.graph_ops import AddOp, ReshapeOp, ScaleShiftOp
from nonuniform.ir.network import Activation, LinearOp, Network
from nonuniform.ir.simplify import fold_linear_scale_shift
from nonuniform.relax.activations import PiecewiseLinear

D = torch.float64


def _chain(seed: int = 0):
    """MatMul -> Mul/Add -> ReLU -> MatMul -> Add, as an ONNX exporter writes it, and the same
    network as an nn.Sequential with biases."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(6, 4, generator=g, dtype=D), torch.randn(3, 6, generator=g, dtype=D)
    s1 = torch.rand(6, generator=g, dtype=D) + 0.5
    t1, t2 = torch.randn(6, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D)
    ops = [
        LinearOp("mm1", "MatMul", w1, None),
        ScaleShiftOp("ss1", "Mul+Add", s1, t1),
        Activation("relu", "Relu", PiecewiseLinear()),
        LinearOp("mm2", "MatMul", w2, None),
        ScaleShiftOp("add2", "Add", None, t2),
    ]
    for i, op in enumerate(ops):
        op.inputs = [i - 1]
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(D)
    with torch.no_grad():
        seq[0].weight.copy_(w1 * s1[:, None]), seq[0].bias.copy_(t1)
        seq[2].weight.copy_(w2), seq[2].bias.copy_(t2)
    return ops, seq


def test_a_matmul_add_chain_folds_into_two_linear_ops_with_the_same_outputs_and_bounds():
    ops, seq = _chain()
    model = GraphModel(ops, (4,))
    bm = BoundedModel(model, (4,), dtype=D)
    assert [type(op).__name__ for op in bm.net.ops] == ["LinearOp", "Activation", "LinearOp"]
    assert [op.inputs for op in bm.net.ops] == [[-1], [0], [1]]
    assert [op.name for op in bm.net.ops] == ["mm1+ss1", "relu", "mm2+add2"]
    assert [op.inputs for op in ops] == [[-1], [0], [1], [2], [3]]  # the given ops are unchanged
    x = torch.randn(9, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    raw = Network.from_ops(ops, (4,), D, "cpu")
    torch.testing.assert_close(model(x), raw.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x), seq(x), rtol=0, atol=1e-12)
    lo, hi = x - 0.3, x + 0.3
    spec = torch.eye(3, dtype=D)[None].expand(9, -1, -1)
    ref = BoundedModel(seq, (4,), dtype=D)
    for method in ("ibp", "crown"):
        ours, theirs = bm.bounds(lo, hi, spec, method), ref.bounds(lo, hi, spec, method)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_linear_output_read_twice_or_shifted_along_tokens_is_left_alone():
    w = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(2))
    lin = LinearOp("mm", "MatMul", w, None)
    ss = ScaleShiftOp("add", "Add", None, torch.ones(5, dtype=D))
    add = AddOp("res", "Add", (1.0, 1.0))
    lin.inputs, ss.inputs, add.inputs = [-1], [0], [1, 0]  # the linear output feeds the sum too
    net = Network.from_ops([lin, ss, add], (4,), D, "cpu")
    assert fold_linear_scale_shift(net.ops) is net.ops
    # over tokens: a shift per token cannot be a bias, a shift per feature can
    for shift, folds in ((torch.randn(3, 1, dtype=D), False), (torch.randn(1, 5, dtype=D), True)):
        lin = LinearOp("mm", "MatMul", w, None)
        ss = ScaleShiftOp("add", "Add", None, shift)
        flat = ReshapeOp("flat", "Flatten", (15,))
        lin.inputs, ss.inputs, flat.inputs = [-1], [0], [1]
        net = Network.from_ops([lin, ss, flat], (3, 4), D, "cpu")
        folded = fold_linear_scale_shift(net.ops)
        assert (len(folded) == 2) == folds
        x = torch.randn(2, 3, 4, dtype=D)
        y = x
        for op in folded:
            y = op.forward(y)
        torch.testing.assert_close(y, net.forward(x), rtol=0, atol=1e-12)


def _normalised_chain(seed: int = 3):
    """Sub -> Div -> Flatten -> MatMul -> Add -> ReLU -> MatMul on a (1, 1, 5) input, as ACAS Xu's
    ONNX files write their input normalisation and first layer."""
    g = torch.Generator().manual_seed(seed)
    mean, rng = torch.randn(1, 1, 5, generator=g, dtype=D), torch.rand(1, 1, 5, generator=g, dtype=D) + 0.2
    w1, b1 = torch.randn(6, 5, generator=g, dtype=D), torch.randn(6, generator=g, dtype=D)
    w2 = torch.randn(3, 6, generator=g, dtype=D)
    return [
        ScaleShiftOp("sub", "Sub", None, -mean),
        ScaleShiftOp("div", "Div", 1.0 / rng, None),
        ReshapeOp("flat", "Flatten", (5,)),
        LinearOp("mm1", "MatMul", w1, None),
        ScaleShiftOp("add1", "Add", None, b1),
        Activation("relu", "Relu", PiecewiseLinear()),
        LinearOp("mm2", "MatMul", w2, None),
    ]


def test_an_input_normalisation_folds_into_the_first_linear_op(monkeypatch):
    import nonuniform.ir.graph_model as graph_model

    ops = _normalised_chain()
    for i, op in enumerate(ops):
        op.inputs = [i - 1]
    model = GraphModel(ops, (1, 1, 5))
    bm = BoundedModel(model, (1, 1, 5), dtype=D)
    assert [type(op).__name__ for op in bm.net.ops] == ["ReshapeOp", "LinearOp", "Activation", "LinearOp"]
    assert [op.inputs for op in bm.net.ops] == [[-1], [0], [1], [2]]
    assert bm.net.ops[1].name == "sub+div+mm1+add1"
    monkeypatch.setattr(graph_model, "simplify", lambda ops: ops)
    raw = BoundedModel(GraphModel(ops, (1, 1, 5)), (1, 1, 5), dtype=D)
    assert len(raw.net.ops) == 7
    x = torch.randn(9, 1, 1, 5, dtype=D, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(bm.net.forward(x), raw.net.forward(x), rtol=0, atol=1e-12)
    lo, hi = x - 0.3, x + 0.3
    spec = torch.eye(3, dtype=D)[None].expand(9, -1, -1)
    for method in ("ibp", "crown"):
        for a, b in zip(bm.bounds(lo, hi, spec, method), raw.bounds(lo, hi, spec, method)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_normalisation_read_twice_or_broadcast_or_before_a_token_linear_is_left_alone():
    from nonuniform.ir.simplify import fold_scale_shift_linear

    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 6, generator=g, dtype=D)
    # read twice: the normalised input also feeds a sum
    ss, flat = ScaleShiftOp("n", "Mul", torch.rand(6, dtype=D), None), ReshapeOp("f", "Flatten", (6,))
    lin, lin2 = LinearOp("mm", "MatMul", w, None), LinearOp("mm2", "MatMul", w.flip(0), None)
    add = AddOp("res", "Add", (1.0, 1.0))
    ss.inputs, flat.inputs, lin.inputs, lin2.inputs, add.inputs = [-1], [0], [1], [0], [2, 3]
    net = Network.from_ops([ss, flat, lin, lin2, add], (6,), D, "cpu")
    assert fold_scale_shift_linear(net.ops) is net.ops
    # a constant that broadcasts the input to a larger shape, and a linear over tokens
    for shape, scale, lin_in in (
        ((1, 6), torch.rand(3, 6, dtype=D), (3, 6)),
        ((2, 3), torch.rand(2, 3, dtype=D), (2, 3)),
    ):
        ss = ScaleShiftOp("n", "Mul", scale, None)
        lin = LinearOp("mm", "MatMul", torch.randn(4, lin_in[-1], generator=g, dtype=D), None)
        out = ReshapeOp("f", "Flatten", (lin_in[0] * 4,))
        ss.inputs, lin.inputs, out.inputs = [-1], [0], [1]
        net = Network.from_ops([ss, lin, out], shape, D, "cpu")
        assert fold_scale_shift_linear(net.ops) is net.ops
