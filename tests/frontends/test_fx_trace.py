"""The fx front end on its own: what it emits for the code people write, and how it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nonuniform import Normalize, UnsupportedModelError
from nonuniform.frontends.fx_trace import trace_network, trace_ops
from nonuniform.ir.graph_ops import AddOp, ConcatOp, ReshapeOp
from nonuniform.ir.ops import Activation, ConvOp, LinearOp


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = h + self.b(h)  # residual sum of two computed tensors
        return self.head(torch.cat([h, x], dim=1))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.5], [0.25])
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(self.norm(x)))
        return self.fc(h.view(h.size(0), -1))


def kinds(ops) -> list[type]:
    return [type(op) for op in ops]


def test_residual_graph_has_its_add_and_concat_with_their_inputs():
    ops = trace_ops(Residual().eval(), (4,))
    k = kinds(ops)
    assert AddOp in k and ConcatOp in k and k.count(LinearOp) == 3 and k.count(Activation) == 1
    add = ops[k.index(AddOp)]
    assert len(add.inputs) == 2  # relu output and the second linear map
    x = torch.randn(5, 4, dtype=torch.float64)
    model = Residual().eval()
    net = trace_network(model, (4,), torch.float64, "cpu")
    assert torch.allclose(net.forward(x), model.double()(x))


def test_normalize_is_a_leaf_and_view_is_a_reshape():
    model = ConvNet().eval()
    ops = trace_ops(model, (1, 6, 6))
    k = kinds(ops)
    assert ConvOp in k and ReshapeOp in k and k.count(LinearOp) == 1
    net = trace_network(model, (1, 6, 6), torch.float64, "cpu")
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    assert torch.allclose(net.forward(x), model.double()(x))
    assert net.ops[-1].out_shape == (3,)


def test_a_bare_layer_is_traced_as_a_one_layer_model():
    ops = trace_ops(nn.Linear(3, 2).eval(), (3,))
    assert kinds(ops) == [LinearOp]


def test_data_dependent_control_flow_is_refused_with_a_way_out():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match="cannot be traced by torch.fx.*export the model to ONNX"):
        trace_ops(Branchy(), (3,))


def test_several_inputs_and_wrong_shapes_are_refused_before_any_work():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(UnsupportedModelError, match="TwoInputs fails on an input of shape \\(3,\\)"):
        trace_ops(TwoInputs(), (3,))
    with pytest.raises(UnsupportedModelError, match="fails on an input of shape \\(5,\\)"):
        trace_ops(nn.Sequential(nn.Linear(4, 2)), (5,))


def test_an_unsupported_call_names_the_node_and_its_position():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.cumsum(self.fc(x), 1)

    with pytest.raises(UnsupportedModelError) as e:
        trace_ops(Odd().eval(), (3,))
    msg = str(e.value)
    assert msg.startswith("node 'cumsum' (call_function cumsum, 3 of 4") and "\n" not in msg
