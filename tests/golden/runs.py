"""A fixed set of runs whose outputs must not change when the code is reorganised.

``python -m tests.golden.runs --write`` records them in ``tests/data/golden/runs.npz``;
``tests/test_golden_runs.py`` recomputes them and compares. The runs call only the public API
(``nonuniform.compute_bounds``, ``certify_boxes``, ``load_model``, the CLI), so the same file
works before and after a move of the modules behind it. Recorded at commit 22a2ea2 (before the
sub-package layout) at one torch thread, which makes float32 sums reproducible; re-recorded on
2026-12-02 for two alpha-CROWN changes, each moving only the alpha-crown MLP box: intermediate
slopes per needed neuron (slots; at most 8e-6 in the margin), then CROWN's pipeline as the warm
start (``crown_start``; log-volume +8.7 and +10.7 nats).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "runs.npz"
#: What certify --json prints that depends on the machine's speed, not on the boxes.
TIMING_KEYS = ("seconds", "wall_seconds", "mean_seconds", "seconds_per_sample")


def _images(n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    package = Path(__file__).resolve().parents[2] / "nonuniform"
    z = np.load(next(package.rglob("assets/samples/mnist.npz")))  # wherever the layout keeps it
    key = "inputs" if "inputs" in z.files else "images"
    x = torch.from_numpy(z[key][start : start + n].astype(np.float32))
    if z[key].dtype == np.uint8:
        x = x / 255.0
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x, torch.from_numpy(z["labels"][start : start + n].astype(np.int64))


def _boxes_arrays(prefix: str, res) -> dict[str, np.ndarray]:
    keys = ("lower", "upper", "certified", "log_volume", "uniform_radius", "margin", "used_uniform", "preds")
    return {f"{prefix}.{k}": np.asarray(getattr(res, k)) for k in keys}


def compute() -> dict[str, np.ndarray]:
    """Every recorded output, by name."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float32 sums are reduced in a thread-count-dependent order
    try:
        return _compute()
    finally:
        torch.set_num_threads(threads)


def _compute() -> dict[str, np.ndarray]:
    import nonuniform as nu

    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    x, y = _images(4)
    mlp, _ = nu.load_model("mnist-mlp")
    for method in ("ibp", "fastlin", "crown", "alpha-crown"):
        extra = {"alpha_steps": 5} if method == "alpha-crown" else {}
        lb, ub = nu.compute_bounds(
            mlp, (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1), method=method, **extra
        )
        out[f"bounds.mlp.{method}.lb"] = lb.detach().numpy()
        out[f"bounds.mlp.{method}.ub"] = ub.detach().numpy()
    cnn, _ = nu.load_model("mnist-cnn-small")
    lb, ub = nu.compute_bounds(cnn, (x[:2] - 0.01).clamp(0, 1), (x[:2] + 0.01).clamp(0, 1), method="crown")
    out["bounds.cnn.crown.lb"], out["bounds.cnn.crown.ub"] = lb.detach().numpy(), ub.detach().numpy()
    lstm, _ = nu.load_model("mnist-lstm")
    lb, ub = nu.compute_bounds(lstm, (x[:2] - 1e-3).clamp(0, 1), (x[:2] + 1e-3).clamp(0, 1), method="crown")
    out["bounds.lstm.crown.lb"], out["bounds.lstm.crown.ub"] = lb.detach().numpy(), ub.detach().numpy()

    out.update(_boxes_arrays("certify.mlp.crown", nu.certify_boxes(mlp, x, y, method="crown")))
    out.update(
        _boxes_arrays(
            "certify.mlp.fastlin.asym",
            nu.certify_boxes(mlp, x[:2], y[:2], method="fastlin", asymmetric=True, iterations=5),
        )
    )
    out.update(
        _boxes_arrays(
            "certify.mlp.alpha",
            nu.certify_boxes(mlp, x[:2], y[:2], method="alpha-crown", iterations=3, alpha_steps_check=5),
        )
    )
    out.update(_boxes_arrays("certify.cnn.crown", nu.certify_boxes(cnn, x[:2], y[:2], method="crown")))
    out["cli.certify"] = np.array(_cli_certify_json())
    return out


def _drop_timing(obj):
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def _cli_certify_json() -> str:
    """``nonuniform certify mnist-mlp --count 3 --json`` without its timings and paths."""
    import tempfile

    from nonuniform_cli.main import app
    from typer.testing import CliRunner

    with tempfile.TemporaryDirectory() as tmp:
        r = CliRunner().invoke(
            app, ["certify", "mnist-mlp", "--count", "3", "--no-figures", "--json", "--out", f"{tmp}/run"]
        )
        assert r.exit_code == 0, r.output
        data = json.loads(r.stdout)
        run = json.loads((Path(tmp) / "run" / "run.json").read_text())
    data["summary"].pop("data", None)  # mentions where the samples were found
    data["run_options"] = {k: v for k, v in run["options"].items() if k in ("method", "clip", "domain")}
    return json.dumps(_drop_timing(data), sort_keys=True)


if __name__ == "__main__":
    if "--write" in sys.argv:
        np.savez_compressed(GOLDEN, **compute())
        print(f"wrote {GOLDEN}")
