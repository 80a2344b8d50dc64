"""Liu et al. (2019)'s setting next to our defaults (issue 9, part 1).

Settings, on the embedded MNIST and Fashion-MNIST MLPs (normal and PGD-trained), first N test
images (default 100):

* paper: symmetric, unclipped boxes; per-logit Fast-Lin constraints (lower f_c - upper f_j);
* fastlin margin: the same with the margins bounded directly;
* crown margin: CROWN instead of Fast-Lin (still unclipped);
* crown clipped: boxes intersected with [0, 1] (our default);
* crown asymmetric: separate radii below/above, clipped;
* alpha-crown clipped.

Mean log radius is the mean over features of log half-width of the box (for clipped boxes, of the
part inside the domain); gain is the log-volume over the best uniform box of the same setting.
Run: ``.venv/bin/python experiments/reproduce_paper.py [--count 100]``; writes
``experiments/results/reproduce_paper.md``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from nonuniform import certify_boxes, load_dataset, load_model

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"
MODELS = {
    "mnist-mlp": "mnist",
    "mnist-mlp-pgd": "mnist",
    "fashion-mlp": "fashion-mnist",
    "fashion-mlp-pgd": "fashion-mnist",
}
SETTINGS = {
    "paper (fastlin, per-logit, unclipped)": dict(method="fastlin", per_logit=True, clip=False),
    "fastlin margin, unclipped": dict(method="fastlin", clip=False),
    "crown margin, unclipped": dict(method="crown", clip=False),
    "crown clipped (default)": dict(method="crown"),
    "crown asymmetric clipped": dict(method="crown", asymmetric=True),
    "alpha-crown clipped": dict(method="alpha-crown"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument(
        "--data-dir", default=os.environ.get("NONUNIFORM_DATA", str(ROOT.parent / "shared" / "data"))
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    lines = [
        "# Reproducing Liu et al. (2019) and what each change buys",
        "",
        f"First {args.count} test images per data set; embedded MLP 784-100-100-10 models; "
        "100 augmented-Lagrangian iterations; every box re-checked in float64.",
        f"Reproduce: `.venv/bin/python experiments/reproduce_paper.py --count {args.count}`.",
        "",
        "| model | setting | certified | mean log r | uniform mean log r | gain (nats) | apothem "
        "| s / sample |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, dataset in MODELS.items():
        model, _ = load_model(name)
        x, y = load_dataset(dataset, "test", args.data_dir)
        x, y = x[: args.count], y[: args.count]
        for label, opts in SETTINGS.items():
            res = certify_boxes(model, x, y, batch_size=100, **opts)
            s = res.summary()
            lines.append(
                f"| {name} | {label} | {s['certified']}/{s['samples']} | {s['mean_log_radius']:.3f} | "
                f"{s['uniform_mean_log_radius']:.3f} | {s['mean_volume_gain_nats']:.1f} | "
                f"{s['mean_apothem']:.4f} | {np.mean(res.seconds):.3f} |"
            )
            print(lines[-1], flush=True)
    (OUT / "reproduce_paper.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
