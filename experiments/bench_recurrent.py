"""Seconds per CROWN margin bound of the embedded sequence models (issue 21's bound-time table).

Run alone: ``.venv/bin/python experiments/bench_recurrent.py [--batch 25] [--repeats 3]``.
Prints one Markdown row per model: seconds per bound call without and with the gradient with
respect to the box (batch ``--batch`` of the first test images, uniform radius ``--eps``), and
the mean certified margin (a change in the engine's speed must not change its numbers).
"""

from __future__ import annotations

import argparse
import time

import torch

from nonuniform import load_model
from nonuniform.bounds import BoundedModel
from nonuniform.samples import load_samples

torch.set_num_threads(2)
MODELS = ["mnist-rnn", "mnist-lstm", "mnist-gru"]


def bench(name: str, batch: int, eps: float, repeats: int, method: str) -> tuple[float, float, float]:
    model, card = load_model(name)
    x, _ = load_samples(card.dataset)
    x = x[:batch]
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    bm = BoundedModel(model, tuple(x.shape[1:]), x.dtype, x.device)
    lb, _ = bm.bounds(lo, hi, None, method)  # warm-up (tangent tables, allocator)
    plain = []
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.no_grad():
            bm.bounds(lo, hi, None, method)
        plain.append(time.perf_counter() - t)
    grad = []
    for _ in range(repeats):
        lo_ = lo.clone().requires_grad_(True)
        t = time.perf_counter()
        out, _ = bm.bounds(lo_, hi, None, method)
        out.sum().backward()
        grad.append(time.perf_counter() - t)
    return min(plain), min(grad), float(lb.min(1).values.mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--eps", type=float, default=0.003)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--method", default="crown")
    p.add_argument("--models", nargs="*", default=MODELS)
    args = p.parse_args()
    print(f"{args.method}, batch {args.batch}, eps {args.eps}, 2 threads\n")
    print("| model | s / bound | s / bound + gradient | mean worst margin |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        plain, grad, margin = bench(name, args.batch, args.eps, args.repeats, args.method)
        print(f"| {name} | {plain:.3f} | {grad:.3f} | {margin:.4f} |", flush=True)


if __name__ == "__main__":
    main()
