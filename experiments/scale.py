"""How certification cost grows with width, depth, input size and batch (issue 9, part 3).

Each configuration runs in a fresh subprocess (so its peak RSS is its own) and certifies boxes with
CROWN using a reduced budget of 20 augmented-Lagrangian iterations (cost is proportional to the
iteration count, so growth exponents are unaffected; multiply by ~3 for the default 60).
Random-initialised models: cost, not box size, is measured. Fitted exponent = slope of log(seconds
per sample) against log(size) by least squares.
Run: ``.venv/bin/python experiments/scale.py``; writes ``experiments/results/scale.md`` and
``scale.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OUT = Path(__file__).parent / "results"

CHILD = r"""
import json, resource, sys, time, torch
from nonuniform import certify_boxes
from nonuniform.zoo.models import build_model
torch.set_num_threads(2)
arch, shape, n, batch = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = build_model(arch, shape, 10, 0.5, 0.25).eval()
x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
t = time.perf_counter()
certify_boxes(model, x, None, method="crown", batch_size=batch, iterations=20)
sec = (time.perf_counter() - t) / n
print(json.dumps({"sec": sec, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SWEEPS = {
    "width (MLP 784-w-w-10)": [(w, f"mlp:{w},{w}:relu", [1, 28, 28], 20, 20) for w in (100, 256, 512, 1024)],
    "depth (MLP 784-100xd-10)": [(d, f"mlp:100x{d}:relu", [1, 28, 28], 20, 20) for d in (2, 3, 4, 6)],
    "input (cnn-small)": [
        (784, "cnn-small", [1, 28, 28], 4, 4),
        (3072, "cnn-small", [3, 32, 32], 4, 4),
    ],
    "batch (MLP 784-100-100-10)": [
        (b, "mlp:100,100:relu", [1, 28, 28], max(b, 16), b) for b in (1, 4, 16, 64, 256)
    ],
}


def measure(arch, shape, n, batch) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arch, json.dumps(shape), str(n), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    lines = [
        "# Scale: seconds per sample and peak memory",
        "",
        "CROWN certification, 20 iterations (the default is 60: multiply seconds by ~3), 2 CPU threads, "
        "random-initialised models, inputs uniform in [0.25, 0.75]. Peak RSS of the whole process.",
        "Reproduce: `.venv/bin/python experiments/scale.py`.",
        "",
    ]
    fig, axes = plt.subplots(1, len(SWEEPS), figsize=(4 * len(SWEEPS), 3.4))
    for ax, (name, configs) in zip(axes, SWEEPS.items()):
        sizes, secs = [], []
        lines += [
            f"## {name}",
            "",
            "| size | samples | batch | s / sample | peak RSS MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for size, arch, shape, n, batch in configs:
            m = measure(arch, shape, n, batch)
            sizes.append(size)
            secs.append(m["sec"])
            lines.append(f"| {size} | {n} | {batch} | {m['sec']:.3f} | {m['rss_mb']:.0f} |")
            print(name, lines[-1], flush=True)
        slope = float(np.polyfit(np.log(sizes), np.log(secs), 1)[0])
        lines += ["", f"Fitted growth exponent: **{slope:.2f}** (seconds per sample ~ size^{slope:.2f}).", ""]
        ax.loglog(sizes, secs, marker="o")
        ax.set_title(f"{name}\nexponent {slope:.2f}", fontsize=9)
        ax.set_xlabel("size")
        ax.set_ylabel("s / sample (20 iterations)")
    fig.tight_layout()
    fig.savefig(OUT / "scale.png", dpi=100)
    lines.append("![scale](scale.png)")
    (OUT / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
