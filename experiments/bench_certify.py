"""Seconds per sample to certify MNIST test images, per bound method, batch size and width.

Run: ``.venv/bin/python experiments/bench_certify.py``; writes
``experiments/results/bench_certify.md``. Uses the 100 embedded MNIST test images and the
embedded MLP 784-100-100-10 (normal training); the width sweep uses the same data with randomly
initialised wider MLPs (cost, not box size, is what is measured there).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from nonuniform import certify_boxes, load_model
from nonuniform.zoo.models import build_model
from nonuniform.zoo.samples import load_samples

torch.set_num_threads(2)


def run(model, x, y, **kw) -> tuple[float, dict]:
    t = time.perf_counter()
    res = certify_boxes(model, x, y, **kw)
    sec = (time.perf_counter() - t) / len(x)
    s = res.summary()
    return sec, {
        "certified": f"{s['certified']}/{s['samples']}",
        "mlr": s["mean_log_radius"],
        "umlr": s["uniform_mean_log_radius"],
        "iters": float(np.mean(res.iterations)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_certify.md"))
    args = ap.parse_args()
    x, y = load_samples("mnist")
    model, _ = load_model("mnist-mlp")
    lines = [
        "# Certification speed (CPU, 2 threads)",
        "",
        "100 embedded MNIST test images, default solver settings "
        "(`nonuniform.certify.settings.solver_defaults`: "
        "8 balancing steps for fastlin/crown, 60 augmented-Lagrangian iterations for alpha-crown; "
        "float64 final check). Seconds per sample = wall time / samples; iterations = AL iterations.",
        "Reproduce: `.venv/bin/python experiments/bench_certify.py`.",
        "",
        "## Per method (MLP 784-100-100-10, batch 100)",
        "",
        "| method | s / sample | certified | mean log radius | uniform mean log radius | mean iterations |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in ("fastlin", "crown", "alpha-crown"):
        sec, s = run(model, x, y, method=method, batch_size=100)
        lines.append(
            f"| {method} | {sec:.3f} | {s['certified']} | {s['mlr']:.3f} | {s['umlr']:.3f} "
            f"| {s['iters']:.0f} |"
        )
        print(lines[-1], flush=True)
    lines += ["", "## Batch size (crown, 100 samples)", "", "| batch | s / sample |", "|---:|---:|"]
    for b in (10, 25, 50, 100):
        sec, _ = run(model, x, y, method="crown", batch_size=b)
        lines.append(f"| {b} | {sec:.3f} |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "## Width (crown, batch 50, 50 samples, random-init MLP 784-w-w-10)",
        "",
        "| width | s / sample |",
        "|---:|---:|",
    ]
    for w in (100, 256, 512):
        torch.manual_seed(0)
        net = build_model(f"mlp:{w},{w}:relu", mean=0.1307, std=0.3081).eval()
        sec, _ = run(net, x[:50], None, method="crown", batch_size=50)
        lines.append(f"| {w} | {sec:.3f} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
