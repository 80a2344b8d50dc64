"""Commands that read certified boxes: rank, explain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import (
    UserError,
    app,
    fmt,
    out_console,
    progress_bar,
    user_errors,
)
from .options import (
    check_output_dir,
    parse_fractions,
    parse_sizes,
    resolve_model,
    with_output_range,
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
    from nonuniform.analysis.rank import rank_boxes

    files = [boxes] + ([compare] if compare else [])
    for f in files:
        if not f.exists():
            raise UserError(f"{f}: file not found")
    check_output_dir(out)
    report = rank_boxes(files, out, top=top, seed=seed)
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
            fmt(r["mean_log_radius"]),
            fmt(s_["cosine_logradii_within"]),
            fmt(s_["cosine_logradii_between"]),
            fmt(s_["split_half_spearman"]),
            fmt(s_["split_half_kendall"]),
            fmt(r["rank_stability"]),
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
    certified: Annotated[
        bool,
        typer.Option(help="Certified explanations: minimal feature sets that provably fix the prediction."),
    ] = False,
    eps: Annotated[
        float | None, typer.Option(help="--certified: the other features range over x0 +- EPS.")
    ] = None,
    full_domain: Annotated[
        bool, typer.Option(help="--certified: the other features range over the whole domain.")
    ] = False,
    order: Annotated[str, typer.Option(help="--certified: box | sensitivity | random.")] = "box",
    method: Annotated[
        str, typer.Option(help="--certified: the proof's bound (crown, alpha-crown).")
    ] = "crown",
) -> None:
    """Explanation sets (least-robust features) and their evaluation against baselines; with
    --certified, minimal sets the prediction provably depends on (verify re-proves them)."""
    from nonuniform.analysis.explain import explain_boxes, explain_certified_boxes

    if not boxes.exists():
        raise UserError(f"{boxes}: file not found")
    if certified:
        if (eps is None) == (not full_domain):
            raise UserError("--certified needs exactly one of --eps E or --full-domain")
        if eps is not None and not eps > 0:
            raise UserError(f"--eps must be a positive number, got {eps}")
        if order not in ("box", "sensitivity", "random"):
            raise UserError(f"--order must be box, sensitivity or random, got {order!r}")
        res, net = _certified_boxes_and_model(boxes, out, model, True)
        with progress_bar() as bar:
            bar.add_task("certified explanations", total=None)
            report = explain_certified_boxes(
                res, out, net, eps=eps, order=order, method=method, max_samples=max_samples, seed=seed
            )
        if json_out:
            out_console.print_json(json.dumps(report))
            return
        out_console.print(
            f"{report['proved']}/{report['samples']} explanations proved, {report['minimal']} minimal (each "
            f"feature tested); mean size {fmt(report['mean_size'], '.3f')} of the features, "
            f"{fmt(report['mean_calls'], '.0f')} bound calls and "
            f"{fmt(report['seconds_per_sample'], '.2f')} s per sample; {report['witnesses']} contrastive "
            f"witnesses. Files in {out}/ (verify certified.npz)"
        )
        return
    sizes = parse_sizes(k)
    k_grid = parse_fractions(eval_k, "--eval-k")
    if evaluate and _output_range(boxes) is not None:
        raise UserError(
            f"{boxes} holds boxes certified for an output range; --evaluate compares rankings by how "
            "fast a classifier's prediction changes: use --no-evaluate (or --certified)"
        )
    res, net = _certified_boxes_and_model(boxes, out, model, evaluate)
    with progress_bar() as bar:
        task = bar.add_task("evaluating explanations", total=8 if evaluate else 0)
        report = explain_boxes(
            res, out, sizes, net,
            max_samples=max_samples, k_fractions=k_grid, attack_steps=attack_steps,
            bisection_steps=bisection_steps, seed=seed, progress=lambda name: bar.advance(task),
        )  # fmt: skip
    if json_out:
        out_console.print_json(json.dumps(report))
        return
    if evaluate:
        t = Table(title=f"explanations on {report['samples']} samples (AUC over k = 5%..45%)")
        for col in ("method", "AUC S_r (lower better)", "AUC S_r-complement (higher better)"):
            t.add_column(col, justify="right")
        for name, r in report["evaluation"].items():
            t.add_row(name, fmt(r["auc_s_r"], ".4f"), fmt(r["auc_s_r_complement"], ".4f"))
        out_console.print(t)
    out_console.print(f"explanation sets and figures in {out}/")


def _certified_boxes_and_model(boxes: Path, out: Path, model: str | None, need_model: bool):
    """The boxes file (with at least one certified box), the output folder made, and the model
    (the one the file records unless given) when ``need_model``."""
    from nonuniform.certify.boxes import CertifiedBoxes

    res = CertifiedBoxes.load(boxes)
    if not res.certified.any():
        raise UserError(f"{boxes} holds no certified box to explain")
    check_output_dir(out)
    if not need_model:
        return res, None
    if model is None:
        model = res.settings.get("model", {}).get("source", "")
        if not model:
            raise UserError(f"{boxes} does not record its model; pass --model")
    return res, with_output_range(resolve_model(model, "cpu")[0], res.settings, res.inputs)


def _output_range(boxes: Path):
    """The output range the boxes file was certified for (None: a prediction), if readable."""
    from nonuniform.certify.boxes import CertifiedBoxes

    try:
        return CertifiedBoxes.load(boxes).settings.get("output_range")
    except Exception:  # the full load below reports a damaged file as one line
        return None
