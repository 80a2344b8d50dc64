"""Soundness, exactness, tightness relations and gradients of the bound engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform import METHODS, UnsupportedModelError, compute_bounds
from nonuniform.engine.bounds import BoundedModel, BoxError, margin_spec
from tests.nets import assert_bounds_sound, cnn, mlp, random_boxes

ACTS = {
    "relu": nn.ReLU(),
    "leaky": nn.LeakyReLU(0.1),
    "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(),
}


def _models():
    out = {f"mlp-{k}": (mlp(a, seed=i), (6,)) for i, (k, a) in enumerate(ACTS.items())}
    out["mlp-bn-relu"] = (mlp(nn.ReLU(), bn=True, seed=7), (6,))
    out["cnn-relu"] = (cnn(nn.ReLU()), (1, 8, 8))
    out["cnn-tanh"] = (cnn(nn.Tanh(), seed=3), (1, 8, 8))
    return out


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_bounds_hold_on_samples_corners_and_pgd(name, method):
    model, shape = MODELS[name]
    lower, upper = random_boxes(shape, batch=3, seed=1, max_radius=0.2)
    assert_bounds_sound(model, lower, upper, method, f"{name}/{method}")


@pytest.mark.parametrize("method", METHODS)
def test_exact_on_linear_network(method):
    # With no activation, every method reduces to the exact affine bound W c -/+ |W| r of the
    # composed map, attained at a vertex of the box.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 7), nn.Linear(7, 3)).double().eval()
    lower, upper = random_boxes((5,), batch=4, dtype=torch.float64)
    spec = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, -1.0]], dtype=torch.float64)
    lb, ub = compute_bounds(model, lower, upper, spec=spec, method=method)
    w = spec @ model[2].weight @ model[1].weight
    bias = spec @ (model[2].weight @ model[1].bias + model[2].bias)
    c, r = (upper + lower) / 2, (upper - lower) / 2
    assert torch.allclose(lb, c @ w.T - r @ w.abs().T + bias, atol=1e-10)
    assert torch.allclose(ub, c @ w.T + r @ w.abs().T + bias, atol=1e-10)
    x_min = torch.where(w[None] > 0, lower[:, None], upper[:, None])  # attaining vertex
    attained = torch.einsum("sk,bsk->bs", spec, model(x_min.reshape(-1, 5)).reshape(4, 2, 3))
    assert torch.allclose(lb, attained, atol=1e-10)


@pytest.mark.parametrize("name", ["mlp-relu", "mlp-tanh", "cnn-relu", "mlp-leaky"])
def test_tightness_relations(name):
    model, shape = MODELS[name]
    lower, upper = random_boxes(shape, batch=5, seed=3, max_radius=0.1)
    bounds = {m: compute_bounds(model, lower, upper, method=m) for m in METHODS}
    tol = 1e-5
    for m in METHODS:
        # Every linear method intersects with the interval bound at every layer and at the end.
        assert (bounds[m][0] >= bounds["ibp"][0] - tol).all(), f"{m} looser than ibp"
        assert (bounds[m][1] <= bounds["ibp"][1] + tol).all(), f"{m} looser than ibp"
        # Margins bounded directly vs. lower(f_c) - upper(f_j): the per-logit bound is a sum of
        # two separate minimisations, so it can never exceed the joint minimum it relaxes.
        lb_logit, ub_logit = compute_bounds(model, lower, upper, method=m, per_logit=True)
        assert (bounds[m][0] >= lb_logit - tol).all(), f"{m}: margin looser than per-logit"
        assert (bounds[m][1] <= ub_logit + tol).all(), f"{m}: margin looser than per-logit"
    # alpha-CROWN starts from CROWN's slopes and keeps the best bound per specification.
    assert (bounds["alpha-crown"][0] >= bounds["crown"][0] - tol).all()
    assert (bounds["alpha-crown"][1] <= bounds["crown"][1] + tol).all()


def test_alpha_crown_improves_on_wide_boxes():
    model, shape = MODELS["mlp-relu"]
    lower, upper = random_boxes(shape, batch=8, seed=4, max_radius=0.4)
    lb_c, _ = compute_bounds(model, lower, upper, method="crown")
    lb_a, _ = compute_bounds(model, lower, upper, method="alpha-crown", alpha_steps=30)
    assert (lb_a - lb_c).mean() > 1e-3, "optimised slopes should tighten some bound"


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_box_is_finite_and_exact(method):
    for name in ("mlp-sigmoid", "mlp-relu", "cnn-tanh"):
        model, shape = MODELS[name]
        lower, upper = random_boxes(shape, batch=2, seed=5, max_radius=0.1)
        upper = upper.clone()
        upper.reshape(2, -1)[:, ::2] = lower.reshape(2, -1)[:, ::2]  # half the features fixed
        lb, ub = compute_bounds(model, lower, upper, method=method)
        assert torch.isfinite(lb).all() and torch.isfinite(ub).all()
        lb, ub = compute_bounds(model, lower, lower, method=method)  # a single point
        spec = margin_spec(model(lower).argmax(1), model(lower).shape[1])
        val = torch.einsum("bsk,bk->bs", spec, model(lower))
        assert torch.allclose(lb, val, atol=1e-4) and torch.allclose(ub, val, atol=1e-4)


@pytest.mark.parametrize("method", ["fastlin", "crown", "alpha-crown"])
def test_gradients_match_finite_differences(method):
    model = mlp(nn.Tanh(), sizes=(3, 5, 4, 3), seed=1).double()
    relu = mlp(nn.ReLU(), sizes=(3, 5, 4, 3), seed=2).double()
    for net in (model, relu):
        lower, upper = random_boxes((3,), batch=2, seed=6, max_radius=0.2, dtype=torch.float64)
        lower.requires_grad_(True)
        upper.requires_grad_(True)
        lb, _ = compute_bounds(net, lower, upper, method=method, alpha_steps=5)
        assert torch.isfinite(lb).all()
        g_lo, g_hi = torch.autograd.grad(lb.sum(), (lower, upper))
        assert torch.isfinite(g_lo).all() and torch.isfinite(g_hi).all()
        if method == "alpha-crown":
            continue  # slopes are re-optimised per call: a finite difference changes the optimum
        eps = 1e-6
        for t, g in ((lower, g_lo), (upper, g_hi)):
            for idx in [(0, 0), (1, 2)]:
                d = torch.zeros_like(t)
                d[idx] = eps
                with torch.no_grad():
                    args = (lower + d, upper) if t is lower else (lower, upper + d)
                    lp, _ = compute_bounds(net, *args, method=method)
                    args = (lower - d, upper) if t is lower else (lower, upper - d)
                    lm, _ = compute_bounds(net, *args, method=method)
                fd = (lp.sum() - lm.sum()) / (2 * eps)
                assert abs(fd - g[idx]) < 1e-5 * max(1.0, abs(fd)), (method, idx, fd, g[idx])


# --- independent reference: dense float64 CROWN ---------------------------------------------------


def _dense(module: nn.Module, in_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrix and offset of an affine module, read off by evaluating it on a basis."""
    n = int(torch.tensor(in_shape).prod())
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
        zero = torch.zeros(1, *in_shape, dtype=torch.float64)
        b = module(zero).reshape(-1)
        w = (module(basis).reshape(n, -1) - b).T
    return w, b


def _reference_crown(model: nn.Sequential, lower, upper, spec):
    """Plain CROWN with adaptive ReLU slopes over dense matrices, one sample at a time.

    Same algorithm as the engine: consecutive affine layers merged; each pre-activation bound
    is the interval bound from the previous layer's bounds, replaced by max/min with the CROWN
    bound for neurons it leaves unstable; the final bound is also intersected with the
    interval bound of the last affine map.
    """
    leaves = []

    def walk(m):
        for c in m._modules.values() if isinstance(m, nn.Sequential) else [m]:
            if isinstance(c, nn.Sequential):
                walk(c)
            else:
                leaves.append(c)

    walk(model)
    shape = lower.shape[1:]
    layers = []  # ("affine", W, b) | ("relu",)
    pending = []
    for m in leaves:
        if isinstance(m, nn.ReLU):
            layers.append(("affine", nn.Sequential(*pending), shape))
            with torch.no_grad():
                shape = nn.Sequential(*pending)(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:]
            layers.append(("relu",))
            pending = []
        elif not isinstance(m, (nn.Dropout, nn.Identity)):
            pending.append(m)
    layers.append(("affine", nn.Sequential(*pending), shape))
    mats = [_dense(mod, shp) for kind, *rest in layers if kind == "affine" for mod, shp in [rest]]

    results = []
    for x_l, x_u, sp in zip(lower.flatten(1), upper.flatten(1), spec):
        c0, r0 = (x_u + x_l) / 2, (x_u - x_l) / 2
        pre, slopes = [], []  # per hidden layer: (l, u), (lower slope, upper slope, upper bias)

        def backward(lam, k):
            """Lower bound of lam . z_k, z_k = pre-activation of layer k (k = len(pre): output)."""
            bias = lam @ mats[k][1]
            lam = lam @ mats[k][0]
            for j in range(k - 1, -1, -1):
                a_lo, a_up, b_up = slopes[j]
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                bias = bias + neg @ b_up
                lam = pos * a_lo + neg * a_up
                bias = bias + lam @ mats[j][1]
                lam = lam @ mats[j][0]
            return lam @ c0 - lam.abs() @ r0 + bias

        l_prev = u_prev = None
        for k in range(len(mats) - 1):
            w, b = mats[k]
            if k == 0:
                l, u = w @ c0 - w.abs() @ r0 + b, w @ c0 + w.abs() @ r0 + b
            else:
                hc, hr = (
                    (u_prev.clamp(min=0) + l_prev.clamp(min=0)) / 2,
                    (u_prev.clamp(min=0) - l_prev.clamp(min=0)) / 2,
                )
                l, u = w @ hc - w.abs() @ hr + b, w @ hc + w.abs() @ hr + b
                unstable = (l < 0) & (u > 0)
                eye = torch.eye(len(l), dtype=torch.float64)
                cl, cu = backward(eye, k), -backward(-eye, k)
                l = torch.where(unstable, torch.maximum(l, cl), l)
                u = torch.where(unstable, torch.minimum(u, cu), u)
            unst = (l < 0) & (u > 0)
            up = torch.where(unst, u / (u - l).clamp(min=1e-300), (l >= 0).double())
            ub_ = torch.where(unst, -l * u / (u - l).clamp(min=1e-300), torch.zeros_like(l))
            lo = torch.where(unst, (u > -l).double(), (l >= 0).double())
            pre.append((l, u))
            slopes.append((lo, up, ub_))
            l_prev, u_prev = l, u
        k = len(mats) - 1
        lam = torch.cat([sp, -sp])
        crown = backward(lam, k)
        w, b = mats[k]
        hc, hr = (
            (u_prev.clamp(min=0) + l_prev.clamp(min=0)) / 2,
            (u_prev.clamp(min=0) - l_prev.clamp(min=0)) / 2,
        )
        ibp = (lam @ w) @ hc - (lam @ w).abs() @ hr + lam @ b
        out = torch.maximum(crown, ibp)
        s = sp.shape[0]
        results.append((out[:s], -out[s:]))
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])


@pytest.mark.parametrize(
    "model,shape",
    [
        (mlp(nn.ReLU(), sizes=(6, 20, 20, 15, 4), seed=11), (6,)),
        (cnn(nn.ReLU(), seed=12, pool=False), (1, 8, 8)),
    ],
    ids=["mlp", "cnn"],
)
def test_crown_matches_dense_reference(model, shape):
    model = model.double()
    lower, upper = random_boxes(shape, batch=4, seed=7, max_radius=0.15, dtype=torch.float64)
    spec = BoundedModel(model, shape, torch.float64).default_spec(lower, upper)
    lb, ub = compute_bounds(model, lower, upper, spec=spec, method="crown")
    ref_lb, ref_ub = _reference_crown(model, lower, upper, spec)
    assert torch.allclose(lb, ref_lb, atol=1e-6), (lb - ref_lb).abs().max()
    assert torch.allclose(ub, ref_ub, atol=1e-6), (ub - ref_ub).abs().max()
    # and the boxes are wide enough for the comparison to be about relaxations, not trivia
    assert (ub - lb).min() > 1e-2


# --- errors ---------------------------------------------------------------------------------------


class Custom(nn.Module):
    def forward(self, x):
        return x * 2


class Cumulative(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


def test_custom_children_are_traced_and_unsupported_ones_named():
    """A custom module inside a Sequential is traced (the whole model); what it cannot read is
    refused naming the node, with the list of what is supported."""
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), Custom()), nn.Linear(4, 2)).eval()
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        plain[1].weight.copy_(2 * model[1][0].weight)
        plain[1].bias.copy_(2 * model[1][0].bias)
        plain[2].load_state_dict(model[2].state_dict())
    lo, hi = torch.zeros(1, 4), torch.ones(1, 4)
    assert torch.allclose(compute_bounds(model, lo, hi)[0], compute_bounds(plain, lo, hi)[0], atol=1e-5)
    bad = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), Cumulative()), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match=r"node 'cumsum' \(call_function cumsum.*Supported"):
        compute_bounds(bad, lo, hi)


def test_unsupported_layer_settings_are_named():
    with pytest.raises(UnsupportedModelError, match="MaxPool2d.*dilation"):
        compute_bounds(
            nn.Sequential(nn.MaxPool2d(2, dilation=2), nn.Flatten()),
            torch.zeros(1, 1, 4, 4),
            torch.ones(1, 1, 4, 4),
        )


def test_shape_mismatch_and_training_bn_are_clear():
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 2))
    with pytest.raises(
        UnsupportedModelError, match=r"layer '1' \(Linear\) cannot take an input of shape \(4,\)"
    ):
        compute_bounds(model, torch.zeros(1, 4), torch.ones(1, 4))
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.raises(UnsupportedModelError, match="model.eval"):
        compute_bounds(bn, torch.zeros(1, 4), torch.ones(1, 4))


def test_malformed_boxes_rejected():
    model, _ = MODELS["mlp-relu"]
    lo = torch.zeros(2, 6)
    with pytest.raises(BoxError, match="lower > upper"):
        compute_bounds(model, lo + 1, lo)
    with pytest.raises(BoxError, match="NaN"):
        compute_bounds(model, lo * float("nan"), lo)
    with pytest.raises(BoxError, match="shape"):
        compute_bounds(model, lo, torch.zeros(2, 5))
    with pytest.raises(BoxError, match="batched"):
        compute_bounds(model, torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match="unknown bound method"):
        compute_bounds(model, lo, lo, method="deeppoly")


def test_shared_activation_instance_counts_every_use():
    # nn.Sequential.children() hides a module used twice; the engine must still see both uses.
    torch.manual_seed(0)
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(4, 8), relu, nn.Linear(8, 8), relu, nn.Linear(8, 3)).eval()
    separate = nn.Sequential(shared[0], nn.ReLU(), shared[2], nn.ReLU(), shared[4]).eval()
    lower, upper = random_boxes((4,), batch=3, seed=9, max_radius=0.3)
    a = compute_bounds(shared, lower, upper)
    b = compute_bounds(separate, lower, upper)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
