"""Third-party networks (VNN-COMP 2021, ../shared/models/vnncomp2021): certified non-uniform boxes
around the images at the centres of their VNN-LIB specs, re-checked by verify_boxes, and the
VNN-LIB instances decided by `nonuniform vnnlib`'s decider.

Run alone on the machine: ``.venv/bin/python experiments/third_party.py``; writes
``experiments/results/third_party.md``.

Input domains. The MNIST convnets take pixels in [0, 1] (their specs are [x - eps, x + eps]
clipped to [0, 1]). The CIFAR-10 networks take normalised inputs, and ONNX files do not say how;
the normalisation below was read off the specs themselves: every unclipped spec interval is
2 eps / std wide, and the clipped ones end at (0 - mean) / std or (1 - mean) / std. oval21:
mean (0.485, 0.456, 0.406), std 0.225 (widths give std 0.2250 in all channels; the largest upper
end, 2.64 = (1 - 0.406) / 0.225). cifar10_resnet: mean (0.4914, 0.4822, 0.4465), std (0.2471,
0.2435, 0.2616) with eps = 2/255 (widths give std / 0.98; upper end 2.1158 = (1 - 0.4465) / 0.2616).
The domain of every feature is then [(0 - mean_c) / std_c, (1 - mean_c) / std_c].
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from nonuniform import certify_boxes, load_model
from nonuniform.verify.boxes import verify_boxes
from nonuniform.verify.decide import decide
from nonuniform.verify.vnnlib import parse_vnnlib

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"


def channel_domain(mean, std):
    m = torch.tensor(mean).reshape(-1, 1, 1)
    s = torch.tensor(std).reshape(-1, 1, 1)
    return (-m / s, (1 - m) / s)


DOMAINS = {
    "Convnet_maxpool": (0.0, 1.0),
    "Convnet_avgpool": (0.0, 1.0),
    "cifar_base_kw": channel_domain((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)),
    "resnet_2b": channel_domain((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "third_party.md"))
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--timeout-cap", type=float, default=120.0, help="cap on each instance's time-out")
    args = ap.parse_args()
    instances: dict[Path, list[tuple[Path, float]]] = {}
    for bench in sorted(p for p in ROOT.iterdir() if (p / "instances.csv").exists()):
        for net, spec, timeout in csv.reader(open(bench / "instances.csv")):
            instances.setdefault(bench / net, []).append((bench / spec, float(timeout)))
    cert_rows, vnn_rows = [], []
    for net_path, specs in instances.items():
        name = net_path.stem
        model, card = load_model(str(net_path))
        props = [parse_vnnlib(s) for s, _ in specs]
        centres = torch.tensor(np.stack([(p.lower + p.upper) / 2 for p in props]), dtype=torch.float32)
        x = centres.reshape(len(props), *card.input_shape)
        domain = DOMAINS[name]
        t = time.perf_counter()
        res = certify_boxes(model, x, domain=domain, iterations=args.iterations, batch_size=len(x))
        sec = (time.perf_counter() - t) / len(x)
        rep = verify_boxes(model, res, attack_restarts=3, attack_steps=50, corners=64)
        s = res.summary()
        print(name, s["certified"], s["mean_log_radius"], s["uniform_mean_log_radius"], f"{sec:.1f}s", rep.ok)
        cert_rows.append(
            f"| {net_path.parent.name}/{net_path.name} | {len(x)} | {s['certified']} | "
            f"{s['mean_log_radius']:.3f} | {s['uniform_mean_log_radius']:.3f} | {sec:.1f} | "
            f"{'pass' if rep.ok else 'FAIL'} ({rep.certified} boxes) |"
        )
        for (spec, timeout), prop in zip(specs, props):
            r = decide(model, prop, card.input_shape, timeout=min(timeout, args.timeout_cap))
            print("  ", spec.name, r.status, f"{r.seconds:.2f}s")
            vnn_rows.append(
                f"| {net_path.name} | {spec.name} | {r.status} | {r.seconds:.2f} | {timeout:.0f} | "
                f"{r.details.get('crown', '-')} / {len(prop.disjuncts)} |"
            )
    lines = [
        "# Third-party networks (VNN-COMP 2021)",
        "",
        "Networks and properties from `../shared/models/vnncomp2021` (see its SOURCES.md), loaded from",
        "ONNX (every one matches onnxruntime, `tests/frontends/test_onnx.py`). 2 CPU threads, run alone.",
        "Reproduce: `.venv/bin/python experiments/third_party.py`.",
        "",
        "## Certified non-uniform boxes around the spec centres",
        "",
        f"Samples: the centre of each VNN-LIB input box (a test image); CROWN, {args.iterations} "
        "iterations, one batch per network. Input domains: see the script's docstring (the CIFAR",
        "normalisation is read off the specs). `verify`: fresh float64 bound, PGD (3 restarts x 50",
        "steps) and 64 corners on every certified box.",
        "",
        "| network | samples | certified | mean log half-width (NU) | uniform | s / sample | verify |",
        "|---|---:|---:|---:|---:|---:|---|",
        *cert_rows,
        "",
        "## VNN-LIB instances (`nonuniform vnnlib`)",
        "",
        "unsat = proved by CROWN or alpha-CROWN (no branch-and-bound yet); sat = a counterexample that",
        "a forward pass confirmed (tests re-check with onnxruntime). Time-outs are the benchmark's,",
        f"capped at {args.timeout_cap:.0f} s. Last column: conjunctions of the unsafe region refuted",
        "by CROWN / all conjunctions.",
        "",
        "| network | property | answer | seconds | time-out | refuted by CROWN |",
        "|---|---|---|---:|---:|---:|",
        *vnn_rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
