"""Explanation sets of a file of certified boxes and their evaluation against Captum baselines.

Runs :mod:`~nonuniform.analysis.attribution` over a :class:`~nonuniform.certify.result.CertifiedBoxes`: writes
``explanations.npz`` (one mask per set size), a figure per size, and, when evaluating, the
evaluation curves and ``explain.json``; returns the report the CLI prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..certify.problem import domain_tensors
from ..certify.result import CertifiedBoxes
from ..report.plots import explanation_curves, explanation_figure
from .attribution import (
    K_FRACTIONS,
    DeepLift,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    RandomRanking,
    Saliency,
    evaluate_ranking,
    explanation_set,
    robustness_attribution,
    uniform_attribution,
)


def baseline_rankings(model: nn.Module, boxes: CertifiedBoxes, seed: int = 0) -> dict:
    """Every ranking the evaluation compares: ours, the uniform control, random, Captum's."""
    x, y = torch.tensor(boxes.inputs), torch.tensor(boxes.preds)
    return {
        "certified box (ours)": robustness_attribution(boxes),
        "uniform box (control)": uniform_attribution(boxes),
        "random": RandomRanking(seed=seed).attribute(x, y),
        "saliency |grad|": Saliency(model).attribute(x, y),
        "|grad x input|": InputXGradient(model).attribute(x, y),
        "|integrated gradients|": IntegratedGradients(model).attribute(x, y),
        "|DeepLIFT|": DeepLift(model).attribute(x, y),
        "occlusion (4x4)": Occlusion(model).attribute(x, y),
    }


def explain_boxes(
    boxes: CertifiedBoxes,
    out: str | Path,
    sizes: Sequence[int | float] = (0.05, 0.1),
    model: nn.Module | None = None,
    *,
    max_samples: int = 20,
    k_fractions: Sequence[float] = K_FRACTIONS,
    attack_steps: int = 20,
    bisection_steps: int = 10,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Explanation sets for ``sizes``; with ``model``, also the evaluation of every ranking."""
    out = Path(out)
    cert = np.nonzero(boxes.certified)[0]
    if len(cert) == 0:
        raise ValueError("the file holds no certified box to explain")
    sets = {str(s): explanation_set(boxes, s) for s in sizes}
    np.savez_compressed(
        out / "explanations.npz",
        indices=boxes.indices,
        certified=boxes.certified,
        **{f"set_{key}": v for key, v in sets.items()},
    )
    for key, v in sets.items():
        title = f"least-robust features (k = {key}) in red"
        explanation_figure(
            boxes.inputs[cert], v[cert], boxes.indices[cert], out / f"explanation_k{key}.png", title
        )
    report: dict = {
        "sets": {key: int(v[cert].reshape(len(cert), -1).sum(1).mean()) for key, v in sets.items()}
    }
    if model is not None:
        use = cert[:max_samples]
        sub = boxes.subset(np.isin(np.arange(len(boxes)), use))
        x, y, free = torch.tensor(sub.inputs), torch.tensor(sub.preds), torch.tensor(sub.free)
        # attacks and certificates stay in the domain the boxes were certified in
        domain = domain_tensors(boxes.settings.get("domain") or (0.0, 1.0), x[0])
        scores = []
        for name, imp in baseline_rankings(model, sub, seed).items():
            scores.append(
                evaluate_ranking(
                    model, x, y, imp, free, name,
                    k_fractions=tuple(k_fractions), certified=name.endswith("(ours)"), seed=seed,
                    steps=attack_steps, bisection=bisection_steps, domain=domain,
                )
            )  # fmt: skip
            if progress is not None:
                progress(name)
        explanation_curves(scores, out / "evaluation_curves.png")
        report["evaluation"] = {
            s.method: {
                "auc_s_r": s.auc_s_r,
                "auc_s_r_complement": s.auc_s_r_complement,
                "s_r": s.s_r.mean(1).tolist(),
                "s_r_complement": s.s_r_complement.mean(1).tolist(),
            }
            for s in scores
        }
        report["k_fractions"] = list(scores[0].k_fractions)
        report["samples"] = len(use)
    (out / "explain.json").write_text(json.dumps(report, indent=2))
    return report


def explain_certified_boxes(
    boxes: CertifiedBoxes,
    out: str | Path,
    model: nn.Module,
    *,
    eps: float | None,
    order: str = "box",
    method: str = "crown",
    max_samples: int = 20,
    seed: int = 0,
) -> dict:
    """Certified (abductive) explanations of the boxes' certified samples, in the boxes' own
    domain (:mod:`~nonuniform.analysis.sufficient`): writes ``certified.npz`` (which ``verify``
    re-proves) and ``certified.png`` (S in red); returns the summary."""
    from .sufficient import CertifiedExplainer

    out = Path(out)
    use = np.nonzero(boxes.certified)[0][:max_samples]
    if len(use) == 0:
        raise ValueError("the file holds no certified box to explain")
    sub = boxes.subset(np.isin(np.arange(len(boxes)), use))
    domain = boxes.settings.get("domain") or (0.0, 1.0)
    expl = CertifiedExplainer(model, domain=domain, method=method).explain(
        torch.tensor(sub.inputs), eps=eps, order=order, boxes=sub if order == "box" else None, seed=seed
    )
    expl.settings["model"] = boxes.settings.get("model", {})
    expl.settings["indices"] = sub.indices.tolist()
    if boxes.settings.get("output_range") is not None:  # the property proved: outputs in range
        expl.settings["output_range"] = boxes.settings["output_range"]
    expl.save(out / "certified.npz")
    title = (
        f"certified explanations (order {order}, {'whole domain' if eps is None else f'eps {eps}'}): S in red"
    )
    explanation_figure(expl.inputs, expl.sets, sub.indices, out / "certified.png", title)
    report = expl.summary()
    report["per_sample"] = [
        {"index": int(i), "size": float(sz), "proved": bool(p), "minimal": bool(m), "calls": int(c),
         "witness_size": int(w.sum())}
        for i, sz, p, m, c, w in zip(sub.indices, expl.size, expl.proved, expl.minimal, expl.calls,
                                     expl.witness_sets.reshape(len(expl), -1))
    ]  # fmt: skip
    (out / "certified.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["baseline_rankings", "explain_boxes", "explain_certified_boxes"]
