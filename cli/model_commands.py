"""Commands about models: vnnlib, models, train, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import (
    UserError,
    app,
    console,
    fmt,
    out_console,
    progress_bar,
    user_errors,
)
from .options import (
    check_positive,
    check_seconds,
    check_writable_file,
    parse_shape,
    resolve_model,
)


@app.command()
@user_errors
def vnnlib(
    net: Annotated[
        Path | None,
        typer.Argument(help="The network (.onnx, or any model `certify` takes).", show_default=False),
    ] = None,
    prop: Annotated[
        Path | None, typer.Argument(help="The VNN-LIB property (.vnnlib).", show_default=False)
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds per property (default 60; with --instances: caps each row's own time-out)."
        ),
    ] = None,
    bab: Annotated[
        bool,
        typer.Option(
            help="Branch-and-bound (input or ReLU splitting) on what bounds and attacks leave open."
        ),
    ] = True,
    branching: Annotated[
        str,
        typer.Option(
            help="Input splitting's dimension choice: portfolio (sb and fsb in turns), sb, fsb or widest."
        ),
    ] = "portfolio",
    leaf_relu: Annotated[
        bool,
        typer.Option(
            help="ReLU splitting inside deep input-split leaves with few unstable ReLUs (sb's): what "
            "decides ACAS Xu's near-ties (3_3 and 4_2 prop 2)."
        ),
    ] = True,
    instances: Annotated[
        Path | None,
        typer.Option(help="Run a benchmark's instances.csv (onnx,vnnlib,timeout rows) instead of NET PROP."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="With --instances: skip the rows already in --out.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the VNN-COMP result file here (with --instances: the results CSV)."),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape when the file leaves it open.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attacks' random starts.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Decide a VNN-LIB property: unsat (proved), sat (checked counterexample), unknown or timeout."""
    from nonuniform.verify.decide import BRANCHINGS, VerifierConfig, decide
    from nonuniform.verify.vnnlib import parse_vnnlib

    if timeout is not None:
        check_seconds(timeout=timeout)
    if branching not in BRANCHINGS:
        raise UserError(f"--branching must be one of {', '.join(BRANCHINGS)}, got {branching!r}")
    config = VerifierConfig(bab=bab, branching=branching, seed=seed, leaf_relu=leaf_relu)
    if instances is not None:
        if net is not None or prop is not None:
            raise UserError("give either NET PROP or --instances FILE.csv, not both")
        if out is None:
            raise UserError(
                "--instances needs --out RESULTS.csv (one row per instance, written as it finishes)"
            )
        check_writable_file(out, example="results.csv")
        _run_instances(instances, out, timeout, config, resume, parse_shape(input_shape), json_out)
        return
    if net is None or prop is None:
        raise UserError("give NET and PROP (a network and a .vnnlib property), or --instances FILE.csv")
    if out is not None:
        check_writable_file(out, example="result.txt")
    parsed = parse_vnnlib(prop)  # a bad property is refused before the model is loaded
    model, card, _ = resolve_model(str(net), "cpu", parse_shape(input_shape))
    result = decide(model, parsed, card.input_shape, 60.0 if timeout is None else timeout, config)
    if out is not None:
        out.write_text(result.vnncomp_text())
    if json_out:
        out_console.print_json(
            json.dumps({"status": result.status, "seconds": round(result.seconds, 3), **result.details})
        )
    else:
        reason = result.details.get("reason")
        out_console.print(f"{result.status} ({result.seconds:.2f} s)" + (f": {reason}" if reason else ""))


def _run_instances(csv_path: Path, out: Path, cap, config, resume: bool, shape, json_out: bool) -> None:
    """``vnnlib --instances``: every row decided, the CSV written as rows finish, a summary table."""
    from collections import Counter

    from nonuniform.verify.instances import read_instances, run_instances

    rows = read_instances(csv_path)

    def load(network: Path):
        model, card, _ = resolve_model(str(network), "cpu", shape)
        return model, card.input_shape

    counts: Counter = Counter()
    with progress_bar() as bar:
        task = bar.add_task("instances", total=len(rows))
        for res in run_instances(rows, out, load, csv_path.parent.name, cap, config, resume):
            counts[res.status] += 1
            bar.update(task, advance=1, description=f"{res.instance.name}: {res.status}")
    if json_out:
        out_console.print_json(json.dumps(dict(counts)))
        return
    t = Table(title=f"{csv_path} ({len(rows)} instances) -> {out}")
    for col in ("sat", "unsat", "timeout", "unknown", "error"):
        t.add_column(col, justify="right")
    t.add_row(*(str(counts[c]) for c in ("sat", "unsat", "timeout", "unknown", "error")))
    out_console.print(t)


@app.command()
@user_errors
def models(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ops: Annotated[
        bool, typer.Option("--ops", help="List every supported operation (PyTorch and ONNX) instead.")
    ] = False,
) -> None:
    """List the embedded models and their cards (--ops: the supported operations)."""
    from nonuniform.zoo.models import embedded_models, load_model

    if ops:
        from nonuniform.frontends.catalogue import NOT_YET, rows

        if json_out:
            keys = ("operation", "pytorch", "onnx")
            out_console.print_json(json.dumps([dict(zip(keys, r, strict=True)) for r in rows()]))
            return
        t = Table(title="supported operations")
        for col in ("operation", "PyTorch", "ONNX"):
            t.add_column(col)
        for r in rows():
            t.add_row(*(v or "-" for v in r))
        out_console.print(t)
        out_console.print(f"not supported yet: {NOT_YET}", markup=False, highlight=False)
        return

    cards = [load_model(name)[1] for name in embedded_models()]
    if json_out:
        out_console.print_json(json.dumps([c.to_dict() for c in cards]))
        return
    t = Table(title="embedded models")
    for col in ("name", "arch", "dataset", "training", "clean acc", "PGD acc @0.1"):
        t.add_column(col, no_wrap=True)
    for c in cards:
        eps = c.recipe.get("adv_eps", 0)
        t.add_row(
            c.name,
            c.arch,
            c.dataset,
            f"PGD eps {eps}" if eps else "normal",
            f"{c.metrics.get('clean_accuracy', float('nan')):.4f}",
            f"{c.metrics.get('pgd_accuracy@0.1', float('nan')):.4f}",
        )
    out_console.print(t)


@app.command()
@user_errors
def train(
    arch: Annotated[
        str,
        typer.Option(
            help="Architecture spec: mlp:100,100:relu, mlp:1024x3:tanh, cnn-small, cnn-medium, "
            "lstm:16, gru:32x2, rnn:64:relu, bilstm:16 (bidirectional)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint path to write (.pt).")],
    dataset: Annotated[str, typer.Option(help="mnist | fashion-mnist.")] = "mnist",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    adv_eps: Annotated[float, typer.Option(help="L-inf budget of PGD training (0: normal training).")] = 0.0,
    pgd_steps: Annotated[int, typer.Option(help="PGD steps per training example.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, one-cycle).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    spectral_norm: Annotated[
        bool, typer.Option(help="Spectral normalisation of every weight matrix (recurrent ones too).")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Directory with the IDX .gz files.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Train a model (normally, adversarially and/or spectrally normalised) and save a checkpoint."""
    from nonuniform.zoo.data import dataset_info
    from nonuniform.zoo.train import TrainConfig, train_checkpoint

    check_positive(batch_size=batch_size, epochs=epochs)
    check_positive(pgd_steps=pgd_steps, allow_zero=True)
    check_writable_file(out)  # fail now, not after training
    info = dataset_info(dataset)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        adv_eps=adv_eps,
        pgd_steps=pgd_steps,
        seed=seed,
        spectral_norm=spectral_norm,
    )
    command = (
        f"nonuniform train --arch {arch} --dataset {info.name} --epochs {epochs} --adv-eps {adv_eps} "
        f"--pgd-steps {pgd_steps} --lr {lr} --batch-size {batch_size} --seed {seed} --out {out}"
        + (" --spectral-norm" if spectral_norm else "")
    )
    with progress_bar() as bar:
        task = bar.add_task(f"training {arch}", total=None)

        def report(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total)
            per_epoch = max(1, total // epochs)
            if not console.is_terminal and step % per_epoch == 0:  # a line per epoch in logs
                console.print(f"epoch {step // per_epoch}/{epochs}: loss {loss:.4f}", markup=False)

        _, card = train_checkpoint(arch, info.name, out, cfg, data_dir, progress=report, command=command)
    metrics = card.metrics
    if json_out:
        out_console.print_json(json.dumps({"checkpoint": str(out), "metrics": metrics}))
    else:
        out_console.print(f"wrote {out}: {metrics}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the figures and results.")] = Path(
        "nonuniform-demo"
    ),
    count: Annotated[int, typer.Option(help="Number of embedded MNIST test images to certify.")] = 8,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Certify a few embedded MNIST images with the normal and the PGD-trained MLP, side by side."""
    from nonuniform.runs.demo import run_demo

    with progress_bar() as bar:
        task = bar.add_task("certifying", total=2 * count)
        results, combined = run_demo(
            out, count, device, progress=lambda name, n: bar.update(task, advance=n, description=name)
        )
    y = results["mnist-mlp"].labels
    if json_out:
        out_console.print_json(json.dumps({k: v.summary() for k, v in results.items()}))
        return
    a, b = results["mnist-mlp"], results["mnist-mlp-pgd"]
    t = Table(title=f"certified non-uniform boxes, {count} MNIST test images (CROWN)")
    for col in (
        "sample",
        "label",
        "normal: mean log r",
        "normal: uniform r",
        "normal: gain",
        "PGD: mean log r",
        "PGD: uniform r",
        "PGD: gain",
    ):
        t.add_column(col, justify="right")
    for k in range(count):

        def cells(r, k=k):
            if not r.certified[k]:
                return ["not certified", f"{r.uniform_radius[k]:.4f}", "-"]
            return [
                f"{r.mean_log_radius[k]:.2f}",
                f"{r.uniform_radius[k]:.4f}",
                f"{r.volume_gain[k]:.0f}",
            ]

        t.add_row(str(k), str(int(y[k])), *cells(a), *cells(b))
    out_console.print(t)
    sa, sb = a.summary(), b.summary()
    out_console.print(
        f"mean log radius: normal {fmt(sa['mean_log_radius'], '.2f')} "
        f"(uniform {fmt(sa['uniform_mean_log_radius'], '.2f')}), "
        f"PGD-trained {fmt(sb['mean_log_radius'], '.2f')} "
        f"(uniform {fmt(sb['uniform_mean_log_radius'], '.2f')}). "
        f"Gain = log-volume over the uniform box, in nats."
    )
    out_console.print(f"figures: {combined} and {out}/<model>/figures/; boxes: {out}/<model>/boxes.npz")
    out_console.print(f"reports: {out}/mnist-mlp/report.html, {out}/mnist-mlp-pgd/report.html")
