"""Whole test set on Ray workers (issue 18): the full 10,000-image MNIST test set, embedded MLP.

Runs ``nonuniform certify mnist-mlp --backend ray --workers W`` (CROWN, default settings, one
torch thread per worker, a local Ray cluster started by the command) for each W given, in a fresh
process each, and reads the run's ``summary.json`` and ``ray_shards.json`` (per-shard seconds and
worker peak RSS). Then estimates the wall time of the CNN and LSTM on N workers from their
measured seconds per image and the parallel efficiency measured here.

Run alone (it uses every core it is given)::

    .venv/bin/python experiments/scale_ray.py --workers 1 2 --data-dir ../shared/data

Appends a section to ``experiments/results/scale.md`` (re-running replaces it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "scale.md"
RAW = ROOT / "experiments" / "results" / "scale_ray.json"
MARK = "## Whole test set on Ray workers"

# Seconds per image at the default settings, measured on this machine (2 threads, run alone):
# CNN from bench_cnn.md (patch rows); LSTM from recurrent.md (30 iterations, doubled for 60).
PER_IMAGE = {"mnist-cnn-small (CROWN)": 4.47, "mnist-lstm (CROWN)": 2 * 6.51}


def run(workers: int, count: int, data_dir: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "nonuniform", "certify", "mnist-mlp", "--dataset", "mnist",
           "--data-dir", data_dir, "--count", str(count), "--out", str(out), "--no-figures",
           "--backend", "ray", "--workers", str(workers)]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    shards = json.loads((out / "ray_shards.json").read_text())
    peak = {}
    for s in shards:
        peak[s["pid"]] = max(peak.get(s["pid"], 0), s["peak_rss_mb"])
    return {
        "workers": workers,
        "samples": summary["samples"],
        "certified": summary["certified"],
        "mean_log_radius": summary["mean_log_radius"],
        "wall": wall,
        "busy": sum(s["seconds"] for s in shards),
        "peak_mb": max(peak.values()),
        "processes": len(peak),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="none: rebuild the table")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--scratch", default="/tmp/nonuniform_scale_ray")
    ap.add_argument("--note", default="", help="How the machine was shared during this run.")
    args = ap.parse_args()
    # rows are kept per worker count, so the runs can be made at different times
    stored = json.loads(RAW.read_text()) if RAW.exists() else {}
    for w in args.workers:
        out = Path(args.scratch) / f"w{w}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        stored[str(w)] = {**run(w, args.count, args.data_dir, out), "note": args.note}
        print(stored[str(w)], flush=True)
        RAW.write_text(json.dumps(stored, indent=1))
    rows = [stored[k] for k in sorted(stored, key=int)]
    base = rows[0]
    lines = [
        MARK,
        "",
        f"`nonuniform certify mnist-mlp --backend ray --workers W` on the first {base['samples']} MNIST "
        "test images (CROWN, default settings: 60 iterations, batch 25, one shard per batch, one torch "
        "thread per worker, local Ray cluster started by the command; 2-core machine, run alone). "
        "Wall time includes starting Ray and loading data; busy = sum of shard seconds inside workers. "
        "Reproduce: `.venv/bin/python experiments/scale_ray.py`.",
        "",
        "| workers | samples | certified | mean log radius | wall s | samples / s | speed-up | busy s "
        "| worker processes | peak RSS per worker MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = [f"{r['workers']} worker(s): {r['note']}" for r in rows if r.get("note")]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['samples']} | {r['certified']} | {r['mean_log_radius']:.4f} | "
            f"{r['wall']:.0f} | {r['samples'] / r['wall']:.2f} | "
            f"{r['samples'] / r['wall'] / (base['samples'] / base['wall']):.2f}x | "
            f"{r['busy']:.0f} | {r['processes']} | {r['peak_mb']:.0f} |"
        )
    lines += ["", *(f"* {n}" for n in notes)] if notes else []
    # Per image and worker (one thread) from the widest run, and how busy Ray kept its workers.
    last = rows[-1]
    per_sample = last["busy"] / last["samples"]
    e = min(r["busy"] / (r["workers"] * r["wall"]) for r in rows)
    lines += [
        "",
        f"Estimate for other models on N workers (one thread each, one per core): 10,000 images x "
        f"seconds per image / (N x {e:.2f}), where {e:.2f} is the lowest share of the wall time the "
        "workers spent certifying (Ray's overhead; per-core memory bandwidth on shared machines is not "
        "modelled). Seconds per image: the MLP's from the widest run above (busy seconds per image, "
        f"{per_sample:.3f}); the CNN's and LSTM's are this machine's single-process figures at 2 "
        "threads (one thread is slower, so those rows are optimistic by up to ~1.5x).",
        "",
        "| model | s / image | 1 worker | 8 workers | 32 workers | 128 workers |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, sec in {"mnist-mlp (CROWN, measured)": per_sample, **PER_IMAGE}.items():
        cells = [_hours(10000 * sec / (n * e)) for n in (1, 8, 32, 128)]
        lines.append(f"| {name} | {sec:.2f} | " + " | ".join(cells) + " |")
    text = RESULTS.read_text()
    text = text.split(MARK)[0].rstrip() + "\n\n" + "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print("\n".join(lines))


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
