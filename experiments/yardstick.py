"""Exact yardstick (issue 16): how much of the exactly robust scale each certificate reaches.

For small ReLU nets (2-16-16-3 on Voronoi cells, 784-16-16-10 and 784-32-32-10 on MNIST), each
sample's box is optimised with CROWN (the default). Along that box's shape (radii times t about
x0, clipped to the domain) we find the largest scale t that is

* certified by CROWN, by full alpha-CROWN (50 steps) and by branch-and-bound (float64 leaves,
  ``--bab-time`` seconds per attempt), each by bisection;
* proved robust by MILP (``verify_box_milp``; a time-out counts as not robust, so MILP's t is a
  lower bound of the exact t), bisected to 1% between the largest certified t and the smallest
  t the attack (PGD with smoothed rounds, restarts and corners) breaks.

The table reports medians of t and of each certified t over MILP's t. A second block compares
the boxes themselves: CROWN's vs the joint alpha-CROWN optimiser's vs CROWN's grown by BaB (mean
log half-width), with MILP's t of the joint boxes (how far from the exact boundary they stop).
Run alone: ``.venv/bin/python experiments/yardstick.py`` (about 40 min on 2 cores); writes
``experiments/results/yardstick.md`` (summarised in ``tightness.md``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nonuniform import certify_boxes, load_dataset
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.engine.bounds import BoundedModel, margin_spec
from nonuniform.proof.bab import bab_prove
from nonuniform.proof.milp import verify_box_milp
from nonuniform.zoo.train import fit_full_batch

OUT = Path(__file__).parent / "results"
DATA = Path(__file__).parents[2] / "shared" / "data"
T_MAX = 16.0


def voronoi_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor, tuple[float, float]]:
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(3, 2, generator=g) * 2 - 1
    x = torch.rand(2000, 2, generator=g) * 2 - 1
    y = torch.cdist(x, centres).argmin(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return fit_full_batch(net, x, y, steps=300, lr=0.02), x[-200:], y[-200:], (-1.0, 1.0)


def mnist_net(hidden: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, tuple[float, float]]:
    train = load_dataset("mnist", "train", DATA, download=False)
    test = load_dataset("mnist", "test", DATA, download=False)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )  # fmt: skip
    fit_full_batch(net, train.inputs[:10000], train.labels[:10000], steps=400, lr=0.01)
    return net, test.inputs, test.labels, (0.0, 1.0)


def scaled(x0, lo, hi, t: float, domain):
    return (x0 - t * (x0 - lo)).clamp(*domain), (x0 + t * (hi - x0)).clamp(*domain)


def bisect(prove, t_lo: float, t_hi: float, rel: float = 0.01) -> float:
    """Largest t in [t_lo, t_hi) with prove(t), assuming prove(t_lo) (to a relative ``rel``)."""
    while t_hi / t_lo > 1 + rel:
        mid = math.sqrt(t_lo * t_hi)
        t_lo, t_hi = (mid, t_hi) if prove(mid) else (t_lo, mid)
    return t_lo


def scales(
    model, res, domain, bab_time: float, milp_time: float, milp_only: bool = False
) -> dict[str, list[float]]:
    """Per certified sample whose box scaling changes (not already the whole domain): largest t
    by each method, MILP and the attack (``milp_only``: CROWN's, MILP's and the attack's only)."""
    bm = BoundedModel(model.double(), tuple(res.inputs.shape[1:]), torch.float64)
    model.float()
    out: dict[str, list[float]] = {k: [] for k in ("crown", "alpha", "bab", "milp", "attack", "timeouts")}
    for i in np.nonzero(res.certified)[0]:
        x0 = torch.tensor(res.inputs[i : i + 1], dtype=torch.float64)
        lo, hi = torch.tensor(res.lower[i : i + 1]).double(), torch.tensor(res.upper[i : i + 1]).double()
        if all(torch.equal(a, b) for a, b in zip(scaled(x0, lo, hi, 1.01, domain), (lo, hi))):
            print(f"  sample {i}: the box is the whole domain, skipped", flush=True)
            continue
        t = sample_scales(model, bm, x0, lo, hi, int(res.preds[i]), domain, bab_time, milp_time, milp_only)
        for k, v in zip(out, t):
            out[k].append(v)
        print(f"  sample {i}: " + " ".join(f"{k} {v:.3f}" for k, v in zip(out, t)), flush=True)
    return out


def sample_scales(model, bm, x0, lo, hi, pred, domain, bab_time, milp_time, milp_only):
    """(CROWN t, alpha-CROWN t, BaB t, MILP t, attack t, MILP time-outs) of one box."""
    spec = margin_spec(torch.tensor([pred]), bm.num_classes).double()

    def bound_ok(t: float, method: str) -> bool:
        lo_t, hi_t = scaled(x0, lo, hi, t, domain)
        lb, _ = bm.bounds(lo_t, hi_t, spec, method, bound_upper=False, alpha_steps=50)
        return bool(lb.min() > 0)

    def broken(t: float) -> bool:
        lo_t, hi_t = scaled(x0, lo, hi, t, domain)
        f = falsify_boxes(model, lo_t.float(), hi_t.float(), torch.tensor([pred]), restarts=5, steps=50)
        return bool(f.broken[0])

    def bab_ok(t: float) -> bool:
        lo_t, hi_t = scaled(x0, lo, hi, t, domain)
        return bool(bab_prove(bm, lo_t, hi_t, spec, 0.0, time_budget=bab_time).proved[0])

    timeouts = 0

    def milp_ok(t: float) -> bool:
        nonlocal timeouts
        lo_t, hi_t = scaled(x0, lo, hi, t, domain)
        r = verify_box_milp(model, lo_t[0].float(), hi_t[0].float(), pred, time_limit=milp_time)
        timeouts += r.status == "timeout"
        return r.status == "robust"

    t_att = 1.0
    while t_att < T_MAX and not broken(t_att * 1.25):
        t_att *= 1.25
    t_att = min(t_att * 1.25, T_MAX)  # smallest scale seen broken (or the cap)
    t_c = bisect(lambda t: bound_ok(t, "crown"), 1.0, t_att)
    t_a = t_c if milp_only else bisect(lambda t: bound_ok(t, "alpha-crown"), t_c, t_att)
    t_b = t_a if milp_only else bisect(bab_ok, t_a, t_att, rel=0.02)
    t_m = bisect(milp_ok, t_b, t_att) if milp_ok(t_b) else bisect(milp_ok, 1.0, t_b)
    return t_c, t_a, t_b, t_m, t_att, timeouts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--bab-time", type=float, default=5.0)
    ap.add_argument("--milp-time", type=float, default=20.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    nets = {
        "2-16-16-3": voronoi_net,
        "784-16-16-10": lambda: mnist_net(16),
        "784-32-32-10": lambda: mnist_net(32),
    }
    rows, box_rows = [], []
    for name, make in nets.items():
        model, x, y, domain = make()
        x, y = x[: args.count], y[: args.count]
        t0 = time.perf_counter()
        crown = certify_boxes(model, x, y, domain=domain)
        t_crown = time.perf_counter() - t0
        t0 = time.perf_counter()
        joint = certify_boxes(model, x, y, method="alpha-crown", domain=domain)
        t_joint = time.perf_counter() - t0
        t0 = time.perf_counter()
        grown = certify_boxes(model, x, y, domain=domain, bab=True, bab_time=args.bab_time * 4)
        t_grown = time.perf_counter() - t0
        print(name, "boxes done", flush=True)
        s = scales(model, crown, domain, args.bab_time, args.milp_time)
        t = {k: np.array(v) for k, v in s.items()}
        med = {k: float(np.median(v)) for k, v in t.items()}
        ratio = {k: float(np.median(t[k] / t["milp"])) for k in ("crown", "alpha", "bab")}
        rows.append(
            f"| {name} | {len(t['milp'])} | {med['crown']:.3f} | {med['alpha']:.3f} | {med['bab']:.3f} | "
            f"{med['milp']:.3f} | {med['attack']:.2f} | {ratio['crown']:.3f} | {ratio['alpha']:.3f} | "
            f"{ratio['bab']:.3f} | {int(t['timeouts'].sum())} |"
        )
        sj = scales(model, joint, domain, args.bab_time, args.milp_time, milp_only=True)
        box_rows.append(
            f"| {name} | {crown.summary()['mean_log_radius']:.4f} ({t_crown / len(x):.2f} s) | "
            f"{joint.summary()['mean_log_radius']:.4f} ({t_joint / len(x):.2f} s) | "
            f"{grown.summary()['mean_log_radius']:.4f} ({t_grown / len(x):.2f} s) | "
            f"{np.median(sj['milp']):.3f} |"
        )
        print(rows[-1], box_rows[-1], sep="\n", flush=True)
    lines = [
        "# Exact yardstick: certified scale vs MILP's scale (issue 16)",
        "",
        f"Per net, the first {args.count} test points; boxes optimised by CROWN (default settings). "
        "t = largest scale of the box's radii about x0 (clipped to the domain) that each method "
        "proves: CROWN and full alpha-CROWN (50 steps) by bisection to 1%, branch-and-bound "
        f"({args.bab_time:g} s per attempt, float64 leaves) to 2%, MILP to 1% ({args.milp_time:g} s "
        "per problem; a time-out counts as not robust, so MILP's t is a lower bound of the exact "
        "t). 'attack' = smallest scale (steps of 1.25) that PGD with smoothed rounds breaks, "
        f"capped at {T_MAX:g}. Ratios are medians of per-sample t / MILP's t.",
        "Reproduce (alone, 2 cores): `.venv/bin/python experiments/yardstick.py`.",
        "",
        "| net | boxes | CROWN t | alpha-CROWN t | BaB t | MILP t | attack t | CROWN/MILP | alpha/MILP "
        "| BaB/MILP | MILP time-outs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Boxes: mean log half-width (seconds per sample) of CROWN's optimiser, the joint "
        f"alpha-CROWN optimiser, and CROWN's boxes grown by BaB ({args.bab_time * 4:g} s per "
        "sample); last column: median MILP t of the joint alpha-CROWN boxes along their own shape.",
        "",
        "| net | CROWN boxes | alpha-CROWN joint | CROWN + BaB | MILP t of joint boxes |",
        "|---|---:|---:|---:|---:|",
        *box_rows,
    ]
    (OUT / "yardstick.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
