"""Certified boxes, per-step robustness and bound tightness for the embedded recurrent models (issue 8).

Run: ``.venv/bin/python experiments/recurrent.py [--count 20] [--step-count 8] [--data-dir DIR]``.
Writes ``experiments/results/recurrent.md`` and ``recurrent_steps.png`` (about 30 min on 2 cores).

1. For each embedded RNN/LSTM/GRU (sequential MNIST and Fashion-MNIST: 28 steps of 28 pixels), the
   CLI certifies boxes around the first ``--count`` test images (``nonuniform certify``, CROWN,
   ``--iterations``) and re-checks them (``nonuniform verify``: fresh float64 bound, PGD with
   restarts and corners). Columns: mean log radius non-uniform vs uniform, seconds per sample.
2. Per-step robustness (``nonuniform.recurrent.steps.step_robustness``) on the first ``--step-count``
   images: the certified radius when only one row moves; a figure and a summary per model.
3. Tightness on mnist-lstm: the lower bound of the worst margin over uniform L-inf boxes, IBP vs
   Fast-Lin vs CROWN, next to the smallest margin PGD finds (an upper bound on the truth).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nonuniform import compute_bounds, load_dataset, load_model
from nonuniform.attacks.pgd import margin_objective, pgd_minimize
from nonuniform.engine.bounds import margin_spec
from nonuniform.recurrent.steps import step_robustness
from nonuniform.report.plots import step_profile_figure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"
MODELS = ["mnist-rnn", "mnist-lstm", "mnist-gru", "fashion-rnn", "fashion-lstm", "fashion-gru"]
CLI = [sys.executable, "-m", "nonuniform"]


def run_cli(*args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"nonuniform {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def certify_table(args, work: Path) -> list[str]:
    lines = [
        "## Certified boxes (CROWN), checked by `nonuniform verify`",
        "",
        f"First {args.count} test images per model; {args.iterations} augmented-Lagrangian iterations; "
        "mean log radius = mean log half-width over certified boxes (uniform: the best certified "
        "uniform box around the same images). `verify`: fresh float64 bound + PGD (5 restarts x 50 "
        "steps) + 256 corners per box.",
        "",
        "| model | arch | clean acc. | certified | mean log radius | uniform | gain (nats/feature) "
        "| s / sample | verify |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in MODELS:
        _, card = load_model(name)
        ds = card.dataset
        out = work / name
        summary = run_cli(
            "certify",
            name,
            "--out",
            str(out),
            "--dataset",
            ds,
            "--count",
            str(args.count),
            "--iterations",
            str(args.iterations),
            "--data-dir",
            args.data_dir,
            "--no-figures",
        )["summary"]
        report = run_cli("verify", str(out / "boxes.npz"))
        s = summary
        gain = (
            s["mean_log_radius"] - s["uniform_mean_log_radius"] if s["mean_log_radius"] is not None else None
        )
        verdict = (
            f"OK ({report['certified']} boxes)"
            if report["ok"]
            else f"FAILED: bound {report['bound_failures']} attack {report['attack_failures']}"
        )
        lines.append(
            f"| {name} | {card.arch} | {card.metrics.get('clean_accuracy', float('nan')):.3f} "
            f"| {s['certified']}/{s['samples']} | {s['mean_log_radius']:.3f} "
            f"| {s['uniform_mean_log_radius']:.3f} | {gain:+.3f} | {s['seconds_per_sample']:.2f} "
            f"| {verdict} |"
        )
        print(lines[-1], flush=True)
    return lines + [""]


def steps_section(args) -> list[str]:
    lines = [
        "## Per-step robustness",
        "",
        f"First {args.step_count} test images per model; radius = largest certified L-inf radius "
        "(clipped to [0, 1]) when only that step's 28 pixels move (CROWN, bisection on log radius, "
        "float64 re-check). A radius of 1 means the whole row is free.",
        "",
        "| model | median radius, steps 0-6 | 7-13 | 14-20 | 21-27 | most fragile step | s / sample |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    named = {}
    for name in MODELS:
        model, card = load_model(name)
        test = load_dataset(card.dataset, "test", args.data_dir)
        x, y = test.inputs[: args.step_count], test.labels[: args.step_count]
        t = time.perf_counter()
        res = step_robustness(model, x, y, "crown", card.domain, bisection_steps=10)
        sec = (time.perf_counter() - t) / len(x)
        named[name] = res
        med, _, _ = res.profile()
        quarters = [f"{10 ** np.median(med[k : k + 7]):.3f}" for k in (0, 7, 14, 21)]
        lines.append(f"| {name} | {' | '.join(quarters)} | {int(np.argmin(med))} | {sec:.1f} |")
        print(lines[-1], flush=True)
    step_profile_figure(
        named, OUT / "recurrent_steps.png", "certified radius when only one step moves (CROWN)"
    )
    return lines + ["", "![per-step robustness](recurrent_steps.png)", ""]


def tightness_section(args) -> list[str]:
    model, card = load_model("mnist-lstm")
    test = load_dataset(card.dataset, "test", args.data_dir)
    x, y = test.inputs[:40], test.labels[:40]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep][: args.tight_count], y[keep][: args.tight_count]
    spec = margin_spec(y, 10)
    lines = [
        "## Bound tightness on mnist-lstm: interval bounds vs ours",
        "",
        f"{len(x)} correctly classified test images; uniform L-inf boxes of radius eps clipped to "
        "[0, 1]. Entries: mean over images of the certified lower bound of the worst margin "
        "min_j f_y - f_j (higher is tighter), and in brackets the fraction of images certified "
        "(for PGD: not broken). "
        "PGD (5 restarts x 100 steps) gives the smallest margin it finds: the true minimum lies "
        "between the bound and it.",
        "",
        "| eps | IBP | Fast-Lin | CROWN | PGD (upper bound on the truth) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for eps in (0.00001, 0.0001, 0.0003, 0.001, 0.003, 0.01):
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        cells = []
        for method in ("ibp", "fastlin", "crown"):
            with torch.no_grad():
                lb, _ = compute_bounds(model, lo, hi, spec, method=method, bound_upper=False)
            worst = lb.min(1).values
            cells.append(f"{worst.mean():.3f} ({(worst > 0).float().mean():.0%})")
        _, v = pgd_minimize(margin_objective(model, y), lo, hi, steps=100, restarts=5)
        cells.append(f"{v.mean():.3f} ({(v > 0).float().mean():.0%})")
        lines.append(f"| {eps} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "auto_LiRPA is not in this environment: the only wheel on the package index is 0.3, which "
        "pins torch < 1.13 and needs torchvision, so the comparison with it was not run.",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--step-count", type=int, default=8)
    ap.add_argument("--tight-count", type=int, default=20)
    ap.add_argument(
        "--data-dir", default=os.environ.get("NONUNIFORM_DATA", str(ROOT.parent / "shared" / "data"))
    )
    ap.add_argument("--only", choices=["certify", "steps", "tightness"], nargs="*")
    args = ap.parse_args()
    torch.manual_seed(0)
    parts = args.only or ["certify", "steps", "tightness"]
    lines = [
        "# Recurrent models: certified boxes, per-step robustness, tightness",
        "",
        "Embedded sequence models read each 28x28 image as 28 steps (rows) of 28 pixels. "
        "Reproduce: `.venv/bin/python experiments/recurrent.py` (2 CPU cores).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if "certify" in parts:
            lines += certify_table(args, Path(tmp))
    if "steps" in parts:
        lines += steps_section(args)
    if "tightness" in parts:
        lines += tightness_section(args)
    name = "recurrent.md" if not args.only else f"recurrent_{'_'.join(parts)}.md"
    (OUT / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
