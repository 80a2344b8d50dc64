"""Convolutional networks: patch rows vs dense rows for intermediate bounds (issue 15).

For mnist-cnn-small (embedded) and the CIFAR-10 CNN of ../shared/models/vnncomp2021 (when present):
the CROWN margin bound at batch 32 (8 for CIFAR) with and without the gradient, and certify's
seconds per image with mean log half-width, each with ``nonuniform.engine.tighten.PATCHES`` off (dense
rows, the old path) and on. Run alone: ``.venv/bin/python experiments/bench_cnn.py``; writes
``experiments/results/bench_cnn.md``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

import nonuniform.engine.tighten as engine
from nonuniform import certify_boxes, load_model
from nonuniform.engine.bounds import BoundedModel
from nonuniform.verify.vnnlib import parse_vnnlib
from nonuniform.zoo.samples import load_samples

torch.set_num_threads(2)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"


def bound_time(bm: BoundedModel, lo, hi, grad: bool, reps: int) -> float:
    times = []
    for _ in range(reps):
        lo_, hi_ = lo.clone().requires_grad_(grad), hi.clone().requires_grad_(grad)
        t = time.perf_counter()
        with torch.set_grad_enabled(grad):
            lb, _ = bm.bounds(lo_, hi_, bound_upper=False)
            if grad:
                lb.sum().backward()
        times.append(time.perf_counter() - t)
    return min(times)  # the least-disturbed run: this VM's timings are noisy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_cnn.md"))
    ap.add_argument("--rows", nargs="+", default=["dense", "patches"], choices=["dense", "patches"])
    kinds = ["cnn", "cifar", "resnet"]
    ap.add_argument("--models", nargs="+", default=kinds, choices=kinds)
    ap.add_argument(
        "--options", nargs="*", default=[], metavar="KEY=INT",
        help="certify_boxes options, e.g. shape_steps=0 iterations=60 (the defaults before commit 19aca7b)",
    )  # fmt: skip
    args = ap.parse_args()
    options = {k: int(v) for k, v in (kv.split("=") for kv in args.options)}
    x, y = load_samples("mnist")
    cases = [("mnist-cnn-small", *load_model("mnist-cnn-small"), x, y, 32, 0.02, (0.0, 1.0))]
    cases = cases if "cnn" in args.models else []
    cifar = SHARED / "oval21" / "cifar_base_kw.onnx"
    # the spec centres, in the normalisation read off the specs (third_party.py)
    if cifar.exists() and "cifar" in args.models:
        m, card = load_model(str(cifar))
        props = [parse_vnnlib(p) for p in sorted((SHARED / "oval21" / "vnnlib").glob("*.vnnlib"))]
        xc = torch.tensor(np.stack([(p.lower + p.upper) / 2 for p in props]), dtype=torch.float32)
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
        dom = (-mean / 0.225, (1 - mean) / 0.225)
        cases.append(
            ("cifar_base_kw (oval21)", m, card, xc.reshape(-1, *card.input_shape), None, 8, 0.01, dom)
        )
    resnet = SHARED / "cifar10_resnet" / "resnet_2b.onnx"
    # ~100x the CNN's cost per image: certify 2 images only (see the table)
    if resnet.exists() and "resnet" in args.models:
        m, card = load_model(str(resnet))
        specs = sorted((SHARED / "cifar10_resnet" / "vnnlib_properties_pgd_filtered").rglob("*.vnnlib"))
        props = [parse_vnnlib(p) for p in specs[:8]]
        xr = torch.tensor(np.stack([(p.lower + p.upper) / 2 for p in props]), dtype=torch.float32)
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
        std = torch.tensor([0.2471, 0.2435, 0.2616]).reshape(3, 1, 1)
        cases.append(
            ("resnet_2b (cifar10_resnet)", m, card, xr.reshape(-1, *card.input_shape), None, 8, 0.01,
             (-mean / std, (1 - mean) / std))
        )  # fmt: skip
    bound_rows, cert_rows = [], []
    # The MLP must not get slower (issue 15): its CROWN bound at batch 32 as a reference row.
    mlp, _ = load_model("mnist-mlp")
    bm = BoundedModel(mlp, (1, 28, 28))
    lo, hi = (x[:32] - 0.02).clamp(0, 1), (x[:32] + 0.02).clamp(0, 1)
    t0, t1 = bound_time(bm, lo, hi, False, 5), bound_time(bm, lo, hi, True, 5)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bound_rows.append(f"| mnist-mlp (reference) | 32 | - | {t0:.3f} | {t1:.3f} | {rss:.0f} |")
    for name, model, _card, xs, ys, batch, r, domain in cases:
        shape = tuple(xs.shape[1:])
        bm = BoundedModel(model, shape)
        xb = xs[:batch] if len(xs) >= batch else xs.repeat(-(-batch // len(xs)), *[1] * len(shape))[:batch]
        lo = torch.maximum(xb - r, torch.as_tensor(domain[0]))
        hi = torch.minimum(xb + r, torch.as_tensor(domain[1]))
        for patches in [r == "patches" for r in args.rows]:
            engine.PATCHES = patches
            t0, t1 = bound_time(bm, lo, hi, False, 5), bound_time(bm, lo, hi, True, 5)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows = "patches" if patches else "dense"
            bound_rows.append(f"| {name} | {batch} | {rows} | {t0:.2f} | {t1:.2f} | {rss:.0f} |")
            t = time.perf_counter()
            n_img = 2 if name.startswith("resnet") else args.images
            res = certify_boxes(
                model, xs[:n_img], None if ys is None else ys[:n_img], domain=domain, **options
            )
            sec = (time.perf_counter() - t) / n_img
            s = res.summary()
            cert_rows.append(
                f"| {name} | {rows} | {sec:.2f} | {s['certified']}/{s['samples']} | "
                f"{s['mean_log_radius']:.4f} | {s['uniform_mean_log_radius']:.4f} |"
            )
            print(bound_rows[-1], cert_rows[-1], flush=True)
    engine.PATCHES = True
    lines = [
        "# Convolutional networks: patch rows vs dense rows (CPU, 2 threads, run alone)",
        "",
        "Reproduce: `.venv/bin/python experiments/bench_cnn.py`. Dense = intermediate CROWN rows as whole",
        "feature maps (before issue 15); patches = receptive-field patches (`nonuniform/patches.py`).",
        "Peak RSS is the process high-water mark so far (monotone).",
        "",
        "## CROWN margin lower bound",
        "",
        "| model | batch | rows | s / call | s / call with grad | peak RSS MB |",
        "|---|---:|---|---:|---:|---:|",
        *bound_rows,
        "",
        f"## certify ({' '.join(args.options) or 'default settings'}, {args.images} images; the ResNet 2)",
        "",
        "| model | rows | s / image | certified | mean log half-width | uniform |",
        "|---|---|---:|---:|---:|---:|",
        *cert_rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
