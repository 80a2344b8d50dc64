"""The box optimiser: every certified box is attacked (PGD + corners) and, on ReLU nets,
checked exactly by MILP; the result is never worse than uniform and samples are independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nonuniform import CertifiedBoxes, certify_boxes, compute_bounds, load_model, verify_boxes
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.certify.finalise import uniform_radius
from nonuniform.certify.optimiser import balance, shaped_start
from nonuniform.certify.problem import CertifyConfig, Problem, radii
from nonuniform.engine.bounds import BoundedModel, margin_spec
from nonuniform.proof.milp import verify_box_milp
from nonuniform.zoo.samples import load_samples
from nonuniform.zoo.train import fit_full_batch


def _toy_net(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """2-16-16-3 ReLU net trained on 3 Voronoi cells of [-1, 1]^2."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(3, 2, generator=g) * 2 - 1
    x = torch.rand(2000, 2, generator=g) * 2 - 1
    y = torch.cdist(x, centres).argmin(1)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    fit_full_batch(net, x, y, steps=300, lr=0.02)
    return net.eval(), x[:12], y[:12]


def _assert_unbroken(model, res: CertifiedBoxes, restarts: int = 5) -> None:
    cert = res.certified
    assert cert.any()
    lo, hi = torch.tensor(res.lower[cert]), torch.tensor(res.upper[cert])
    preds = torch.tensor(res.preds[cert])
    f = falsify_boxes(model, lo, hi, preds, restarts=restarts, steps=40, corners=256)
    assert not f.broken.any(), f"counterexample inside a certified box: margins {f.margin}"
    # and a fresh float64 bound computation with the run's method agrees
    lb, _ = compute_bounds(
        model.double(), lo.double(), hi.double(), method=res.settings["method"], alpha_steps=50
    )
    model.float()
    assert (lb.min(1).values > 0).all()


@pytest.fixture(scope="module")
def toy():
    return _toy_net()


@pytest.mark.parametrize(
    "opts",
    [
        {"method": "crown"},
        {"method": "fastlin", "per_logit": True, "clip": False},
        {"method": "crown", "asymmetric": True},
        {"method": "alpha-crown"},
    ],
    ids=["crown", "paper-fastlin-per-logit-unclipped", "asymmetric", "alpha-crown"],
)
def test_toy_boxes_survive_attacks_and_milp(toy, opts):
    model, x, y = toy
    res = certify_boxes(model, x, y, domain=(-1.0, 1.0), iterations=60, **opts)
    assert res.certified.sum() >= 8
    _assert_unbroken(model, res)
    for i in np.nonzero(res.certified)[0][:6]:
        out = verify_box_milp(
            model, torch.tensor(res.lower[i]), torch.tensor(res.upper[i]), int(res.preds[i])
        )
        assert out.status == "robust", (i, out)
    assert (res.log_volume[res.certified] >= res.uniform_log_volume[res.certified] - 1e-9).all()


def test_milp_finds_counterexample_in_enlarged_box(toy):
    model, x, y = toy
    res = certify_boxes(model, x[:4], y[:4], domain=(-1.0, 1.0), iterations=30)
    i = int(np.nonzero(res.certified)[0][0])
    centre = torch.tensor(res.inputs[i])
    half = torch.tensor(res.radii[i]) * 50  # far beyond the certified box: crosses a boundary
    out = verify_box_milp(model, centre - half, centre + half, int(res.preds[i]))
    assert out.status == "counterexample"
    pt = torch.tensor(out.counterexample, dtype=torch.float32)
    assert model(pt[None]).argmax(1).item() != res.preds[i]


@pytest.fixture(scope="module")
def mnist_mlp():
    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    return model, x[:12], y[:12]


@pytest.fixture(scope="module")
def mnist_crown(mnist_mlp):
    model, x, y = mnist_mlp
    return certify_boxes(model, x, y, method="crown")


def test_mnist_boxes_beat_uniform_and_hold(mnist_mlp, mnist_crown):
    model, x, y = mnist_mlp
    res = mnist_crown
    cert = res.certified
    assert cert.sum() >= 10
    gain = res.log_volume[cert] - res.uniform_log_volume[cert]
    assert (gain >= -1e-6).all(), "never worse than uniform"
    assert (gain > 1.0).mean() >= 0.8, "strictly larger (by > 1 nat) on most samples"
    _assert_unbroken(model, res, restarts=3)
    # boxes are inside the domain and contain their input
    assert (res.lower >= 0).all() and (res.upper <= 1).all()
    assert (res.lower <= res.inputs).all() and (res.inputs <= res.upper).all()


def test_alpha_crown_joint_slopes_give_larger_boxes_than_crown(mnist_mlp, mnist_crown):
    """Slopes optimised with the radii (joint mode) certify larger boxes than CROWN on most
    samples and on average, and larger than re-optimising slopes at every bound call."""
    model, x, y = mnist_mlp
    x, y = x[:6], y[:6]
    joint = certify_boxes(model, x, y, method="alpha-crown")
    per_call = certify_boxes(model, x, y, method="alpha-crown", joint_slopes=False)
    assert joint.settings["joint_slopes"] and not per_call.settings["joint_slopes"]
    crown = mnist_crown.log_volume[:6]
    assert joint.certified.all() and (joint.log_volume > crown).mean() >= 0.8
    assert joint.log_volume.mean() > crown.mean() + 784 * 0.005  # mean log-width + 0.005
    assert joint.log_volume.mean() > per_call.log_volume.mean()
    _assert_unbroken(model, joint, restarts=2)


def test_small_mnist_mlp_boxes_are_robust_by_milp():
    # The 784-100-100-10 MILP does not finish in minutes; a 784-16-16-10 net (trained here on
    # the shipped images) keeps the exact check affordable on every CI run.
    x, y = load_samples("mnist")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    fit_full_batch(net, x, y, steps=150, lr=0.01)
    res = certify_boxes(net, x[:4], y[:4], iterations=60)
    assert res.certified.sum() >= 3
    _assert_unbroken(net, res, restarts=2)
    for i in np.nonzero(res.certified)[0]:
        out = verify_box_milp(
            net,
            torch.tensor(res.lower[i]),
            torch.tensor(res.upper[i]),
            int(res.preds[i]),
            time_limit=60,
        )
        assert out.status == "robust", (i, out)


def test_crown_at_least_fastlin_on_average(mnist_mlp, mnist_crown):
    model, x, y = mnist_mlp
    fl = certify_boxes(model, x, y, method="fastlin")
    both = mnist_crown.certified & fl.certified
    assert mnist_crown.mean_log_radius[both].mean() >= fl.mean_log_radius[both].mean()


def test_samples_are_independent_of_their_batch(mnist_mlp, mnist_crown):
    model, x, y = mnist_mlp
    # The bound of one sample must not depend on its batch-mates (to float32 noise)...
    from nonuniform.engine.bounds import BoundedModel

    bm = BoundedModel(model, (1, 28, 28))
    lo, hi = (x - 0.03).clamp(0, 1), (x + 0.03).clamp(0, 1)
    lb_batch, _ = bm.bounds(lo, hi, bound_upper=False)
    lb_alone, _ = bm.bounds(lo[3:4], hi[3:4], bound_upper=False)
    assert torch.allclose(lb_batch[3], lb_alone[0], atol=1e-4)
    # ... so the whole optimisation differs only by that noise, amplified along its trajectory
    # (measured: 0.002 in mean log radius, i.e. 0.2% of the radius).
    alone = certify_boxes(model, x[3:4], y[3:4], method="crown")
    assert abs(alone.mean_log_radius[0] - mnist_crown.mean_log_radius[3]) < 1e-2
    assert abs(alone.uniform_radius[0] - mnist_crown.uniform_radius[3]) < 1e-3 * alone.uniform_radius[0]


def test_misclassified_reported_not_certified(mnist_mlp):
    model, x, y = mnist_mlp
    wrong = (y[:3] + 1) % 10
    res = certify_boxes(model, x[:3], wrong, iterations=5)
    assert not res.certified.any()
    assert (res.lower == res.inputs).all() and (res.upper == res.inputs).all()
    assert np.isneginf(res.log_volume).all() and (res.labels == wrong.numpy()).all()


def test_finalisation_shrinks_infeasible_boxes(mnist_mlp):
    # A negative delta lets the optimiser believe boxes with negative margins are fine; the
    # fresh check must shrink every one until it is truly certified.
    model, x, y = mnist_mlp
    res = certify_boxes(model, x[:4], y[:4], delta=-2.0, iterations=30)
    assert res.certified.all()
    assert (res.margin >= 1e-4).all()
    _assert_unbroken(model, res, restarts=2)


def test_no_nan_at_extreme_penalties(mnist_mlp):
    model, x, y = mnist_mlp
    res = certify_boxes(model, x[:3], y[:3], mu_init=1e8, mu_max=1e12, iterations=30)
    assert res.certified.all() and np.isfinite(res.log_volume).all()
    assert (res.log_volume >= res.uniform_log_volume - 1e-9).all()


def test_single_point_domain_features_are_fixed(mnist_mlp):
    model, x, y = mnist_mlp
    lo = torch.zeros(1, 28, 28)
    hi = torch.ones(1, 28, 28)
    xs = x[:2].clone()
    hi[0, :5] = 0.0  # the first five rows can only be 0
    xs[:, 0, :5] = 0.0
    res = certify_boxes(model, xs, y[:2], domain=(lo, hi), iterations=20)
    assert res.certified.all()
    assert (res.lower[:, 0, :5] == 0).all() and (res.upper[:, 0, :5] == 0).all()
    assert res.free.sum() == 784 - 5 * 28 and np.isfinite(res.log_volume).all()
    _assert_unbroken(model, res, restarts=2)


def test_save_load_roundtrip(tmp_path, mnist_crown):
    path = tmp_path / "boxes.npz"
    mnist_crown.save(path)
    back = CertifiedBoxes.load(path)
    for k in CertifiedBoxes.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(mnist_crown, k))
    assert back.settings == mnist_crown.settings
    with np.load(path) as z:  # outside tools need nothing but numpy
        assert {
            "inputs",
            "lower",
            "upper",
            "labels",
            "preds",
            "certified",
            "log_volume",
            "uniform_radius",
            "apothem",
        } <= set(z.files)


def test_balancing_steps_grow_boxes_that_stay_certified(mnist_mlp):
    """Each accepted balancing step is certified and never shrinks a sample's box; on MNIST the
    steps grow the shaped start's boxes clearly (that is what replaces the AL iterations)."""
    model, x, y = mnist_mlp
    x = x[:6]
    bm = BoundedModel(model, (1, 28, 28))
    p = Problem(bm, x, margin_spec(bm.predict(x), 10).to(x.dtype), CertifyConfig(shape_steps=6))
    idx = torch.arange(len(x))
    rho_u = torch.log(uniform_radius(p, idx)).reshape(-1, 1, 1, 1).expand_as(x).clone()
    p.cfg.shape_steps = 0
    start = shaped_start(p, idx, rho_u)
    p.cfg.shape_steps = 6
    grown = balance(p, idx, start)
    with torch.no_grad():
        w0, w1 = (p.mean_log_width(*p.box(*radii(p, r))) for r in (start, grown))
        lo, hi = p.box(*radii(p, grown))
        lb, _ = compute_bounds(model.double(), lo.double(), hi.double(), method="crown")
    model.float()
    assert (w1 >= w0).all()
    assert (w1 - w0).mean() > 0.01  # measured ~0.04
    assert (lb.min(1).values >= p.cfg.delta - 1e-5).all()


def test_default_solver_reaches_the_optimum_on_a_linear_model():
    """Where CROWN is exact and the optimum is known: a linear two-class model, unclipped.
    Maximising sum_i log r_i under sum_i |w_i| r_i <= m - delta gives r_i = (m - delta) / (n |w_i|),
    whatever the start; the default pipeline must find it to the search tolerance."""
    torch.manual_seed(3)
    n = 12
    lin = nn.Linear(n, 2)
    with torch.no_grad():
        # margin weights |w_i| from 0.3 to 20 and inputs in [0, 0.2]: the optimum stays below
        # the largest radius the search considers (4 times the domain's span)
        lin.weight[0] = torch.sign(torch.randn(n)) * torch.logspace(-0.5, 1, n) * (1 + torch.rand(n))
        lin.weight[1] = 0.0
        lin.bias.zero_()
    net = nn.Sequential(lin)
    x = torch.rand(5, n) * 0.2
    res = certify_boxes(net, x, clip=False)
    assert res.certified.all() and res.settings["iterations"] == 0 and res.settings["shape_steps"] == 8
    c = net(x).argmax(1)
    w = (lin.weight[c] - lin.weight[1 - c]).detach()
    m = (net(x).gather(1, c[:, None]) - net(x).gather(1, 1 - c[:, None])).squeeze(1).detach()
    best = torch.log((m - 1e-3)[:, None] / (n * w.abs())).mean(1).numpy()
    got = np.log(res.radii.reshape(5, n)).mean(1)
    assert res.radii.max() < 3.9
    assert (got <= best + 1e-6).all(), "larger than the optimum: the bound is unsound"
    assert (got >= best - 2e-3).all(), (got, best)


def test_solver_defaults_depend_on_the_method():
    assert (CertifyConfig().shape_steps, CertifyConfig().iterations) == (8, 0)
    alpha = CertifyConfig(method="alpha-crown")
    assert (alpha.shape_steps, alpha.iterations) == (0, 60)
    assert CertifyConfig(iterations=7, shape_steps=2).iterations == 7


def test_progress_adds_up_to_the_samples_and_moves_during_the_warm_start(mnist_mlp):
    model, x, y = mnist_mlp
    steps: list[float] = []
    certify_boxes(model, x[:5], y[:5], batch_size=3, progress=steps.append)
    assert all(s > 0 for s in steps)
    assert sum(steps) == pytest.approx(5.0)
    # the uniform box, each balancing step, the finish: the bar moves while a batch is worked on
    assert len(steps) >= 2 * 4


def test_out_of_memory_halves_the_batch_and_gives_the_same_boxes(monkeypatch):
    """An allocation failure retries the batch at half the size (samples are independent, so the
    boxes are the same up to float noise); a single sample that does not fit is one clear error."""
    import nonuniform.certify.boxes as boxes_module

    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    x, y = x[:4], y[:4]
    full = certify_boxes(model, x, y, batch_size=4)
    real = boxes_module._certify_batch

    def tight_memory(bm, check_bm, x0, *args):
        if len(x0) > 1:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
            )
        return real(bm, check_bm, x0, *args)

    monkeypatch.setattr(boxes_module, "_certify_batch", tight_memory)
    seen = []
    with pytest.warns(UserWarning, match="out of memory: certifying in batches of"):
        small = certify_boxes(model, x, y, batch_size=4, progress=seen.append)
    # the same boxes up to float noise along the search (as test_samples_are_independent_of_their_batch)
    assert np.abs(small.mean_log_radius - full.mean_log_radius).max() < 1e-2
    assert small.certified.all() and (small.margin >= 1e-4).all()
    assert small.settings["batch_size"] == 1 and abs(sum(seen) - 4) < 1e-9

    def no_memory(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(boxes_module, "_certify_batch", no_memory)
    with pytest.raises(ValueError, match="one sample's bounds do not fit"), pytest.warns(UserWarning):
        certify_boxes(model, x, y, batch_size=2)


def test_boxes_stay_inside_a_domain_whose_ends_float32_cannot_hold():
    """float32 ends of a float64 domain are rounded inwards, so a box clipped to them is inside the
    domain as recorded (verify used to call such boxes malformed: found on the control policies)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    lo, hi = [-0.3035311, 0.1000001], [-0.2901, 0.1100003]  # a small domain: boxes reach its ends
    x = torch.tensor([[-0.297, 0.105], [-0.295, 0.106]])
    res = certify_boxes(net, x, domain=(lo, hi))
    assert res.certified.all()
    lo64, hi64 = np.array(lo), np.array(hi)
    assert (res.lower.astype(np.float64) >= lo64).all() and (res.upper.astype(np.float64) <= hi64).all()
    assert np.isclose(res.lower.astype(np.float64), lo64, atol=1e-6).any()  # the ends are reached
    report = verify_boxes(net, res)
    assert report.ok and not report.malformed


def test_maxpool_boxes_beat_uniform_and_hold(vnncomp_dir):
    """verivital's Convnet_maxpool (conv, ReLU, 4x4 max-pool, linear): a window of tied bounds
    (a blank background) passes its gradient to one input, so the linearised shaped start
    overshoots far below the uniform box; the balancing steps must then start from the uniform
    box. Every box was the uniform box before (2026-12-03)."""
    model, _ = load_model(vnncomp_dir / "verivital" / "Convnet_maxpool.onnx")
    x, _ = load_samples("mnist")
    res = certify_boxes(model, x[:3], domain=(0.0, 1.0))
    assert res.certified.all()
    gain = res.log_volume - res.uniform_log_volume
    assert (gain > 0.05 * x[0].numel()).all(), gain  # > 0.05 in mean log half-width per sample
    report = verify_boxes(model, res, attack_restarts=3, corners=64)
    assert report.ok, report
    # whether a sample starts from its shape or from the uniform box is its own decision: alone it
    # gets the box it gets beside its batch-mates (to float32 noise along the trajectory)
    alone = certify_boxes(model, x[1:2], domain=(0.0, 1.0))
    assert abs(alone.mean_log_radius[0] - res.mean_log_radius[1]) < 1e-2
    assert bool(alone.used_uniform[0]) == bool(res.used_uniform[1])
