"""`verify`, `rank` and `explain` give today what they gave before the CLI became a thin layer.

``tests/data/golden/`` holds a fixed run (``boxes.npz``: mnist-mlp, 8 samples) and what the
commands printed and wrote for it at commit 2e19c49, when their logic still lived in the 900-line
``cli/main.py`` and the explanation baselines were hand-written (before Captum). Regenerate only
on purpose, from a checkout of that commit::

    PYTHONPATH=OLD python -c 'from cli.main import app; app()' verify boxes.npz --json > verify.json
    ... rank boxes.npz --out R --json; cp R/ranking.json R/ranking_mnist-mlp.npz .
    ... explain boxes.npz --out E --evaluate --max-samples 2 --attack-steps 10 --bisection-steps 6
        --json; cp E/explain.json E/explanations.npz .

Keys added since (e.g. new baselines, verify's ``malformed``) are allowed; every old key must
hold the same value (floats to 1e-6 relative).

One deliberate change: ``explain.json``'s ``evaluation`` numbers were regenerated in session 5
with the current CLI, after the attack's margin objective was fixed (it compared the predicted
class with the *lowest* other logit instead of the runner-up, so every attack-based curve was
far too optimistic). Everything else in that file, and ``explanations.npz``, was identical to
2e19c49's output before the regeneration (checked key by key).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nonuniform_cli.main import app
from typer.testing import CliRunner

GOLDEN = Path(__file__).parent / "data" / "golden"


def assert_contains(old, new, path: str = "", rel: float = 1e-6, abs_: float = 1e-9) -> None:
    """Every value of ``old`` is in ``new`` (numbers to ``rel`` relative, ``abs_`` absolute)."""
    if isinstance(old, dict):
        assert isinstance(new, dict), path
        for k, v in old.items():
            if k == "file":  # where the boxes were read from: the test's copy
                continue
            assert k in new, f"{path}{k} missing"
            assert_contains(v, new[k], f"{path}{k}.", rel, abs_)
    elif isinstance(old, list):
        assert isinstance(new, list) and len(old) == len(new), path
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            assert_contains(a, b, f"{path}[{i}].", rel, abs_)
    elif isinstance(old, float) and isinstance(new, (int, float)):
        assert new == pytest.approx(old, rel=rel, abs=abs_), path
    else:
        assert old == new, path


@pytest.fixture
def boxes(tmp_path) -> Path:
    path = tmp_path / "boxes.npz"
    shutil.copy(GOLDEN / "boxes.npz", path)
    return path


def invoke(*args) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_verify_report_unchanged(boxes):
    new = json.loads(invoke("verify", boxes, "--json"))
    assert_contains(json.loads((GOLDEN / "verify.json").read_text()), new)


def test_rank_unchanged(boxes, tmp_path):
    invoke("rank", boxes, "--out", tmp_path / "rank", "--json")
    assert_contains(
        json.loads((GOLDEN / "ranking.json").read_text()),
        json.loads((tmp_path / "rank" / "ranking.json").read_text()),
    )
    old, new = np.load(GOLDEN / "ranking_mnist-mlp.npz"), np.load(tmp_path / "rank" / "ranking_mnist-mlp.npz")
    for k in old.files:
        np.testing.assert_allclose(new[k], old[k], rtol=1e-6, err_msg=k)


def test_explain_and_its_evaluation_unchanged(boxes, tmp_path):
    out = tmp_path / "explain"
    invoke("explain", boxes, "--out", out, "--evaluate", "--max-samples", 2, "--attack-steps", 10,
           "--bisection-steps", 6, "--json")  # fmt: skip
    old = json.loads((GOLDEN / "explain.json").read_text())
    assert {"saliency |grad|", "|integrated gradients|"} <= set(old["evaluation"])  # Captum now
    assert_contains(old, json.loads((out / "explain.json").read_text()))
    a, b = np.load(GOLDEN / "explanations.npz"), np.load(out / "explanations.npz")
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k
