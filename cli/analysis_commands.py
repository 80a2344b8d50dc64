"""Commands that read certified boxes: rank, explain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.table import Table

from .app import (
    UserError,
    app,
    json_safe,
    out_console,
    progress_bar,
    user_errors,
)
from .options import (
    check_output_dir,
    resolve_model,
)


@app.command()
@user_errors
def rank(
    boxes: Annotated[Path, typer.Argument(help="boxes.npz written by `certify`.")],
    out: Annotated[Path, typer.Option(help="Output directory for ranking.json and figures.")],
    compare: Annotated[
        Path | None, typer.Option(help="A second boxes.npz (e.g. another model) to compare.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many least-robust features to list.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of bootstrap and split-half resampling.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rank input features by certified robustness and measure how similar the boxes are."""
    from dataclasses import asdict

    from nonuniform.boxes import CertifiedBoxes
    from nonuniform.metrics import (
        cosine_similarity,
        feature_robustness,
        log_radii,
        similarity_report,
        standardise,
    )
    from nonuniform.plots import feature_map_figure, radius_histograms, similarity_figure

    files = [boxes] + ([compare] if compare else [])
    for f in files:
        if not f.exists():
            raise UserError(f"{f}: file not found")
    check_output_dir(out)
    report, hist = {}, {}
    for f in files:
        res = CertifiedBoxes.load(f)
        if int(res.certified.sum()) < 2:
            raise UserError(f"{f}: {int(res.certified.sum())} certified boxes; ranking needs at least two")
        name = res.settings.get("model", {}).get("name") or f.stem
        fr = feature_robustness(res, seed=seed)
        sim = similarity_report(res, seed=seed)
        raw, labels = log_radii(res)
        free_idx = np.nonzero(res.free.reshape(-1))[0]
        least = free_idx[fr.order[:top]]
        report[name] = {
            "file": str(f),
            "samples": fr.n_samples,
            "rank_stability": fr.rank_stability,
            "least_robust_features": least.tolist(),
            "most_robust_features": free_idx[fr.order[::-1][:top]].tolist(),
            "similarity": asdict(sim),
            "mean_log_radius": float(raw.mean() - 0.0),
        }
        np.savez(
            out / f"ranking_{name}.npz",
            mean=fr.mean,
            median=fr.median,
            order=free_idx[fr.order],
            standard_error=fr.standard_error,
            free=res.free,
        )
        feature_map_figure(
            fr.mean, res.free, out / f"feature_map_{name}.png", f"{name}: feature robustness (low = fragile)"
        )
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
    if json_out:
        out_console.print_json(json.dumps(report))
        return
    t = Table(title="feature robustness and box similarity")
    for col in (
        "model",
        "samples",
        "mean log r",
        "within-class cos",
        "between-class cos",
        "split-half Spearman",
        "split-half Kendall",
        "rank stability",
    ):
        t.add_column(col, justify="right")
    for name, r in report.items():
        s_ = r["similarity"]
        t.add_row(
            name,
            str(r["samples"]),
            f"{r['mean_log_radius']:.3f}",
            f"{s_['cosine_logradii_within']:.3f}",
            f"{s_['cosine_logradii_between']:.3f}",
            f"{s_['split_half_spearman']:.3f}",
            f"{s_['split_half_kendall']:.3f}",
            f"{r['rank_stability']:.3f}",
        )
    out_console.print(t)
    out_console.print(f"ranking.json and figures in {out}/")


@app.command()
@user_errors
def explain(
    boxes: Annotated[Path, typer.Argument(help="boxes.npz written by `certify`.")],
    out: Annotated[Path, typer.Option(help="Output directory (explanations.npz, evaluation, figures).")],
    k: Annotated[
        str, typer.Option(help="Set sizes: fractions of the free features or counts, comma-separated.")
    ] = "0.05,0.1",
    model: Annotated[str | None, typer.Option(help="Model (default: the one recorded in BOXES).")] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Evaluate ours vs saliency baselines (attacks; slower).")
    ] = True,
    max_samples: Annotated[int, typer.Option(help="Certified samples used in the evaluation.")] = 20,
    attack_steps: Annotated[int, typer.Option(help="PGD steps per attack in the evaluation.")] = 20,
    bisection_steps: Annotated[int, typer.Option(help="Bisection steps over the attack budget.")] = 10,
    eval_k: Annotated[
        str, typer.Option(help="Set sizes (fractions) of the evaluation curves.")
    ] = "0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45",
    seed: Annotated[int, typer.Option(help="Seed of the random baseline and attacks.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Explanation sets (least-robust features) and their evaluation against baselines."""
    from nonuniform.boxes import CertifiedBoxes
    from nonuniform.explain import (
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
    from nonuniform.plots import explanation_curves, explanation_figure

    if not boxes.exists():
        raise UserError(f"{boxes}: file not found")
    try:
        sizes = [float(t) if "." in t else int(t) for t in k.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"bad --k '{k}': give fractions (0.05) or counts (40), comma-separated") from None
    if not sizes or any(
        (isinstance(v, float) and not 0 < v < 1) or (isinstance(v, int) and v < 1) for v in sizes
    ):
        raise UserError(f"bad --k '{k}': fractions must lie in (0, 1) and counts be at least 1")
    res = CertifiedBoxes.load(boxes)
    cert = np.nonzero(res.certified)[0]
    if len(cert) == 0:
        raise UserError(f"{boxes} holds no certified box to explain")
    check_output_dir(out)
    sets = {str(s): explanation_set(res, s) for s in sizes}
    np.savez_compressed(
        out / "explanations.npz",
        indices=res.indices,
        certified=res.certified,
        **{f"set_{key}": v for key, v in sets.items()},
    )
    for key, v in sets.items():
        explanation_figure(
            res.inputs[cert],
            v[cert],
            res.indices[cert],
            out / f"explanation_k{key}.png",
            f"least-robust features (k = {key}) in red",
        )
    report: dict = {
        "sets": {key: int(v[cert].reshape(len(cert), -1).sum(1).mean()) for key, v in sets.items()}
    }
    if evaluate:
        if model is None:
            src = res.settings.get("model", {}).get("source", "")
            if not src:
                raise UserError(f"{boxes} does not record its model; pass --model")
            model = src.removeprefix("embedded:")
        net, _, _ = resolve_model(model, "cpu")
        try:
            k_grid = tuple(float(t) for t in eval_k.split(",") if t.strip())
        except ValueError:
            raise UserError(f"bad --eval-k '{eval_k}': give fractions, comma-separated") from None
        if not k_grid or not all(0 < v < 1 for v in k_grid):
            raise UserError(f"bad --eval-k '{eval_k}': fractions must lie in (0, 1)")
        use = cert[:max_samples]
        sub = res.subset(np.isin(np.arange(len(res)), use))
        x = torch.tensor(sub.inputs)
        y = torch.tensor(sub.preds)
        free = torch.tensor(sub.free)
        methods = {
            "certified box (ours)": robustness_attribution(sub),
            "uniform box (control)": uniform_attribution(sub),
            "random": RandomRanking(seed=seed).attribute(x, y),
            "saliency |grad|": Saliency(net).attribute(x, y),
            "|grad x input|": InputXGradient(net).attribute(x, y),
            "|integrated gradients|": IntegratedGradients(net).attribute(x, y),
            "|DeepLIFT|": DeepLift(net).attribute(x, y),
            "occlusion (4x4)": Occlusion(net).attribute(x, y),
        }
        scores = []
        with progress_bar() as bar:
            task = bar.add_task("evaluating explanations", total=len(methods))
            for name, imp in methods.items():
                scores.append(
                    evaluate_ranking(
                        net,
                        x,
                        y,
                        imp,
                        free,
                        name,
                        k_fractions=k_grid,
                        certified=name.endswith("(ours)"),
                        seed=seed,
                        steps=attack_steps,
                        bisection=bisection_steps,
                    )
                )
                bar.update(task, advance=1)
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
    if json_out:
        out_console.print_json(json.dumps(report))
        return
    if evaluate:
        t = Table(title=f"explanations on {report['samples']} samples (AUC over k = 5%..45%)")
        for col in ("method", "AUC S_r (lower better)", "AUC S_r-complement (higher better)"):
            t.add_column(col, justify="right")
        for name, r in report["evaluation"].items():
            t.add_row(name, f"{r['auc_s_r']:.4f}", f"{r['auc_s_r_complement']:.4f}")
        out_console.print(t)
    out_console.print(f"explanation sets and figures in {out}/")
