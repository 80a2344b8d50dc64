"""``CertifiedBoxes``: the result of certification and its ``.npz`` file format.

The arrays and their meaning are documented in the README ("boxes.npz format"); a file is
readable with nothing but numpy. :meth:`CertifiedBoxes.load` checks what it reads (every array
present, one sample axis, boxes that contain their inputs) and reports a damaged or foreign file
in one line instead of numpy's or zipfile's exception.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class BoxesFileError(ValueError):
    """A boxes file that is missing, damaged, truncated or inconsistent (named in the message)."""


@dataclass
class CertifiedBoxes:
    """Certified boxes for a set of inputs; arrays are numpy, sample-first.

    ``lower``/``upper`` are absolute coordinates shaped like ``inputs``. A sample with
    ``certified=False`` has ``lower == upper == inputs`` and ``log_volume = -inf``.
    ``labels`` holds true labels, or -1 where none were given.
    """

    inputs: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    certified: np.ndarray
    log_volume: np.ndarray  # sum over free features of log(upper - lower)
    uniform_radius: np.ndarray
    uniform_log_volume: np.ndarray
    apothem: np.ndarray  # smallest half-width over free features
    margin: np.ndarray  # certified lower bound of min_j f_c - f_j over the box
    used_uniform: np.ndarray  # the non-uniform box was no larger than the uniform one
    iterations: np.ndarray  # augmented-Lagrangian iterations (the balancing steps are not counted)
    seconds: np.ndarray
    indices: np.ndarray  # position of each sample in its data set (or 0..N-1)
    free: np.ndarray  # (*input_shape) bool: features whose box may have positive width
    settings: dict = field(default_factory=dict)

    ARRAYS = (
        "inputs",
        "lower",
        "upper",
        "labels",
        "preds",
        "certified",
        "log_volume",
        "uniform_radius",
        "uniform_log_volume",
        "apothem",
        "margin",
        "used_uniform",
        "iterations",
        "seconds",
        "indices",
        "free",
    )

    def __len__(self) -> int:
        return len(self.preds)

    @property
    def radii(self) -> np.ndarray:
        """Half-widths ``(upper - lower) / 2``, shaped like the inputs."""
        return (self.upper - self.lower) / 2

    @property
    def n_free(self) -> int:
        return int(self.free.sum())

    @property
    def mean_log_volume(self) -> np.ndarray:
        """Log-volume per free feature (mean log-width)."""
        return self.log_volume / max(self.n_free, 1)

    @property
    def mean_log_radius(self) -> np.ndarray:
        """Mean over free features of log half-width; -inf where not certified."""
        return self.mean_log_volume - math.log(2)

    @property
    def uniform_mean_log_radius(self) -> np.ndarray:
        return self.uniform_log_volume / max(self.n_free, 1) - math.log(2)

    def linf_radius(self) -> np.ndarray:
        """Per sample, the largest ``a`` such that every point of the domain within l-inf
        distance ``a`` of the input lies in the box: the smallest radius over the counted
        features' sides that do not reach the domain's end (the box's apothem as a threat model:
        ``objective="apothem"`` maximises it first). 0 where not certified."""
        import torch

        from .problem import domain_tensors

        domain = self.settings.get("domain") or (0.0, 1.0)
        dl, du = (
            t.numpy() for t in domain_tensors(domain, torch.as_tensor(self.inputs[0], dtype=torch.float64))
        )
        keep = self.free.reshape(-1)
        flat = lambda a: a.reshape(len(self), -1)[:, keep]  # noqa: E731
        x, lo, hi = flat(self.inputs), flat(self.lower), flat(self.upper)
        dl, du = dl.reshape(-1)[keep], du.reshape(-1)[keep]
        down = np.where(lo > dl, x - lo, np.inf)
        up = np.where(hi < du, hi - x, np.inf)
        a = np.minimum(down, up).min(1) if keep.any() else np.zeros(len(self))
        return np.where(self.certified, np.where(np.isfinite(a), a, 0.0), 0.0)

    @property
    def volume_gain(self) -> np.ndarray:
        """log-volume(non-uniform) - log-volume(uniform), in nats (>= 0 where certified)."""
        with np.errstate(invalid="ignore"):  # -inf - -inf where not certified
            gain = self.log_volume - self.uniform_log_volume
        return np.where(self.certified, gain, np.nan)

    def save(self, path: str | Path) -> None:
        """Write ``path`` (.npz, arrays above plus ``settings`` as a JSON string)."""
        arrays = {k: getattr(self, k) for k in self.ARRAYS}
        arrays["settings"] = np.array(json.dumps(self.settings))
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> CertifiedBoxes:
        """Read a file written by :meth:`save`; :class:`BoxesFileError` (one line) if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise BoxesFileError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in cls.ARRAYS if k not in z.files]
                if missing:
                    raise BoxesFileError(
                        f"{path}: not a boxes file written by `nonuniform certify` (missing arrays "
                        f"{', '.join(missing)})"
                    )
                data = {k: z[k] for k in cls.ARRAYS}
                settings = json.loads(str(z["settings"])) if "settings" in z.files else {}
        except BoxesFileError:
            raise
        except Exception as e:  # noqa: BLE001 - arbitrary bytes: zipfile, zlib, numpy all raise
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            if "pickle" in reason:  # never pass on numpy's advice to load untrusted pickles
                reason = "it holds Python objects, which are never loaded"
            raise BoxesFileError(
                f"{path}: damaged or truncated boxes file ({reason}); re-create it with `nonuniform certify`"
            ) from None
        n = len(data["inputs"])
        sample_shape = data["inputs"].shape[1:]
        for k in cls.ARRAYS:
            if k == "free":
                ok = data[k].shape == sample_shape
            elif k in ("lower", "upper"):
                ok = data[k].shape == data["inputs"].shape
            else:
                ok = data[k].shape[:1] == (n,)
            if not ok:
                shape = data[k].shape
                raise BoxesFileError(f"{path}: inconsistent boxes file (array '{k}' has shape {shape})")
        if not isinstance(settings, dict):
            raise BoxesFileError(f"{path}: inconsistent boxes file (settings are not a JSON object)")
        return cls(**data, settings=settings)

    @classmethod
    def concat(cls, parts: list[CertifiedBoxes]) -> CertifiedBoxes:
        if not parts:
            raise ValueError("nothing to concatenate")
        data = {
            k: (parts[0].free if k == "free" else np.concatenate([getattr(p, k) for p in parts]))
            for k in cls.ARRAYS
        }
        return cls(**data, settings=parts[0].settings)

    def subset(self, mask: np.ndarray) -> CertifiedBoxes:
        data = {k: (self.free if k == "free" else getattr(self, k)[mask]) for k in self.ARRAYS}
        return CertifiedBoxes(**data, settings=self.settings)

    def summary(self) -> dict:
        cert = self.certified

        def mean(a):
            return float(np.mean(a[cert])) if cert.any() else None  # null in JSON, not NaN

        return {
            "samples": len(self),
            "certified": int(cert.sum()),
            "misclassified": int(((self.labels >= 0) & (self.labels != self.preds)).sum()),
            "mean_log_radius": mean(self.mean_log_radius),
            "uniform_mean_log_radius": mean(self.uniform_mean_log_radius),
            "mean_volume_gain_nats": mean(self.volume_gain),
            "mean_uniform_radius": mean(self.uniform_radius),
            "mean_apothem": mean(self.apothem),
            "used_uniform": int((self.used_uniform & cert).sum()),
            "seconds_per_sample": float(np.mean(self.seconds)) if len(self) else None,
            "settings": self.settings,
        }

    def sample_rows(self) -> list[dict]:
        """One JSON-able dict per sample (the CLI table and ``--json``)."""
        rows = []
        mlr, umlr, gain = self.mean_log_radius, self.uniform_mean_log_radius, self.volume_gain
        for i in range(len(self)):
            c = bool(self.certified[i])
            rows.append(
                {
                    "index": int(self.indices[i]),
                    "label": int(self.labels[i]),
                    "pred": int(self.preds[i]),
                    "certified": c,
                    "mean_log_radius": float(mlr[i]) if c else None,
                    "uniform_radius": float(self.uniform_radius[i]),
                    "uniform_mean_log_radius": float(umlr[i]) if c else None,
                    "volume_gain_nats": float(gain[i]) if c else None,
                    "apothem": float(self.apothem[i]),
                    "margin": float(self.margin[i]) if c else None,
                    "used_uniform": bool(self.used_uniform[i]),
                    "iterations": int(self.iterations[i]),
                    "seconds": float(self.seconds[i]),
                }
            )
        return rows


__all__ = ["BoxesFileError", "CertifiedBoxes"]
