"""Run directories: identity from the settings, --resume refusing every box-changing field."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields

import numpy as np
import pytest

from nonuniform.certify.settings import CertifyConfig
from nonuniform.runs.rundir import RunDir, RunError, certify_run, with_domain
from nonuniform.zoo.models import load_model
from nonuniform.zoo.samples import load_samples

#: A value different from the default for each box field (a run's identity).
CHANGED = {
    "method": "fastlin",
    "asymmetric": True,
    "clip": False,
    "domain": (0.0, 2.0),
    "per_logit": True,
    "delta": 2e-3,
    "check_margin": 2e-4,
    "check_dtype": "float32",
    "iterations": 3,
    "lr": 0.1,
    "mu_init": 2.0,
    "mu_growth": 3.0,
    "mu_max": 1e5,
    "update_every": 5,
    "tol": 2e-3,
    "ftol": 2e-3,
    "uniform_rtol": 2e-3,
    "shrink_steps": 10,
    "shaped_start": False,
    "shape_steps": 2,
    "polish": False,
    "bab": True,
    "bab_time": 5.0,
    "alpha_steps": 3,
    "alpha_steps_check": 7,
    "joint_slopes": False,
    "crown_start": False,
    "alpha_lr": 0.2,
    "groups": "patch:4x4",
    "frozen": np.eye(28, dtype=bool)[None],
    "whole": np.eye(28, dtype=bool)[None, ::-1],
    "weights": np.full((1, 28, 28), 2.0),
    "floor": 1e-4,
    "objective": "apothem",
    "output_range": (-100.0, 100.0),
    "seed": 1,
}
#: alpha-CROWN-only fields are compared on an alpha-crown run
ALPHA_ONLY = {"alpha_steps", "alpha_steps_check", "joint_slopes", "crown_start"}


def test_the_resume_table_covers_every_box_field():
    box = {f.name for f in fields(CertifyConfig) if f.metadata["identity"]}
    assert set(CHANGED) == box, "give the new box field a changed value here"


@pytest.fixture(scope="module")
def mlp():
    model, card = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    return model, card, x[:1], y[:1]


@pytest.fixture(scope="module")
def finished(mlp, tmp_path_factory):
    """One finished crown run and one finished alpha-crown run (1 sample each, cheap settings)."""
    model, card, x, y = mlp
    out = {}
    for method in ("crown", "alpha-crown"):
        d = tmp_path_factory.mktemp(method) / "run"
        extra = {"iterations": 1, "alpha_steps_check": 1} if method == "alpha-crown" else {}
        certify_run(model, card, x, y, np.arange(1), "embedded", d, figures=False, method=method, **extra)
        out[method] = (d, extra)
    return out


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_resume_refuses_every_changed_box_setting(name, mlp, finished):
    model, card, x, y = mlp
    method = "alpha-crown" if name in ALPHA_ONLY else "crown"
    run_dir, extra = finished[method]
    settings = {"method": method, **extra, name: CHANGED[name]}
    before = sorted(p.name for p in (run_dir / "parts").iterdir())
    with pytest.raises(RunError, match=f"{name}: .* before, .* now"):
        certify_run(
            model, card, x, y, np.arange(1), "embedded", run_dir, resume=True, figures=False, **settings
        )
    assert sorted(p.name for p in (run_dir / "parts").iterdir()) == before  # nothing touched


def test_resume_with_the_same_settings_or_other_run_fields_reuses_the_parts(mlp, finished):
    model, card, x, y = mlp
    run_dir, _ = finished["crown"]
    res, _ = certify_run(
        model, card, x, y, np.arange(1), "embedded", run_dir, resume=True, figures=False, batch_size=7
    )
    assert len(list((run_dir / "parts").glob("batch_*.npz"))) == 1  # nothing recomputed
    assert res.certified.all()


def test_a_run_recorded_before_a_setting_existed_resumes_at_its_default(tmp_path):
    """run.json from before a field was recorded: the field is taken at its default then."""
    d = RunDir(tmp_path / "run")
    identity = {"model": {"name": "m"}, "data": "d", "options": CertifyConfig(domain=(0.0, 1.0)).identity()}
    d.open(identity, resume=False)
    old = json.loads((d.out / "run.json").read_text())
    del old["options"]["alpha_lr"], old["options"]["seed"]
    (d.out / "run.json").write_text(json.dumps(old))
    (d.parts / "batch_00000.npz").write_bytes(b"")  # something to resume (unreadable)
    changed = {**identity, "options": {**identity["options"], "seed": 3}}
    with pytest.raises(RunError, match="seed: 0 before, 3 now"):
        d.open(changed, resume=True)
    with pytest.warns(UserWarning, match="computed again"):
        assert d.open(identity, resume=True) == {}


def test_a_directory_with_results_needs_resume_and_a_file_is_refused(tmp_path):
    d = RunDir(tmp_path / "run")
    identity = {"options": {}}
    d.open(identity, resume=False)
    (d.parts / "batch_00000.npz").write_bytes(b"x")
    with pytest.raises(RunError, match="pass --resume"):
        d.open(identity, resume=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="is a file"):
        RunDir(tmp_path / "file").open(identity, resume=False)


def test_a_model_without_a_domain_needs_one_before_anything_is_written(mlp, tmp_path):
    model, card, x, y = mlp
    card = dataclasses.replace(card, domain=None)
    with pytest.raises(RunError, match="does not record its input domain"):
        certify_run(model, card, x, y, np.arange(1), "embedded", tmp_path / "run", figures=False)
    assert not (tmp_path / "run").exists()
    assert with_domain(CertifyConfig(domain=(0.0, 2.0)), card).domain == (0.0, 2.0)


def test_settings_reach_the_boxes_file(mlp, finished):
    run_dir, _ = finished["alpha-crown"]
    from nonuniform.certify.result import CertifiedBoxes

    res = CertifiedBoxes.load(run_dir / "boxes.npz")
    cfg = CertifyConfig.from_dict({k: res.settings[k] for k in CertifyConfig().to_dict()})
    assert cfg.method == "alpha-crown" and cfg.iterations == 1 and cfg.alpha_steps_check == 1
