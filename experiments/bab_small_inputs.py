"""Box growth by branch-and-bound on networks with few inputs: input splitting vs ReLU splitting.

``certify --bab`` grows each certified box by the largest factor branch-and-bound proves in
float64. For inputs of at most ``proof.bab.INPUT_SPLIT_MAX`` values the proof splits the input box
(as the complete verifier does); this compares it with the ReLU splitting used for larger inputs,
on third-party networks from ../shared (ACAS Xu: 5 inputs; control policies: 4 and 8 inputs), at
the centres of their VNN-LIB input boxes, each network's domain the hull of those boxes.

Run alone: ``.venv/bin/python experiments/bab_small_inputs.py [--count 10] [--bab-time 5]``;
writes ``experiments/results/bab_small_inputs.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import nonuniform.proof.bab as bab
from nonuniform import certify_boxes, load_model, verify_boxes
from nonuniform.verify.instances import read_instances
from nonuniform.verify.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
OUT = ROOT / "experiments" / "results" / "bab_small_inputs.md"
NETS = {  # benchmark csv, network file name
    "ACAS Xu 1_1": ("vnncomp2021/acasxu/acasxu_instances.csv", "ACASXU_run2a_1_1_batch_2000.onnx"),
    "ACAS Xu 2_1": ("vnncomp2021/acasxu/acasxu_instances.csv", "ACASXU_run2a_2_1_batch_2000.onnx"),
    "cartpole": ("vnncomp2022/rl_benchmarks/instances.csv", "cartpole.onnx"),
    "lunarlander": ("vnncomp2022/rl_benchmarks/instances.csv", "lunarlander.onnx"),
}


def cases(count: int):
    for name, (csv, onnx) in NETS.items():
        rows = [r for r in read_instances(SHARED / csv) if r.network.name == onnx]
        boxes = []
        for r in rows:
            for region in parse_vnnlib(r.prop).regions:
                boxes.append((region.lower, region.upper))
        lo = np.min([b[0] for b in boxes], 0)
        hi = np.max([b[1] for b in boxes], 0)
        centres = np.stack([(b[0] + b[1]) / 2 for b in boxes])
        _, keep = np.unique(centres.round(6), axis=0, return_index=True)
        model, card = load_model(str(rows[0].network))
        x = torch.tensor(centres[np.sort(keep)][:count], dtype=torch.float32).reshape(-1, *card.input_shape)
        yield name, model, x, (lo.tolist(), hi.tolist())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--bab-time", type=float, default=5.0)
    args = ap.parse_args()
    if not (SHARED / "vnncomp2021" / "acasxu").exists():
        print(f"skipped: {SHARED} does not hold the VNN-COMP benchmarks")
        return
    torch.set_num_threads(2)
    rows = []
    for name, model, x, domain in cases(args.count):
        got = {}
        for label, split_max in (
            ("CROWN", None),
            ("+ BaB, input splitting", 32),
            ("+ BaB, ReLU splitting", 0),
        ):
            bab.INPUT_SPLIT_MAX = split_max if split_max is not None else 32
            t0 = time.perf_counter()
            res = certify_boxes(model, x, domain=domain, bab=split_max is not None, bab_time=args.bab_time)
            secs = (time.perf_counter() - t0) / len(x)
            report = verify_boxes(model, res) if split_max is not None else None
            got[label] = (res, secs, report)
        cert = np.logical_and.reduce([r.certified for r, _, _ in got.values()])
        base = got["CROWN"][0].mean_log_radius[cert].mean()
        for label, (res, secs, report) in got.items():
            mean = res.mean_log_radius[cert].mean()
            check = "-" if report is None else ("ok" if report.ok else f"FAILED {report.to_dict()}")
            gain = "" if label == "CROWN" else f"{mean - base:+.4f}"
            n_cert = f"{int(cert.sum())}/{len(x)}"
            rows.append(f"| {name} | {label} | {n_cert} | {mean:.4f} | {gain} | {secs:.2f} | {check} |")
    bab.INPUT_SPLIT_MAX = 32
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    )
    text = [
        f"# Box growth by branch-and-bound on small-input networks ({datetime.date.today()}, commit "
        f"{commit.stdout.strip()})",
        "",
        "Reproduce (alone): `.venv/bin/python experiments/bab_small_inputs.py "
        f"--count {args.count} --bab-time {args.bab_time:g}`. CPU, 2 torch threads, load average at the end "
        f"{os.getloadavg()[0]:.2f}. Inputs: the distinct centres of each network's VNN-LIB input boxes; "
        "domain: the hull of those boxes. Mean log half-width over the samples every setting certifies; "
        "`gain` over CROWN's boxes; `verify` = `verify_boxes` (fresh float64 proof, by the same "
        "branch-and-bound where one bound cannot; PGD, corners).",
        "",
        "| network | method | certified | mean log half-width | gain | s / sample | verify |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]
    OUT.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
