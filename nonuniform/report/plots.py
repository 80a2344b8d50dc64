"""Figures of certified boxes.

Figures are ``matplotlib.figure.Figure`` objects saved directly: no pyplot, so importing this
module never changes the user's matplotlib backend and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..certify.result import CertifiedBoxes


def _subplots(*args, figsize=None, **kwargs):
    """``plt.subplots`` without pyplot (no global state, no backend switch)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _chw(a: np.ndarray) -> np.ndarray | None:
    """One input as (C, H, W), reading channels-last (H, W, C) images too; None for flat vectors
    (and for "images" thinner than 4 pixels, such as ACAS Xu's (1, 1, 5): a bar chart is clearer)."""
    a = np.asarray(a)
    out = None
    if a.ndim == 3:
        out = np.moveaxis(a, -1, 0) if a.shape[0] not in (1, 3, 4) and a.shape[-1] in (1, 3, 4) else a
    elif a.ndim == 2:
        out = a[None]
    elif a.ndim == 1:
        side = int(round(np.sqrt(a.size)))
        out = a.reshape(1, side, side) if side * side == a.size else None
    return out if out is not None and min(out.shape[1:]) >= 4 else None


def _image(a: np.ndarray, colour: bool = False) -> np.ndarray:
    """One input or per-feature map as a displayable image: (H, W), or (H, W, 3) in [0, 1] with
    ``colour`` for 3-channel inputs (scaled by their own range: normalised inputs are not clipped);
    flat vectors that are not square become a single row."""
    chw = _chw(a)
    if chw is None:
        return np.asarray(a).reshape(1, -1)
    if colour and chw.shape[0] == 3:
        img = np.moveaxis(chw, 0, -1).astype(np.float64)
        lo, hi = float(img.min()), float(img.max())
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return chw.mean(0) if chw.shape[0] > 1 else chw[0]


def _range(a: np.ndarray) -> tuple[float, float]:
    """Display range of an input: [0, 1] for pixels, else its own (normalised inputs)."""
    lo, hi = float(np.min(a)), float(np.max(a))
    return (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi if hi > lo else lo + 1.0)


def _flat_figure(res: CertifiedBoxes, i: int, title: str, path) -> None:
    """Flat inputs (tabular, control policies): each feature's value and its certified interval."""
    x, lo, hi = (np.asarray(v).reshape(-1) for v in (res.inputs[i], res.lower[i], res.upper[i]))
    fig, ax = _subplots(figsize=(min(14, max(7, 2 + 0.35 * x.size)), 3.6))
    pos = np.arange(x.size)
    ax.bar(pos, hi - lo, bottom=lo, color="#f4a261", alpha=0.7, label="certified interval")
    ax.scatter(pos, x, color="black", s=12, zorder=3, label="input")
    ax.set_xlabel("feature")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _group_image(res: CertifiedBoxes) -> np.ndarray | None:
    """The run's group map as an (H, W) id image when groups vary across the picture (patches,
    a given map), else None (no groups, or one group per channel or time step)."""
    spec = (res.settings or {}).get("groups")
    if spec is None or spec in ("channel", "time"):
        return None
    from ..certify.shapes import group_map

    ids = _chw(group_map(spec, tuple(res.inputs.shape[1:])))
    return None if ids is None else ids[0]


def _outline_groups(ax, ids: np.ndarray) -> None:
    """Thin lines between neighbouring pixels of different groups."""
    from matplotlib.collections import LineCollection

    segs = [((j + 0.5, i - 0.5), (j + 0.5, i + 0.5)) for i, j in zip(*np.nonzero(ids[:, 1:] != ids[:, :-1]))]
    segs += [((j - 0.5, i + 0.5), (j + 0.5, i + 0.5)) for i, j in zip(*np.nonzero(ids[1:, :] != ids[:-1, :]))]
    ax.add_collection(LineCollection(segs, colors="#2a9d8f", linewidths=0.6))


def sample_figure(res: CertifiedBoxes, i: int, path: str | Path, class_names=None) -> None:
    """Input, lower and upper radius maps, and the box's most extreme allowed perturbation (a bar
    chart of the certified intervals for flat inputs)."""
    x, lo, hi = res.inputs[i], res.lower[i], res.upper[i]
    r_lo, r_hi = x - lo, hi - x
    # a vertex of the box: every pixel pushed to whichever end is farther (a worst-looking input)
    vertex = np.where(r_hi >= r_lo, hi, lo)

    def name(k: int) -> str:
        return class_names[k] if class_names else str(k)

    status = "certified" if res.certified[i] else "NOT certified"
    label = "?" if res.labels[i] < 0 else name(int(res.labels[i]))
    title = (
        f"sample {int(res.indices[i])}: label {label}, predicted {name(int(res.preds[i]))}, {status}; "
        f"mean log radius {res.mean_log_radius[i]:.2f} vs uniform {res.uniform_mean_log_radius[i]:.2f}"
    )
    if _chw(x) is None:
        _flat_figure(res, i, title, path)
        return
    fig, axes = _subplots(1, 4, figsize=(12, 3.2))
    vmax = max(float(r_lo.max()), float(r_hi.max()), 1e-12)
    x_lo, x_hi = _range(np.concatenate([np.ravel(x), np.ravel(vertex)]))
    colour = _chw(x).shape[0] == 3
    panels = [
        (_image(x, colour), "input", "gray", x_lo, x_hi),
        (_image(r_lo), "radius below (x0 - lower)", "magma", 0, vmax),
        (_image(r_hi), "radius above (upper - x0)", "magma", 0, vmax),
        (_image(vertex, colour), "a vertex of the box", "gray", x_lo, x_hi),
    ]
    groups = _group_image(res)
    for ax, (img, panel_title, cmap, vmin, vm) in zip(axes, panels):
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vm) if img.ndim == 2 else ax.imshow(img)
        ax.set_title(panel_title, fontsize=9)
        ax.axis("off")
        if cmap == "magma":
            fig.colorbar(im, ax=ax, fraction=0.046)
            if groups is not None and groups.shape == img.shape[:2]:
                _outline_groups(ax, groups)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def overview_figure(res: CertifiedBoxes, path: str | Path, max_samples: int = 16, title: str = "") -> None:
    """Grid: each sample's input above its half-width map (shared colour scale, log)."""
    n = min(len(res), max_samples)
    fig, axes = _subplots(2, n, figsize=(1.6 * n + 1, 3.6), squeeze=False)
    radii = res.radii[:n]
    pos = radii[radii > 0]
    vmin, vmax = (float(pos.min()), float(pos.max())) if pos.size else (1e-6, 1.0)
    norm = matplotlib.colors.LogNorm(vmin=max(vmin, 1e-6), vmax=max(vmax, 2e-6))
    im = None
    for k in range(n):
        chw = _chw(res.inputs[k])
        img = _image(res.inputs[k], colour=chw is not None and chw.shape[0] == 3)
        x_lo, x_hi = _range(res.inputs[k])
        axes[0, k].imshow(img, cmap="gray", vmin=x_lo, vmax=x_hi) if img.ndim == 2 else axes[0, k].imshow(img)
        axes[0, k].set_title(f"#{int(res.indices[k])}" + ("" if res.certified[k] else " ✗"), fontsize=8)
        im = axes[1, k].imshow(_image(np.maximum(radii[k], 1e-6)), cmap="magma", norm=norm)
        for ax in axes[:, k]:
            ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02, label="half-width")
    fig.suptitle(title or "certified non-uniform boxes: inputs (top), half-widths (bottom)", fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")


def feature_map_figure(scores: np.ndarray, free: np.ndarray, path: str | Path, title: str) -> None:
    """Per-feature robustness as an image for image inputs (bar chart otherwise)."""
    full = np.full(free.shape, np.nan)
    full[free] = scores
    fig, ax = _subplots(figsize=(4.4, 3.8) if full.ndim >= 2 else (8, 3))
    if full.ndim >= 2:
        im = ax.imshow(_image(full), cmap="viridis")
        fig.colorbar(im, ax=ax, label="standardised log half-width")
        ax.axis("off")
    else:
        ax.bar(np.arange(full.size), full)
        ax.set_xlabel("feature")
        ax.set_ylabel("standardised log half-width")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def similarity_figure(sim: np.ndarray, labels: np.ndarray, path: str | Path, title: str) -> None:
    """Pairwise similarity matrix with samples ordered by class."""
    order = np.argsort(labels, kind="stable")
    fig, ax = _subplots(figsize=(5, 4.4))
    im = ax.imshow(sim[np.ix_(order, order)], cmap="coolwarm", vmin=-1, vmax=1)
    bounds = np.nonzero(np.diff(labels[order]))[0] + 0.5
    for b in bounds:
        ax.axhline(b, color="k", lw=0.5)
        ax.axvline(b, color="k", lw=0.5)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("samples (ordered by class)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def radius_histograms(named_log_radii: dict[str, np.ndarray], path: str | Path) -> None:
    """Histograms of log half-widths, one panel per model, shared x axis."""
    names = list(named_log_radii)
    fig, axes = _subplots(1, len(names), figsize=(4.5 * len(names), 3.2), sharex=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.hist(named_log_radii[name].ravel(), bins=60, color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("log half-width")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def explanation_figure(inputs: np.ndarray, sets: np.ndarray, indices, path: str | Path, title: str) -> None:
    """Inputs with their explanation set (least-robust features) overlaid in red."""
    n = min(len(inputs), 12)
    fig, axes = _subplots(1, n, figsize=(1.7 * n, 2.2), squeeze=False)
    for k in range(n):
        img = _image(inputs[k])
        rgb = np.stack([img, img, img], -1)
        m = _image(sets[k].astype(float)) > 0
        rgb[m] = 0.4 * rgb[m] + 0.6 * np.array([1.0, 0.1, 0.1])
        axes[0, k].imshow(rgb)
        axes[0, k].set_title(f"#{int(indices[k])}", fontsize=8)
        axes[0, k].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def explanation_curves(scores: list, path: str | Path) -> None:
    """Mean Robustness-S_r and -S_r-complement over k, one line per method."""
    fig, axes = _subplots(1, 2, figsize=(10, 3.6))
    for s in scores:
        ks = np.array(s.k_fractions) * 100
        axes[0].plot(ks, s.s_r.mean(1), marker="o", label=s.method)
        axes[1].plot(ks, s.s_r_complement.mean(1), marker="o", label=s.method)
    axes[0].set_title("Robustness-S_r (lower is better)", fontsize=9)
    axes[1].set_title("Robustness-S_r-complement (higher is better)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("k (% of features)")
        ax.set_ylabel("min L-inf budget found by PGD")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def step_profile_figure(named: dict, path: str | Path, title: str = "") -> None:
    """Certified radius when only one time step may move, per step: median (line) and
    quartiles (band) over samples, one line per model. ``named``: name -> StepRobustness."""
    fig, ax = _subplots(figsize=(7, 3.8))
    for name, res in named.items():
        med, q1, q3 = res.profile()
        steps = np.arange(len(med))
        ax.plot(steps, med, marker=".", label=name)
        ax.fill_between(steps, q1, q3, alpha=0.2)
    ax.set_xlabel("time step (image row)")
    ax.set_ylabel("log10 certified radius of the step")
    ax.set_title(title or "per-step certified robustness", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def side_by_side_figure(results: dict[str, CertifiedBoxes], path: Path, n: int = 8) -> Path:
    """Inputs (top row) and each model's certified half-widths (one row per model).

    Every model row has its own colour scale and colour bar: on a shared scale a normal model's
    boxes (radii ~0.02) are black next to a PGD-trained model's (~0.15-1).
    """
    names = list(results)
    n = min(len(results[names[0]]), n)
    fig, axes = _subplots(1 + len(names), n, figsize=(1.7 * n + 1, 1.9 * (1 + len(names))), squeeze=False)
    for k in range(n):
        axes[0, k].imshow(_image(results[names[0]].inputs[k]), cmap="gray", vmin=0, vmax=1)
        axes[0, k].set_title(f"#{k}", fontsize=8)
    for j, name in enumerate(names):
        vmax = max(float(results[name].radii[:n].max()), 1e-6)
        for k in range(n):
            im = axes[j + 1, k].imshow(_image(results[name].radii[k]), cmap="magma", vmin=0, vmax=vmax)
        fig.colorbar(im, ax=axes[j + 1, :].ravel().tolist(), fraction=0.02, label="half-width")
        axes[j + 1, 0].text(-4, 14, name, rotation=90, va="center", ha="right", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("inputs (top) and certified half-widths per pixel (own scale per row)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
