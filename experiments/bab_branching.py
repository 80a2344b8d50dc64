"""What each part of the ReLU branch-and-bound buys (issue 36): an ablation on fixed boxes.

For each embedded MLP named, the first N test images are certified with CROWN (default settings);
each certified box is scaled up by ``--scale`` (clipped to [0, 1]) and
:class:`~nonuniform.proof.bab.ReluSplit` tries to prove it within ``--seconds``, in four
configurations, each adding one part:

* ``beta, area``: CROWN slopes, beta multipliers, area x outgoing-weight branching (the
  branch-and-bound before 2026-12-02);
* ``beta, BaBSR``: branching by BaBSR's intercept score from the leaf's final pass;
* ``+ leaf alpha``: slopes optimised in the leaves with the multipliers, warm-started from the parent;
* ``+ root alpha``: alpha-CROWN at the root, whose intermediate bounds bound every leaf (the default);
* ``default with area branching``: the default with the old branching rule.

Reports boxes proved, and median leaves and seconds over the boxes each configuration proves and
over those every configuration proves.
Run alone: ``.venv/bin/python experiments/bab_branching.py [--count 20] [--scale 1.3] [--seconds 5]``;
writes ``experiments/results/bab_branching.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from nonuniform import BoundedModel, certify_boxes, load_model, margin_spec
from nonuniform.proof.bab import ReluSplit
from nonuniform.zoo.samples import load_samples

CONFIGS = {
    "beta, area": dict(root_alpha_steps=0, leaf_alpha=False, branching="area"),
    "beta, BaBSR": dict(root_alpha_steps=0, leaf_alpha=False, branching="babsr"),
    "+ leaf alpha": dict(root_alpha_steps=0, leaf_alpha=True, branching="babsr"),
    "+ root alpha (default)": dict(leaf_alpha=True, branching="babsr"),
    "default with area branching": dict(leaf_alpha=True, branching="area"),
}
DATA = {
    "mnist-mlp": "mnist",
    "mnist-mlp-pgd": "mnist",
    "fashion-mlp": "fashion",
    "fashion-mlp-pgd": "fashion",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["mnist-mlp", "mnist-mlp-pgd"], choices=list(DATA))
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--scale", type=float, default=1.3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bab_branching.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        model, _ = load_model(name)
        x, y = load_samples(DATA[name])
        boxes = certify_boxes(model, x[: args.count], y[: args.count])
        idx = np.nonzero(boxes.certified)[0]
        x0 = torch.tensor(boxes.inputs[idx], dtype=torch.float64)
        lo = (x0 - (x0 - torch.tensor(boxes.lower[idx], dtype=torch.float64)) * args.scale).clamp(min=0)
        hi = (x0 + (torch.tensor(boxes.upper[idx], dtype=torch.float64) - x0) * args.scale).clamp(max=1)
        bm = BoundedModel(model, tuple(x0.shape[1:]), torch.float64)
        spec = margin_spec(torch.tensor(boxes.preds[idx]), 10).double()
        results = {}
        for label, options in CONFIGS.items():
            out = []
            for k in range(len(idx)):
                t = time.perf_counter()
                search = ReluSplit(bm, lo[k : k + 1], hi[k : k + 1], spec[k : k + 1], 1e-5, **options)
                search.run(t + args.seconds)
                out.append((search.proved, search.leaves, time.perf_counter() - t))
            results[label] = out
            print(name, label, sum(p for p, _, _ in out), flush=True)
        common = [k for k in range(len(idx)) if all(results[c][k][0] for c in CONFIGS)]
        for label, out in results.items():
            own = [k for k in range(len(idx)) if out[k][0]]
            rows.append(
                f"| {name} | {label} | {len(own)}/{len(idx)} | {_median(out, own, 1):.0f} | "
                f"{_median(out, own, 2):.2f} | {_median(out, common, 1):.0f} | "
                f"{_median(out, common, 2):.2f} |"
            )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    lines = [
        "# ReLU branch-and-bound: what each part buys",
        "",
        f"First {args.count} test images per model, CROWN boxes (default certify) scaled by "
        f"{args.scale:g} (clipped to [0, 1]); one `ReluSplit` per box with {args.seconds:g} s, threshold "
        f"1e-5, float64 leaves; 1 torch thread, run alone; commit {commit.strip()}. Median leaves and "
        "seconds over the boxes each configuration proves, and over those all prove (seconds include "
        "the root's alpha-CROWN).",
        f"Reproduce: `.venv/bin/python experiments/bab_branching.py --count {args.count} --scale "
        f"{args.scale:g} --seconds {args.seconds:g}`.",
        "",
        "| model | configuration | proved | median leaves | median s | median leaves (proved by all) "
        "| median s (proved by all) |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _median(out: list, rows: list[int], field: int) -> float:
    return float(np.median([out[k][field] for k in rows])) if rows else float("nan")


if __name__ == "__main__":
    from nonuniform.runtime.allocator import configure_allocator

    configure_allocator()
    main()
