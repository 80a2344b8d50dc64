"""The HTML report: self-contained, complete, and rendered by a real browser without errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from nonuniform_cli.main import app
from typer.testing import CliRunner

from nonuniform import SequenceClassifier, certify_boxes
from nonuniform.report.html import write_report
from nonuniform.runs.rundir import RunDir

runner = CliRunner()
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    args = ["certify", "mnist-mlp", "--out", str(out), "--count", "4", "--iterations", "5", "--no-figures"]
    res = runner.invoke(app, [*args, "--report"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["verify", str(out / "boxes.npz"), "--attack-restarts", "1"]).exit_code == 0
    assert runner.invoke(app, ["rank", str(out / "boxes.npz"), "--out", str(out / "rank")]).exit_code == 0
    expl = ["explain", str(out / "boxes.npz"), "--out", str(out / "explain"), "--certified", "--eps", "0.02"]
    assert runner.invoke(app, expl).exit_code == 0
    runner.invoke(app, ["report", str(out)])
    return out


def test_report_is_self_contained_and_complete(run_dir):
    html = (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report must not load anything"
    assert "<script src" not in html and "<link" not in html
    assert f'id="certified">{summary["certified"]}/{summary["samples"]}<' in html
    assert f"{summary['mean_log_radius']:.3f}" in html
    assert summary["model"]["sha256"] in html and "torch " + torch.__version__ in html
    assert html.count("<tr class=") == 4  # the sortable table has every sample
    assert 'id="verify"' in html and 'id="rank"' in html and "data:image/png;base64," in html
    assert 'id="explain"' in html and "per_sample[0].minimal" in html  # certified explanations


def _report_for(model, x, tmp_path, name: str):
    boxes = certify_boxes(model, x, iterations=3)
    boxes.settings["model"] = {"name": name, "source": "test", "sha256": "0" * 64}
    run = RunDir(tmp_path / name)
    run.open({"model": name}, resume=False)
    run.finish(boxes, boxes.summary())
    return write_report(tmp_path / name)


def test_report_of_flat_features_and_of_a_sequence_model(tmp_path):
    torch.manual_seed(0)
    flat = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    path = _report_for(flat, torch.rand(3, 12), tmp_path, "flat")
    assert 'id="certified">' in path.read_text()
    seq = SequenceClassifier(torch.nn.GRU(4, 6, batch_first=True), torch.nn.Linear(6, 3)).eval()
    path = _report_for(seq, torch.rand(2, 5, 4), tmp_path, "gru")
    assert "data:image/png;base64," in path.read_text()


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (Debian package `chromium`)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    url = (run_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    common = [BROWSER, *FLAGS, "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"]
    r = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'a'}", f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'b'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, f"console messages: {console}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['certified']}/{summary['samples']}" in dom.stdout
    assert f"{summary['uniform_mean_log_radius']:.3f}" in dom.stdout
    rows = re.findall(r'<tr class="[^"]*">\s*<td>(\d+)</td>', dom.stdout)
    assert sorted(map(int, rows)) == list(np.arange(4))
