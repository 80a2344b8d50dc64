"""Certify under a memory limit: the batch is lowered before it starts, the boxes do not change.

Models: oval21's ``cifar_base_kw.onnx`` (../shared) and a model of our own twice its width (every
convolution channel and hidden neuron duplicated with its outgoing weights halved, then 1%
noise: a CIFAR classifier with cifar_base_kw's predictions and 4x its bound memory), on 25
inputs near the oval21 specifications' centres. Each model is certified by the CLI at the default
batch (25) without a limit and under ``ulimit -v`` (address space); the table gives the batch
the run used, its peak resident memory, wall time, and the largest difference between the two
runs' boxes.

Run alone: ``.venv/bin/python experiments/memory_limit.py [--limit-gb 4]`` (~10 min on 2 cores);
writes ``experiments/results/memory_limit.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models" / "vnncomp2021" / "oval21"
OUT = ROOT / "experiments" / "results" / "memory_limit.md"
MEAN = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)  # read off the specs (third_party.py)
LO, HI = -MEAN / 0.225, (1 - MEAN) / 0.225
DOMAIN = ",".join(f"{lo:.7f}:{hi:.7f}" for lo, hi in zip(LO.ravel(), HI.ravel()))


def inputs(n: int = 25) -> np.ndarray:
    from nonuniform.verify.vnnlib import parse_vnnlib

    props = [parse_vnnlib(p) for p in sorted((SHARED / "vnnlib").glob("*.vnnlib"))]
    xc = np.stack([(p.lower + p.upper) / 2 for p in props]).reshape(-1, 3, 32, 32)
    rng = np.random.default_rng(0)
    noisy = [np.clip(xc + rng.normal(0, 0.05, xc.shape), LO, HI) for _ in range(-(-n // len(xc)))]
    return np.concatenate(noisy)[:n].astype(np.float32)


def widened(onnx: Path) -> nn.Module:
    """cifar_base_kw at twice the width (net2net: duplicate units, halve their outgoing weights)."""
    from nonuniform import load_model

    model, _ = load_model(str(onnx))
    net = model.network((3, 32, 32), torch.float32, "cpu")
    convs = [op for op in net.ops if type(op).__name__ == "ConvOp"]
    fcs = [op for op in net.ops if type(op).__name__ == "LinearOp"]
    g = torch.Generator().manual_seed(0)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        return t + 0.01 * t.std() * torch.randn(t.shape, generator=g)

    w1, w2 = convs[0].weight, convs[1].weight  # (8, 3, 4, 4), (16, 8, 4, 4)
    c1 = nn.Conv2d(3, 16, 4, 2, 1)
    c1.weight.data, c1.bias.data = noisy(w1.repeat(2, 1, 1, 1)), convs[0].bias.repeat(2)
    c2 = nn.Conv2d(16, 32, 4, 2, 1)
    c2.weight.data, c2.bias.data = noisy(w2.repeat(2, 2, 1, 1) / 2), convs[1].bias.repeat(2)
    f1 = nn.Linear(2048, 200)
    w = fcs[0].weight.reshape(100, 16, 8, 8).repeat(2, 2, 1, 1).reshape(200, 2048) / 2
    f1.weight.data, f1.bias.data = noisy(w), fcs[0].bias.repeat(2)
    f2 = nn.Linear(200, 10)
    f2.weight.data, f2.bias.data = noisy(fcs[1].weight.repeat(1, 2) / 2), fcs[1].bias.clone()
    return nn.Sequential(c1, nn.ReLU(), c2, nn.ReLU(), nn.Flatten(), f1, nn.ReLU(), f2).eval()


def certify(model: Path, data: Path, out: Path, limit_kb: int | None) -> dict:
    cli = ROOT / ".venv" / "bin" / "nonuniform"
    cmd = (
        f"{f'ulimit -v {limit_kb}; ' if limit_kb else ''}exec /usr/bin/time -f 'peak_rss_kb %M' "
        f"{cli} certify {model} --dataset {data} --domain={DOMAIN} --out {out} --no-figures --count 25"
    )
    t0 = time.time()
    res = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"certify failed ({res.returncode}): {res.stderr.strip()[-400:]}")
    import json

    summary = json.loads((out / "summary.json").read_text())
    rss = int(res.stderr.split("peak_rss_kb")[-1].split()[0])
    said = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if "batch_size" in ln]
    return {"wall": wall, "rss_gb": rss / 2**20, "batches": summary["batch_sizes"], "said": said, "out": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit-gb", type=float, default=4.0)
    args = ap.parse_args()
    onnx = SHARED / "cifar_base_kw.onnx"
    if not onnx.exists():
        print(f"skipped: {onnx} is missing (../shared holds the VNN-COMP models)")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        x = inputs()
        wide = widened(onnx)
        torch.onnx.export(wide, torch.zeros(1, 3, 32, 32), str(d / "cifar_base_kw_x2.onnx"), dynamo=False)
        from nonuniform import load_model

        for name, path in (("cifar_base_kw", onnx), ("cifar_base_kw x2 (ours)", d / "cifar_base_kw_x2.onnx")):
            model, _ = load_model(str(path))
            labels = model(torch.as_tensor(x)).argmax(1).numpy()
            data = d / f"{path.stem}.npz"
            np.savez(data, inputs=x, labels=labels)
            free = certify(path, data, d / f"{path.stem}_free", None)
            capped = certify(path, data, d / f"{path.stem}_capped", int(args.limit_gb * 2**20))
            a, b = (np.load(r["out"] / "boxes.npz") for r in (free, capped))
            same_cert = bool((a["certified"] == b["certified"]).all())
            n = a["inputs"][0].size
            per_sample = np.abs(a["log_volume"] - b["log_volume"]) / n  # mean log half-width
            moved = int(
                (np.abs(a["lower"] - b["lower"]) + np.abs(a["upper"] - b["upper"]))
                .reshape(len(a["lower"]), -1)
                .max(1)
                .astype(bool)
                .sum()
            )
            diff = (
                f"{moved} of {len(per_sample)} boxes differ, by <= {per_sample.max():.1e} mean log half-width"
            )
            for label, r in (("no limit", free), (f"ulimit -v {args.limit_gb:g} GB", capped)):
                rows.append(
                    f"| {name} | {label} | {r['batches']} | {r['rss_gb']:.2f} | {r['wall']:.0f} | "
                    f"{'' if r is free else f'{diff}; certified the same: {same_cert}'} |"
                )
            said = capped["said"][0] if capped["said"] else "(no message: the default batch fits)"
            rows.append(f"| {name} | message | | | | {said.replace('|', '/')} |")
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    )
    load = os.getloadavg()[0]
    text = [
        f"# Certify under a memory limit ({datetime.date.today()}, commit {commit.stdout.strip()})",
        "",
        "Reproduce (alone): `.venv/bin/python experiments/memory_limit.py`. CPU, 2 cores, CLI defaults "
        "(CROWN, batch 25), 25 inputs near oval21's specification centres; load average at the end "
        f"{load:.2f}. "
        "`batches` = the batch sizes the run used (summary.json); `peak RSS` from /usr/bin/time; "
        "`boxes` compares each box with the unlimited run's (batch composition changes float32 "
        "rounding, which can move a box along the optimiser's path).",
        "",
        "| model | limit | batches | peak RSS (GB) | wall (s) | boxes vs no limit |",
        "|---|---|---|---:|---:|---|",
        *rows,
        "",
    ]
    OUT.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
