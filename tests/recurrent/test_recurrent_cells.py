"""The fused backward step through LSTM/GRU cells computes exactly the node-by-node bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nonuniform.recurrent.engine as recurrent
from nonuniform import SequenceClassifier
from nonuniform.engine.bounds import BoundedModel
from nonuniform.recurrent.alpha import initial_params, params_bound
from nonuniform.recurrent.graph import FUSED_MAX_HIDDEN
from tests.nets import random_boxes
from tests.recurrent.test_recurrent import SHAPE, _random_params, seq_model


def _bound_and_grad(bm: BoundedModel, lower, upper, method: str, params=None):
    lower = lower.clone().requires_grad_(True)
    spec = bm.default_spec(lower.detach(), upper)
    if params is not None:
        lb = params_bound(bm, spec, lower, upper, params)
    else:
        lb, _ = bm.bounds(lower, upper, spec, method)
    (grad,) = torch.autograd.grad(lb.sum(), lower)
    return lb.detach(), grad


@pytest.mark.parametrize(
    "kind,layers,bias",
    [
        ("lstm", 2, True),
        ("gru", 2, True),
        ("lstm", 1, False),
        ("gru", 1, False),
        ("bilstm", 1, True),
        ("bigru", 1, True),
    ],
)
def test_fused_cells_equal_the_node_by_node_walk(kind, layers, bias, monkeypatch):
    model = seq_model(kind, layers=layers, bias=bias, seed=21).double()
    lower, upper = random_boxes(SHAPE, batch=3, seed=22, max_radius=0.15, dtype=torch.float64)
    bm = BoundedModel(model, SHAPE, torch.float64)
    directions = 2 if kind.startswith("bi") else 1
    assert len(bm.net.cells) == layers * directions * SHAPE[0]

    calls = []
    fused_step = recurrent.cell_backward
    monkeypatch.setattr(recurrent, "cell_backward", lambda *a: calls.append(1) or fused_step(*a))
    params = _random_params(initial_params(bm.propagate(lower, upper)), seed=23)

    def run():
        out = [_bound_and_grad(bm, lower, upper, method) for method in ("crown", "fastlin")]
        return out + [_bound_and_grad(bm, lower, upper, "alpha-crown", params)]

    fused = run()
    assert calls, "the fused step was not used"
    bm.net.cells, used = {}, len(calls)
    walked = run()
    assert len(calls) == used
    for (lb_f, g_f), (lb_w, g_w) in zip(fused, walked):
        torch.testing.assert_close(lb_f, lb_w, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g_f, g_w, rtol=1e-8, atol=1e-10)


def test_simple_rnn_and_wide_cells_stay_node_by_node():
    """A simple RNN step is two nodes, and past FUSED_MAX_HIDDEN the fused step is no faster:
    both are walked node by node."""
    assert BoundedModel(seq_model("rnn-tanh", layers=2), SHAPE).net.cells == {}
    wide = SequenceClassifier(nn.LSTM(3, FUSED_MAX_HIDDEN + 1, batch_first=True))
    assert BoundedModel(wide, SHAPE).net.cells == {}


def test_a_cell_read_from_outside_is_not_fused():
    """The fused step sees only h_t and c_t: a cell whose gates another node reads is walked."""
    graph = BoundedModel(seq_model("lstm"), SHAPE).net
    cell = graph.cells[max(graph.cells)]
    assert graph._closed(cell)
    graph.nodes[cell.first].consumers.append(graph.output)  # the gates read after the cell
    assert not graph._closed(cell)
