"""A certification run on disk: nothing lost, nothing mixed.

A run directory holds

* ``run.json`` -- what identifies the run: the model (name, source, sha256), the data source and
  every option that changes a box (method, radii, clipping, domain, iterations, seed, ...);
* ``parts/batch_NNNNN.npz`` -- one :class:`~nonuniform.certify.result.CertifiedBoxes` per finished
  batch, written atomically (temporary file, then rename), so a killed run never leaves half a
  part behind;
* ``boxes.npz`` and ``summary.json`` -- the assembled result, written when the run completes;
* ``ray_shards.json`` -- with the Ray backend: host, pid, seconds, samples and peak RSS of every
  shard of the last run.

Resuming (:meth:`RunDir.open` with ``resume=True``) refuses a run whose identity differs, naming
each difference, and recomputes the samples of a part that cannot be read (the part is moved to
``parts/damaged/``). A directory with no finished part is simply started again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..certify.boxes import certify_boxes, check_inputs_fit
from ..certify.result import BoxesFileError, CertifiedBoxes
from ..certify.settings import CertifyConfig
from ..runtime.device import resolve_device
from .ray import RayBackend, grid_batches, run_on_ray


class RunError(ValueError):
    """The run directory cannot be used as asked (named, with what to do)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_boxes_atomic(boxes: CertifiedBoxes, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    boxes.save(tmp)
    os.replace(tmp, path)


class RunDir:
    """A run directory (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.parts = self.out / "parts"

    def open(self, identity: dict, resume: bool) -> dict[int, CertifiedBoxes]:
        """Prepare the directory; return the finished samples by data-set index (resume only)."""
        if self.out.exists() and not self.out.is_dir():
            raise RunError(f"--out {self.out} is a file, not a directory; choose another --out")
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create {self.parts}: {e.strerror or e}; choose another --out") from None
        if not os.access(self.out, os.W_OK):
            raise RunError(f"{self.out} is not writable; choose another --out")
        existing = sorted(self.parts.glob("batch_*.npz"))
        if (self.out / "boxes.npz").exists() or existing:
            if not resume:
                raise RunError(
                    f"{self.out} already holds results; pass --resume to continue it or choose another --out"
                )
            self._check_identity(identity)
        atomic_write_bytes(self.out / "run.json", json.dumps(identity, indent=2).encode())
        return self._finished(existing) if resume else {}

    def _check_identity(self, identity: dict) -> None:
        path = self.out / "run.json"
        if not path.exists():
            return  # a run from before run.json existed: its parts are checked one by one
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise RunError(f"{path} is damaged; start a fresh run with another --out") from None
        old_options = old.get("options")
        if isinstance(old_options, dict):  # settings recorded since: the defaults they had then
            defaults = CertifyConfig(method=old_options.get("method", "crown")).identity()
            old = {**old, "options": {**defaults, **old_options}}
        diffs = _differences(old, identity)
        if diffs:
            raise RunError(
                f"cannot resume {self.out}: it was made with different settings ({'; '.join(diffs)}); "
                "repeat the original options or choose another --out"
            )

    def _finished(self, existing: Sequence[Path]) -> dict[int, CertifiedBoxes]:
        done: dict[int, CertifiedBoxes] = {}
        for p in existing:
            try:
                part = CertifiedBoxes.load(p)
            except BoxesFileError as e:
                damaged = self.parts / "damaged"
                damaged.mkdir(exist_ok=True)
                shutil.move(str(p), damaged / p.name)
                warnings.warn(f"{e}; moved to {damaged}, its samples are computed again", stacklevel=2)
                continue
            for k in range(len(part)):
                done[int(part.indices[k])] = part.subset(np.arange(len(part)) == k)
        return done

    def part_writer(self, on_saved: Callable[[CertifiedBoxes], None] | None = None):
        """A callback for ``certify_boxes`` that writes each finished batch as a new part."""
        counter = [1 + max((int(p.stem.split("_")[1]) for p in self.parts.glob("batch_*.npz")), default=-1)]

        def save(part: CertifiedBoxes) -> None:
            save_boxes_atomic(part, self.parts / f"batch_{counter[0]:05d}.npz")
            counter[0] += 1
            if on_saved is not None:
                on_saved(part)

        return save

    def finish(self, boxes: CertifiedBoxes, summary: dict) -> None:
        save_boxes_atomic(boxes, self.out / "boxes.npz")
        atomic_write_bytes(self.out / "summary.json", json.dumps(summary, indent=2).encode())


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {_short(a)} before, {_short(b)} now")
    return out


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _worker_model_spec(card) -> dict:
    """What a Ray worker needs to load the same model by itself (never the module)."""
    if not card.source or not card.sha256:
        raise RunError(
            f"the ray backend loads the model on every worker from its name or file; {card.name!r} "
            "has neither (save it with a checkpoint or export it to ONNX first)"
        )
    domain = None if card.domain is None else [np.asarray(d, dtype=np.float64).tolist() for d in card.domain]
    return {"source": card.source, "sha256": card.sha256, "input_shape": list(card.input_shape),
            "domain": domain}  # fmt: skip


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def model_record(card) -> dict:
    """What identifies a model in results: name, source (path or embedded name), sha256."""
    return {
        "name": card.name,
        "source": card.source,
        "sha256": card.sha256,
        "arch": card.arch,
        "dataset": card.dataset,
    }


def with_domain(config: CertifyConfig, card) -> CertifyConfig:
    """``config`` with the model card's domain where it names none; refused when neither has one
    (an ONNX file records no domain, and [0, 1] is not a safe guess for normalised inputs)."""
    if config.domain is not None:
        return config
    if card.domain is None:
        raise RunError(
            f"{card.source} does not record its input domain; give one (--domain LO,HI on the "
            "command line, e.g. 0,1 for pixels in [0, 1], or LO:HI per channel for normalised "
            "inputs; domain=(lo, hi) in Python)"
        )
    return CertifyConfig.build(config, domain=card.domain)


def certify_run(
    model,
    card,
    inputs,
    labels,
    indices: np.ndarray,
    source: str,
    out: str | Path,
    config: CertifyConfig | None = None,
    *,
    resume: bool = False,
    figures: bool = True,
    class_names=None,
    progress: Callable[[float], None] | None = None,
    on_saved: Callable[[int, int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    backend: RayBackend | None = None,
    **settings,
) -> tuple[CertifiedBoxes, dict]:
    """``certify_boxes`` into a run directory: each batch saved as it finishes, resumable, then
    ``boxes.npz``, ``summary.json`` and (``figures``) per-sample and overview figures.

    ``config`` (:class:`~nonuniform.certify.settings.CertifyConfig`) and keyword overrides of its
    fields are the settings; without a domain there, the model card's is used (a model that
    records none needs one). The fields that can change a box are the run's identity.
    ``on_start(total, done)`` is called once the directory is ready (errors about it come
    before); ``on_saved(n, certified)`` is told how many samples are safely on disk (and how many
    of them are certified) after each batch.

    ``backend``: None certifies in this process; a :class:`~nonuniform.runs.ray.RayBackend`
    runs shards of whole batches on a Ray cluster (same boxes, same parts: either backend can
    resume the other's run). ``progress`` then advances by whole shards.
    """
    out = Path(out)
    record = model_record(card)
    cfg = with_domain(CertifyConfig.build(config, **settings), card)
    # refuse bad inputs before the run directory exists (nothing half-written)
    device = resolve_device(cfg.device if cfg.device is not None else getattr(inputs, "device", "cpu"))
    check_inputs_fit(model, inputs, labels, cfg, device)
    run = RunDir(out)
    done = run.open({"model": record, "data": source, "options": cfg.identity()}, resume)
    todo = np.array([k for k in range(len(indices)) if int(indices[k]) not in done], dtype=int)
    if on_start is not None:
        on_start(len(indices), len(indices) - len(todo))

    def saved(part: CertifiedBoxes) -> None:
        for k in range(len(part)):
            done[int(part.indices[k])] = part.subset(np.arange(len(part)) == k)
        if on_saved is not None:
            on_saved(len(done), sum(int(b.certified[0]) for b in done.values()))

    writer = run.part_writer(saved)

    def annotate(part: CertifiedBoxes) -> None:
        part.settings["model"] = record
        part.settings["data"] = source
        writer(part)

    t0 = time.time()
    if len(todo) and backend is not None:

        def shard_done(part: CertifiedBoxes) -> None:
            annotate(part)
            if progress is not None:
                progress(len(part))

        shards = run_on_ray(
            backend, _worker_model_spec(card), _numpy(inputs), None if labels is None else _numpy(labels),
            np.asarray(indices), grid_batches(todo, cfg.batch_size), cfg.to_dict(), shard_done, out,
        )  # fmt: skip
        # where each shard ran, how long it took and the worker's peak memory (this run's shards)
        atomic_write_bytes(out / "ray_shards.json", json.dumps(shards, indent=1).encode())
    elif len(todo):
        certify_boxes(
            model,
            inputs[todo],
            None if labels is None else labels[todo],
            cfg,
            indices=indices[todo],
            callback=annotate,
            progress=progress,
        )
    res = CertifiedBoxes.concat([done[int(i)] for i in indices])
    summary = res.summary()
    summary.update({"model": record, "data": source, "wall_seconds": round(time.time() - t0, 2)})
    # a resumed run may mix batch sizes (they change no box): say which were used, this run's last
    used = sorted({int(done[int(i)].settings.get("batch_size", cfg.batch_size)) for i in indices})
    if isinstance(summary.get("settings"), dict):
        summary["settings"] = {**summary["settings"], "batch_size": cfg.batch_size}
    summary["batch_sizes"] = used
    run.finish(res, summary)
    if figures:
        from ..report.plots import overview_figure, sample_figure

        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        for k in range(min(len(res), 32)):
            sample_figure(res, k, fig_dir / f"sample_{int(res.indices[k]):05d}.png", class_names)
        overview_figure(
            res, fig_dir / "overview.png", title=f"{card.name}: certified non-uniform boxes ({cfg.method})"
        )
    return res, summary


__all__ = [
    "RunDir",
    "RunError",
    "atomic_write_bytes",
    "certify_run",
    "model_record",
    "save_boxes_atomic",
    "with_domain",
]
