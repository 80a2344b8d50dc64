"""Box shapes (issue 34): objectives, groups and frozen features on the embedded models.

1. Objectives on mnist-mlp, fashion-mlp and mnist-cnn-small (``--images``, default 100): the
   volume objective, ``apothem`` and ``blend:0.5`` against the uniform box: smallest half-width
   (the apothem, over the counted features) and mean log half-width, certified count, seconds.
2. Groups: mnist-cnn-small per 2x2 and 4x4 patch, oval21's cifar_base_kw per channel (../shared,
   the VNN-LIB centres), mnist-lstm per time step; frozen features: mnist-mlp with the image's
   left half frozen (the right half's mean log half-width against the unconstrained box's).
Every certified box of every row is re-checked by ``verify_boxes`` (fresh float64 bound, PGD with
restarts, corners). Run alone: ``.venv/bin/python experiments/box_shapes.py``; writes
``experiments/results/box_shapes.md``.
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
from nonuniform.verify.vnnlib import parse_vnnlib
from nonuniform.zoo.samples import load_samples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"
OUT = Path(__file__).parent / "results" / "box_shapes.md"


def run(model, x, y, domain=(0.0, 1.0), **settings):
    t = time.perf_counter()
    res = certify_boxes(model, x, y, domain=domain, **settings)
    sec = (time.perf_counter() - t) / len(x)
    rep = verify_boxes(model, res)
    return res, sec, rep.ok


def row(model: str, shape: str, res, n: int, sec=None, ok=None, mask=None) -> str:
    timing = "-" if sec is None else f"{sec:.2f}"
    check = "-" if ok is None else ("ok" if ok else "**FAILED**")
    cert = f"{res.summary()['certified']}/{n}"
    return f"| {model} | {shape} | {cert} | {half_log(res, mask):.3f} | {timing} | {check} |"


def half_log(res, mask=None) -> float:
    c = res.certified
    half = np.log(np.maximum((res.upper - res.lower) / 2, 1e-30)).reshape(len(res), -1)
    keep = res.free.reshape(-1) if mask is None else mask.reshape(-1)
    return float(half[c][:, keep].mean()) if c.any() else float("nan")


def objectives(n: int) -> list[str]:
    rows = []
    for name, data in (
        ("mnist-mlp", "mnist"),
        ("fashion-mlp", "fashion-mnist"),
        ("mnist-cnn-small", "mnist"),
    ):
        model = load_model(name)[0]
        x, y = load_samples(data)
        x, y = x[:n], y[:n]
        for objective in ("volume", "apothem", "blend:0.5", "blend:0.75"):
            res, sec, ok = run(model, x, y, objective=objective)
            c = res.certified
            s = res.summary()
            linf = float(np.mean(res.linf_radius()[c]))
            if objective == "volume":
                rows.append(
                    f"| {name} | uniform box | {s['certified']}/{len(x)} | "
                    f"{float(np.mean(res.uniform_radius[c] / 2)):.4f} | "
                    f"{float(np.mean(res.uniform_radius[c])):.4f} "
                    f"| {s['uniform_mean_log_radius']:.3f} | - | - |"
                )
            rows.append(
                f"| {name} | {objective} | {s['certified']}/{len(x)} | {s['mean_apothem']:.4f} | "
                f"{linf:.4f} | "
                f"{s['mean_log_radius']:.3f} | {sec:.2f} | {'ok' if ok else '**FAILED**'} |"
            )
            print(rows[-1], flush=True)
    return rows


def groups(n: int) -> list[str]:
    rows = []
    x, y = load_samples("mnist")
    cnn = load_model("mnist-cnn-small")[0]
    base, _, _ = run(cnn, x[:n], y[:n])
    rows.append(row("mnist-cnn-small", "per feature", base, n))
    for spec in ("patch:2x2", "patch:4x4"):
        res, sec, ok = run(cnn, x[:n], y[:n], groups=spec)
        rows.append(row("mnist-cnn-small", spec, res, n, sec, ok))
        print(rows[-1], flush=True)
    onnx = SHARED / "oval21" / "cifar_base_kw.onnx"
    if onnx.exists():
        model, card = load_model(str(onnx))
        props = [parse_vnnlib(p) for p in sorted((SHARED / "oval21" / "vnnlib").glob("*.vnnlib"))]
        xc = torch.tensor(np.stack([(p.lower + p.upper) / 2 for p in props]), dtype=torch.float32)
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
        dom = (-mean / 0.225, (1 - mean) / 0.225)
        xc = xc.reshape(-1, *card.input_shape)
        for spec in (None, "channel"):
            res, sec, ok = run(model, xc, None, domain=dom, groups=spec)
            rows.append(row("oval21 cifar_base_kw", spec or "per feature", res, len(xc), sec, ok))
            print(rows[-1], flush=True)
    lstm = load_model("mnist-lstm")[0]
    xs = x[:n].reshape(n, 28, 28)
    for spec in (None, "time"):
        res, sec, ok = run(lstm, xs, y[:n], groups=spec)
        rows.append(row("mnist-lstm", spec or "per feature", res, n, sec, ok))
        print(rows[-1], flush=True)
    mlp = load_model("mnist-mlp")[0]
    left = np.zeros((1, 28, 28), dtype=bool)
    left[..., :14] = True
    plain, _, _ = run(mlp, x[:n], y[:n])
    frozen, sec, ok = run(mlp, x[:n], y[:n], frozen=left)
    rows.append(row("mnist-mlp", "per feature: right half", plain, n, mask=~left))
    rows.append(row("mnist-mlp", "left half frozen: right half", frozen, n, sec, ok, mask=~left))
    print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--group-images", type=int, default=20)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    obj_rows = objectives(args.images)
    group_rows = groups(args.group_images)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"# Box shapes: objectives, groups, frozen features ({date.today()}, commit {commit})",
        "",
        f"Reproduce (alone): `.venv/bin/python experiments/box_shapes.py --images {args.images} "
        f"--group-images {args.group_images}`. CPU, {torch.get_num_threads()} torch threads, CROWN, "
        f"default settings otherwise; load average at the end {os.getloadavg()[0]:.2f}. `verify`: every "
        "certified box re-checked (fresh float64 bound, PGD with restarts, corners).",
        "",
        "## Objectives",
        "",
        "Apothem = the smallest half-width over the counted features; l-inf = the largest l-inf ball "
        "around the input (within the domain) inside the box (`CertifiedBoxes.linf_radius`); both averaged "
        "over certified images. The uniform box's apothem is half its radius on MNIST (background pixels at "
        "0 clip it). `apothem` floors every radius at the best uniform radius (the largest l-inf ball any "
        "certified box holds) and grows the volume from there; `blend:B` floors at B times it.",
        "",
        "| model | objective | certified | apothem | l-inf | mean log half-width | s / image | verify |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *obj_rows,
        "",
        "## Groups and frozen features",
        "",
        "| model | shape | certified | mean log half-width | s / image | verify |",
        "|---|---|---:|---:|---:|---|",
        *group_rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()
    main()
