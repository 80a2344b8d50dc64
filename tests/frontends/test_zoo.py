"""The compatibility zoo: every model people write loads from Python and from its ONNX export,
computes what PyTorch and onnxruntime compute, bounds soundly alone and in a batch, and certifies
boxes that ``verify`` passes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from nonuniform import (
    BoundedModel,
    UnsupportedModelError,
    certify_boxes,
    compute_bounds,
    load_model,
    verify_boxes,
)
from nonuniform.attacks.pgd import pgd_minimize
from nonuniform.ir.network import apply_output_transform
from tests.frontends.zoo import ZOO, build, layernorm_mlp

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (a dev dependency) checks the ONNX exports")


def export(model: nn.Module, shape: tuple[int, ...], path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.float(), torch.zeros(1, *shape), str(path), dynamo=False,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )  # fmt: skip


def logits_of(model: nn.Module, shape) -> callable:
    """What the engine bounds: the model's outputs, or its logits when it ends in softmax (the
    engine's own graph; checked equal to the model up to that softmax in the first test)."""
    net = BoundedModel(model, shape, torch.float32).net
    if net.output_transform == "softmax":
        return net.forward
    return model


def assert_sound(model: nn.Module, shape, method: str, seed: int, tag: str) -> None:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand((3, *shape), generator=g)
    radius = torch.tensor([0.002, 0.02, 0.08]).reshape(3, *([1] * len(shape)))
    lower, upper = centre - radius, centre + radius
    lb, ub = compute_bounds(model, lower, upper, method=method)
    for k in range(3):  # a sample's bound does not depend on its batch-mates
        lb_k, ub_k = compute_bounds(model, lower[k : k + 1], upper[k : k + 1], method=method)
        assert torch.allclose(lb_k[0], lb[k], rtol=1e-4, atol=1e-5), f"{tag}: batch changes the bound"
    bm = BoundedModel(model, shape)
    spec = bm.default_spec(lower, upper)
    f = logits_of(model, shape)
    with torch.no_grad():
        for b in range(3):
            u = torch.rand((2000, *shape), generator=g)
            corner = torch.rand((500, *shape), generator=g) < 0.5
            pts = torch.cat([lower[b] + u * (upper[b] - lower[b]), torch.where(corner, upper[b], lower[b])])
            vals = torch.einsum("sk,nk->ns", spec[b], f(pts))
            assert (vals >= lb[b] - 1e-4).all(), f"{tag}: a sampled point beats the lower bound"
            assert (vals <= ub[b] + 1e-4).all(), f"{tag}: a sampled point beats the upper bound"
    n_s = spec.shape[1]
    rows = torch.cat([spec, -spec], 1).reshape(3 * 2 * n_s, -1)
    lo_rows, hi_rows = lower.repeat_interleave(2 * n_s, 0), upper.repeat_interleave(2 * n_s, 0)
    _, v = pgd_minimize(lambda x: (f(x) * rows).sum(1), lo_rows, hi_rows, steps=30, restarts=2)
    v = v.reshape(3, 2, n_s)
    assert (v[:, 0] >= lb - 1e-4).all() and (-v[:, 1] <= ub + 1e-4).all(), f"{tag}: PGD beats a bound"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_loads_bounds_and_certifies(name, tmp_path):
    model = build(name)
    shape = ZOO[name][1]
    x = torch.rand(4, *shape, dtype=torch.float64)
    net64 = BoundedModel(model, shape, torch.float64).net
    assert torch.allclose(apply_output_transform(net64.output_transform, net64.forward(x)), model.double()(x))
    model.float()
    path = tmp_path / f"{name}.onnx"
    export(model, shape, path)
    onnx_model, card = load_model(str(path), domain=(0.0, 1.0))
    expected = ort.InferenceSession(str(path)).run(None, {"x": x.float().numpy()})[0]
    assert np.allclose(onnx_model(x).detach().numpy(), expected, atol=1e-4), (
        "ONNX graph differs from onnxruntime"
    )
    for tag, m in (("python", model), ("onnx", onnx_model)):
        for method in ("crown", "fastlin"):
            assert_sound(m, shape, method, seed=len(name), tag=f"{name} {tag} {method}")
    boxes = certify_boxes(model, x[:2].float(), None, batch_size=2)
    report = verify_boxes(model, boxes, attack_restarts=2, attack_steps=20, corners=64)
    assert report.ok, f"{name}: {report.to_dict()}"
    onnx_boxes = certify_boxes(onnx_model, x[:2].float(), None, batch_size=2)
    assert verify_boxes(onnx_model, onnx_boxes, attack_restarts=2, attack_steps=20, corners=64).ok


def test_a_final_softmax_gives_the_same_certificate_as_the_logits():
    """softmax / log_softmax at the output are stripped: the margins' bounds are the logits'
    (log_softmax: the same numbers exactly; softmax: the same signs), so boxes are identical."""
    logits = build("log-softmax-output").net
    x = torch.rand(3, 1, 8, 8)
    for name in ("softmax-output", "log-softmax-output"):
        model = build(name)
        lb, ub = compute_bounds(model, x - 0.03, x + 0.03)
        lb0, ub0 = compute_bounds(logits, x - 0.03, x + 0.03)
        assert torch.equal(lb, lb0) and torch.equal(ub, ub0), name
        a, b = certify_boxes(model, x, None), certify_boxes(logits, x, None)
        assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper), name


def test_specifications_the_shortcut_does_not_cover_are_refused():
    x = torch.rand(2, 1, 8, 8)
    for name in ("softmax-output", "log-softmax-output"):
        with pytest.raises(UnsupportedModelError, match="ends in .*softmax.*stripped only for margins"):
            compute_bounds(build(name), x - 0.01, x + 0.01, spec=torch.eye(6)[:2])
        with pytest.raises(UnsupportedModelError, match="stripped only for margins"):
            compute_bounds(build(name), x - 0.01, x + 0.01, per_logit=True)
    sum_zero = torch.tensor([[1.0, 1.0, -2.0, 0, 0, 0]])  # exact under log_softmax, not under softmax
    compute_bounds(build("log-softmax-output"), x - 0.01, x + 0.01, spec=sum_zero)
    with pytest.raises(UnsupportedModelError):
        compute_bounds(build("softmax-output"), x - 0.01, x + 0.01, spec=sum_zero)


def test_a_softmax_inside_the_network_is_refused_naming_it():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.softmax(self.a(x), dim=1))

    with pytest.raises(
        UnsupportedModelError, match="softmax is supported only as the model's last operation"
    ):
        BoundedModel(Inner(), (4,))


def test_groupnorm_is_refused_before_any_work_with_the_layer_named():
    """GroupNorm has no decomposition yet: one clear line naming it."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    with pytest.raises(UnsupportedModelError, match=r"layer '1' \(GroupNorm\)"):
        BoundedModel(model, (1, 8, 8))


def test_layernorm_bounds_are_tighter_than_intervals_and_exact_on_points():
    """The LayerNorm decomposition is sound (the zoo test) and useful: CROWN beats IBP, and a
    point box gives the model's output."""
    model = layernorm_mlp().eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    lb_i, ub_i = compute_bounds(model, x - 0.01, x + 0.01, method="ibp")
    lb_c, ub_c = compute_bounds(model, x - 0.01, x + 0.01, method="crown")
    assert ((ub_c - lb_c) < 0.5 * (ub_i - lb_i)).all()
    lb_p, ub_p = compute_bounds(model.double(), x.double(), x.double())
    assert (ub_p - lb_p).abs().max() < 1e-6


def test_adaptive_average_pooling_with_unequal_windows_bounds_and_certifies():
    """9x9 -> 4x4 (windows of 2 and 3 pixels): a fixed linear map (PyTorch's ONNX exporter refuses
    this one, so it is checked from Python only)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten(), nn.Linear(48, 5)
    )
    model.eval()
    x = torch.rand(4, 1, 9, 9, dtype=torch.float64)
    net = BoundedModel(model, (1, 9, 9), torch.float64).net
    assert torch.allclose(net.forward(x), model.double()(x))
    model.float()
    for method in ("crown", "fastlin"):
        assert_sound(model, (1, 9, 9), method, seed=5, tag=f"adaptive {method}")
    boxes = certify_boxes(model, x[:2].float(), None, batch_size=2)
    assert verify_boxes(model, boxes, attack_restarts=2, attack_steps=20, corners=64).ok


@pytest.mark.parametrize("name", ["resnet-basic-block", "mobilenet-depthwise-relu6", "mixer-layernorm"])
def test_python_and_onnx_front_ends_agree(name, tmp_path):
    """The same model read by fx and from its ONNX export: the same bounds (float32 noise) and
    the same boxes (log-volume to 0.5 nats per image)."""
    model = build(name).float()
    shape = ZOO[name][1]
    export(model, shape, tmp_path / "m.onnx")
    onnx_model, _ = load_model(str(tmp_path / "m.onnx"), domain=(0.0, 1.0))
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(7))
    lb_py, _ = compute_bounds(model, x - 0.01, x + 0.01)
    lb_onnx, _ = compute_bounds(onnx_model, x - 0.01, x + 0.01)
    assert torch.allclose(lb_py, lb_onnx, rtol=1e-4, atol=1e-5)
    a, b = certify_boxes(model, x, None), certify_boxes(onnx_model, x, None)
    assert np.allclose(a.log_volume, b.log_volume, atol=0.5), (a.log_volume, b.log_volume)


def test_alpha_crown_runs_on_every_zoo_model_and_is_never_looser():
    """alpha-CROWN optimises ReLU slopes and keeps the other activations' and products' lines:
    on every zoo model it runs, is at least CROWN's bound and holds at sampled points."""
    for name, (_, shape) in ZOO.items():
        model = build(name).float()
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
        lo, hi = x - 0.02, x + 0.02
        lb_c, _ = compute_bounds(model, lo, hi, method="crown")
        lb_a, _ = compute_bounds(model, lo, hi, method="alpha-crown", alpha_steps=3)
        assert (lb_a >= lb_c - 1e-5).all(), name
        spec = BoundedModel(model, shape).default_spec(lo, hi)
        f = logits_of(model, shape)
        with torch.no_grad():
            pts = lo[:, None] + torch.rand(2, 300, *shape) * (hi - lo)[:, None]
            vals = torch.einsum("bsk,bnk->bns", spec, f(pts.flatten(0, 1)).reshape(2, 300, -1))
        assert (vals >= lb_a[:, None] - 1e-4).all(), name
