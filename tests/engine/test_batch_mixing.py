"""A sample's bound never depends on its batch-mates, and no point of its box beats it (issue 13).

Random batches mix very different boxes -- tiny and huge, whole rows free, touching the domain
edge, degenerate (points), and per-feature mixtures -- for every model kind and every method, in
float32 and float64. Each batch is checked for

(a) batch independence: every sample's bound equals its bound computed alone (1e-5 relative), and
(b) soundness: uniform samples, corners and PGD inside each box never beat its bound.

The normal suite runs one seed per (model, method, dtype). The opt-in long run tries many:
``NONUNIFORM_SEEDS=200 pytest tests/engine/test_batch_mixing.py`` (its tally is in docs/NOTES.md).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from nonuniform import METHODS, compute_bounds, margin_spec
from nonuniform.attacks.pgd import pgd_minimize
from nonuniform.engine.bounds import BoundedModel
from tests.graph_nets import PoolNet, TinyResNet
from tests.nets import cnn, mlp
from tests.recurrent.test_recurrent import SHAPE as SEQ_SHAPE
from tests.recurrent.test_recurrent import seq_model

SEEDS = int(os.environ.get("NONUNIFORM_SEEDS", "1"))
KINDS = ("tiny", "small", "huge", "row", "edge", "point", "mixed")


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    flat = (4, 3)  # an MLP input with rows, so "row" boxes mean something
    out = {
        "mlp-relu": (mlp(nn.ReLU(), sizes=(12, 16, 16, 4), seed=1), flat),
        "mlp-leaky": (mlp(nn.LeakyReLU(0.1), sizes=(12, 16, 16, 4), seed=2), flat),
        "mlp-sigmoid": (mlp(nn.Sigmoid(), sizes=(12, 16, 16, 4), seed=3), flat),
        "mlp-tanh": (mlp(nn.Tanh(), sizes=(12, 16, 16, 4), seed=4, bn=True), flat),
        "cnn-relu": (cnn(nn.ReLU(), seed=5), (1, 8, 8)),
        "cnn-tanh": (cnn(nn.Tanh(), seed=6, pool=False), (1, 8, 8)),
    }
    out["graph-resnet"] = (TinyResNet(seed=8), (1, 8, 8))  # residual adds, max-pool, concat
    out["graph-poolnet"] = (PoolNet(seed=9), (1, 8, 8))  # overlapping padded max-pool, sigmoid
    for kind in ("rnn-tanh", "rnn-relu", "lstm", "gru", "bigru"):
        out[kind] = (seq_model(kind, layers=2 if kind == "lstm" else 1, seed=7), SEQ_SHAPE)
    return out


MODELS = _models()


def mixed_boxes(shape, batch: int, seed: int, dtype) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A batch of boxes in [0, 1]^shape, each of a random kind (see KINDS)."""
    g = torch.Generator().manual_seed(seed)
    kinds = [KINDS[int(i)] for i in torch.randint(len(KINDS), (batch,), generator=g)]
    lo, hi = [], []
    for kind in kinds:
        x = torch.rand(shape, generator=g, dtype=dtype)
        r_lo = torch.rand(shape, generator=g, dtype=dtype)
        r_hi = torch.rand(shape, generator=g, dtype=dtype)
        if kind == "tiny":
            r_lo, r_hi = r_lo * 1e-6, r_hi * 1e-6
        elif kind == "small":
            r_lo, r_hi = r_lo * 0.03, r_hi * 0.03
        elif kind == "huge":
            r_lo, r_hi = torch.ones_like(x), torch.ones_like(x)
        elif kind in ("row", "point"):
            r_lo, r_hi = torch.zeros_like(x), torch.zeros_like(x)
            if kind == "row":  # one whole row (image row, time step, or feature row) is free
                rows = x.reshape(-1, shape[-1]).shape[0]
                view_lo, view_hi = r_lo.reshape(-1, shape[-1]), r_hi.reshape(-1, shape[-1])
                k = int(torch.randint(rows, (1,), generator=g))
                view_lo[k], view_hi[k] = 1.0, 1.0
        elif kind == "edge":  # a quarter of the features sit on the domain's edge
            edge = torch.rand(shape, generator=g) < 0.25
            x = torch.where(edge, (torch.rand(shape, generator=g) < 0.5).to(dtype), x)
            r_lo, r_hi = r_lo * 0.2, r_hi * 0.2
        else:  # mixed: per feature a point, a tiny or a large interval
            pick = torch.randint(3, shape, generator=g)
            scale = torch.tensor([0.0, 1e-6, 0.5], dtype=dtype)[pick]
            r_lo, r_hi = r_lo * scale, r_hi * scale
        lo.append((x - r_lo).clamp(0, 1))
        hi.append((x + r_hi).clamp(0, 1))
    return torch.stack(lo), torch.stack(hi), kinds


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> torch.Tensor:
    return (a - b).abs() <= rtol * (1 + torch.maximum(a.abs(), b.abs()))


def check_batch(model: nn.Module, shape, method: str, seed: int, dtype, batch: int = 6) -> int:
    """Checks (a) and (b) on one random mixed batch; returns the number of boxes checked."""
    model = model.to(dtype)
    lower, upper, kinds = mixed_boxes(shape, batch, seed, dtype)
    with torch.no_grad():
        pred = model((lower + upper) / 2).argmax(1)
    n_cls = BoundedModel(model, shape, dtype).num_classes
    spec = margin_spec(pred, n_cls).to(dtype)
    opts = {"alpha_steps": 5} if method == "alpha-crown" else {}
    lb, ub = compute_bounds(model, lower, upper, spec, method=method, **opts)
    tag = f"{method}/{dtype}/seed {seed}"
    for b in range(batch):
        lb1, ub1 = compute_bounds(
            model, lower[b : b + 1], upper[b : b + 1], spec[b : b + 1], method=method, **opts
        )
        assert _close(lb[b], lb1[0], 1e-5).all() and _close(ub[b], ub1[0], 1e-5).all(), (
            f"{tag}: box {b} ({kinds[b]}) bound depends on its batch: "
            f"{lb[b].tolist()} in the batch vs {lb1[0].tolist()} alone"
        )
    # (b) soundness: uniform samples and random corners of every box, then batched PGD on every
    # (box, spec row, sign). Tolerance: float rounding of the forward pass itself.
    tol = (1e-5 if dtype == torch.float32 else 1e-9) * (1 + lb.abs().max())
    g = torch.Generator().manual_seed(seed)
    for b in range(batch):
        u = torch.rand((1500, *shape), generator=g, dtype=dtype)
        corner = torch.rand((500, *shape), generator=g) < 0.5
        pts = torch.cat([lower[b] + u * (upper[b] - lower[b]), torch.where(corner, upper[b], lower[b])])
        with torch.no_grad():
            vals = model(pts) @ spec[b].T
        assert (vals >= lb[b] - tol).all(), f"{tag}: box {b} ({kinds[b]}): a sample beats the lower bound"
        assert (vals <= ub[b] + tol).all(), f"{tag}: box {b} ({kinds[b]}): a sample beats the upper bound"
    n_s = spec.shape[1]
    rows = torch.cat([spec, -spec], 1).reshape(batch * 2 * n_s, -1)
    _, v = pgd_minimize(
        lambda x: (model(x) * rows).sum(1),
        lower.repeat_interleave(2 * n_s, 0),
        upper.repeat_interleave(2 * n_s, 0),
        steps=25,
        restarts=2,
    )
    v = v.reshape(batch, 2, n_s)
    assert (v[:, 0] >= lb - tol).all(), f"{tag}: PGD beats a lower bound"
    assert (-v[:, 1] <= ub + tol).all(), f"{tag}: PGD beats an upper bound"
    model.float()
    return batch


CASES = [(name, method) for name in MODELS for method in METHODS]
RECURRENT = {"rnn-tanh", "rnn-relu", "lstm", "gru", "bigru"}
# Recurrent alpha-crown costs ~10 s per case: float32 only (float64 runs the same code), and
# not for the bidirectional GRU (its parameters: tests/recurrent/test_recurrent.py).
DTYPED = [
    pytest.param(name, method, dtype, id=f"{name}-{method}-{tag}")
    for name, method in CASES
    for dtype, tag in [(torch.float32, "f32"), (torch.float64, "f64")]
    if not (name in RECURRENT and method == "alpha-crown" and (dtype == torch.float64 or name == "bigru"))
]


@pytest.mark.parametrize("name,method,dtype", DTYPED)
def test_mixed_batches_are_independent_and_sound(name, method, dtype):
    model, shape = MODELS[name]
    torch.manual_seed(0)
    for seed in range(SEEDS):
        check_batch(model, shape, method, 1000 * seed + 17 * CASES.index((name, method)), dtype)


def test_issue13_rnn_row_boxes_batched_with_each_other():
    """The reported case: on mnist-rnn, a box with image row 20 free, bounded next to a box with
    row 0 free, got +20.59 where a random point reaches 6.63 (alone: -24.81)."""
    from nonuniform import load_model
    from nonuniform.zoo.samples import load_samples

    m, _ = load_model("mnist-rnn")
    x, _ = load_samples("mnist")
    x0 = x[:1]
    pred = m(x0).argmax(1)
    lo = x0.repeat(2, 1, 1, 1).clone()
    hi = lo.clone()
    lo[0, 0, 0, :], hi[0, 0, 0, :] = 0, 1
    lo[1, 0, 20, :], hi[1, 0, 20, :] = 0, 1
    spec = margin_spec(pred.repeat(2), 10)
    lb_pair, _ = compute_bounds(m, lo, hi, spec, method="crown")
    lb_alone, _ = compute_bounds(m, lo[1:], hi[1:], spec[1:], method="crown")
    assert _close(lb_pair[1], lb_alone[0], 1e-5).all()
    pts = lo[1:] + (hi[1:] - lo[1:]) * torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vals = m(pts) @ spec[1].T
    assert (vals >= lb_pair[1] - 1e-4).all()


def test_intersection_never_crosses():
    from nonuniform.engine.interval import intersect

    l, u = (
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
    )
    nl, nu = (
        torch.tensor([0.5, 1e-4, 0.9], dtype=torch.float64),
        torch.tensor([0.7, 2e-4, 0.95], dtype=torch.float64),
    )
    lo, hi = intersect(l, u, nl, nu)
    assert lo.tolist() == [0.5, 0.0, 1.0] and hi.tolist() == [0.7, 0.0, 1.0]
    lo, hi = intersect(l, u, nl, nu, where=torch.tensor([False, True, True]))
    assert lo.tolist() == [0.0, 0.0, 1.0] and (lo <= hi).all()
