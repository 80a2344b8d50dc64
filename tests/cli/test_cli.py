"""Every command through Typer's runner, including error paths and --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nonuniform_cli.main import app
from typer.testing import CliRunner

import nonuniform
from nonuniform import CertifiedBoxes

runner = CliRunner()


def run(*args, ok=True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, (res.output, res.exception)
    return res


def test_certify_writes_results_and_verify_passes(tmp_path):
    out = tmp_path / "run"
    res = run("certify", "mnist-mlp", "--out", out, "--count", 3, "--iterations", 20, "--json")
    payload = json.loads(res.stdout)
    assert payload["summary"]["certified"] == 3 and len(payload["samples"]) == 3
    boxes = CertifiedBoxes.load(out / "boxes.npz")
    assert boxes.settings["model"]["source"] == "embedded:mnist-mlp"
    assert (out / "summary.json").exists() and (out / "figures" / "overview.png").exists()
    assert (out / "figures" / "sample_00000.png").exists()
    res = run("verify", out / "boxes.npz", "--attack-restarts", 2, "--json")
    assert json.loads(res.stdout)["ok"] is True


def test_verify_fails_on_a_tampered_box(tmp_path):
    out = tmp_path / "run"
    run("certify", "mnist-mlp", "--out", out, "--count", 2, "--iterations", 10, "--no-figures")
    boxes = CertifiedBoxes.load(out / "boxes.npz")
    boxes.lower[:] = 0.0  # claim the whole domain is certified
    boxes.upper[:] = 1.0
    boxes.save(tmp_path / "tampered.npz")
    res = run("verify", tmp_path / "tampered.npz", "--attack-restarts", 1, ok=False)
    assert res.exit_code == 1 and "FAILED" in res.stdout


def test_resume_after_interruption(tmp_path, monkeypatch):
    import nonuniform.runs.rundir

    out = tmp_path / "run"
    real = nonuniform.certify_boxes
    seen: list[int] = []

    def interrupted(*args, callback=None, **kw):
        def cb(part):
            callback(part)
            raise KeyboardInterrupt  # the run dies after its first batch was written

        return real(*args, callback=cb, **kw)

    monkeypatch.setattr(nonuniform.runs.rundir, "certify_boxes", interrupted)
    res = run(
        "certify",
        "mnist-mlp",
        "--out",
        out,
        "--count",
        4,
        "--batch-size",
        2,
        "--iterations",
        10,
        "--no-figures",
        ok=False,
    )
    assert res.exit_code == 130 and "--resume" in res.output  # the hint on Ctrl-C
    assert len(list((out / "parts").glob("batch_*.npz"))) == 1 and not (out / "boxes.npz").exists()

    def counting(model, inputs, *args, indices=None, **kw):
        seen.extend(int(i) for i in indices)
        return real(model, inputs, *args, indices=indices, **kw)

    monkeypatch.setattr(nonuniform.runs.rundir, "certify_boxes", counting)
    res = run(
        "certify",
        "mnist-mlp",
        "--out",
        out,
        "--count",
        4,
        "--batch-size",
        2,
        "--iterations",
        10,
        ok=False,
    )
    assert res.exit_code == 2 and "--resume" in res.output  # refuses to overwrite silently
    run(
        "certify",
        "mnist-mlp",
        "--out",
        out,
        "--count",
        4,
        "--batch-size",
        2,
        "--iterations",
        10,
        "--no-figures",
        "--resume",
    )
    assert seen == [2, 3]  # only the unfinished samples were redone
    boxes = CertifiedBoxes.load(out / "boxes.npz")
    assert boxes.indices.tolist() == [0, 1, 2, 3]


def test_recurrent_model_certify_verify_and_steps(tmp_path):
    out = tmp_path / "lstm"
    run("certify", "mnist-lstm", "--out", out, "--count", 1, "--shape-steps", 2, "--no-figures")
    boxes = CertifiedBoxes.load(out / "boxes.npz")
    assert boxes.certified.all() and boxes.lower.shape == (1, 1, 28, 28)
    res = run("verify", out / "boxes.npz", "--attack-restarts", 2, "--json")
    assert json.loads(res.stdout)["ok"] is True
    res = run(
        "steps", "mnist-gru", "--out", tmp_path / "steps", "--count", 1, "--bisection-steps", 3, "--json"
    )
    summary = json.loads(res.stdout)
    assert len(summary["median_log10_radius_per_step"]) == 28
    with np.load(tmp_path / "steps" / "steps.npz") as z:
        assert z["radius"].shape == (1, 28) and (z["radius"] > 0).any()
    assert (tmp_path / "steps" / "steps.png").exists()


def test_models_and_demo(tmp_path):
    res = run("models", "--json")
    assert {c["name"] for c in json.loads(res.stdout)} >= {"mnist-mlp", "mnist-mlp-pgd"}
    res = run("demo", "--out", tmp_path / "demo", "--count", 2, "--json")
    summary = json.loads(res.stdout)
    assert summary["mnist-mlp-pgd"]["mean_log_radius"] > summary["mnist-mlp"]["mean_log_radius"]
    assert (tmp_path / "demo" / "demo.png").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["certify", "no-such-model", "--out", "x"], "neither an embedded model"),
        (
            ["certify", "mnist-mlp", "--out", "x", "--indices", "90:120"],
            "outside the 100 available",
        ),
        (["certify", "mnist-mlp", "--out", "x", "--indices", "a:b"], "bad index range"),
        (["certify", "mnist-mlp", "--out", "x", "--device", "cuda"], "CUDA was requested"),
        (
            ["certify", "mnist-mlp", "--out", "x", "--dataset", "missing.npz"],
            "missing.npz: file not found",
        ),
        (["certify", "mnist-mlp", "--out", "x", "--data-dir", "/nonexistent"], "does not exist"),
        (
            ["certify", "mnist-mlp", "--out", "x", "--method", "deeppoly", "--count", "1"],
            "unknown bound method",
        ),
        (["verify", "missing.npz"], "file not found"),
        (["steps", "mnist-mlp", "--out", "x"], "not a recurrent model"),
        (["demo", "--count", "0"], "--count must be between"),
    ],
)
def test_user_errors_are_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    res = run(*args, ok=False)
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()) and "Traceback" not in res.output


def test_certify_from_npz_and_full_dataset(tmp_path, data_dir):
    from nonuniform.zoo.samples import load_samples

    x, y = load_samples("mnist")
    np.savez(tmp_path / "mine.npz", inputs=x[:2].numpy(), labels=y[:2].numpy())
    run(
        "certify",
        "mnist-mlp",
        "--out",
        tmp_path / "a",
        "--dataset",
        tmp_path / "mine.npz",
        "--iterations",
        5,
        "--no-figures",
    )
    res = run(
        "certify",
        "mnist-mlp-pgd",
        "--out",
        tmp_path / "b",
        "--data-dir",
        data_dir,
        "--indices",
        "9000:9002",
        "--iterations",
        5,
        "--no-figures",
        "--json",
    )
    assert [s["index"] for s in json.loads(res.stdout)["samples"]] == [9000, 9001]


def test_rank_compares_two_models(tmp_path):
    for name in ("mnist-mlp", "mnist-mlp-pgd"):
        run("certify", name, "--out", tmp_path / name, "--count", 6, "--iterations", 15, "--no-figures")
    res = run(
        "rank",
        tmp_path / "mnist-mlp" / "boxes.npz",
        "--out",
        tmp_path / "rank",
        "--compare",
        tmp_path / "mnist-mlp-pgd" / "boxes.npz",
        "--json",
    )
    report = json.loads(res.stdout)
    assert set(report) == {"mnist-mlp", "mnist-mlp-pgd"}
    assert len(report["mnist-mlp"]["least_robust_features"]) == 20
    assert (tmp_path / "rank" / "feature_map_mnist-mlp.png").exists()
    assert (tmp_path / "rank" / "radius_histograms.png").exists()
    res = run("rank", tmp_path / "missing.npz", "--out", tmp_path / "r2", ok=False)
    assert res.exit_code == 2


def test_explain_command(tmp_path):
    run("certify", "mnist-mlp", "--out", tmp_path / "c", "--count", 2, "--iterations", 10, "--no-figures")
    res = run(
        "explain",
        tmp_path / "c" / "boxes.npz",
        "--out",
        tmp_path / "e",
        "--k",
        "0.05,40",
        "--max-samples",
        2,
        "--attack-steps",
        4,
        "--bisection-steps",
        4,
        "--eval-k",
        "0.1,0.3",
        "--json",
    )
    report = json.loads(res.stdout)
    assert report["sets"] == {"0.05": 39, "40": 40}
    assert set(report["evaluation"]) >= {"certified box (ours)", "saliency |grad|", "random"}
    assert (tmp_path / "e" / "evaluation_curves.png").exists()
    res = run("explain", tmp_path / "c" / "boxes.npz", "--out", tmp_path / "e", "--k", "x", ok=False)
    assert res.exit_code == 2


def test_train_writes_a_loadable_checkpoint(tmp_path, data_dir):
    ckpt = tmp_path / "tiny.pt"
    res = run(
        "train",
        "--arch",
        "mlp:16:relu",
        "--out",
        ckpt,
        "--epochs",
        1,
        "--batch-size",
        512,
        "--data-dir",
        data_dir,
        "--json",
    )
    metrics = json.loads(res.stdout)["metrics"]
    assert metrics["clean_accuracy"] > 0.85
    model, card = nonuniform.load_model(ckpt)
    assert card.arch == "mlp:16:relu" and card.command.startswith("nonuniform train")
    run("certify", ckpt, "--out", tmp_path / "c", "--count", 1, "--iterations", 5, "--no-figures")


def test_nothing_certified_gives_valid_json(tmp_path):
    from nonuniform.zoo.samples import load_samples

    x, y = load_samples("mnist")
    np.savez(tmp_path / "wrong.npz", inputs=x[:2].numpy(), labels=((y[:2] + 1) % 10).numpy())
    res = run(
        "certify",
        "mnist-mlp",
        "--out",
        tmp_path / "w",
        "--dataset",
        tmp_path / "wrong.npz",
        "--iterations",
        5,
        "--no-figures",
    )
    assert "certified 0/2" in res.stdout
    summary = json.loads((tmp_path / "w" / "summary.json").read_text(), parse_constant=_reject)
    assert summary["certified"] == 0 and summary["mean_log_radius"] is None


def _reject(name):
    raise ValueError(f"invalid JSON constant {name}")
