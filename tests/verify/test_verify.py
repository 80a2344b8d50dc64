"""verify_boxes: well-formedness, a fresh bound and attacks, as a library call."""

from __future__ import annotations

import numpy as np
import torch

from nonuniform import certify_boxes, load_model
from nonuniform.verify.boxes import verify_boxes
from nonuniform.zoo.samples import load_samples


def test_verify_passes_real_boxes_and_catches_swapped_and_escaping_ones():
    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    boxes = certify_boxes(model, x[:4], y[:4], iterations=10)
    assert boxes.certified.all()
    report = verify_boxes(model, boxes, attack_restarts=1, attack_steps=10, corners=16)
    assert report.ok and report.certified == 4 and report.to_dict()["ok"] is True
    swapped = boxes.subset(np.ones(4, dtype=bool))
    swapped.lower[3], swapped.upper[3] = boxes.lower[1].copy(), boxes.upper[1].copy()  # sample 3, box of 1
    report = verify_boxes(model, swapped, attack_restarts=1, attack_steps=10, corners=16)
    assert 3 in report.malformed and not report.ok
    escaping = boxes.subset(np.ones(4, dtype=bool))
    escaping.upper[0] = escaping.upper[0] + 0.5  # leaves the [0, 1] domain
    report = verify_boxes(model, escaping, attack_restarts=1, attack_steps=10, corners=16)
    assert report.malformed == [0]


def test_per_channel_and_per_feature_domains_round_trip_through_certify_and_verify(tmp_path):
    """A per-channel --domain (recorded as one value per channel) and a per-feature domain file are
    read the same way by certify and verify."""
    import warnings

    from nonuniform_cli.main import app
    from typer.testing import CliRunner

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, 3, 6, 6), str(tmp_path / "m.onnx"), dynamo=False)
    x = (torch.rand(2, 3, 6, 6) * 2 - 1).numpy()
    np.savez(tmp_path / "x.npz", inputs=x)
    np.savez(tmp_path / "d.npz", lo=np.full((3, 6, 6), -1.0), hi=np.full((3, 6, 6), 1.5))
    runner = CliRunner()
    for tag, domain in (("channels", "-1:1,-1.5:1,-1:2"), ("file", str(tmp_path / "d.npz"))):
        out = tmp_path / tag
        args = ["certify", str(tmp_path / "m.onnx"), "--domain", domain, "--dataset", str(tmp_path / "x.npz")]
        r = runner.invoke(app, [*args, "--out", str(out), "--no-figures"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(
            app, ["verify", str(out / "boxes.npz"), "--attack-restarts", "1", "--corners", "16"]
        )
        assert r.exit_code == 0 and "OK" in r.stdout, r.output


def test_a_nan_bound_verifies_nothing(monkeypatch):
    """A fresh bound that overflowed to NaN must count as a bound failure, not as a proof."""
    import nonuniform.verify.boxes as boxes_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    res = certify_boxes(net, torch.tensor([[0.2, 0.1], [0.5, 0.4]]))
    assert res.certified.all() and verify_boxes(net, res, attack_restarts=1, attack_steps=5).ok
    real = boxes_module.compute_bounds

    def nan_bounds(*args, **kwargs):
        lb, ub = real(*args, **kwargs)
        return torch.full_like(lb, float("nan")), ub

    monkeypatch.setattr(boxes_module, "compute_bounds", nan_bounds)
    report = verify_boxes(net, res, attack_restarts=1, attack_steps=5)
    assert not report.ok and len(report.bound_failures) == 2
