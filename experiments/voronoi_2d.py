"""2-D synthetic check: certified non-uniform vs uniform boxes on a Voronoi partition.

Data: points in [-1, 1]^2 labelled by the nearest of 10 random centres; an MLP 2-64-64-10 is
trained on them. ~20 test points get certified boxes (CROWN, asymmetric and clipped to the
domain); every box is checked on a dense grid to lie inside its point's decision region.
Run: ``.venv/bin/python experiments/voronoi_2d.py``; writes
``experiments/results/voronoi_2d.png`` and ``voronoi_2d.md``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import nn  # noqa: E402

from nonuniform import certify_boxes  # noqa: E402

OUT = Path(__file__).parent / "results"


def main() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(10, 2, generator=g) * 2 - 1
    x = torch.rand(20000, 2, generator=g) * 2 - 1
    y = torch.cdist(x, centres).argmin(1)
    net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(1500):
        idx = torch.randint(0, len(x), (512,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    test = torch.rand(20, 2, generator=g) * 2 - 1
    res = certify_boxes(net, test, method="crown", asymmetric=True, domain=(-1.0, 1.0), iterations=200)

    # Dense grid check: every grid point inside a certified box has the box's class.
    n = 801
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="xy"), -1)
    with torch.no_grad():
        pred_grid = net(grid.reshape(-1, 2)).argmax(1).reshape(n, n).numpy()
    pts = grid.reshape(-1, 2).numpy()
    violations, inside_counts = 0, []
    for i in np.nonzero(res.certified)[0]:
        inside = np.all((pts >= res.lower[i]) & (pts <= res.upper[i]), 1)
        inside_counts.append(int(inside.sum()))
        violations += int((pred_grid.reshape(-1)[inside] != res.preds[i]).sum())
    acc = float((net(x).argmax(1) == y).float().mean())

    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(
        pred_grid, origin="lower", extent=(-1, 1, -1, 1), cmap="tab10", alpha=0.35, interpolation="nearest"
    )
    for i in range(len(res)):
        if not res.certified[i]:
            continue
        lo, hi = res.lower[i], res.upper[i]
        ax.add_patch(Rectangle(lo, *(hi - lo), fill=False, color="k", lw=1.2))
        r = res.uniform_radius[i]
        ulo = np.maximum(res.inputs[i] - r, -1)
        uhi = np.minimum(res.inputs[i] + r, 1)
        ax.add_patch(Rectangle(ulo, *(uhi - ulo), fill=False, color="tab:red", lw=1, ls="--"))
    ax.scatter(test[:, 0], test[:, 1], c="k", s=8)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_title("decision regions; certified non-uniform (black) vs uniform (red dashed) boxes")
    OUT.mkdir(exist_ok=True)
    fig.savefig(OUT / "voronoi_2d.png", dpi=100, bbox_inches="tight")
    cert = res.certified
    gain = res.log_volume[cert] - res.uniform_log_volume[cert]
    lines = [
        "# 2-D Voronoi check",
        "",
        "MLP 2-64-64-10 trained on 10 Voronoi cells of [-1, 1]^2 (train accuracy "
        f"{acc:.3f}); 20 random test points; CROWN, asymmetric, clipped boxes.",
        "Reproduce: `.venv/bin/python experiments/voronoi_2d.py`.",
        "",
        "| certified | mean log-volume gain over uniform (nats) | min gain | grid points inside boxes | "
        "grid points of another class inside a box |",
        "|---:|---:|---:|---:|---:|",
        f"| {int(cert.sum())}/20 | {gain.mean():.3f} | {gain.min():.3f} | {sum(inside_counts)} "
        f"| {violations} |",
        "",
        "![boxes](voronoi_2d.png)",
    ]
    (OUT / "voronoi_2d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    assert violations == 0, "a certified box contains a point of another class"


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
