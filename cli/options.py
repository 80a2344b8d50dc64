"""Parsing and checking options, loading inputs and models: every user mistake is a UserError."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from nonuniform.certify.settings import CertifyConfig

from .app import UserError

#: command-line flag of each CertifyConfig field (messages name settings as `field`)
FLAGS = {name: "--" + name.replace("_", "-") for name in CertifyConfig.__dataclass_fields__}
FLAGS["joint_slopes"] = "--no-joint-slopes"
FLAGS["whole"] = "--whole-domain"


def check_positive(allow_zero: bool = False, **values: int) -> None:
    for name, v in values.items():
        if v < 0 or (v == 0 and not allow_zero):
            need = "0 or more" if allow_zero else "at least 1"
            raise UserError(f"--{name.replace('_', '-')} must be {need}, got {v}")


def check_seconds(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v}")


def check_writable_file(path: Path, example: str = "model.pt") -> None:
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name such as {path}/{example}")
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
    """``LO,HI`` (every feature), ``LO:HI,LO:HI,...`` (one interval per channel, axis 1; per
    feature for flat inputs), or a file (``.npz``/``.npy``/``.vnnlib``: per-feature ends)."""
    if text is None:
        return None
    if text.endswith((".npz", ".npy", ".vnnlib")):
        from nonuniform.zoo.inputs import read_domain

        return read_domain(text)
    try:
        if ":" in text:
            pairs = [tuple(float(v) for v in p.split(":")) for p in text.split(",")]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
            domain = (torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))
        else:
            lo_, hi_ = (float(v) for v in text.split(","))
            domain = (lo_, hi_)
    except ValueError:
        raise UserError(
            f"bad --domain '{text}'; use LO,HI (e.g. 0,1), one LO:HI per channel "
            "(e.g. -2.4:2.5,-2.4:2.6,-2.2:2.7) or a file (lo/hi arrays in .npz, a .vnnlib input box)"
        ) from None
    lo_t, hi_t = torch.as_tensor(domain[0]), torch.as_tensor(domain[1])
    if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
        raise UserError(f"bad --domain '{text}': every end must be a finite number")
    if (lo_t >= hi_t).any():
        raise UserError(f"bad --domain '{text}': every LO must be below its HI")
    return domain


OUTPUT_RANGE_HELP = (
    "Certify that the outputs stay in a range instead of the prediction (regression models): LO,HI for "
    "every output or LO:HI per output; inf for an open end. Labels are not read."
)


def parse_output_range(text: str | None) -> tuple[list[float], list[float]] | None:
    """``LO,HI`` (every output) or ``LO:HI,LO:HI,...`` (one range per output); ``inf`` / ``-inf``
    leave an end open."""
    if text is None:
        return None
    example = "use LO,HI (e.g. -1,1) or one LO:HI per output (e.g. -1:1,0:inf)"
    try:
        if ":" in text:
            pairs = [tuple(float(v) for v in p.split(":")) for p in text.split(",")]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
        else:
            lo_, hi_ = (float(v) for v in text.split(","))
            pairs = [(lo_, hi_)]
    except ValueError:
        raise UserError(f"bad --output-range '{text}'; {example}") from None
    if any(math.isnan(v) for p in pairs for v in p) or any(not lo < hi for lo, hi in pairs):
        raise UserError(f"bad --output-range '{text}': every LO must be below its HI; {example}")
    if all(math.isinf(v) for p in pairs for v in p):
        raise UserError(f"bad --output-range '{text}': at least one end must be finite")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def output_range_classes(net, config: CertifyConfig, x) -> tuple[str, ...]:
    """The class names of the output-range head (figures, tables); its errors as one line."""
    try:
        return config.for_output_range(net, x).class_names
    except (ValueError, RuntimeError) as e:
        raise UserError(f"--output-range: {e}") from None


def with_output_range(net, settings: dict, example):
    """``net`` with the output-range head a stored result was computed for (none: ``net``)."""
    if settings.get("output_range") is None:
        return net
    import torch

    rng = CertifyConfig.build(None, output_range=settings["output_range"])
    return rng.for_output_range(net, torch.as_tensor(example[:1]))


def feature_array(path: str | None, flag: str):
    """A per-feature array from ``FILE.npy`` (``--frozen``, ``--whole-domain``, ``--weights``,
    ``--groups``), never unpickled; None when not given."""
    if path is None:
        return None
    import numpy as np

    if not path.endswith(".npy"):
        raise UserError(f"{flag} {path}: give a .npy file with one value per input feature")
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path}: not a readable .npy array ({str(e).splitlines()[0]})") from None


def parse_groups(text: str | None):
    """``--groups``: channel | time | patch:HxW | FILE.npy (an integer map shaped like one input)."""
    return feature_array(text, "--groups") if text is not None and text.endswith(".npy") else text


def certify_config(**values) -> CertifyConfig:
    """The settings of a command, validated once; a bad value is a UserError naming the flag."""
    try:
        return CertifyConfig(**values)
    except ValueError as e:
        raise UserError(re.sub(r"`(\w+)`", lambda m: FLAGS.get(m.group(1), m.group(1)), str(e))) from None


def resolve_model(model: str, device: str, input_shape=None, domain=None):
    from nonuniform.runtime.device import resolve_device
    from nonuniform.zoo.models import load_model

    dev = resolve_device(device)
    m, card = load_model(model, dev, input_shape=input_shape, domain=domain)
    return m, card, dev


def parse_backend(backend: str, address: str | None, workers: int | None, gpus_per_worker: float):
    """None for the local backend, else the :class:`~nonuniform.runs.ray.RayBackend` asked for;
    Ray-only options without ``--backend ray`` are refused rather than silently ignored."""
    from nonuniform.runs.ray import INSTALL_HINT, RayBackend

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
