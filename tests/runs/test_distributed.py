"""Ray backend: the same boxes as one process, through worker deaths, failures and resumes.

Every test here shares one local Ray cluster with 2 CPUs (started once, ~5 s). Workers run one
torch thread each, so the single-process reference runs with one thread too (bit-identical
comparison needs the same reduction order).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nonuniform.certify.result import CertifiedBoxes
from nonuniform.runs.ray import RayBackend, RayUnavailable, ShardsFailed, grid_batches, run_on_ray
from nonuniform.runs.rundir import RunError, certify_run
from nonuniform.zoo.models import load_model
from nonuniform.zoo.samples import load_samples

N, BATCH = 24, 6
OPTIONS = dict(method="crown", iterations=15, batch_size=BATCH, seed=0)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="ray not installed: pip install 'nonuniform[ray]'")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def job():
    model, card = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    return model, card, x[:N], y[:N], np.arange(N)


def run(job, out: Path, backend=None, **kw) -> CertifiedBoxes:
    model, card, x, y, idx = job
    res, _ = certify_run(
        model, card, x, y, idx, "embedded:mnist", out, figures=False, backend=backend, **OPTIONS, **kw
    )
    return res


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory) -> CertifiedBoxes:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(job, tmp_path_factory.mktemp("ref") / "run")
    finally:
        torch.set_num_threads(threads)


def assert_same_boxes(a: CertifiedBoxes, b: CertifiedBoxes) -> None:
    for key in ("indices", "inputs", "lower", "upper", "certified", "margin", "preds", "labels"):
        assert np.array_equal(getattr(a, key), getattr(b, key), equal_nan=True), key
    assert {k: v for k, v in a.settings.items()} == {k: v for k, v in b.settings.items()}


def test_grid_batches_follow_the_single_process_batches():
    got = grid_batches(np.array([0, 1, 2, 6, 7, 13, 14, 15, 16]), 5)
    assert [g.tolist() for g in got] == [[0, 1, 2], [6, 7], [13, 14], [15, 16]]
    assert grid_batches(np.array([], dtype=int), 5) == []


def test_ray_gives_the_single_process_boxes(cluster, job, reference, tmp_path):
    assert reference.certified.sum() >= N // 2  # the comparison is about real boxes
    res = run(job, tmp_path / "ray", RayBackend(workers=2, batches_per_shard=2))
    assert_same_boxes(reference, res)
    on_disk = CertifiedBoxes.load(tmp_path / "ray" / "boxes.npz")
    assert_same_boxes(reference, on_disk)
    assert len(list((tmp_path / "ray" / "parts").glob("batch_*.npz"))) == N // BATCH


def _kill_first_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first process seen running a shard (Ray titles it ray::certify_shard)."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::certify_shard" in cmd:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.01)


def test_a_killed_worker_is_retried_and_the_boxes_are_the_same(cluster, job, reference, tmp_path):
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker, args=(stop, killed))
    killer.start()
    try:
        res = run(job, tmp_path / "ray", RayBackend(workers=2, max_retries=2))
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was running a shard to kill"
    assert_same_boxes(reference, res)


class Interrupt(KeyboardInterrupt):
    pass


def _interrupt_after(n: int):
    def on_saved(done: int, certified: int) -> None:
        if done >= n:
            raise Interrupt

    return on_saved


@pytest.mark.parametrize("first,second", [("local", "ray"), ("ray", "local")])
def test_interrupted_run_resumes_with_the_other_backend(cluster, job, reference, tmp_path, first, second):
    backends = {"local": None, "ray": RayBackend(workers=2)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(Interrupt):
            run(job, tmp_path / "run", backends[first], on_saved=_interrupt_after(BATCH))
        parts = list((tmp_path / "run" / "parts").glob("batch_*.npz"))
        assert 1 <= len(parts) < N // BATCH
        done = {int(i) for p in parts for i in CertifiedBoxes.load(p).indices}
        res = run(job, tmp_path / "run", backends[second], resume=True)
    finally:
        torch.set_num_threads(threads)
    assert_same_boxes(reference, res)
    # nothing finished was recomputed: the first run's parts are untouched
    kept = {int(i) for p in parts for i in CertifiedBoxes.load(p).indices}
    assert kept == done


def test_resume_with_other_settings_is_refused(cluster, job, tmp_path):
    model, card, x, y, idx = job
    run(job, tmp_path / "run", RayBackend(workers=1))
    with pytest.raises(RunError, match="iterations: 15 before, 16 now"):
        certify_run(model, card, x, y, idx, "embedded:mnist", tmp_path / "run", figures=False,
                    backend=RayBackend(), resume=True, **{**OPTIONS, "iterations": 16})  # fmt: skip


def test_a_shard_that_keeps_failing_is_reported_and_the_rest_completes(cluster, job, tmp_path):
    """certify_run refuses bad inputs before any work, so a failing shard is made below it: a
    shard whose inputs leave the domain fails on its worker, is retried, and is reported after
    every other shard has been handed back."""
    from nonuniform.certify.settings import CertifyConfig
    from nonuniform.runs.rundir import _worker_model_spec

    model, card, x, y, idx = job
    bad = x.clone()
    bad[BATCH + 1, 0, 0, 0] = 2.0  # outside the [0, 1] domain: the shard of samples 6-11 fails
    config = CertifyConfig(domain=card.domain, **OPTIONS)
    got = []
    with pytest.raises(ShardsFailed, match="samples 6-11: ValueError: .*outside the domain"):
        backend, spec = RayBackend(workers=2, max_retries=1), _worker_model_spec(card)
        batches = grid_batches(np.arange(N), BATCH)
        run_on_ray(
            backend,
            spec,
            bad.numpy(),
            y.numpy(),
            np.asarray(idx),
            batches,
            config.to_dict(),
            got.append,
            tmp_path,
        )
    saved = sorted(int(i) for part in got for i in part.indices)
    assert saved == [i for i in range(N) if not BATCH <= i < 2 * BATCH]


def test_certify_run_refuses_inputs_outside_the_domain_before_any_work(cluster, job, tmp_path):
    model, card, x, y, idx = job
    bad = x.clone()
    bad[3, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="outside the domain"):
        certify_run(model, card, bad, y, idx, "embedded:mnist", tmp_path / "run", figures=False,
                    backend=RayBackend(workers=2), **OPTIONS)  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_model_without_a_source_is_refused(cluster, job, tmp_path):
    model, card, x, y, idx = job
    from dataclasses import replace

    with pytest.raises(RunError, match="loads the model on every worker"):
        certify_run(model, replace(card, source="", sha256=""), x, y, idx, "d", tmp_path / "r",
                    figures=False, backend=RayBackend(), **OPTIONS)  # fmt: skip


def test_cli_certify_with_ray_backend(cluster, tmp_path):
    from nonuniform_cli.main import app

    out = tmp_path / "run"
    args = ["certify", "mnist-mlp", "--out", str(out), "--count", "4", "--batch-size", "2",
            "--iterations", "5", "--no-figures", "--backend", "ray", "--workers", "2"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "certified" in r.output
    assert len(list((out / "parts").glob("batch_*.npz"))) == 2
    r = CliRunner().invoke(app, [*args[:-4], "--workers", "2"])
    assert r.exit_code == 2 and "--workers only apply with --backend ray" in r.output


def test_without_ray_the_backend_fails_with_how_to_install(monkeypatch, tmp_path, job):
    from nonuniform_cli.main import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = CliRunner().invoke(app, ["certify", "mnist-mlp", "--out", str(tmp_path / "o"), "--count", "2",
                                 "--backend", "ray"])  # fmt: skip
    assert r.exit_code == 2
    assert "pip install 'nonuniform[ray]'" in r.output
    with pytest.raises(RayUnavailable, match="pip install"):
        run_on_ray(
            RayBackend(), {}, np.zeros((1, 2)), None, np.arange(1), [np.arange(1)], {}, print, tmp_path
        )
