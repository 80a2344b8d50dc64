"""A benchmark's instances file: rows read with one-line errors, results written as the
competition's CSV row by row, resumed without redoing rows."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
from torch import nn

from nonuniform.verify.instances import InstancesError, read_instances, run_instances


@pytest.fixture
def bench(tmp_path):
    """Two instances on a tiny ReLU net: one safe box, one with a counterexample."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 2), str(tmp_path / "net.onnx"), dynamo=False)
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    for name, eps in (("small", 1e-3), ("huge", 100.0)):
        box = "".join(f"(assert (<= X_{i} {eps}))\n(assert (>= X_{i} {-eps}))\n" for i in range(2))
        label = int(net(torch.zeros(1, 2)).argmax())
        (tmp_path / f"{name}.vnnlib").write_text(head + box + f"(assert (>= Y_{1 - label} Y_{label}))\n")
    (tmp_path / "instances.csv").write_text("net.onnx,small.vnnlib,10\nnet.onnx,huge.vnnlib,10\n\n")
    return tmp_path, net


def test_rows_written_as_they_finish_and_resumed(bench):
    folder, net = bench
    rows = read_instances(folder / "instances.csv")
    assert [r.timeout for r in rows] == [10.0, 10.0] and rows[0].network == folder / "net.onnx"
    out = folder / "results.csv"
    calls = []

    def load(path):
        calls.append(path)
        return net, (2,)

    results = list(run_instances(rows, out, load, "toy"))
    assert [r.status for r in results] == ["unsat", "sat"] and len(calls) == 1  # one load per network
    lines = list(csv.reader(out.open()))
    assert [r[0] for r in lines] == ["toy", "toy"] and [r[4] for r in lines] == ["unsat", "sat"]
    assert (folder / "results_cex" / "net-huge.txt").read_text().startswith("sat\n((X_0 ")
    assert list(run_instances(rows, out, load, "toy", resume=True)) == []  # nothing left to do
    assert len(list(csv.reader(out.open()))) == 2


def test_an_unreadable_property_is_an_error_row_and_the_run_goes_on(bench):
    folder, net = bench
    (folder / "small.vnnlib").write_text("(assert (>= Y_0 0))")
    results = list(
        run_instances(read_instances(folder / "instances.csv"), folder / "r.csv", lambda p: (net, (2,)))
    )
    assert [r.status for r in results] == ["error", "sat"] and "declares no X_i" in results[0].detail


@pytest.mark.parametrize(
    "text, message",
    [
        ("net.onnx,small.vnnlib\n", "row 1 has 2 fields"),
        ("net.onnx,small.vnnlib,soon\n", "time-out 'soon' is not a number"),
        ("net.onnx,small.vnnlib,-1\n", "time-out must be positive"),
        ("net.onnx,missing.vnnlib,10\n", "file not found"),
        ("\n", "no instances"),
    ],
)
def test_bad_rows_are_named(bench, text, message):
    folder, _ = bench
    (folder / "bad.csv").write_text(text)
    with pytest.raises(InstancesError, match=message) as e:
        read_instances(folder / "bad.csv")
    assert "bad.csv" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("extra", [[], ["--leaf-relu"]])
def test_cli_runs_a_benchmark_folder(bench, extra):
    from nonuniform_cli.main import app
    from typer.testing import CliRunner

    folder, _ = bench
    out = folder / "results.csv"
    r = CliRunner().invoke(
        app, ["vnnlib", "--instances", str(folder / "instances.csv"), "--out", str(out), "--json", *extra]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"unsat": 1, "sat": 1}
    assert [row[4] for row in csv.reader(out.open())] == ["unsat", "sat"]


def test_vnncomp_scripts_follow_the_competition_interface(bench):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / ".venv" / "bin" / "nonuniform").exists():
        pytest.skip("the VNN-COMP scripts call .venv/bin/nonuniform (scripts/setup.sh makes it)")
    folder, _ = bench
    scripts = root / "scripts" / "vnncomp"
    onnx, prop, result = folder / "net.onnx", folder / "huge.vnnlib", folder / "out.txt"
    prep = subprocess.run(
        [scripts / "prepare_instance.sh", "v1", "toy", onnx, prop], capture_output=True, text=True
    )
    assert prep.returncode == 0, prep.stderr
    bad = subprocess.run([scripts / "prepare_instance.sh", "v1", "toy", onnx, folder / "instances.csv"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    args = [scripts / "run_instance.sh", "v1", "toy", onnx, prop, result, "20"]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert result.read_text().startswith("sat\n((X_0 ")
