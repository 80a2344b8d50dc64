"""Issue 21's tables: optimised recurrent relaxations vs CROWN, and what training buys.

Run alone (2 cores): ``.venv/bin/python experiments/recurrent_second.py [--only alpha regimes]``.
Rewrites the marked sections of ``experiments/results/recurrent.md`` (the rest of that file
comes from ``experiments/recurrent.py``; the bound-time table from ``bench_recurrent.py``).

1. ``alpha``: on every embedded sequence model, boxes around the first ``--count`` embedded test
   images certified with CROWN and with alpha-CROWN (joint optimisation of box and relaxation
   parameters; the final float64 proof re-optimises the parameters from CROWN's), each alpha box
   re-checked by :func:`nonuniform.verify.boxes.verify_boxes` (fresh float64 bound, PGD, corners).
2. ``regimes``: lstm:16 trained normally, with PGD and with spectral normalisation on sequential
   MNIST and Fashion-MNIST (same recipe otherwise): clean and PGD accuracy, certified uniform
   radius and non-uniform box (CROWN), and the per-step robustness profile.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from nonuniform import certify_boxes, load_dataset, load_model
from nonuniform.recurrent.steps import step_robustness
from nonuniform.verify.boxes import verify_boxes
from nonuniform.zoo.models import build_model
from nonuniform.zoo.samples import load_samples
from nonuniform.zoo.train import TrainConfig, evaluate, train

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "recurrent.md"
MODELS = ["mnist-rnn", "mnist-lstm", "mnist-gru", "fashion-rnn", "fashion-lstm", "fashion-gru"]


def replace_section(name: str, lines: list[str]) -> None:
    """Write ``lines`` between ``<!-- section:name -->`` markers of recurrent.md (appended if new)."""
    text = OUT.read_text()
    block = f"<!-- section:{name} -->\n" + "\n".join(lines) + f"\n<!-- /section:{name} -->"
    pattern = re.compile(rf"<!-- section:{name} -->.*?<!-- /section:{name} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    OUT.write_text(text)


def mean_finite(a) -> float:
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def alpha_section(args) -> list[str]:
    lines = [
        "## Optimised relaxations (alpha-CROWN) vs CROWN",
        "",
        f"First {args.count} embedded test images per model, {args.iterations} iterations. alpha-CROWN: "
        "gate-plane weights, tangent points of the tanh/sigmoid lines and ReLU slopes optimised jointly "
        "with the box (one parameter set per sample), the scale searches reuse the optimiser's parameters "
        f"(`--alpha-steps {args.alpha_steps}`), and the final float64 proof re-optimises the parameters "
        f"from CROWN's ({args.check_steps} steps, `--alpha-steps-check {args.check_steps}`) and keeps the "
        "max with CROWN. Mean log radius over certified boxes; `verify` re-checks every alpha box (fresh "
        "float64 bound with the same proof procedure, PGD 5x50, 256 corners). Batch of "
        f"{args.count}, so seconds per sample are higher than at the default batch of 25.",
        "",
        "| model | CROWN certified | CROWN mean log radius | s / sample | alpha certified | alpha mean log "
        "radius | gain | s / sample | verify (alpha boxes) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    section = re.search(r"<!-- section:alpha -->(.*?)<!-- /section:alpha -->", OUT.read_text(), re.S)
    kept = {
        line.split("|")[1].strip(): line
        for line in (section.group(1).splitlines() if section else [])
        if line.startswith("| ") and line.split("|")[1].strip() in MODELS
    }
    for name in MODELS:
        if name not in args.models:  # keep the row of an earlier run (same settings: see the text)
            if name in kept:
                lines.append(kept[name])
            continue
        model, card = load_model(name)
        x, y = load_samples(card.dataset)
        x, y = x[: args.count], y[: args.count]
        row = []
        for method, opts in [
            ("crown", {}),
            ("alpha-crown", {"alpha_steps": args.alpha_steps, "alpha_steps_check": args.check_steps}),
        ]:
            t = time.perf_counter()
            res = certify_boxes(model, x, y, method=method, iterations=args.iterations, **opts)
            sec = (time.perf_counter() - t) / len(x)
            mlr = mean_finite(np.where(res.certified, res.mean_log_radius, np.nan))
            row.append((int(res.certified.sum()), mlr, sec, res))
        (nc, mc, sc, _), (na, ma, sa, res_a) = row
        report = verify_boxes(model, res_a)
        verdict = f"OK ({report.certified} boxes)" if report.ok else f"FAILED {report.to_dict()}"
        lines.append(
            f"| {name} | {nc}/{len(x)} | {mc:.3f} | {sc:.1f} | {na}/{len(x)} | {ma:.3f} | {ma - mc:+.3f} "
            f"| {sa:.1f} | {verdict} |"
        )
        print(lines[-1], flush=True)
    return lines


REGIMES = {
    "normal": {},
    "PGD (eps 0.03)": {"adv_eps": 0.03, "pgd_steps": 5},
    "spectral norm": {"spectral_norm": True},
}


def regimes_section(args) -> list[str]:
    lines = [
        "## Training regimes (lstm:16)",
        "",
        f"lstm:16 trained for {args.epochs} epochs (Adam, one-cycle lr 3e-3, batch 128, seed 0) on the "
        "full training set: normally, with PGD (eps 0.03, 5 steps) or with spectral normalisation of "
        "every weight matrix (input, hidden-to-hidden and head). Clean accuracy on the test set; PGD "
        f"accuracy (eps 0.03, 20 steps) on its first 1,000 images; CROWN boxes around the first "
        f"{args.count} test images ({args.iterations} iterations): certified uniform radius (log, mean) and "
        f"non-uniform mean log half-width; per-step robustness (first {args.step_count} images): median "
        "certified radius when only the steps of one quarter of the sequence move one at a time.",
        "",
        "| data | regime | clean acc. | PGD acc. @0.03 | certified | uniform log radius | non-uniform "
        "log radius | step radius 0-6 | 7-13 | 14-20 | 21-27 | train s | verify |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for dataset in ("mnist", "fashion-mnist"):
        tr = load_dataset(dataset, "train", args.data_dir)
        te = load_dataset(dataset, "test", args.data_dir)
        for regime, extra in REGIMES.items():
            torch.manual_seed(0)
            model = build_model("lstm:16", (1, 28, 28), 10)
            cfg = TrainConfig(epochs=args.epochs, lr=3e-3, seed=0, **extra)
            t = time.perf_counter()
            train(model, tr.inputs, tr.labels, cfg)
            train_s = time.perf_counter() - t
            clean = evaluate(model, te.inputs, te.labels)["clean_accuracy"]
            pgd = evaluate(model, te.inputs[:1000], te.labels[:1000], eps=0.03)["pgd_accuracy@0.03"]
            x, y = te.inputs[: args.count], te.labels[: args.count]
            res = certify_boxes(model, x, y, iterations=args.iterations)
            ok = res.certified
            uni = mean_finite(np.where(ok, res.uniform_mean_log_radius, np.nan))
            non = mean_finite(np.where(ok, res.mean_log_radius, np.nan))
            report = verify_boxes(model, res)
            verdict = f"OK ({report.certified})" if report.ok else f"FAILED {report.to_dict()}"
            steps = step_robustness(model, te.inputs[: args.step_count], te.labels[: args.step_count])
            med, _, _ = steps.profile()
            quarters = " | ".join(f"{10 ** np.median(med[k : k + 7]):.3f}" for k in (0, 7, 14, 21))
            lines.append(
                f"| {dataset} | {regime} | {clean:.3f} | {pgd:.3f} | {int(ok.sum())}/{len(x)} | {uni:.3f} "
                f"| {non:.3f} | {quarters} | {train_s:.0f} | {verdict} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", choices=["alpha", "regimes"], default=["alpha", "regimes"])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="alpha: models to (re-)run")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--alpha-steps", type=int, default=0)
    ap.add_argument("--check-steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--step-count", type=int, default=3)
    ap.add_argument(
        "--data-dir", default=os.environ.get("NONUNIFORM_DATA", str(ROOT.parent / "shared" / "data"))
    )
    args = ap.parse_args()
    if "alpha" in args.only:
        replace_section("alpha", alpha_section(args))
    if "regimes" in args.only:
        replace_section("regimes", regimes_section(args))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
