"""Commands that certify and re-check: certify, verify, steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from .app import (
    UserError,
    app,
    console,
    fmt,
    one_line,
    out_console,
    progress_bar,
    results_table,
    user_errors,
)
from .options import (
    OUTPUT_RANGE_HELP,
    certify_config,
    check_output_dir,
    check_seconds,
    feature_array,
    output_range_classes,
    parse_backend,
    parse_domain,
    parse_groups,
    parse_output_range,
    parse_shape,
    resolve_model,
    with_output_range,
)


@app.command()
@user_errors
def certify(
    model: Annotated[
        str,
        typer.Argument(help="Embedded model name (see `nonuniform models`), checkpoint or .onnx path."),
    ],
    out: Annotated[Path, typer.Option(help="Output directory (boxes.npz, summary.json, figures/).")],
    dataset: Annotated[
        str, typer.Option(help="mnist | fashion-mnist | PATH.npz (arrays inputs, labels).")
    ] = "mnist",
    indices: Annotated[
        str | None, typer.Option(help="Samples to certify: START:STOP or a list 3,5,9.")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Certify the first N samples.")] = None,
    method: Annotated[str, typer.Option(help="Bound method: fastlin | crown | alpha-crown.")] = "crown",
    asymmetric: Annotated[bool, typer.Option(help="Separate radii below and above each feature.")] = False,
    clip: Annotated[
        bool,
        typer.Option(help="Intersect boxes with the input domain (--no-clip: the paper's setting)."),
    ] = True,
    per_logit: Annotated[
        bool, typer.Option(help="Constrain per-logit bounds (Liu et al.) instead of margins.")
    ] = False,
    iterations: Annotated[
        int | None,
        typer.Option(help="Augmented-Lagrangian iterations per batch (default 0; 60 with alpha-crown)."),
    ] = None,
    shape_steps: Annotated[
        int | None,
        typer.Option(help="Balancing steps of the warm start (default 8; 0 with alpha-crown)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Samples optimised together (independent of each other).")
    ] = 25,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Directory with the IDX .gz files (else embedded samples)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue an interrupted run in OUT without redoing finished samples."),
    ] = False,
    figures: Annotated[bool, typer.Option(help="Write per-sample and overview figures.")] = True,
    report: Annotated[bool, typer.Option(help="Also write OUT/report.html (self-contained page).")] = False,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape C,H,W (ONNX files that leave it open).")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            help="Input domain: LO,HI, LO:HI per channel (per feature for flat inputs), or a file: "
            ".npz with lo/hi arrays, .npy (2, ...), a .vnnlib input box (required for ONNX models)."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
    ] = False,
    backend: Annotated[
        str, typer.Option(help="local (this process) | ray (shards on a Ray cluster, same boxes).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: auto | ray://HOST:PORT (default: start one on this machine)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Ray: shards in flight at once (default: the cluster's CPUs).")
    ] = None,
    gpus_per_worker: Annotated[float, typer.Option(help="Ray: GPUs per worker (0: CPU).")] = 0.0,
    bab: Annotated[
        bool, typer.Option(help="Grow each box further by branch-and-bound (ReLU nets; slower).")
    ] = False,
    bab_time: Annotated[float, typer.Option(help="Seconds of branch-and-bound per sample.")] = 10.0,
    joint_slopes: Annotated[
        bool | None,
        typer.Option(
            help="alpha-crown: optimise slopes with the radii (--no-joint-slopes: anew per bound call)."
        ),
    ] = None,
    alpha_steps: Annotated[
        int | None,
        typer.Option(
            help="alpha-crown: parameter steps per bound call of the searches (default 5; 0 reuses the "
            "joint optimiser's parameters, the cheap choice for recurrent models)."
        ),
    ] = None,
    alpha_steps_check: Annotated[
        int | None, typer.Option(help="alpha-crown: parameter steps of the final float64 proof (default 50).")
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="volume (largest box) | apothem (first the largest smallest radius: the best uniform "
            "radius as a floor, then volume) | blend:B (floor at B x the best uniform radius, 0<B<=1)."
        ),
    ] = "volume",
    floor: Annotated[float, typer.Option(help="Every radius at least this (absolute units).")] = 0.0,
    groups: Annotated[
        str | None,
        typer.Option(help="One radius per group: channel | time | patch:HxW | FILE.npy (integer map)."),
    ] = None,
    frozen: Annotated[
        str | None, typer.Option(help="FILE.npy: boolean mask of features that may not move.")
    ] = None,
    whole_domain: Annotated[
        str | None, typer.Option(help="FILE.npy: boolean mask of features free over their whole domain.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="FILE.npy: per-feature weights (>= 0) of the objective.")
    ] = None,
    output_range: Annotated[str | None, typer.Option(help=OUTPUT_RANGE_HELP)] = None,
) -> None:
    """Certify the largest non-uniform box around each selected sample."""
    from nonuniform.certify.settings import CertifyConfig
    from nonuniform.runs.ray import RayUnavailable, ShardsFailed
    from nonuniform.runs.rundir import certify_run, with_domain
    from nonuniform.zoo.inputs import check_dataset_matches, check_inputs, load_inputs

    config = certify_config(
        method=method, asymmetric=asymmetric, clip=clip, per_logit=per_logit, iterations=iterations,
        shape_steps=shape_steps, batch_size=batch_size, seed=seed, bab=bab, bab_time=bab_time,
        joint_slopes=joint_slopes, alpha_steps=alpha_steps, alpha_steps_check=alpha_steps_check,
        objective=objective, floor=floor, groups=parse_groups(groups),
        frozen=feature_array(frozen, "--frozen"), whole=feature_array(whole_domain, "--whole-domain"),
        weights=feature_array(weights, "--weights"), output_range=parse_output_range(output_range),
    )  # fmt: skip
    net, card, dev = resolve_model(model, device, parse_shape(input_shape), parse_domain(domain))
    config = with_domain(CertifyConfig.build(config, device=str(dev)), card)
    check_dataset_matches(card, dataset)
    ray = parse_backend(backend, address, workers, gpus_per_worker)
    ranged = config.output_range is not None
    data = load_inputs(dataset, data_dir, indices, count, card.input_shape, labels=not ranged)
    check_inputs(data, 2 if ranged else len(card.class_names), dataset)
    x, y, idx, source, class_names = data.x, data.y, data.indices, data.source, data.class_names
    if ranged:
        class_names = output_range_classes(net, config, x[:1].to(dev))
    saved = [0]
    bar = progress_bar(certified=True)
    task = bar.add_task(f"certifying with {card.name} ({method})", total=len(idx), start=False, certified=0)

    def on_saved(n: int, certified: int) -> None:
        saved[0] = n
        bar.update(task, certified=certified)

    def start(total: int, done: int) -> None:  # the run directory is ready: show the bar
        bar.update(task, completed=done)
        bar.start_task(task)
        bar.start()

    try:
        res, summary = certify_run(
            net, card, x, y, idx, source, out, config,
            resume=resume, figures=figures, class_names=class_names,
            progress=lambda n: bar.advance(task, n),
            on_saved=on_saved, on_start=start, backend=ray,
        )  # fmt: skip
    except KeyboardInterrupt:
        bar.stop()
        console.print(
            f"interrupted: {saved[0]} samples of this run are saved in {out}/parts; run the same "
            "command with --resume to continue",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(130) from None
    except (RayUnavailable, ShardsFailed) as e:
        bar.stop()
        typer.echo(f"error: {one_line(e)}", err=True)
        raise typer.Exit(1 if isinstance(e, ShardsFailed) else 2) from None
    finally:
        bar.stop()
    if report:
        from nonuniform.report.html import write_report

        console.print(f"report: {write_report(out, class_names=class_names)}", markup=False, highlight=False)
    if json_out:
        out_console.print_json(json.dumps({"summary": summary, "samples": res.sample_rows()}))
    else:
        out_console.print(results_table(res, f"{card.name} on {len(res)} samples ({method})"))
        out_console.print(
            f"certified {summary['certified']}/{summary['samples']}; mean log radius "
            f"{fmt(summary['mean_log_radius'])} (uniform {fmt(summary['uniform_mean_log_radius'])}); "
            f"results in {out}/"
        )


@app.command()
@user_errors
def verify(
    boxes: Annotated[Path, typer.Argument(help="boxes.npz written by `certify`.")],
    model: Annotated[
        str | None, typer.Argument(help="Model (default: the one recorded in the file).")
    ] = None,
    attack_restarts: Annotated[int, typer.Option(help="PGD restarts per box.")] = 5,
    attack_steps: Annotated[int, typer.Option(help="PGD steps per restart.")] = 50,
    corners: Annotated[int, typer.Option(help="Random box vertices evaluated per box.")] = 256,
    milp: Annotated[
        bool, typer.Option(help="Also decide each box exactly by MILP (small ReLU nets).")
    ] = False,
    milp_time_limit: Annotated[float, typer.Option(help="Seconds per box for the MILP.")] = 60.0,
    bab: Annotated[
        bool | None,
        typer.Option(help="Branch-and-bound for boxes one bound cannot prove (default: if certified so)."),
    ] = None,
    bab_time: Annotated[float | None, typer.Option(help="Seconds of branch-and-bound per box.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Re-check every certified box: fresh float64 bound, attacks, optional MILP. Exit 1 on failure."""
    from nonuniform.certify.boxes import CertifiedBoxes
    from nonuniform.verify.boxes import verify_boxes

    if bab_time is not None:
        check_seconds(bab_time=bab_time)
    if not boxes.exists():
        raise UserError(f"{boxes}: file not found")
    from nonuniform.analysis.sufficient import is_explanations_file

    if is_explanations_file(boxes):
        verify_explanation_file(boxes, model, attack_restarts, json_out)
        return
    res = CertifiedBoxes.load(boxes)
    rec = res.settings.get("model", {})
    if model is None:
        src = rec.get("source", "")
        if not src:
            raise UserError(f"{boxes} does not record its model; pass MODEL explicitly")
        model = src
    net, card, dev = resolve_model(model, device)
    if rec.get("sha256") and rec["sha256"] != card.sha256:
        console.print(f"[yellow]warning:[/] {model} differs from the model recorded in {boxes} (checksum)")
    with progress_bar() as bar:
        n_cert = int(res.certified.sum())
        task = bar.add_task("MILP" if milp else "bound and attacks", total=n_cert)
        report = verify_boxes(
            net,
            res,
            attack_restarts=attack_restarts,
            attack_steps=attack_steps,
            corners=corners,
            milp=milp,
            milp_time_limit=milp_time_limit,
            bab=bab,
            bab_time=bab_time,
            device=dev,
            progress=lambda k: bar.update(task, advance=k),
        )
        bar.update(task, completed=n_cert)
    report.save_beside(boxes)
    if json_out:
        out_console.print_json(json.dumps(report.to_dict()))
    else:
        found = list(report.milp.values())
        milp_counts = ", ".join(f"{found.count(k)} {k}" for k in sorted(set(found))) or "none"
        out_console.print(
            f"{report.certified} certified boxes checked: malformed {len(report.malformed)}, fresh bound "
            f"failures {len(report.bound_failures)}, attack counterexamples {len(report.attack_failures)}"
            + (f", MILP: {milp_counts}" if milp else "")
            + (f", proved by branch-and-bound {len(report.bab_proved)}" if report.bab_proved else "")
        )
        out_console.print("[green]OK[/]" if report.ok else "[bold red]FAILED[/]")
    if not report.ok:
        raise typer.Exit(1)


def verify_explanation_file(path: Path, model: str | None, attack_restarts: int, json_out: bool) -> None:
    """``verify certified.npz``: re-prove stored certified explanations (see verify_explanations)."""
    from nonuniform.analysis.sufficient import Explanations, verify_explanations

    expl = Explanations.load(path)
    model = model or expl.settings.get("model", {}).get("source", "")
    if not model:
        raise UserError(f"{path} does not record its model; pass MODEL explicitly")
    net = with_output_range(resolve_model(model, "cpu")[0], expl.settings, expl.inputs)
    report = verify_explanations(net, expl, attack_restarts=attack_restarts)
    if json_out:
        out_console.print_json(json.dumps(report))
    else:
        out_console.print(
            f"{report['proved']} certified explanations re-proved in float64: bound failures "
            f"{len(report['bound_failures'])}, attack counterexamples {len(report['attack_failures'])}; "
            f"{report['witnesses']} witnesses, {len(report['bad_witnesses'])} not confirmed by a forward pass"
        )
        out_console.print("[green]OK[/]" if report["ok"] else "[bold red]FAILED[/]")
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
@user_errors
def steps(
    model: Annotated[str, typer.Argument(help="A recurrent model: embedded name or checkpoint path.")],
    out: Annotated[Path, typer.Option(help="Output directory (steps.npz, steps.json, steps.png).")],
    dataset: Annotated[
        str, typer.Option(help="mnist | fashion-mnist | PATH.npz (arrays inputs, labels).")
    ] = "mnist",
    indices: Annotated[str | None, typer.Option(help="Samples: START:STOP or a list 3,5,9.")] = None,
    count: Annotated[int | None, typer.Option(help="The first N samples.")] = 5,
    method: Annotated[str, typer.Option(help="Bound method: ibp | fastlin | crown.")] = "crown",
    bisection_steps: Annotated[int, typer.Option(help="Bisection steps on log(radius).")] = 12,
    batch_size: Annotated[int, typer.Option(help="Samples bounded together (x steps boxes).")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="Directory with the IDX .gz files.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per-time-step robustness: the certified radius when only one step of the sequence moves."""
    from nonuniform.recurrent.steps import steps_run
    from nonuniform.zoo.inputs import load_inputs

    net, card, dev = resolve_model(model, device)
    data = load_inputs(dataset, data_dir, indices, count)
    check_output_dir(out)
    with progress_bar() as bar:
        task = bar.add_task(f"per-step radii with {card.name} ({method})", total=len(data.x))
        res, summary = steps_run(
            net,
            card,
            data,
            out,
            method,
            bisection_steps,
            batch_size,
            dev,
            lambda n: bar.update(task, advance=n),
        )
    med, q1, q3 = res.profile()
    if json_out:
        out_console.print_json(json.dumps(summary))
        return
    t = Table(title=f"{card.name}: certified radius when only one step moves ({res.correct.sum()} samples)")
    for col in ("step", "median radius", "quartiles"):
        t.add_column(col, justify="right")
    for k in range(len(med)):
        if np.isnan(med[k]):
            continue
        t.add_row(str(k), f"{10 ** med[k]:.4f}", f"{10 ** q1[k]:.4f} - {10 ** q3[k]:.4f}")
    out_console.print(t)
    out_console.print(f"results in {out}/")


@app.command()
@user_errors
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A directory written by `certify` (boxes.npz, summary.json).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (default RUN_DIR/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page for a run (also shows RUN_DIR/verify.json, rank/, explain/)."""
    from nonuniform.report.html import write_report

    if not (run_dir / "boxes.npz").exists():
        raise UserError(f"{run_dir} holds no boxes.npz; give a directory written by `nonuniform certify`")
    out_console.print(f"wrote {write_report(run_dir, out)}")
