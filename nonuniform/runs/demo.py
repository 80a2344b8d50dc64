"""The main job on embedded data: the normal and the PGD-trained MNIST MLP, certified side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..certify.boxes import certify_boxes
from ..certify.result import CertifiedBoxes
from ..report.plots import overview_figure, sample_figure, side_by_side_figure
from ..runtime.device import resolve_device
from ..zoo.models import load_model
from ..zoo.samples import load_samples
from .rundir import model_record

DEMO_MODELS = ("mnist-mlp", "mnist-mlp-pgd")


def run_demo(
    out: str | Path,
    count: int = 8,
    device: str | torch.device = "auto",
    progress: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, CertifiedBoxes], Path]:
    """Certify the first ``count`` embedded MNIST test images with both demo models (CROWN);
    write each model's boxes, summary and figures under ``out/<model>/`` and the side-by-side
    figure ``out/demo.png``, and a report per model (``out/<model>/report.html``).
    ``progress(model, samples)`` is called after each batch."""
    out = Path(out)
    x, y = load_samples("mnist")
    if not 1 <= count <= len(x):
        raise ValueError(f"--count must be between 1 and {len(x)}")
    x, y = x[:count], y[:count]
    dev = resolve_device(device)
    results = {}
    for name in DEMO_MODELS:
        net, card = load_model(name, dev)
        res = certify_boxes(
            net,
            x,
            y,
            method="crown",
            device=dev,
            callback=(lambda p, name=name: progress(name, len(p))) if progress else None,
        )
        res.settings["model"] = model_record(card)
        res.settings["data"] = f"mnist: the first {count} embedded test samples"
        results[name] = res
        d = out / name
        (d / "figures").mkdir(parents=True, exist_ok=True)
        res.save(d / "boxes.npz")
        (d / "summary.json").write_text(json.dumps(res.summary(), indent=2))
        for k in range(count):
            sample_figure(res, k, d / "figures" / f"sample_{k:05d}.png")
        overview_figure(res, d / "figures" / "overview.png", title=f"{name}: certified boxes (CROWN)")
    from ..report.html import write_report

    for name in DEMO_MODELS:
        write_report(out / name)
    return results, side_by_side_figure(results, out / "demo.png")


__all__ = ["DEMO_MODELS", "run_demo"]
