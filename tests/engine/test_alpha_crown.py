"""Full alpha-CROWN: per-target slopes are sound for any value in range, tighten the bound beyond
final-pass-only slopes, and keep the bound differentiable in the box and in the slopes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform.engine.alpha import Slopes, initial_slopes, optimised_bound, sloped_bound
from nonuniform.engine.bounds import BoundedModel, margin_spec
from tests.nets import cnn, mlp, random_boxes


def _deep(act: nn.Module, seed: int) -> nn.Sequential:
    return mlp(act, sizes=(6, 24, 24, 24, 4), seed=seed)


def _random_slopes(slopes: Slopes, gen: torch.Generator) -> Slopes:
    """Uniform slopes in [0, 1] (clamped to each op's range by the relaxation itself)."""
    return slopes.map(lambda t: torch.rand(t.shape, generator=gen, dtype=t.dtype))


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1)], ids=["relu", "leaky"])
def test_any_slopes_give_sound_intermediate_and_final_bounds(act):
    """Random slopes everywhere: every pre-activation of 4,000 samples per box lies inside its
    bounds, and the final bound is below every sampled margin."""
    model = _deep(act, seed=3).double()
    lower, upper = random_boxes((6,), batch=4, seed=7, max_radius=0.3, dtype=torch.float64)
    bm = BoundedModel(model, (6,), torch.float64)
    spec = margin_spec(bm.predict((lower + upper) / 2), 4).double()
    gen = torch.Generator().manual_seed(0)
    slopes = _random_slopes(initial_slopes(bm, bm.propagate(lower, upper), 3), gen)
    assert slopes.inter, "the hidden layers after the first must get slope sets"
    state = bm.propagate(lower, upper, "crown", slopes=slopes)
    out = sloped_bound(bm, spec, lower, upper, slopes)
    x = lower[:, None] + (upper - lower)[:, None] * torch.rand(4, 4000, 6, generator=gen, dtype=torch.float64)
    acts, h = [], x.reshape(-1, 6)
    for layer in model:
        if isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
            acts.append(h.reshape(4, 4000, -1))
        h = layer(h)
    assert len(acts) == len(state.pre) == 3
    for (i, (l, u)), z in zip(sorted(state.pre.items()), acts):
        assert (z >= l[:, None] - 1e-9).all() and (z <= u[:, None] + 1e-9).all(), f"op {i}"
    margins = torch.einsum("bsk,bnk->bns", spec, h.reshape(4, 4000, 4))
    assert (margins >= out[:, None] - 1e-9).all()


def test_full_slopes_beat_final_pass_slopes_and_crown():
    """On a deep net with wide boxes, optimising the intermediate targets' slopes too gives a
    clearly tighter bound than optimising the final pass only (the alpha-CROWN paper's point)."""
    model = _deep(nn.ReLU(), seed=5)
    lower, upper = random_boxes((6,), batch=8, seed=2, max_radius=0.5)
    bm = BoundedModel(model, (6,))
    spec = margin_spec(bm.predict((lower + upper) / 2), 4)
    state = bm.propagate(lower, upper)
    crown = bm.backward(spec, state.relaxations, lower, upper)
    full, _ = optimised_bound(bm, spec, state, steps=30, lr=0.1)
    start = initial_slopes(bm, state, 3)
    final_only, _ = optimised_bound(bm, spec, state, steps=30, lr=0.1, init=Slopes({}, start.final))
    assert (full >= crown - 1e-5).all() and (final_only >= crown - 1e-5).all()
    gain_full, gain_final = (full - crown).mean(), (final_only - crown).mean()
    assert gain_final > 1e-3 and gain_full > 1.5 * gain_final, (gain_full, gain_final)


def test_bound_is_differentiable_in_box_and_slopes():
    model = _deep(nn.ReLU(), seed=1)
    lower, upper = random_boxes((6,), batch=3, seed=3, max_radius=0.3)
    bm = BoundedModel(model, (6,))
    spec = margin_spec(bm.predict((lower + upper) / 2), 4)
    slopes = initial_slopes(bm, bm.propagate(lower, upper), 3).map(lambda t: t.requires_grad_(True))
    lo, hi = lower.clone().requires_grad_(True), upper.clone().requires_grad_(True)
    lb, _ = bm.bounds(lo, hi, spec, "alpha-crown", bound_upper=False, alpha_steps=0, slopes=slopes)
    grads = torch.autograd.grad(lb.sum(), [lo, hi, *slopes.tensors()])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert sum(g.abs().sum() for g in grads[2:]) > 0, "the slopes must receive a gradient"
    # The optimised bound keeps a tape to the box too.
    lb, _ = bm.bounds(lo, hi, spec, "alpha-crown", bound_upper=False, alpha_steps=3)
    (g_lo,) = torch.autograd.grad(lb.sum(), lo)
    assert torch.isfinite(g_lo).all() and g_lo.abs().sum() > 0


def test_convolutional_net_gets_slopes_on_dense_rows_only():
    """Rows below convolutions are patches (CROWN slopes); the dense layer after the flatten
    gets its own slope set. The bound stays sound against samples."""
    model = cnn(nn.ReLU(), seed=4, pool=False, bn=False)
    lower, upper = random_boxes((1, 8, 8), batch=2, seed=1, max_radius=0.1)
    bm = BoundedModel(model, (1, 8, 8))
    state = bm.propagate(lower, upper)
    slopes = initial_slopes(bm, state, 4)
    linears = [i for i, op in enumerate(bm.net.ops) if type(op).__name__ == "LinearOp"]
    assert set(slopes.inter) and all(bm.net.ops[i].inputs[0] in linears for i in slopes.inter)
    spec = margin_spec(bm.predict((lower + upper) / 2), 5)
    lb, _ = bm.bounds(lower, upper, spec, "alpha-crown", bound_upper=False, alpha_steps=10)
    x = lower + (upper - lower) * torch.rand(2000, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    margins = torch.einsum("bsk,nbk->nbs", spec, model(x.reshape(-1, 1, 8, 8)).reshape(2000, 2, 5))
    assert (margins >= lb - 1e-5).all()
