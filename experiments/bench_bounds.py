"""Seconds per bound call and peak memory of the bound engine, per method, model and batch.

Run: ``.venv/bin/python experiments/bench_bounds.py [--quick]``; writes
``experiments/results/bench_bounds.md``. Random weights: cost does not depend on training, but
the number of unstable neurons does, so boxes are sized to leave a realistic share unstable.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

from nonuniform import Normalize
from nonuniform.engine.bounds import BoundedModel

torch.set_num_threads(2)


def mlp_1024() -> nn.Module:
    return nn.Sequential(
        Normalize(0.1307, 0.3081),
        nn.Flatten(),
        nn.Linear(784, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    ).eval()


def time_call(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_bounds.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    from nonuniform import load_model
    from nonuniform.zoo.samples import load_samples

    models = {
        "MLP 784-100-100-10 (mnist-mlp)": load_model("mnist-mlp")[0],
        "MLP 784-1024x3-10 (random init)": mlp_1024(),
        "CNN 2conv+2fc (mnist-cnn-small)": load_model("mnist-cnn-small")[0],
    }
    images, _ = load_samples("mnist")
    batches = (1, 32) if args.quick else (1, 32, 256)
    methods = ("ibp", "fastlin", "crown", "alpha-crown")
    rows = []
    for mname, model in models.items():
        for b in batches:
            x = images[torch.arange(b) % len(images)]
            eps = 0.02
            bm = BoundedModel(model, (1, 28, 28))
            for method in methods:
                big = "MLP 784-100" not in mname
                if b == 256 and big and method in ("fastlin", "alpha-crown"):
                    continue  # minutes per call; crown shows the same growth
                lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)

                def plain(lo=lo, hi=hi, method=method, bm=bm):
                    with torch.no_grad():
                        bm.bounds(lo, hi, method=method, bound_upper=False)

                def with_grad(lo=lo, hi=hi, method=method, bm=bm):
                    lo_, hi_ = lo.clone().requires_grad_(), hi.clone().requires_grad_()
                    lb, _ = bm.bounds(lo_, hi_, method=method, bound_upper=False)
                    lb.sum().backward()

                reps = 1 if (b == 256 or method == "alpha-crown" or (big and b > 1)) else 3
                tracemalloc.start()
                t0 = time_call(plain, reps, warm_up=not big or b == 1)
                t1 = time_call(with_grad, reps, warm_up=not big or b == 1)
                tracemalloc.stop()
                rows.append((mname, b, method, t0, t1, peak_rss_mb()))
                print(
                    f"{mname:22s} batch {b:4d} {method:12s} {t0 * 1e3:9.1f} ms  "
                    f"grad {t1 * 1e3:9.1f} ms  rss {rows[-1][-1]:7.0f} MB",
                    flush=True,
                )
    lines = [
        "# Bound engine speed (CPU, 2 threads)",
        "",
        "Margin lower bound of the predicted class against the 9 others, boxes of radius 0.02 "
        "around the embedded MNIST test images (clipped to [0, 1]); trained embedded models, and "
        "a randomly initialised 1024x3 MLP (no trained one is shipped). `grad` includes the "
        "backward pass to the box. alpha-CROWN: 20 slope steps. Median of repeats. "
        "Peak RSS is the process high-water mark so far (monotone), a coarse upper bound.",
        "Reproduce: `.venv/bin/python experiments/bench_bounds.py`.",
        "",
        "| model | batch | method | ms / call | ms / call with grad | peak RSS MB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {m} | {b} | {meth} | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} | {rss:.0f} |"
        for m, b, meth, t0, t1, rss in rows
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
