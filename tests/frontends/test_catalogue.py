"""The table of supported operations is the one the README shows and the CLI prints."""

from __future__ import annotations

from pathlib import Path

from nonuniform_cli.main import app
from typer.testing import CliRunner

from nonuniform.frontends.catalogue import markdown, rows

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_shows_the_generated_table():
    assert markdown() in README.read_text(), (
        "regenerate the README table: nonuniform.frontends.catalogue.markdown()"
    )


def test_models_ops_lists_every_operation():
    r = CliRunner().invoke(app, ["models", "--ops", "--json"])
    assert r.exit_code == 0, r.output
    import json

    listed = json.loads(r.stdout)
    assert [(d["operation"], d["pytorch"], d["onnx"]) for d in listed] == rows()
    r = CliRunner().invoke(app, ["models", "--ops"])
    assert r.exit_code == 0 and "GELU" in r.stdout and "not supported yet" in r.stdout
