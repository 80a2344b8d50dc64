"""Recurrent classifiers: the unrolled graph matches PyTorch, and every bound is sound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform import SequenceClassifier, UnsupportedModelError, certify_boxes, compute_bounds
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.certify.settings import CertifyConfig
from nonuniform.engine.bounds import BoundedModel
from tests.nets import assert_bounds_sound, random_boxes

SHAPE = (5, 3)  # 5 time steps of 3 features


def seq_model(kind: str, layers: int = 1, batch_first: bool = True, bias: bool = True, seed: int = 0):
    """``kind``: rnn-tanh, rnn-relu, lstm, gru, or any of them prefixed 'bi' (bidirectional)."""
    torch.manual_seed(seed)
    bi = kind.startswith("bi")
    kind = kind.removeprefix("bi")
    opts = {"batch_first": batch_first, "bias": bias, "bidirectional": bi}
    if kind in ("rnn-tanh", "rnn-relu"):
        rnn = nn.RNN(3, 8, layers, nonlinearity=kind[4:], **opts)
    else:
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](3, 8, layers, **opts)
    with torch.no_grad():  # larger weights than PyTorch's init: more unstable/saturated neurons
        for p in rnn.parameters():
            p.mul_(2.5)
    head = nn.Sequential(nn.Linear(8 * (1 + bi), 12), nn.ReLU(), nn.Linear(12, 4))
    return SequenceClassifier(rnn, head).eval()


KINDS = ["rnn-tanh", "rnn-relu", "lstm", "gru"]
BIDIRECTIONAL = ["birnn-tanh", "bilstm", "bigru"]


@pytest.mark.parametrize("kind", KINDS + BIDIRECTIONAL)
@pytest.mark.parametrize("layers,batch_first,bias", [(1, True, True), (2, False, True), (1, True, False)])
def test_unrolled_graph_matches_pytorch(kind, layers, batch_first, bias):
    model = seq_model(kind, layers, batch_first, bias)
    x = torch.rand(7, *SHAPE)
    bm = BoundedModel(model, SHAPE, torch.float64)
    assert torch.allclose(bm.net.forward(x.double()), model.double()(x.double()), atol=1e-10)


def test_image_shaped_input_is_read_as_rows():
    model = seq_model("gru")
    x = torch.rand(4, 1, 5, 3)
    assert torch.equal(model(x), model(x.reshape(4, 5, 3)))
    lb, _ = compute_bounds(model, x - 0.01, x + 0.01)
    lb2, _ = compute_bounds(model, (x - 0.01).reshape(4, 5, 3), (x + 0.01).reshape(4, 5, 3))
    assert torch.allclose(lb, lb2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["ibp", "fastlin", "crown", "alpha-crown"])
def test_bounds_hold_on_samples_corners_and_pgd(kind, method):
    model = seq_model(kind, layers=2, seed=1)
    lower, upper = random_boxes(SHAPE, batch=2, seed=1, max_radius=0.25)
    assert_bounds_sound(model, lower, upper, method, f"{kind}/{method}", samples=4000)


@pytest.mark.parametrize("kind", KINDS)
def test_crown_is_tighter_than_interval_bounds(kind):
    model = seq_model(kind, seed=2)
    lower, upper = random_boxes(SHAPE, batch=4, seed=3, max_radius=0.1)
    lb_i, ub_i = compute_bounds(model, lower, upper, method="ibp")
    lb_c, ub_c = compute_bounds(model, lower, upper, method="crown")
    assert (lb_c >= lb_i - 1e-6).all() and (ub_c <= ub_i + 1e-6).all()
    assert (ub_c - lb_c).mean() < 0.8 * (ub_i - lb_i).mean()


def test_bounds_are_exact_at_a_point_and_batch_independent():
    model = seq_model("lstm", seed=4)
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    model = model.double()
    lb, ub = compute_bounds(model, x, x)
    values = torch.einsum(
        "bsk,bk->bs", BoundedModel(model, SHAPE, torch.float64).default_spec(x, x), model(x)
    )
    assert torch.allclose(lb, values, atol=1e-9) and torch.allclose(ub, values, atol=1e-9)
    lower, upper = random_boxes(SHAPE, batch=3, seed=5, dtype=torch.float64)
    alone, _ = compute_bounds(model, lower[:1], upper[:1])
    together, _ = compute_bounds(model, lower, upper)
    assert torch.allclose(alone[0], together[0], atol=1e-9)


def test_gradient_matches_finite_differences():
    model = seq_model("lstm", seed=6).double()
    lower, upper = random_boxes(SHAPE, batch=1, seed=7, max_radius=0.05, dtype=torch.float64)
    spec = BoundedModel(model, SHAPE, torch.float64).default_spec(lower, upper)
    r = ((upper - lower) / 2).requires_grad_(True)
    c = (upper + lower) / 2

    def f(rad):
        return compute_bounds(model, c - rad, c + rad, spec=spec, bound_upper=False)[0].sum()

    f(r).backward()
    direction = torch.randn_like(r)
    h = 1e-6
    numeric = (f(r.detach() + h * direction) - f(r.detach() - h * direction)) / (2 * h)
    assert torch.allclose((r.grad * direction).sum(), numeric, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_certified_boxes_survive_attacks(kind):
    model = seq_model(kind, seed=8)
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(9))
    res = certify_boxes(model, x, iterations=15)
    assert res.certified.all()
    assert (res.log_volume >= res.uniform_log_volume - 1e-6).all()
    lower, upper = torch.as_tensor(res.lower), torch.as_tensor(res.upper)
    fals = falsify_boxes(model, lower, upper, torch.as_tensor(res.preds), restarts=5, steps=50)
    assert not fals.broken.any(), f"{kind}: counterexample inside a certified box"


def test_clear_errors():
    with pytest.raises(ValueError, match="proj_size"):
        SequenceClassifier(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match="nn.RNN, nn.LSTM or nn.GRU"):
        SequenceClassifier(nn.Linear(3, 4))
    with pytest.raises(UnsupportedModelError, match="multiple of 3"):
        BoundedModel(seq_model("lstm"), (7,))
    with pytest.raises(UnsupportedModelError, match="SequenceClassifier"):
        BoundedModel(nn.Sequential(nn.LSTM(3, 4)), SHAPE)
    with pytest.raises(ValueError, match=r"\(batch, time, 3\)"):
        seq_model("gru")(torch.rand(2, 7))


def test_batch_is_capped_to_free_memory_without_changing_results(monkeypatch):
    import nonuniform.certify.memory as memory

    model = seq_model("lstm", seed=15)
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(16))
    full = certify_boxes(model, x, iterations=5, batch_size=3)
    bm = BoundedModel(model, SHAPE)
    est = memory.measure_memory(bm, BoundedModel(model, SHAPE, torch.float64), x, CertifyConfig.build(None))
    assert est.per_sample <= bm.net.tape_bytes_per_sample()  # the quick estimate is the larger
    monkeypatch.setattr(
        memory, "free_memory", lambda device: int(est.batch_bytes(1) / memory.FREE_SHARE * 1.01)
    )
    with pytest.warns(UserWarning, match="using 1"):
        capped = certify_boxes(model, x, iterations=5, batch_size=3)
    assert capped.settings["batch_size"] == 1
    assert torch.allclose(torch.as_tensor(capped.lower), torch.as_tensor(full.lower), atol=1e-5)
    assert torch.allclose(torch.as_tensor(capped.upper), torch.as_tensor(full.upper), atol=1e-5)


def _random_params(params, seed: int):
    """Parameters drawn uniformly from their sound ranges (the ends included half the time)."""
    g = torch.Generator().manual_seed(seed)

    def draw(key, t):
        lo, hi = params.ranges[key]
        u = torch.rand(t.shape, generator=g, dtype=t.dtype)
        u = torch.where(torch.rand(t.shape, generator=g) < 0.25, u.round(), u)
        return lo + (hi - lo) * u

    return type(params)({k: draw(k, t) for k, t in params.values.items()}, params.ranges)


@pytest.mark.parametrize("kind", [*KINDS, "bigru"])
def test_alpha_parameters_are_sound_at_any_value(kind):
    """Every node's bounds and the final bound hold at sampled points and corners for random
    parameters of every family (gate planes, S-shaped lines, ReLU slopes)."""
    from nonuniform.recurrent.alpha import initial_params, params_bound

    model = seq_model(kind, layers=2, seed=11).double()
    lower, upper = random_boxes(SHAPE, batch=3, seed=12, max_radius=0.2, dtype=torch.float64)
    bm = BoundedModel(model, SHAPE, torch.float64)
    start = initial_params(bm.propagate(lower, upper))
    families = {k.split(":")[0] + (":" + k.split(":")[-1] if k[0] == "l" else "") for k in start.values}
    assert "line:PiecewiseLinear" in families  # the head's ReLU
    assert ("plane" in families) == (kind.removeprefix("bi") in ("lstm", "gru"))
    spec = bm.default_spec(lower, upper)
    g = torch.Generator().manual_seed(13)
    for seed in range(4):
        params = _random_params(start, seed)
        state = bm.propagate(lower, upper, "crown", params=params)
        lb = params_bound(bm, spec, lower, upper, params)
        for b in range(lower.shape[0]):
            u = torch.rand((3000, *SHAPE), generator=g, dtype=torch.float64)
            corner = torch.rand((1000, *SHAPE), generator=g) < 0.5
            pts = torch.cat([lower[b] + u * (upper[b] - lower[b]), torch.where(corner, upper[b], lower[b])])
            with torch.no_grad():
                vals = bm.net.values(pts)
            for k, v in enumerate(vals):
                assert (v >= state.lower[k][b] - 1e-9).all() and (v <= state.upper[k][b] + 1e-9).all(), (
                    f"{kind}: node {bm.net.nodes[k].name} bound violated (params seed {seed})"
                )
            margins = vals[bm.net.output] @ spec[b].T
            assert (margins >= lb[b] - 1e-9).all(), f"{kind}: final bound violated (params seed {seed})"


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_crown_is_never_looser_than_crown_and_tightens(kind):
    model = seq_model(kind, layers=2, seed=14)
    lower, upper = random_boxes(SHAPE, batch=4, seed=15, max_radius=0.1)
    crown, _ = compute_bounds(model, lower, upper, method="crown", bound_upper=False)
    alpha, _ = compute_bounds(model, lower, upper, method="alpha-crown", bound_upper=False, alpha_steps=10)
    assert (alpha >= crown).all()
    assert (alpha - crown).sum() > 1e-3, f"{kind}: the optimised relaxations gained nothing"


def test_alpha_crown_boxes_of_a_recurrent_model_survive_attacks():
    """Joint optimisation of box and relaxation parameters, then the float64 proof from CROWN's
    parameters: every certified box is re-proved and attacked."""
    model = seq_model("lstm", seed=16)
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(17))
    fast = {"iterations": 10, "alpha_steps": 2, "alpha_steps_check": 10}
    crown = certify_boxes(model, x, iterations=10)
    res = certify_boxes(model, x, method="alpha-crown", **fast)
    assert res.certified.all()
    assert res.log_volume.mean() > crown.log_volume.mean()
    lower, upper = torch.as_tensor(res.lower), torch.as_tensor(res.upper)
    spec = BoundedModel(model, SHAPE).default_spec(lower, upper).double()
    lo64, hi64 = lower.double(), upper.double()
    opts = {"method": "alpha-crown", "bound_upper": False, "alpha_steps": 10}
    lb, _ = compute_bounds(model.double(), lo64, hi64, spec=spec, **opts)
    assert (lb >= 0).all()
    fals = falsify_boxes(model.float(), lower, upper, torch.as_tensor(res.preds), restarts=5, steps=50)
    assert not fals.broken.any(), "counterexample inside an alpha-crown box"


def test_bidirectional_head_reads_both_directions_after_the_whole_sequence():
    model = seq_model("bigru", layers=2, seed=18)
    x = torch.rand(3, *SHAPE)
    out, h_n = model.rnn(x)
    # h_n[-2] / h_n[-1]: the top layer's forward and backward states after the whole sequence
    assert torch.allclose(model(x), model.head(torch.cat([h_n[-2], h_n[-1]], 1)), atol=1e-6)


@pytest.mark.parametrize("kind", BIDIRECTIONAL)
@pytest.mark.parametrize("method", ["crown"])  # alpha: test_alpha_parameters_are_sound_at_any_value
def test_bidirectional_bounds_hold_on_samples_corners_and_pgd(kind, method):
    model = seq_model(kind, layers=2, seed=19)
    lower, upper = random_boxes(SHAPE, batch=2, seed=20, max_radius=0.2)
    assert_bounds_sound(model, lower, upper, method, f"{kind}/{method}", samples=3000)


def test_bidirectional_certified_boxes_survive_attacks():
    model = seq_model("bilstm", seed=21)
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(22))
    res = certify_boxes(model, x, iterations=15)
    assert res.certified.all()
    lower, upper = torch.as_tensor(res.lower), torch.as_tensor(res.upper)
    fals = falsify_boxes(model, lower, upper, torch.as_tensor(res.preds), restarts=5, steps=50)
    assert not fals.broken.any(), "counterexample inside a bidirectional box"
