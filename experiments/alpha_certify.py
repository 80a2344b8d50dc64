"""Certify with ``--method alpha-crown`` against CROWN on convolutional networks (issue 33).

mnist-cnn-small (embedded; MNIST test images) and oval21's cifar_base_kw (../shared; the VNN-LIB
properties' centres, in the network's normalised units): boxes, seconds per image, and every
certified box re-checked by ``verify_boxes`` (a fresh float64 bound, PGD with restarts, corners).
Also what the bound gain suggests: how far alpha-CROWN alone proves CROWN's own boxes scaled
up. Run alone: ``.venv/bin/python experiments/alpha_certify.py``; writes
``experiments/results/alpha_certify.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from nonuniform import certify_boxes, load_model, verify_boxes
from nonuniform.engine.bounds import BoundedModel
from nonuniform.verify.vnnlib import parse_vnnlib
from nonuniform.zoo.samples import load_samples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"
OUT = Path(__file__).parent / "results" / "alpha_certify.md"


def cases(n: int) -> list[tuple]:
    x, y = load_samples("mnist")
    out = [("mnist-cnn-small", load_model("mnist-cnn-small")[0], x[:n], y[:n], (0.0, 1.0))]
    onnx = SHARED / "oval21" / "cifar_base_kw.onnx"
    if onnx.exists():
        model, card = load_model(str(onnx))
        props = [parse_vnnlib(p) for p in sorted((SHARED / "oval21" / "vnnlib").glob("*.vnnlib"))]
        xc = torch.tensor(np.stack([(p.lower + p.upper) / 2 for p in props]), dtype=torch.float32)
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)  # read off the specs (third_party.py)
        domain = (-mean / 0.225, (1 - mean) / 0.225)
        out.append(("oval21 cifar_base_kw", model, xc.reshape(-1, *card.input_shape)[:n], None, domain))
    return out


def suggested_gain(model, res, domain, steps: int = 20, rounds: int = 10) -> float:
    """What the bound gain suggests: the mean over CROWN's certified boxes of the mean log
    half-width gained by scaling each box's radii by the largest factor ``e^t`` (bisection on
    ``t`` in [0, 1]) at which alpha-CROWN (``steps`` steps, cold) still proves every margin > 0."""
    cert = np.nonzero(res.certified)[0]
    if not len(cert):
        return float("nan")
    x0 = torch.tensor(res.inputs[cert])
    r_lo, r_hi = x0 - torch.tensor(res.lower[cert]), torch.tensor(res.upper[cert]) - x0
    dl, du = (torch.as_tensor(d, dtype=x0.dtype) for d in domain)
    bm = BoundedModel(model, tuple(x0.shape[1:]))

    def box(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = t.exp().reshape(-1, *[1] * (x0.dim() - 1))
        return torch.maximum(x0 - s * r_lo, dl), torch.minimum(x0 + s * r_hi, du)

    lo_t, hi_t = torch.zeros(len(cert)), torch.ones(len(cert))
    for _ in range(rounds):
        mid = (lo_t + hi_t) / 2
        ok = (
            bm.bounds(*box(mid), method="alpha-crown", bound_upper=False, alpha_steps=steps)[0].min(1).values
            > 0
        )
        lo_t, hi_t = torch.where(ok, mid, lo_t), torch.where(ok, hi_t, mid)

    def mean_log_half(lo, hi) -> torch.Tensor:
        return torch.log(((hi - lo) / 2).clamp(min=1e-30)).flatten(1).mean(1)

    return float((mean_log_half(*box(lo_t)) - mean_log_half(*box(torch.zeros(len(cert))))).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = []
    for name, model, x, y, domain in cases(args.images):
        results = {}
        for method in ("crown", "alpha-crown"):
            t = time.perf_counter()
            res = certify_boxes(model, x, y, method=method, domain=domain)
            sec = (time.perf_counter() - t) / len(x)
            rep = verify_boxes(model, res)
            s = res.summary()
            results[method] = res
            extra = f"{suggested_gain(model, res, domain):+.3f}" if method == "crown" else "-"
            rows.append(
                f"| {name} | {method} | {s['certified']}/{s['samples']} | {s['mean_log_radius']:.3f} "
                f"| {s['mean_apothem']:.4f} | {sec:.1f} | {extra} | {'ok' if rep.ok else '**FAILED**'} |"
            )
            print(rows[-1], flush=True)
        both = results["crown"].certified & results["alpha-crown"].certified
        gain = float(
            np.mean(results["alpha-crown"].mean_log_radius[both] - results["crown"].mean_log_radius[both])
        )
        rows.append(f"| {name} | gain (alpha - crown, same samples) | | {gain:+.3f} | | | | |")
        print(rows[-1], flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()
    lines = [
        f"# certify with alpha-CROWN vs CROWN on convolutional networks ({date.today()}, commit {commit})",
        "",
        f"Reproduce (alone): `.venv/bin/python experiments/alpha_certify.py --images {args.images}`. CPU, "
        f"{torch.get_num_threads()} torch threads, default certify settings otherwise; load average at the "
        f"end {load[0]:.2f}. `suggested` = the gain in mean log half-width of CROWN's boxes scaled up "
        "(one factor per box, clipped to the domain) as far as alpha-CROWN (20 cold steps) proves them: "
        "what the bound gain suggests; the alpha-crown row's boxes should gain at least that. `verify` = "
        "`verify_boxes` (fresh float64 bound, PGD with restarts, corners) on every certified box.",
        "",
        "| model | method | certified | mean log half-width | apothem | s / image | suggested | verify |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()
    main()
