"""Certification spread over a Ray cluster: the same boxes as one process, on many workers.

:func:`~nonuniform.runs.rundir.certify_run` with ``backend=RayBackend(...)`` cuts the samples still to do
into *shards* of whole batches and runs each shard as a Ray task. Why whole batches: a batch is
what ``certify_boxes`` optimises together, so a worker that certifies exactly the batches the
single process would have formed returns bit-identical boxes (at the same number of threads per
process; the optimiser itself uses no random numbers). Every finished shard comes back to the
driver, which writes one part per batch into the run directory at once -- the same parts that the
single-process ``--resume`` reads -- so a run can be interrupted and resumed by either backend.

Workers load the model themselves from its name or path and check its sha256 against the
driver's (no pickled module travels; on a multi-machine cluster every node needs the package and
the model file at the same path). A worker that dies (killed process, lost node) or raises has its
shard retried ``max_retries`` times; a shard that keeps failing is reported with its error after
all the other shards have finished and been saved (:class:`ShardsFailed`).
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..certify.result import CertifiedBoxes

INSTALL_HINT = "the ray backend needs Ray: pip install 'nonuniform[ray]' (or pip install ray)"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


class ShardsFailed(RuntimeError):
    """Some shards failed after every retry; the others are saved in the run directory."""

    def __init__(self, failures: list[tuple[list[int], str]], out) -> None:
        self.failures = failures
        shown = "; ".join(f"samples {_span(ix)}: {err}" for ix, err in failures[:3])
        more = f" (and {len(failures) - 3} more shards)" if len(failures) > 3 else ""
        super().__init__(
            f"{len(failures)} shard(s) failed after every retry: {shown}{more}; every other sample "
            f"is saved in {out}/parts; fix the cause and run the same command with --resume"
        )


@dataclass
class RayBackend:
    """Where and how wide to run.

    ``address``: None starts a local cluster on this machine (or uses the one this process has
    already joined with ``ray.init``); ``"auto"`` or ``"ray://HOST:PORT"`` joins a running one.
    ``workers``: shards in flight at once (default: the cluster's CPUs / ``threads_per_worker``).
    ``threads_per_worker``: torch threads (and Ray CPUs) per task. ``batches_per_shard``: how many
    batches a task certifies (larger shards amortise model loading; smaller ones balance better).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 1
    batches_per_shard: int = 1
    max_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("threads_per_worker", "batches_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.max_retries < 0:
            raise ValueError("gpus_per_worker and max_retries must not be negative")


def grid_batches(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``positions`` (sorted, into the run's sample list) grouped by the batch the single process
    would put them in: ``position // batch_size``."""
    positions = np.asarray(positions, dtype=int)
    if len(positions) == 0:
        return []
    keys = positions // batch_size
    cuts = np.flatnonzero(np.diff(keys)) + 1
    return np.split(positions, cuts)


# ---------------------------------------------------------------------------------------------
# Worker side

_MODELS: dict[tuple, object] = {}


def _worker_model(model_spec: dict, device: str):
    from ..zoo.models import load_model

    key = (model_spec["source"], model_spec["sha256"], device)
    if key not in _MODELS:  # a Ray worker process runs many tasks: load each model once
        source = model_spec["source"]
        shape, domain = model_spec["input_shape"], model_spec["domain"]
        model, card = load_model(
            source,
            device,
            input_shape=None if shape is None else tuple(shape),
            domain=None if domain is None else tuple(np.asarray(d) for d in domain),
        )
        if card.sha256 != model_spec["sha256"]:
            raise RuntimeError(
                f"{source} on {platform.node()} has sha256 {card.sha256[:12]}..., the driver's has "
                f"{model_spec['sha256'][:12]}...: every node needs the same model file"
            )
        _MODELS[key] = model
    return _MODELS[key]


def certify_shard(
    model_spec: dict, batches: list[tuple], settings: dict, threads: int, device: str
) -> tuple[list[CertifiedBoxes], dict]:
    """Certify ``batches`` (each ``(inputs, labels or None, indices)`` as numpy arrays) exactly as
    the single process would; ``settings`` is the driver's ``CertifyConfig.to_dict()`` (plain
    JSON travels, the worker validates it again). Returns one ``CertifiedBoxes`` per batch and the
    worker's stats."""
    import torch

    from ..certify.boxes import certify_boxes
    from ..certify.settings import CertifyConfig
    from ..runtime.allocator import configure_allocator

    config = CertifyConfig.build(CertifyConfig.from_dict(settings), device=device)

    torch.set_num_threads(threads)
    configure_allocator()  # the CLI's process policy, in the worker process the task runs in
    model = _worker_model(model_spec, device)
    t0 = time.perf_counter()
    parts: list[CertifiedBoxes] = []
    for x, y, idx in batches:
        certify_boxes(
            model,
            torch.from_numpy(x),
            None if y is None else torch.from_numpy(y),
            config,
            indices=idx,
            callback=parts.append,
        )
    stats = {
        "host": platform.node(),
        "pid": os.getpid(),
        "seconds": round(time.perf_counter() - t0, 3),
        "samples": int(sum(len(b[0]) for b in batches)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return parts, stats


# ---------------------------------------------------------------------------------------------
# Driver side


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    return ray


def run_on_ray(
    backend: RayBackend,
    model_spec: dict,
    inputs: np.ndarray,
    labels: np.ndarray | None,
    indices: np.ndarray,
    batches: list[np.ndarray],
    settings: dict,
    on_part: Callable[[CertifiedBoxes], None],
    out,
) -> list[dict]:
    """Run ``batches`` (arrays of positions into ``inputs``) as shards; ``on_part`` gets every
    batch's boxes as its shard finishes. Returns the stats of every finished shard; raises
    :class:`ShardsFailed` at the end if some shards failed every retry."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            local_cpus = None  # a new local cluster: as wide as asked, else Ray counts the cores
            if backend.address is None and backend.workers is not None:
                local_cpus = backend.workers * backend.threads_per_worker
            ray.init(
                address=backend.address,
                num_cpus=local_cpus,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailable(f"cannot start or join the Ray cluster at {backend.address}: {e}") from None
    device = "cuda" if backend.gpus_per_worker > 0 else "cpu"
    task = ray.remote(
        num_cpus=backend.threads_per_worker,
        num_gpus=backend.gpus_per_worker,
        max_retries=backend.max_retries,
        retry_exceptions=True,
    )(certify_shard)
    cpus = ray.cluster_resources().get("CPU", 1)
    limit = backend.workers or max(1, int(cpus // backend.threads_per_worker))
    per = backend.batches_per_shard
    queue = [batches[i : i + per] for i in range(0, len(batches), per)]
    queue.reverse()  # pop() from the end: shards start in sample order
    pending: dict = {}
    stats: list[dict] = []
    failures: list[tuple[list[int], str]] = []
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                shard = queue.pop()
                payload = [(inputs[p], None if labels is None else labels[p], indices[p]) for p in shard]
                ref = task.remote(model_spec, payload, settings, backend.threads_per_worker, device)
                pending[ref] = shard
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                shard = pending.pop(ref)
                try:
                    parts, shard_stats = ray.get(ref)
                except ray.exceptions.RayError as e:
                    failed = [int(i) for p in shard for i in indices[p]]
                    failures.append((failed, _first_line(e)))
                    continue
                for part in parts:
                    on_part(part)
                stats.append(shard_stats)
    except BaseException:
        for ref in pending:  # interrupted: nothing keeps computing behind the user's back
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
    if failures:
        raise ShardsFailed(failures, out)
    return stats


def _first_line(e: BaseException) -> str:
    """The root cause of a task error in one line (Ray wraps it in a multi-line traceback)."""
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type(e)):
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _span(ix: list[int]) -> str:
    return f"{ix[0]}-{ix[-1]}" if len(ix) > 1 else str(ix[0])


__all__ = ["RayBackend", "RayUnavailable", "ShardsFailed", "certify_shard", "grid_batches", "run_on_ray"]
