"""Parsing and checking options, loading inputs and models: every user mistake is a UserError."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nonuniform.runs import model_record  # noqa: F401 - re-exported for the commands

from .app import UserError


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


def check_seconds(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v}")


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


def parse_sizes(text: str) -> list[int | float]:
    """``--k``: fractions in (0, 1) or counts >= 1, comma-separated."""
    try:
        sizes = [float(t) if "." in t else int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"bad --k '{text}': give fractions (0.05) or counts (40), comma-separated") from None
    if not sizes or any(
        (isinstance(v, float) and not 0 < v < 1) or (isinstance(v, int) and v < 1) for v in sizes
    ):
        raise UserError(f"bad --k '{text}': fractions must lie in (0, 1) and counts be at least 1")
    return sizes


def parse_fractions(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"bad {option} '{text}': give fractions, comma-separated") from None
    if not values or not all(0 < v < 1 for v in values):
        raise UserError(f"bad {option} '{text}': fractions must lie in (0, 1)")
    return values


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


def resolve_model(model: str, device: str, input_shape=None, domain=None):
    from nonuniform.boxes import resolve_device
    from nonuniform.models import load_model

    dev = resolve_device(device)
    m, card = load_model(model, dev, input_shape=input_shape, domain=domain)
    return m, card, dev


def parse_backend(backend: str, address: str | None, workers: int | None, gpus_per_worker: float):
    """None for the local backend, else the :class:`~nonuniform.distributed.RayBackend` asked for;
    Ray-only options without ``--backend ray`` are refused rather than silently ignored."""
    from nonuniform.distributed import INSTALL_HINT, RayBackend

    if backend not in ("local", "ray"):
        raise UserError(f"--backend must be local or ray, got {backend!r}")
    if backend == "local":
        given = [n for n, v in (("--address", address), ("--workers", workers)) if v is not None]
        if gpus_per_worker:
            given.append("--gpus-per-worker")
        if given:
            raise UserError(f"{', '.join(given)} only apply with --backend ray")
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    if workers is not None:
        check_positive(workers=workers)
    try:
        return RayBackend(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    except ValueError as e:
        raise UserError(str(e)) from None
