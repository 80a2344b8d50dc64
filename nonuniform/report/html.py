"""One self-contained HTML page per run: settings, summary, a sortable table, pictures.

:func:`write_report` reads a run directory (``boxes.npz``, ``summary.json``; and, when present,
``verify.json`` and the ``rank/`` and ``explain/`` output folders inside it) and renders
``templates/report.html.j2`` with Jinja2. Every image is an inline PNG and the styles and the
table-sorting script are inline: the file needs no network and can be attached anywhere. Large
runs stay usable: thumbnails for the first samples, the worst and best boxes and the failures;
the table lists every sample (up to ``table_rows``).
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import platform
from pathlib import Path

import jinja2
import numpy as np
import torch

from ..certify.result import CertifiedBoxes
from .plots import _subplots, sample_figure

COLUMNS = ["sample", "label", "pred", "certified", "mean log r", "uniform r", "gain (nats)", "apothem",
           "margin", "s"]  # fmt: skip


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, spec)


def _distributions(res: CertifiedBoxes) -> list[tuple[str, str]]:
    cert = res.certified
    if not cert.any():
        return []
    fig, (a, b) = _subplots(1, 2, figsize=(10, 3.2))
    bins = np.linspace(
        min(res.uniform_mean_log_radius[cert].min(), res.mean_log_radius[cert].min()),
        max(res.uniform_mean_log_radius[cert].max(), res.mean_log_radius[cert].max()) + 1e-9,
        30,
    )
    a.hist(res.uniform_mean_log_radius[cert], bins=bins, alpha=0.6, label="uniform box")
    a.hist(res.mean_log_radius[cert], bins=bins, alpha=0.6, label="non-uniform box")
    a.set_xlabel("mean log half-width per sample")
    a.legend()
    radii = np.log(np.clip(res.radii[cert][:, res.free], 1e-12, None)).ravel()
    b.hist(radii, bins=50, color="#7a4")
    b.set_xlabel("log half-width of every free feature (all certified samples)")
    return [("box sizes: non-uniform vs the best uniform box, and per-feature half-widths", _png(fig))]


def _thumbnail(res: CertifiedBoxes, i: int, class_names) -> str:
    buf = io.BytesIO()
    sample_figure(res, i, buf, class_names)
    return base64.b64encode(buf.getvalue()).decode()


def _thumbnails(res: CertifiedBoxes, first: int, extremes: int, class_names) -> list:
    cert = np.nonzero(res.certified)[0]
    order = cert[np.argsort(res.mean_log_radius[cert])]
    groups = [
        ("first samples", list(range(min(first, len(res))))),
        ("smallest certified boxes", list(order[:extremes])),
        ("largest certified boxes", list(order[::-1][:extremes])),
        ("not certified", list(np.nonzero(~res.certified)[0][:extremes])),
    ]
    out = []
    shown: set[int] = set()
    for title, idx in groups:
        items = []
        for i in (int(k) for k in idx if int(k) not in shown):  # each sample once, in its first group
            shown.add(i)
            caption = (
                f"mean log r {res.mean_log_radius[i]:.2f} (uniform {res.uniform_mean_log_radius[i]:.2f})"
                if res.certified[i]
                else "not certified"
            )
            items.append({"index": int(res.indices[i]), "img": _thumbnail(res, int(i), class_names),
                          "caption": caption})  # fmt: skip
        if items:
            out.append((title, items))
    return out


def _extras(run_dir: Path) -> list[dict]:
    """Outputs of verify, rank and explain kept in the run directory."""
    out = []
    verify = run_dir / "verify.json"
    if verify.exists():
        out.append({"id": "verify", "title": "verify", "rows": _rows(verify), "images": []})
    sections = (
        ("rank", "rank: feature robustness and similarity", ("ranking.json",)),
        # explain --certified writes certified.json and certified.png (S on each image)
        ("explain", "explain: explanation sets and their evaluation", ("explain.json", "certified.json")),
    )
    for sub, title, reports in sections:
        d = run_dir / sub
        if d.is_dir():
            rows = [row for report in reports if (d / report).exists() for row in _rows(d / report)]
            images = [(p.stem.replace("_", " "), _file_png(p)) for p in sorted(d.glob("*.png"))]
            out.append({"id": sub, "title": title, "rows": rows, "images": images})
    return out


def _rows(path: Path, limit: int = 400) -> list[tuple[str, str]]:
    """A JSON record as (key path, value) rows for a table; long lists shortened."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return [("file", f"{path.name} could not be read")]
    rows: list[tuple[str, str]] = []

    def walk(v, key: str) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(sub, f"{key}.{k}" if key else str(k))
        elif isinstance(v, list) and v and all(isinstance(s, dict) for s in v):
            for k, sub in enumerate(v[:20]):
                walk(sub, f"{key}[{k}]")
        else:
            text = json.dumps(v) if not isinstance(v, str) else v
            rows.append((key, text if len(text) <= 160 else text[:157] + "..."))

    walk(data, "")
    return rows[:limit]


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    first: int = 8,
    extremes: int = 4,
    table_rows: int = 5000,
    class_names=None,
) -> Path:
    """Render the run in ``run_dir`` to ``out`` (default ``run_dir/report.html``); returns the path."""
    import nonuniform

    run_dir = Path(run_dir)
    res = CertifiedBoxes.load(run_dir / "boxes.npz")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else res.summary()
    settings = res.settings
    model = settings.get("model", {"name": run_dir.name, "source": "?", "sha256": "?"})
    shown = ("method", "asymmetric", "clip", "per_logit", "shape_steps", "iterations", "delta",
             "check_margin", "check_dtype", "batch_size", "seed", "input_shape", "domain")  # fmt: skip
    rows = [(k, json.dumps(settings[k])[:200]) for k in shown if k in settings]
    verify = run_dir / "verify.json"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template(
        "report.html.j2"
    ).render(
        model=model,
        data=settings.get("data", "?"),
        n=len(res),
        index_range=f"{int(res.indices.min())}..{int(res.indices.max())}" if len(res) else "-",
        settings=rows,
        versions={
            "nonuniform": nonuniform.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        summary=summary,
        verify=json.loads(verify.read_text()) if verify.exists() else None,
        distributions=_distributions(res),
        columns=COLUMNS,
        table_rows=res.sample_rows()[:table_rows],
        thumbnails=_thumbnails(res, first, extremes, class_names),
        extras=_extras(run_dir),
        fmt=_fmt,
    )
    out = Path(out) if out is not None else run_dir / "report.html"
    out.write_text(html)
    return out


__all__ = ["write_report"]
