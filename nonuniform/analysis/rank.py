"""Feature ranking and box similarity for one or more files of certified boxes, with figures.

The statistics are :mod:`~nonuniform.analysis.statistics`'s; this module runs them over files, writes
``ranking_<model>.npz``, the feature maps, similarity matrices and radius histograms, and returns
the report that the CLI prints and saves as ``ranking.json`` (undefined statistics are null).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..certify.result import CertifiedBoxes
from ..report.plots import feature_map_figure, radius_histograms, similarity_figure
from .statistics import cosine_similarity, feature_robustness, log_radii, similarity_report, standardise


def json_safe(value):
    """NaN and infinities (e.g. a class with one sample) become None, so the report is JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rank_boxes(files: list[str | Path], out: str | Path, top: int = 20, seed: int = 0) -> dict:
    """Rank features (least robust first) and measure similarity for each file; write to ``out``."""
    out = Path(out)
    report, hist = {}, {}
    shapes = {}
    for f in map(Path, files):
        res = CertifiedBoxes.load(f)
        shapes[f] = tuple(res.inputs.shape[1:])
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{k.name} {v}" for k, v in shapes.items())
            raise ValueError(
                f"the files' inputs have different shapes ({listed}); compare boxes of one input shape"
            )
        if int(res.certified.sum()) < 2:
            raise ValueError(f"{f}: {int(res.certified.sum())} certified boxes; ranking needs at least two")
        name = res.settings.get("model", {}).get("name") or f.stem
        fr = feature_robustness(res, seed=seed)
        raw, labels = log_radii(res)
        free_idx = np.nonzero(res.free.reshape(-1))[0]
        report[name] = {
            "file": str(f),
            "samples": fr.n_samples,
            "rank_stability": fr.rank_stability,
            "least_robust_features": free_idx[fr.order[:top]].tolist(),
            "most_robust_features": free_idx[fr.order[::-1][:top]].tolist(),
            "similarity": asdict(similarity_report(res, seed=seed)),
            "mean_log_radius": float(raw.mean()),
        }
        np.savez(
            out / f"ranking_{name}.npz",
            mean=fr.mean,
            median=fr.median,
            order=free_idx[fr.order],
            standard_error=fr.standard_error,
            free=res.free,
        )
        title = f"{name}: feature robustness (low = fragile)"
        feature_map_figure(fr.mean, res.free, out / f"feature_map_{name}.png", title)
        similarity_figure(
            cosine_similarity(standardise(raw)),
            labels,
            out / f"similarity_{name}.png",
            f"{name}: similarity of standardised log radii",
        )
        hist[name] = raw
    radius_histograms(hist, out / "radius_histograms.png")
    report = json_safe(report)
    (out / "ranking.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["json_safe", "rank_boxes"]
