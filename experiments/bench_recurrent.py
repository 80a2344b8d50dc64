"""Seconds per CROWN margin bound of the embedded sequence models (issue 21's bound-time table).

Run alone: ``.venv/bin/python experiments/bench_recurrent.py [--batch 25] [--repeats 3]``.
Prints one Markdown row per model: seconds per bound call without and with the gradient with
respect to the box (batch ``--batch`` of the first test images, uniform radius ``--eps``), and
the mean certified margin (a change in the engine's speed must not change its numbers).

``--compare-walk``: the fused LSTM/GRU cell steps (:mod:`nonuniform.recurrent.cells`) against the
node-by-node walk, in one process and interleaved (fused, walk, fused, ...; median of
``--repeats``), because this VM's speed drifts by 20-40% between runs a minute apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nonuniform import load_model
from nonuniform.engine.bounds import BoundedModel
from nonuniform.zoo.samples import load_samples

torch.set_num_threads(2)
MODELS = ["mnist-rnn", "mnist-lstm", "mnist-gru"]


def _timed(bm: BoundedModel, lo, hi, method: str, grad: bool) -> float:
    if not grad:
        t = time.perf_counter()
        with torch.no_grad():
            bm.bounds(lo, hi, None, method)
        return time.perf_counter() - t
    lo_ = lo.clone().requires_grad_(True)
    t = time.perf_counter()
    out, _ = bm.bounds(lo_, hi, None, method)
    out.sum().backward()
    return time.perf_counter() - t


def _setup(name: str, batch: int, eps: float):
    model, card = load_model(name)
    x, _ = load_samples(card.dataset)
    x = x[:batch]
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    return BoundedModel(model, tuple(x.shape[1:]), x.dtype, x.device), lo, hi


def bench(name: str, batch: int, eps: float, repeats: int, method: str) -> tuple[float, float, float]:
    bm, lo, hi = _setup(name, batch, eps)
    lb, _ = bm.bounds(lo, hi, None, method)  # warm-up (tangent tables, allocator)
    plain = min(_timed(bm, lo, hi, method, False) for _ in range(repeats))
    grad = min(_timed(bm, lo, hi, method, True) for _ in range(repeats))
    return plain, grad, float(lb.min(1).values.mean())


def compare_walk(name: str, batch: int, eps: float, repeats: int, method: str) -> list[float]:
    """Median seconds [walk, fused] without and with the gradient, interleaved."""
    bm, lo, hi = _setup(name, batch, eps)
    cells = bm.net.cells
    out = []
    for grad in (False, True):
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(repeats + 1):
            for fused in (True, False):
                bm.net.cells = cells if fused else {}
                t = _timed(bm, lo, hi, method, grad)
                if r:  # the first round warms up
                    times[fused].append(t)
        out += [statistics.median(times[False]), statistics.median(times[True])]
    bm.net.cells = cells
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--eps", type=float, default=0.003)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--method", default="crown")
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--compare-walk", action="store_true")
    args = p.parse_args()
    print(f"{args.method}, batch {args.batch}, eps {args.eps}, 2 threads\n")
    if args.compare_walk:
        print("| model | node by node: s / bound | fused | ratio | + gradient: by node | fused | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.models:
            w, f, wg, fg = compare_walk(name, args.batch, args.eps, args.repeats, args.method)
            row = f"| {name} | {w:.3f} | {f:.3f} | {w / f:.2f}x | {wg:.3f} | {fg:.3f} | {wg / fg:.2f}x |"
            print(row, flush=True)
        return
    print("| model | s / bound | s / bound + gradient | mean worst margin |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        plain, grad, margin = bench(name, args.batch, args.eps, args.repeats, args.method)
        print(f"| {name} | {plain:.3f} | {grad:.3f} | {margin:.4f} |", flush=True)


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
