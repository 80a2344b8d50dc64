"""The Typer application, its consoles, and how errors and results are shown."""

from __future__ import annotations

import functools
import re
import warnings
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

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

    from nonuniform.zoo.data import DataError

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
            typer.echo(f"error: {flag_names(one_line(e))}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def flag_names(message: str) -> str:
    """The library names settings as `field`; on the command line they are flags."""
    from .options import FLAGS

    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m.group(1), m.group(0)), message)


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a table or message; "-" where there is none (nothing certified)."""
    return "-" if value is None else format(value, spec)


class RateColumn(ProgressColumn):
    """Samples per second, once there is a rate to show."""

    def render(self, task) -> Text:
        return Text("" if not task.speed else f"{task.speed:.2f} samples/s")


def progress_bar(certified: bool = False) -> Progress:
    """A bar with done/total, elapsed and remaining time; ``certified`` adds the count of
    certified samples (task field ``certified``) and the rate."""
    extra = [TextColumn("certified {task.fields[certified]}"), RateColumn()] if certified else []
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total}"),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def results_table(res, title: str = "") -> Table:
    t = Table(
        title=title or None,
        caption="log r: mean log half-width of the non-uniform box; unif. r: best certified uniform "
        "radius, before clipping to the domain (the figures' uniform log half-width is of the clipped "
        "box); gain: log-volume over the uniform box (nats); s: seconds per sample",
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


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's warnings (a lowered batch, a deprecated name) as one plain line."""
    typer.echo(f"warning: {one_line(str(message))}", err=True)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for torch (default: OMP_NUM_THREADS, else the usable cores)."),
    ] = None,
) -> None:
    if version:
        import nonuniform

        typer.echo(f"nonuniform {nonuniform.__version__}")
        raise typer.Exit(0)
    from nonuniform.runtime.allocator import configure_allocator
    from nonuniform.runtime.threads import configure_threads

    warnings.showwarning = _warning_line
    configure_allocator()  # large tensors stay in the heap: no page faults at every bound
    try:
        configure_threads(threads)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
