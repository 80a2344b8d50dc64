"""How far certified boxes are from the truth (issue 9, part 2).

For each certified box, the largest scale t >= 1 such that the box scaled by t about x0 (radii
times t, clipped to the domain) still survives a strong attack (PGD, 5 restarts x 50 steps, plus
256 random corners), found by bisection on log t in [0, log 64]: an upper bound of how much the
certificate leaves on the table. The exact counterpart (MILP's t against CROWN's, alpha-CROWN's
and branch-and-bound's on small ReLU nets) is ``experiments/yardstick.py`` / ``yardstick.md``.

commit 64d5d30: the attack's margin objective was wrong before (it compared the predicted class with
the lowest other logit), which made this table's t about 5x too large; re-run with the fix.
Run: ``.venv/bin/python experiments/tightness.py [--count 30]``; writes
``experiments/results/tightness.md``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from nonuniform import certify_boxes, load_model
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.zoo.samples import load_samples

OUT = Path(__file__).parent / "results"
T_MAX = 64.0


def scaled(res, i, t):
    x = torch.tensor(res.inputs[i])
    lo = (x - t * (x - torch.tensor(res.lower[i]))).clamp(0, 1)
    hi = (x + t * (torch.tensor(res.upper[i]) - x)).clamp(0, 1)
    return lo, hi


def attack_scale(model, res, steps: int = 12) -> np.ndarray:
    """Per certified box: largest t (bisection in log space) the attack cannot break."""
    idx = np.nonzero(res.certified)[0]
    lo_t = np.zeros(len(idx))
    hi_t = np.full(len(idx), math.log(T_MAX))
    preds = torch.tensor(res.preds[idx])
    for _ in range(steps):
        mid = (lo_t + hi_t) / 2
        boxes = [scaled(res, i, math.exp(m)) for i, m in zip(idx, mid)]
        lo = torch.stack([b[0] for b in boxes])
        hi = torch.stack([b[1] for b in boxes])
        broken = falsify_boxes(model, lo, hi, preds, restarts=5, steps=50, corners=256).broken.numpy()
        hi_t = np.where(broken, mid, hi_t)
        lo_t = np.where(broken, lo_t, mid)
    return np.exp(lo_t)


def describe(t: np.ndarray) -> str:
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return f"{med:.2f} | {q1:.2f} - {q3:.2f} | {t.min():.2f} | {t.max():.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    x, y = load_samples("mnist")
    lines = [
        "# Tightness: how far certified boxes are from the empirical and the exact boundary",
        "",
        "t = largest scale of the certified box (radii x t about x0, clipped to [0, 1]) that an "
        "attack cannot break (PGD 5 restarts x 50 steps, 4 smoothed rounds, 256 corners); "
        f"bisection on log t in [0, log {T_MAX:g}], so t = {T_MAX:g} means never broken. "
        f"First {args.count} embedded MNIST test images. The attack is PGD with smoothed rounds and "
        "corners, with the runner-up margin objective (fixed in commit 64d5d30; before, it compared "
        "with the lowest other logit and t came out ~5x too large). MILP against certified t on "
        "small ReLU nets: `yardstick.md`.",
        "Reproduce: `.venv/bin/python experiments/tightness.py`.",
        "",
        "| model | method | checker | median t | IQR | min | max |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name in ("mnist-mlp", "mnist-mlp-pgd"):
        model, _ = load_model(name)
        for method in ("fastlin", "crown", "alpha-crown"):
            res = certify_boxes(model, x[: args.count], y[: args.count], method=method)
            lines.append(f"| {name} | {method} | PGD | {describe(attack_scale(model, res))} |")
            print(lines[-1], flush=True)
    yard = OUT / "yardstick.md"
    if yard.exists():  # the exact counterpart, from experiments/yardstick.py
        lines += ["", "## " + yard.read_text().lstrip("# ")]
    (OUT / "tightness.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
