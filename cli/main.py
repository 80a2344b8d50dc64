"""The ``nonuniform`` command line: a thin Typer layer over the library."""

from __future__ import annotations

import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Certified non-uniform robustness regions (largest certified boxes) for classifiers.",
)
console = Console(stderr=True)
out_console = Console()


class UserError(Exception):
    """A mistake in the command's input: reported in one line, exit code 2."""


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(message: object) -> str:
    """A message as one plain line: no ANSI codes, no line breaks, no markup interpretation."""
    return " ".join(ANSI.sub("", str(message)).split())


def user_errors(fn):
    """Turn library errors about bad input into one plain line on stderr and exit code 2."""

    from nonuniform.data import DataError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (
            UserError,
            DataError,
            ValueError,
            FileNotFoundError,
            PermissionError,
            IsADirectoryError,
            NotADirectoryError,
        ) as e:
            typer.echo(f"error: {one_line(e)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


# -- shared helpers ----------------------------------------------------------------------------


def parse_indices(spec: str | None, count: int | None, available: int) -> np.ndarray:
    if spec and count is not None:
        raise UserError("give either --indices or --count, not both")
    if count is not None:
        if count <= 0:
            raise UserError(f"--count must be positive, got {count}")
        spec = f"0:{count}"
    spec = spec or f"0:{min(available, 10)}"
    try:
        if ":" in spec:
            a, b = spec.split(":")
            idx = np.arange(int(a or 0), int(b) if b else available)
        else:
            idx = np.array([int(t) for t in spec.split(",") if t.strip()])
    except ValueError:
        raise UserError(f"bad index range '{spec}'; use START:STOP (e.g. 0:100) or a list 3,5,9") from None
    if idx.size == 0:
        raise UserError(f"index range '{spec}' selects no sample")
    if idx.min() < 0 or idx.max() >= available:
        raise UserError(
            f"index range '{spec}' goes outside the {available} available samples (0..{available - 1})"
        )
    return idx


def load_inputs(
    dataset: str,
    data_dir: Path | None,
    indices: str | None,
    count: int | None,
    input_shape: tuple[int, ...] | None = None,
):
    """Inputs, labels (None when the file has none), dataset indices and a description of where
    they came from. ``.npz`` inputs of any shape are reshaped to ``input_shape`` when given."""
    from nonuniform.data import DataError, dataset_info, load_dataset
    from nonuniform.samples import load_samples

    if dataset.endswith(".npz"):
        path = Path(dataset)
        if not path.exists():
            raise UserError(f"{path}: file not found")
        with np.load(path) as z:
            key = "inputs" if "inputs" in z.files else "images" if "images" in z.files else None
            if key is None:
                raise UserError(
                    f"{path}: needs an array 'inputs' (N, ...) and optionally 'labels' (N,); has {z.files}"
                )
            x = torch.from_numpy(z[key].astype(np.float32))
            if z[key].dtype == np.uint8:
                x = x / 255.0
            y = torch.from_numpy(z["labels"].astype(np.int64)) if "labels" in z.files else None
        if input_shape is not None and x[0].numel() == int(np.prod(input_shape)):
            x = x.reshape(len(x), *input_shape)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        if y is not None and len(y) != len(x):
            raise UserError(f"{path}: {len(x)} inputs but {len(y)} labels")
        idx = parse_indices(indices, count, len(x))
        return x[idx], (None if y is None else y[idx]), idx, str(path.resolve()), None
    info = dataset_info(dataset)
    try:
        ds = load_dataset(info.name, "test", data_dir, download=False)
        x, y, source = ds.inputs, ds.labels, f"{info.name} test set ({ds.source})"
    except DataError as e:
        if data_dir is not None:
            raise
        x, y = load_samples(info.name)
        source = f"{info.name}: the {len(x)} embedded test samples (full set not found: {e})"
    idx = parse_indices(indices, count, len(x))
    return x[idx], y[idx], idx, source, info.class_names


def check_positive(allow_zero: bool = False, **values: int) -> None:
    for name, v in values.items():
        if v < 0 or (v == 0 and not allow_zero):
            need = "0 or more" if allow_zero else "at least 1"
            raise UserError(f"--{name.replace('_', '-')} must be {need}, got {v}")


def check_writable_file(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name such as {path}/model.pt")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--out {path} is not writable")


def check_output_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a directory; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"--out {path} is not writable")


def check_dataset_matches(card, dataset: str) -> None:
    """A model trained on one data set is not certified on another by mistake (npz files pass)."""
    from nonuniform.data import dataset_info

    if dataset.endswith(".npz") or not card.dataset:
        return
    if dataset_info(dataset).name != dataset_info(card.dataset).name:
        raise UserError(
            f"{card.name} was trained on {card.dataset}, not {dataset}; pass --dataset {card.dataset} "
            "(or an .npz file of inputs for it)"
        )


def check_data(x: torch.Tensor, y: torch.Tensor | None, num_classes: int, where: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise UserError(f"{where}: {int(bad.sum())} NaN/inf input values (first in sample {first})")
    if y is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(
            f"{where}: labels must lie in 0..{num_classes - 1} for this model; "
            f"found {int(y.min())}..{int(y.max())}"
        )


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise UserError(
            f"bad --input-shape '{text}'; use C,H,W (e.g. 3,32,32) or a length (e.g. 784)"
        ) from None
    if not shape or min(shape) <= 0:
        raise UserError(f"bad --input-shape '{text}'; every size must be positive")
    return shape


def parse_domain(text: str | None):
    """``LO,HI`` (every feature) or ``LO:HI,LO:HI,...`` (one interval per channel, axis 1)."""
    if text is None:
        return None
    try:
        if ":" in text:
            pairs = [tuple(float(v) for v in p.split(":")) for p in text.split(",")]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
            lo = torch.tensor([p[0] for p in pairs]).reshape(-1, 1, 1)
            hi = torch.tensor([p[1] for p in pairs]).reshape(-1, 1, 1)
            domain = (lo, hi)
        else:
            lo_, hi_ = (float(v) for v in text.split(","))
            domain = (lo_, hi_)
    except ValueError:
        raise UserError(
            f"bad --domain '{text}'; use LO,HI (e.g. 0,1) or one LO:HI per channel "
            "(e.g. -2.4:2.5,-2.4:2.6,-2.2:2.7)"
        ) from None
    if (torch.as_tensor(domain[0]) >= torch.as_tensor(domain[1])).any():
        raise UserError(f"bad --domain '{text}': every LO must be below its HI")
    return domain


def json_safe(value):
    """NaN and infinities (undefined statistics, e.g. a class with one sample) become null: JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a table or message; "-" where there is none (nothing certified)."""
    return "-" if value is None else format(value, spec)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def results_table(res, title: str = "") -> Table:
    t = Table(
        title=title or None,
        caption="log r: mean log half-width of the non-uniform box; unif. r: best certified uniform "
        "radius; gain: log-volume over the uniform box (nats); s: seconds per sample",
    )
    for col in ("sample", "label", "pred", "cert", "log r", "unif. r", "gain", "apothem", "s"):
        t.add_column(col, justify="right")
    for row in res.sample_rows():
        c = row["certified"]
        t.add_row(
            str(row["index"]),
            str(row["label"]) if row["label"] >= 0 else "-",
            str(row["pred"]),
            "[green]yes[/]" if c else "[red]no[/]",
            f"{row['mean_log_radius']:.3f}" if c else "-",
            f"{row['uniform_radius']:.4f}",
            f"{row['volume_gain_nats']:.1f}" if c else "-",
            f"{row['apothem']:.4f}",
            f"{row['seconds']:.2f}",
        )
    return t


def resolve_model(model: str, device: str, input_shape=None, domain=None):
    from nonuniform.boxes import resolve_device
    from nonuniform.models import load_model

    dev = resolve_device(device)
    m, card = load_model(model, dev, input_shape=input_shape, domain=domain)
    return m, card, dev


def model_record(card) -> dict:
    return {
        "name": card.name,
        "source": card.source,
        "sha256": card.sha256,
        "arch": card.arch,
        "dataset": card.dataset,
    }


# -- commands ----------------------------------------------------------------------------------


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
    iterations: Annotated[int, typer.Option(help="Augmented-Lagrangian iterations per batch.")] = 60,
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
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape C,H,W (ONNX files that leave it open).")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="Input domain LO,HI or LO:HI per channel (required for ONNX models)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
    ] = False,
) -> None:
    """Certify the largest non-uniform box around each selected sample."""
    from nonuniform import certify_boxes
    from nonuniform.boxes import CertifiedBoxes
    from nonuniform.runs import RunDir

    check_positive(batch_size=batch_size)
    check_positive(iterations=iterations, allow_zero=True)
    net, card, dev = resolve_model(model, device, parse_shape(input_shape), parse_domain(domain))
    if card.domain is None:
        raise UserError(
            f"{card.source} does not record its input domain; pass --domain LO,HI (e.g. 0,1 for pixels "
            "in [0, 1]) or LO:HI per channel for normalised inputs"
        )
    check_dataset_matches(card, dataset)
    x, y, idx, source, class_names = load_inputs(dataset, data_dir, indices, count, card.input_shape)
    check_data(x, y, len(card.class_names), dataset)
    record = model_record(card)
    options = {
        "method": method,
        "asymmetric": asymmetric,
        "clip": clip,
        "per_logit": per_logit,
        "iterations": iterations,
        "seed": seed,
        "domain": [torch.as_tensor(d, dtype=torch.float64).tolist() for d in card.domain],
    }
    run = RunDir(out)
    done = run.open({"model": record, "data": source, "options": options}, resume)
    todo = np.array([k for k in range(len(idx)) if int(idx[k]) not in done], dtype=int)
    t0 = time.time()
    with progress_bar() as bar:
        task = bar.add_task(
            f"certifying with {card.name} ({method})", total=len(idx), completed=len(idx) - len(todo)
        )

        def saved(part):
            for k in range(len(part)):
                done[int(part.indices[k])] = part.subset(np.arange(len(part)) == k)
            bar.update(task, completed=sum(int(i) in done for i in idx))

        def annotate(part):
            part.settings["model"] = record
            part.settings["data"] = source
            writer(part)

        writer = run.part_writer(saved)
        if len(todo):
            try:
                certify_boxes(
                    net,
                    x[todo],
                    None if y is None else y[todo],
                    method=method,
                    asymmetric=asymmetric,
                    clip=clip,
                    per_logit=per_logit,
                    iterations=iterations,
                    batch_size=batch_size,
                    device=dev,
                    indices=idx[todo],
                    callback=annotate,
                    progress=lambda n: bar.advance(task, n),
                    seed=seed,
                    domain=card.domain,
                )
            except KeyboardInterrupt:
                console.print(
                    f"interrupted: {len(done)} of {len(idx)} samples are saved in {out}/parts; run the same "
                    "command with --resume to continue",
                    markup=False,
                    highlight=False,
                )
                raise typer.Exit(130) from None
    res = CertifiedBoxes.concat([done[int(i)] for i in idx])
    summary = res.summary()
    summary.update({"model": record, "data": source, "wall_seconds": round(time.time() - t0, 2)})
    run.finish(res, summary)
    if figures:
        from nonuniform.plots import overview_figure, sample_figure

        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        for k in range(min(len(res), 32)):
            sample_figure(res, k, fig_dir / f"sample_{int(res.indices[k]):05d}.png", class_names)
        overview_figure(
            res,
            fig_dir / "overview.png",
            title=f"{card.name}: certified non-uniform boxes ({method})",
        )
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
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Re-check every certified box: fresh float64 bound, attacks, optional MILP. Exit 1 on failure."""
    from nonuniform.boxes import CertifiedBoxes
    from nonuniform.verify import verify_boxes

    if not boxes.exists():
        raise UserError(f"{boxes}: file not found")
    res = CertifiedBoxes.load(boxes)
    rec = res.settings.get("model", {})
    if model is None:
        src = rec.get("source", "")
        if not src:
            raise UserError(f"{boxes} does not record its model; pass MODEL explicitly")
        model = src.removeprefix("embedded:")
    net, card, dev = resolve_model(model, device)
    if rec.get("sha256") and rec["sha256"] != card.sha256:
        console.print(f"[yellow]warning:[/] {model} differs from the model recorded in {boxes} (checksum)")
    with progress_bar() as bar:
        task = bar.add_task("MILP" if milp else "checking", total=int(res.certified.sum()) if milp else None)
        report = verify_boxes(
            net,
            res,
            attack_restarts=attack_restarts,
            attack_steps=attack_steps,
            corners=corners,
            milp=milp,
            milp_time_limit=milp_time_limit,
            device=dev,
            progress=lambda k: bar.update(task, advance=k),
        )
    if json_out:
        out_console.print_json(json.dumps(report.to_dict()))
    else:
        milp_counts = dict(zip(*np.unique(list(report.milp.values()), return_counts=True)))
        out_console.print(
            f"{report.certified} certified boxes checked: malformed {len(report.malformed)}, fresh bound "
            f"failures {len(report.bound_failures)}, attack counterexamples {len(report.attack_failures)}"
            + (f", MILP {milp_counts}" if milp else "")
        )
        out_console.print("[green]OK[/]" if report.ok else "[bold red]FAILED[/]")
    if not report.ok:
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
    from nonuniform import SequenceClassifier
    from nonuniform.plots import step_profile_figure
    from nonuniform.steps import StepRobustness, step_robustness

    net, card, dev = resolve_model(model, device)
    if not isinstance(net, SequenceClassifier):
        raise UserError(
            f"{card.name} ({card.arch}) is not a recurrent model; `steps` needs one (e.g. mnist-lstm)"
        )
    x, y, idx, source, _ = load_inputs(dataset, data_dir, indices, count)
    check_output_dir(out)
    t0 = time.time()
    with progress_bar() as bar:
        task = bar.add_task(f"per-step radii with {card.name} ({method})", total=len(x))
        parts = []
        for start in range(0, len(x), batch_size):
            sl = slice(start, start + batch_size)
            parts.append(step_robustness(net, x[sl], y[sl], method, card.domain, bisection_steps, device=dev))
            bar.update(task, advance=len(x[sl]))
    res = StepRobustness.concat(parts)
    np.savez_compressed(
        out / "steps.npz",
        radius=res.radius,
        preds=res.preds,
        labels=res.labels,
        correct=res.correct,
        indices=idx,
    )
    med, q1, q3 = res.profile()
    summary = {
        "model": model_record(card),
        "data": source,
        "method": method,
        "samples": len(x),
        "correct": int(res.correct.sum()),
        "median_log10_radius_per_step": [None if np.isnan(v) else round(float(v), 4) for v in med],
        "wall_seconds": round(time.time() - t0, 2),
    }
    (out / "steps.json").write_text(json.dumps(summary, indent=2))
    step_profile_figure(
        {card.name: res}, out / "steps.png", f"{card.name}: certified radius per step ({method})"
    )
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
        InputXGradient,
        IntegratedGradients,
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


@app.command()
@user_errors
def vnnlib(
    net: Annotated[Path, typer.Argument(help="The network (.onnx, or any model `certify` takes).")],
    prop: Annotated[Path, typer.Argument(help="The VNN-LIB property (.vnnlib).")],
    timeout: Annotated[float, typer.Option(help="Seconds for the whole decision.")] = 60.0,
    out: Annotated[Path | None, typer.Option(help="Write the VNN-COMP result file here.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape when the file leaves it open.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Decide a VNN-LIB property: unsat (proved), sat (checked counterexample), unknown or timeout."""
    from nonuniform.vnnlib import decide, parse_vnnlib

    model, card, _ = resolve_model(str(net), "cpu", parse_shape(input_shape))
    result = decide(model, parse_vnnlib(prop), card.input_shape, timeout)
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
) -> None:
    """List the embedded models and their cards."""
    from nonuniform.models import embedded_models, load_model

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
        typer.Option(help="Architecture spec: mlp:100,100:relu, mlp:1024x3:tanh, cnn-small, cnn-medium."),
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint path to write (.pt).")],
    dataset: Annotated[str, typer.Option(help="mnist | fashion-mnist.")] = "mnist",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    adv_eps: Annotated[float, typer.Option(help="L-inf budget of PGD training (0: normal training).")] = 0.0,
    pgd_steps: Annotated[int, typer.Option(help="PGD steps per training example.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, one-cycle).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Directory with the IDX .gz files.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Train a model (normally or adversarially) and save a checkpoint with its card."""
    from nonuniform.data import dataset_info, load_dataset
    from nonuniform.models import ModelCard, build_model, save_checkpoint
    from nonuniform.train import TrainConfig, evaluate
    from nonuniform.train import train as train_model

    check_positive(batch_size=batch_size, epochs=epochs)
    check_positive(pgd_steps=pgd_steps, allow_zero=True)
    check_writable_file(out)  # fail now, not after training
    info = dataset_info(dataset)
    torch.manual_seed(seed)  # the initial weights too: `train --seed S` is reproducible
    net = build_model(arch, info.input_shape, len(info.class_names), info.mean, info.std)
    tr = load_dataset(info.name, "train", data_dir)
    te = load_dataset(info.name, "test", data_dir)
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, adv_eps=adv_eps, pgd_steps=pgd_steps, seed=seed
    )
    train_model(net, tr.inputs, tr.labels, cfg)
    metrics = evaluate(net, te.inputs, te.labels, eps=0.1)
    command = (
        f"nonuniform train --arch {arch} --dataset {info.name} --epochs {epochs} --adv-eps {adv_eps} "
        f"--pgd-steps {pgd_steps} --lr {lr} --batch-size {batch_size} --seed {seed} --out {out}"
    )
    card = ModelCard.for_training(out.stem, arch, info, cfg, metrics, command)
    save_checkpoint(net, card, out)
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
    from nonuniform import certify_boxes
    from nonuniform.plots import overview_figure, sample_figure, side_by_side_figure
    from nonuniform.samples import load_samples

    x, y = load_samples("mnist")
    if not 1 <= count <= len(x):
        raise UserError(f"--count must be between 1 and {len(x)}")
    x, y = x[:count], y[:count]
    results = {}
    with progress_bar() as bar:
        task = bar.add_task("certifying", total=2 * count)
        for name in ("mnist-mlp", "mnist-mlp-pgd"):
            net, card, dev = resolve_model(name, device)
            bar.update(task, description=f"certifying with {name}")
            res = certify_boxes(
                net,
                x,
                y,
                method="crown",
                device=dev,
                callback=lambda p: bar.update(task, advance=len(p)),
            )
            res.settings["model"] = model_record(card)
            results[name] = res
            d = out / name
            (d / "figures").mkdir(parents=True, exist_ok=True)
            res.save(d / "boxes.npz")
            (d / "summary.json").write_text(json.dumps(res.summary(), indent=2))
            for k in range(count):
                sample_figure(res, k, d / "figures" / f"sample_{k:05d}.png")
            overview_figure(res, d / "figures" / "overview.png", title=f"{name}: certified boxes (CROWN)")
    combined = side_by_side_figure(results, out / "demo.png")
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


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        import nonuniform

        typer.echo(f"nonuniform {nonuniform.__version__}")
        raise typer.Exit(0)


def main() -> None:  # pragma: no cover - the console script
    """Entry point: user errors are one line (exit 2); anything else is a bug, shown as such."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except Exception:
        import traceback

        traceback.print_exc()
        typer.echo(
            "internal error (a bug in nonuniform): please report it with the traceback above", err=True
        )
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
