"""Soak run: many certified boxes, each attacked; and runs killed with SIGKILL, then resumed.

Part 1: certify test images with every embedded feedforward model (full test sets from
../shared/data when present, else the embedded samples), a few with the CNN, the sequence models
and the third-party ONNX convnets, and check every certified box with ``verify_boxes`` (contains
its input, inside the domain, fresh float64 bound, PGD with restarts + corners + rounds on a
smoothed copy of the network: the strongest attack in ``nonuniform.attacks.pgd``). A single broken
box fails the run.

Part 2: ``nonuniform certify`` in a subprocess is killed with SIGKILL at random moments and
resumed until it completes; its boxes must equal an uninterrupted run's bit for bit.

Run alone: ``.venv/bin/python experiments/soak.py [--per-model N]``; writes
``experiments/results/soak.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from nonuniform import CertifiedBoxes, certify_boxes, load_dataset, load_model
from nonuniform.verify.boxes import verify_boxes
from nonuniform.zoo.data import DataError
from nonuniform.zoo.samples import load_samples

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def inputs(dataset: str, n: int):
    try:
        ds = load_dataset(dataset, "test", SHARED / "data", download=False)
        return ds.inputs[:n], ds.labels[:n]
    except DataError:
        x, y = load_samples(dataset)
        return x[:n], y[:n]


def soak(name: str, x, y, iterations: int, batch: int, **kw) -> dict:
    model, card = load_model(name, **kw)
    t = time.perf_counter()
    boxes = certify_boxes(model, x, y, iterations=iterations, batch_size=batch, domain=card.domain)
    cert_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = verify_boxes(model, boxes, attack_restarts=5, attack_steps=50, corners=256)
    broken = len(set(rep.malformed + rep.bound_failures + rep.attack_failures))
    print(f"{Path(name).name}: {rep.certified}/{len(x)} certified, broken {broken}", flush=True)
    return {
        "model": Path(name).name,
        "samples": len(x),
        "certified": rep.certified,
        "broken": broken,
        "certify_s": cert_s,
        "verify_s": time.perf_counter() - t,
    }


def killed_and_resumed(out: Path, n: int, kills: int, seed: int) -> tuple[int, bool]:
    """Kill `certify` `kills` times at random moments, resume to the end; compare with a clean run."""
    cmd = [sys.executable, "-m", "nonuniform", "certify", "mnist-mlp", "--count", str(n)]
    cmd += ["--batch-size", "10", "--iterations", "20", "--no-figures", "--json"]
    if (SHARED / "data").is_dir():  # more than the 100 embedded images
        cmd += ["--data-dir", str(SHARED / "data")]
    rng = random.Random(seed)
    subprocess.run([*cmd, "--out", str(out / "clean")], check=True, capture_output=True)
    done_kills = 0
    while True:
        args = [*cmd, "--out", str(out / "killed")] + (["--resume"] if (out / "killed").exists() else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done_kills < kills:
            time.sleep(rng.uniform(2.0, 8.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                done_kills += 1
            proc.wait()
            continue
        if proc.wait() != 0:
            raise RuntimeError("the resumed run failed")
        break
    a = CertifiedBoxes.load(out / "clean" / "boxes.npz")
    b = CertifiedBoxes.load(out / "killed" / "boxes.npz")
    same = all(
        np.array_equal(getattr(a, k), getattr(b, k), equal_nan=getattr(a, k).dtype.kind == "f")
        for k in CertifiedBoxes.ARRAYS
        if k != "seconds"
    )
    return done_kills, same


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-model", type=int, default=2750, help="images per embedded MLP")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.md"))
    ap.add_argument("--work", default="/tmp/nonuniform-soak")
    args = ap.parse_args()
    rows = []
    for name, ds in [
        ("mnist-mlp", "mnist"),
        ("mnist-mlp-pgd", "mnist"),
        ("fashion-mlp", "fashion-mnist"),
        ("fashion-mlp-pgd", "fashion-mnist"),
    ]:
        rows.append(soak(name, *inputs(ds, args.per_model), args.iterations, 100))
    rows.append(soak("mnist-cnn-small", *inputs("mnist", 40), args.iterations, 20))
    for name in ("mnist-rnn", "mnist-lstm", "mnist-gru"):
        rows.append(soak(name, *inputs("mnist", 20), args.iterations, 10))
    vnn = SHARED / "models" / "vnncomp2021" / "verivital"
    for onnx in sorted(vnn.glob("*.onnx")):
        rows.append(soak(str(onnx), *inputs("mnist", 200), args.iterations, 50, domain=(0.0, 1.0)))
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    kills, same = killed_and_resumed(work, n=300, kills=3, seed=0)
    total = sum(r["certified"] for r in rows)
    broken = sum(r["broken"] for r in rows)
    lines = [
        "# Soak run: certified boxes under attack, and SIGKILL + resume",
        "",
        f"Run: {date.today().isoformat()}, commit {_commit()}, {args.per_model} test images per MLP; "
        f"load average at the end {os.getloadavg()[0]:.2f} (1 min).",
        "",
        f"{total} certified boxes, {broken} broken. Every certified box went through `verify_boxes`:",
        "contains its input and stays in the domain, fresh float64 CROWN bound > 0, PGD (5 restarts x 50",
        "steps), 256 random corners and 4 rounds of PGD on a smoothed copy (Softplus / log-sum-exp of",
        "sharpness 1, 4, 16, 64; scored on the real network; not for recurrent models).",
        f"Certification with {args.iterations} iterations (soundness, not box",
        "size, is the point here). 2 threads, run alone. Reproduce: `.venv/bin/python experiments/soak.py`.",
        "",
        "| model | samples | certified | broken | certify s | verify s |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['samples']} | {r['certified']} | {r['broken']} | {r['certify_s']:.0f} | "
            f"{r['verify_s']:.0f} |"
            for r in rows
        ),
        "",
        "## Killed and resumed",
        "",
        f"`nonuniform certify mnist-mlp --count 300 --batch-size 10` killed with SIGKILL {kills} times at",
        "random moments (2-8 s after each start), resumed with `--resume` until done: boxes "
        + ("**identical** to an uninterrupted run (every array but the timings)." if same else "**DIFFER**."),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if broken or not same:
        raise SystemExit(1)


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
