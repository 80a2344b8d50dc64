"""A benchmark's instances (``instances.csv``: network, property, time-out) decided one by one,
results written in the competition's CSV layout as each one finishes.

VNN-COMP's instances file has rows ``onnx, vnnlib, timeout`` with paths relative to the file's
folder; its results CSV has rows ``category, onnx, vnnlib, prepare_time, result, run_time`` (no
header). :func:`run_instances` appends one row per decided instance and flushes it, so a run that
is interrupted keeps what it did, and ``resume=True`` skips the rows already in the output.
Counterexamples go beside the CSV (``<out stem>_cex/<network>-<property>.txt``, the competition's
result-file text).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .decide import Result, VerifierConfig, decide
from .vnnlib import VnnlibError, parse_vnnlib


class InstancesError(ValueError):
    """A malformed instances file (the file and row are named)."""


@dataclass(frozen=True)
class Instance:
    network: Path
    prop: Path
    timeout: float

    @property
    def name(self) -> str:
        return f"{self.network.stem}-{self.prop.stem}"


@dataclass
class InstanceResult:
    instance: Instance
    status: str  # sat | unsat | timeout | unknown | error
    seconds: float
    prepare_seconds: float
    detail: str = ""  # the reason of an unknown, the message of an error


def read_instances(path: str | Path) -> list[Instance]:
    """The rows of an instances CSV, paths resolved against its folder; one line per bad row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InstancesError(f"{path}: not a readable instances CSV ({type(e).__name__})") from None
    out = []
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise InstancesError(f"{path}: row {n} has {len(row)} fields; expected onnx,vnnlib,timeout")
        net, prop, timeout = (c.strip() for c in row)
        try:
            seconds = float(timeout)
        except ValueError:
            raise InstancesError(
                f"{path}: row {n}: time-out {timeout!r} is not a number of seconds"
            ) from None
        if not seconds > 0:
            raise InstancesError(f"{path}: row {n}: time-out must be positive, got {timeout}")
        for f in (net, prop):
            if not (path.parent / f).is_file():
                raise InstancesError(f"{path}: row {n}: file not found: {path.parent / f}")
        out.append(Instance(path.parent / net, path.parent / prop, seconds))
    if not out:
        raise InstancesError(f"{path}: no instances (expected rows onnx,vnnlib,timeout)")
    return out


def _done_rows(out: Path) -> set[tuple[str, str]]:
    if not out.exists():
        return set()
    with out.open(newline="") as f:
        return {(r[1], r[2]) for r in csv.reader(f) if len(r) == 6}


def run_instances(
    instances: list[Instance],
    out: Path,
    load: Callable[[Path], tuple[object, tuple[int, ...]]],
    category: str = "",
    timeout_cap: float | None = None,
    config: VerifierConfig | None = None,
    resume: bool = False,
) -> Iterator[InstanceResult]:
    """Decide every instance (at its own time-out, or ``timeout_cap`` if smaller), appending the
    competition's CSV row to ``out`` as each finishes; yields the results (a progress bar's feed).
    ``load(network) -> (model, input_shape)``; a network or property that cannot be read becomes
    an ``error`` row with its one-line message, and the run goes on."""
    done = _done_rows(out) if resume else set()
    if not resume:
        out.write_text("")
    cex_dir = out.parent / f"{out.stem}_cex"
    models: dict[Path, tuple[object, tuple[int, ...]]] = {}
    for inst in instances:
        if (str(inst.network), str(inst.prop)) in done:
            continue
        t0 = time.perf_counter()
        try:
            if inst.network not in models:
                models.clear()  # one network in memory at a time
                models[inst.network] = load(inst.network)
            model, shape = models[inst.network]
            prop = parse_vnnlib(inst.prop)
            prepare = time.perf_counter() - t0
            timeout = min(inst.timeout, timeout_cap) if timeout_cap else inst.timeout
            result: Result = decide(model, prop, shape, timeout, config)
            res = InstanceResult(
                inst, result.status, result.seconds, prepare, result.details.get("reason", "")
            )
            if result.status == "sat":
                cex_dir.mkdir(exist_ok=True)
                (cex_dir / f"{inst.name}.txt").write_text(result.vnncomp_text())
        except (VnnlibError, ValueError, OSError) as e:
            res = InstanceResult(inst, "error", time.perf_counter() - t0, 0.0, str(e).splitlines()[0])
        with out.open("a", newline="") as f:
            row = [category, inst.network, inst.prop, f"{res.prepare_seconds:.3f}", res.status]
            csv.writer(f).writerow([*row, f"{res.seconds:.3f}"])
        yield res


__all__ = ["Instance", "InstanceResult", "InstancesError", "read_instances", "run_instances"]
