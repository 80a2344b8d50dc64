"""The ``nonuniform`` command line: a thin Typer layer over the library.

Commands live in one module per group (``run_commands``: certify, verify, steps;
``analysis_commands``: rank, explain; ``model_commands``: vnnlib, models, train, demo); each parses
options, calls the library, prints, and maps errors to exit codes (``app.user_errors``).
"""

from __future__ import annotations

import typer

from . import analysis_commands, model_commands, run_commands  # noqa: F401 - registers the commands
from .app import UserError, app, one_line
from .options import parse_domain, parse_shape

ORDER = ["certify", "verify", "report", "steps", "rank", "explain", "vnnlib", "models", "train", "demo"]
app.registered_commands.sort(key=lambda c: ORDER.index(c.callback.__name__))

__all__ = ["UserError", "app", "main", "one_line", "parse_domain", "parse_shape"]


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
