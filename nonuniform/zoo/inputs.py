"""Inputs to certify: a named data set or an ``.npz`` file, a selection of samples, checked.

The rules every front end (the CLI, a script) needs in the same form: which arrays an ``.npz``
holds (``inputs`` or ``images``, optional ``labels``; ``uint8`` scaled to [0, 1]; reshaped to the
model's input shape when the sizes agree), how ``START:STOP`` / ``3,5,9`` / a count select
samples, and what makes inputs unusable (NaN/inf values, labels outside the model's classes, a
model trained on another data set). Every problem is a :class:`InputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import DataError, dataset_info, load_dataset
from .samples import load_samples


class InputError(ValueError):
    """Inputs that cannot be used as given (the message names the file and what to do)."""


@dataclass
class Inputs:
    """Selected samples: ``x`` (N, *shape) float32, ``y`` (N,) int64 or None, their positions
    ``indices`` in the data set, where they came from, and the class names when known."""

    x: torch.Tensor
    y: torch.Tensor | None
    indices: np.ndarray
    source: str
    class_names: tuple[str, ...] | None = None


def select_indices(spec: str | None, count: int | None, available: int) -> np.ndarray:
    """``START:STOP``, ``3,5,9`` or the first ``count`` samples (default: the first 10)."""
    if spec and count is not None:
        raise InputError("give either --indices or --count, not both")
    if count is not None:
        if count <= 0:
            raise InputError(f"--count must be positive, got {count}")
        spec = f"0:{count}"
    spec = spec or f"0:{min(available, 10)}"
    try:
        if ":" in spec:
            a, b = spec.split(":")
            idx = np.arange(int(a or 0), int(b) if b else available)
        else:
            idx = np.array([int(t) for t in spec.split(",") if t.strip()])
    except ValueError:
        raise InputError(f"bad index range '{spec}'; use START:STOP (e.g. 0:100) or a list 3,5,9") from None
    if idx.size == 0:
        raise InputError(f"index range '{spec}' selects no sample")
    if idx.min() < 0 or idx.max() >= available:
        raise InputError(
            f"index range '{spec}' goes outside the {available} available samples (0..{available - 1})"
        )
    return idx


def load_inputs(
    dataset: str,
    data_dir: str | Path | None = None,
    indices: str | None = None,
    count: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    labels: bool = True,
) -> Inputs:
    """The selected samples of ``dataset`` (``mnist``, ``fashion-mnist`` or a path ``.npz``).

    A named data set is read from ``data_dir`` (or ``$NONUNIFORM_DATA``); without one, the
    embedded test samples are used and ``source`` says so. ``labels=False``: the labels are not
    read (output ranges: a regression data set's targets are not class indices)."""
    if dataset.endswith(".npz"):
        return _load_npz(Path(dataset), indices, count, input_shape, labels)
    info = dataset_info(dataset)
    try:
        ds = load_dataset(info.name, "test", data_dir, download=False)
        x, y, source = ds.inputs, ds.labels, f"{info.name} test set ({ds.source})"
    except DataError as e:
        if data_dir is not None:
            raise
        x, y = load_samples(info.name)
        source = f"{info.name}: the {len(x)} embedded test samples (full set not found: {e})"
    idx = select_indices(indices, count, len(x))
    return Inputs(x[idx], y[idx] if labels else None, idx, source, info.class_names)


def _load_npz(path: Path, indices, count, input_shape, use_labels: bool = True) -> Inputs:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            key = "inputs" if "inputs" in z.files else "images" if "images" in z.files else None
            if key is None:
                raise InputError(
                    f"{path}: needs an array 'inputs' (N, ...) and optionally 'labels' (N,); has {z.files}"
                )
            raw = z[key]
            labels = z["labels"] if "labels" in z.files and use_labels else None
    except InputError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise InputError(
                f"{path}: holds Python objects, which are never loaded; save numeric arrays "
                "(numpy.savez(path, inputs=..., labels=...))"
            ) from None
        raise InputError(f"{path}: not a readable .npz file ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and OS errors of a damaged file
        raise InputError(
            f"{path}: not a readable .npz file ({type(e).__name__}); write it with "
            "numpy.savez(path, inputs=..., labels=...)"
        ) from None
    if raw.dtype.kind not in "biuf" or raw.ndim < 1 or len(raw) == 0:
        raise InputError(
            f"{path}: 'inputs' must be a non-empty numeric array (N, ...); got {raw.dtype} {raw.shape}"
        )
    x = torch.from_numpy(raw.astype(np.float32))
    if raw.dtype == np.uint8:
        x = x / 255.0
    y = None
    if labels is not None:
        integral = labels.dtype.kind in "biu" or (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0))
        if not integral or labels.ndim != 1:
            raise InputError(
                f"{path}: 'labels' must be a 1-D array of class indices (integers); got {labels.dtype} "
                f"{labels.shape}"
            )
        y = torch.from_numpy(labels.astype(np.int64))
    if input_shape is not None and x[0].numel() == int(np.prod(input_shape)):
        x = x.reshape(len(x), *input_shape)
    elif input_shape is not None:
        raise InputError(
            f"{path}: inputs of shape {tuple(x.shape[1:])} ({x[0].numel()} values) do not fit the model's "
            f"input {tuple(input_shape)} ({int(np.prod(input_shape))} values)"
        )
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: {len(x)} inputs but {len(y)} labels")
    idx = select_indices(indices, count, len(x))
    return Inputs(x[idx], None if y is None else y[idx], idx, str(path.resolve()))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_domain(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature domain ends from a file: ``.npz`` with arrays ``lo`` and ``hi`` (or ``lower`` /
    ``upper``), ``.npy`` with one array of shape (2, ...) (ends stacked), or a VNN-LIB property's
    input box (``.vnnlib``; flat, reshaped to the model's input later)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix == ".vnnlib":
            from ..verify.vnnlib import parse_vnnlib

            prop = parse_vnnlib(path)
            lo, hi = prop.lower, prop.upper
        elif path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim < 1 or arr.shape[0] != 2:
                raise InputError(
                    f"{path}: a domain .npy holds the two ends stacked, shape (2, ...); got {arr.shape}"
                )
            lo, hi = arr[0], arr[1]
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = ("lo", "hi") if "lo" in z.files else ("lower", "upper") if "lower" in z.files else None
                if keys is None:
                    raise InputError(
                        f"{path}: needs arrays 'lo' and 'hi' shaped like one input; has {z.files}"
                    )
                lo, hi = z[keys[0]], z[keys[1]]
        if np.asarray(lo).dtype.kind not in "biuf" or np.asarray(hi).dtype.kind not in "biuf":
            raise InputError(f"{path}: the domain's ends must be real numbers")
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged files: numpy, zipfile and parser errors
        raise InputError(f"{path}: not a readable domain file ({_first_line(e)})") from None
    if lo.shape != hi.shape:
        raise InputError(f"{path}: the ends have shapes {lo.shape} and {hi.shape}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise InputError(f"{path}: the domain's ends must be finite numbers")
    if (lo > hi).any():
        raise InputError(f"{path}: lower end above upper end in {int((lo > hi).sum())} features")
    return lo, hi


def check_inputs(inputs: Inputs, num_classes: int, where: str) -> None:
    """No NaN/inf value; labels within the model's classes; a model with classes to certify."""
    if num_classes < 2:
        raise InputError(
            f"the model has {num_classes} output; certifying a prediction needs a classifier with at least "
            "two classes; for a regression model certify an output range (--output-range LO,HI)"
        )
    x, y = inputs.x, inputs.y
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise InputError(f"{where}: {int(bad.sum())} NaN/inf input values (first in sample {first})")
    if y is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"{where}: labels must lie in 0..{num_classes - 1} for this model; "
            f"found {int(y.min())}..{int(y.max())}"
        )


def check_dataset_matches(card, dataset: str) -> None:
    """A model trained on one data set is not certified on another by mistake (npz files pass)."""
    if dataset.endswith(".npz") or not card.dataset:
        return
    if dataset_info(dataset).name != dataset_info(card.dataset).name:
        raise InputError(
            f"{card.name} was trained on {card.dataset}, not {dataset}; pass --dataset {card.dataset} "
            "(or an .npz file of inputs for it)"
        )


__all__ = [
    "InputError",
    "Inputs",
    "check_dataset_matches",
    "check_inputs",
    "load_inputs",
    "read_domain",
    "select_indices",
]
