"""Commands about models: vnnlib, models, train, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import (
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
    net: Annotated[Path, typer.Argument(help="The network (.onnx, or any model `certify` takes).")],
    prop: Annotated[Path, typer.Argument(help="The VNN-LIB property (.vnnlib).")],
    timeout: Annotated[float, typer.Option(help="Seconds for the whole decision.")] = 60.0,
    bab: Annotated[
        bool, typer.Option(help="Branch-and-bound on what bounds and attacks leave open (ReLU nets).")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write the VNN-COMP result file here.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape when the file leaves it open.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Decide a VNN-LIB property: unsat (proved), sat (checked counterexample), unknown or timeout."""
    from nonuniform.verify.vnnlib import decide, parse_vnnlib

    check_seconds(timeout=timeout)
    if out is not None:
        check_writable_file(out, example="result.txt")
    model, card, _ = resolve_model(str(net), "cpu", parse_shape(input_shape))
    result = decide(model, parse_vnnlib(prop), card.input_shape, timeout, bab=bab)
    if out is not None:
        out.write_text(result.vnncomp_text())
    if json_out:
        out_console.print_json(
            json.dumps({"status": result.status, "seconds": round(result.seconds, 3), **result.details})
        )
    else:
        out_console.print(f"{result.status} ({result.seconds:.2f} s)")


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
