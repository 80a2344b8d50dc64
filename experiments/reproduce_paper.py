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
``experiments/results/reproduce_paper.md``. With ``--larger`` it runs only the larger-box settings
of issue 16 (CROWN, alpha-CROWN with slopes optimised jointly with the radii, CROWN grown by
branch-and-bound with ``--bab-time`` seconds per image) and rewrites only that section of the file.
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
LARGER_HEADING = "## Larger boxes (issue 16)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument(
        "--data-dir", default=os.environ.get("NONUNIFORM_DATA", str(ROOT.parent / "shared" / "data"))
    )
    ap.add_argument("--larger", action="store_true", help="only the larger-box rows (issue 16)")
    ap.add_argument("--bab-time", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.larger:
        return larger(args)
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
    old = (OUT / "reproduce_paper.md").read_text() if (OUT / "reproduce_paper.md").exists() else ""
    kept = old[old.index(LARGER_HEADING) :] if LARGER_HEADING in old else ""
    (OUT / "reproduce_paper.md").write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))


def larger(args) -> None:
    """CROWN vs joint alpha-CROWN vs CROWN + BaB boxes (mean log half-width over the samples that
    all three certify, seconds per sample); replaces the section under LARGER_HEADING."""
    settings = {
        "crown (default)": dict(method="crown"),
        "alpha-crown, joint slopes": dict(method="alpha-crown"),
        f"crown + BaB ({args.bab_time:g} s)": dict(method="crown", bab=True, bab_time=args.bab_time),
    }
    lines = [
        LARGER_HEADING,
        "",
        f"First {args.count} test images per data set, default settings (60 iterations, polish), "
        "2 threads, run alone. Mean log half-width over the samples all three settings certify; "
        "gain = difference to CROWN. BaB grows CROWN's boxes by the largest factor it proves in "
        f"float64 within {args.bab_time:g} s per image.",
        f"Reproduce: `.venv/bin/python experiments/reproduce_paper.py --larger --count {args.count} "
        f"--bab-time {args.bab_time:g}`.",
        "",
        "| model | setting | certified | mean log r | gain | s / sample | time vs CROWN |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, dataset in MODELS.items():
        model, _ = load_model(name)
        x, y = load_dataset(dataset, "test", args.data_dir)
        x, y = x[: args.count], y[: args.count]
        runs = {label: certify_boxes(model, x, y, **opts) for label, opts in settings.items()}
        both = np.logical_and.reduce([r.certified for r in runs.values()])
        base = runs["crown (default)"]
        base_r, base_s = base.mean_log_radius[both].mean(), np.mean(base.seconds)
        for label, r in runs.items():
            mlr = r.mean_log_radius[both].mean()
            lines.append(
                f"| {name} | {label} | {int(r.certified.sum())}/{len(r.certified)} | {mlr:.4f} | "
                f"{mlr - base_r:+.4f} | {np.mean(r.seconds):.2f} | {np.mean(r.seconds) / base_s:.1f}x |"
            )
            print(lines[-1], flush=True)
    old = (OUT / "reproduce_paper.md").read_text()
    head = old[: old.index(LARGER_HEADING)].rstrip("\n") if LARGER_HEADING in old else old.rstrip("\n")
    (OUT / "reproduce_paper.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
