"""The complete verifier on the shared VNN-COMP benchmarks, side by side with the published tools.

Run alone on the machine (the scheduler uses both cores):

    .venv/bin/python experiments/vnnlib.py --cap 30

For every benchmark folder in ``../shared/models`` it runs the folder's instances file through
``nonuniform.verify.instances.run_instances`` (the code behind ``nonuniform vnnlib --instances``)
at ``min(own time-out, --cap)`` seconds, keeps the competition-layout CSV under
``experiments/results/vnnlib/``, and writes ``experiments/results/vnnlib.md``: our counts at the
cap and at 30 s, each published tool's counts, every disagreement with a published answer, and
the largest overrun of a time-out. The scheduler does not look at the time-out to plan (rounds of
1, 2, 4, ... s), so an instance decided at t seconds in a run with a longer time-out is decided at
any time-out above t: the 30-s column is read off the capped run.

``--branching`` compares input
splitting's dimension choice (``sb`` vs ``widest``) on the ACAS Xu
instances the ``--compare N`` first rows name.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import torch

from nonuniform import load_model
from nonuniform.verify.decide import VerifierConfig
from nonuniform.verify.instances import read_instances, run_instances

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
OUT = Path(__file__).resolve().parent / "results"
BENCHMARKS = {
    "acasxu": SHARED / "vnncomp2021" / "acasxu" / "acasxu_instances.csv",
    "rl_benchmarks": SHARED / "vnncomp2022" / "rl_benchmarks" / "instances.csv",
    "verivital": SHARED / "vnncomp2021" / "verivital" / "instances.csv",
    "oval21": SHARED / "vnncomp2021" / "oval21" / "instances.csv",
    "cifar10_resnet": SHARED / "vnncomp2021" / "cifar10_resnet" / "instances.csv",
}
WORDS = {"holds": "unsat", "violated": "sat", "run_instance_timeout": "timeout"}


def load(network: Path):
    model, card = load_model(str(network))
    return model, card.input_shape


def published(folder: Path) -> dict[tuple[str, str], dict[str, tuple[str, float]]]:
    """(network, property) -> tool -> (answer, seconds), answers in sat/unsat/... words."""
    out: dict = defaultdict(dict)
    with (folder / "published_results.csv").open() as f:
        for r in csv.DictReader(f):
            out[(r["network"], r["property"])][r["tool"]] = (
                WORDS.get(r["result"], r["result"]),
                float(r["seconds"]),
            )
    return out


def from_csv(name: str, benchmark: str | None = None) -> list:
    """The results of an earlier run, read back from its competition-layout CSV."""
    from nonuniform.verify.instances import InstanceResult

    rows = {(str(i.network), str(i.prop)): i for i in read_instances(BENCHMARKS[benchmark or name])}
    out = []
    with (OUT / "vnnlib" / f"{name}.csv").open() as f:
        for r in csv.reader(f):
            out.append(InstanceResult(rows[(r[1], r[2])], r[4], float(r[5]), float(r[3])))
    return out


def run(name: str, cap: float, config: VerifierConfig, tag: str = "") -> list:
    rows = read_instances(BENCHMARKS[name])
    csv_out = OUT / "vnnlib" / f"{name}{tag}.csv"
    csv_out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for res in run_instances(rows, csv_out, load, name, cap, config):
        results.append(res)
        print(f"{name} {res.instance.name}: {res.status} {res.seconds:.1f}s {res.detail}", flush=True)
    return results


def table(name: str, results: list, cap: float, reruns: list | None = None) -> list[str]:
    """The benchmark's section; ``reruns``: the instances the capped run left open, run again
    at their own time-outs (the first row then counts both)."""
    pub = published(BENCHMARKS[name].parent)
    ours = Counter(r.status for r in results)
    at30 = Counter(r.status if r.status in ("sat", "unsat") and r.seconds <= 30 else "open" for r in results)
    timeouts = {r.instance.name: min(r.instance.timeout, cap) for r in results}
    overrun = max((r.seconds - timeouts[r.instance.name] for r in results), default=0.0)
    lines = [
        f"### {name} ({len(results)} instances, own time-outs {_range(r.instance.timeout for r in results)})",
        "",
    ]
    lines += ["| tool | sat | unsat | decided | timeout / unknown / other |", "|---|---:|---:|---:|---:|"]
    lines.append(
        f"| **nonuniform**, time-out min(own, {cap:g} s) | {ours['sat']} | {ours['unsat']} | "
        f"{ours['sat'] + ours['unsat']} | {ours['timeout']} / {ours['unknown']} / {ours['error']} |"
    )
    if reruns is not None:
        again = {r.instance.name: r for r in reruns}
        m = Counter(again.get(r.instance.name, r).status for r in results)
        lines.append(
            f"| **nonuniform** at the own time-outs (open ones rerun) | {m['sat']} | {m['unsat']} | "
            f"{m['sat'] + m['unsat']} | {m['timeout']} / {m['unknown']} / {m['error']} |"
        )
    lines.append(
        f"| **nonuniform** at 30 s | {at30['sat']} | {at30['unsat']} | {at30['sat'] + at30['unsat']} | "
        f"{at30['open']} open |"
    )
    tools: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        for tool, (answer, _) in pub.get((r.instance.network.name, r.instance.prop.name), {}).items():
            tools[tool][answer if answer in ("sat", "unsat") else "other"] += 1
    for tool, c in sorted(tools.items(), key=lambda kv: -(kv[1]["sat"] + kv[1]["unsat"])):
        lines.append(
            f"| {tool} (published) | {c['sat']} | {c['unsat']} | {c['sat'] + c['unsat']} | {c['other']} |"
        )
    if reruns:
        overrun = max(overrun, *(r.seconds - r.instance.timeout for r in reruns))
        done = ", ".join(f"{r.instance.name}: {r.status} ({r.seconds:.1f} s)" for r in reruns)
        lines += ["", f"Rerun at the own time-outs: {done}."]
    lines += [
        "",
        f"Largest overrun of the time-out: {overrun:+.1f} s" + (" (none)." if overrun <= 0 else "."),
    ]
    dis = []
    for r in results:
        if r.status not in ("sat", "unsat"):
            continue
        claims = pub.get((r.instance.network.name, r.instance.prop.name), {})
        other = sorted(t for t, (a, _) in claims.items() if a in ("sat", "unsat") and a != r.status)
        agree = sorted(t for t, (a, _) in claims.items() if a == r.status)
        if other:
            why = (
                "our counterexample is checked by float32 and float64 forward passes: "
                "the `unsat` claims are wrong"
                if r.status == "sat"
                else "no counterexample is published here to check; our proof is a float64 bound "
                "(CROWN family or branch-and-bound) with a 1e-6 margin, and every other tool that decided "
                "the instance agrees with it"
            )
            dis.append(
                f"- {r.instance.name}: ours {r.status} (agreeing: {', '.join(agree) or 'none'}); "
                f"{r.status == 'sat' and 'unsat' or 'sat'} by {', '.join(other)}. {why}"
            )
    lines += ["", "Disagreements with a published answer: " + ("none." if not dis else ""), *dis, ""]
    open_ = [r for r in results if r.status not in ("sat", "unsat")]
    if open_:
        lines.append(
            "Not decided: "
            + ", ".join(f"{r.instance.name} ({r.status})" for r in open_[:40])
            + (" ..." if len(open_) > 40 else "")
            + "\n"
        )
    return lines


def _range(values) -> str:
    v = sorted(set(values))
    return f"{v[0]:g} s" if len(v) == 1 else f"{v[0]:g}-{v[-1]:g} s"


def compare_branching(count: int, cap: float) -> list[str]:
    lines = [
        f"### Input splitting: split rules compared (first {count} ACAS Xu instances, time-out {cap:g} s)",
        "",
        "| branching | decided | median s (decided by both) | total leaves |",
        "|---|---:|---:|---:|",
    ]
    runs = {}
    rows = read_instances(BENCHMARKS["acasxu"])[:count]
    for branching in ("widest", "sb", "fsb", "portfolio"):
        csv_out = OUT / "vnnlib" / f"acasxu_branching_{branching}.csv"
        runs[branching] = list(
            run_instances(rows, csv_out, load, "acasxu", cap, VerifierConfig(branching=branching))
        )
    both = [i for i in range(len(rows)) if all(runs[b][i].status in ("sat", "unsat") for b in runs)]
    for b, res in runs.items():
        decided = sum(r.status in ("sat", "unsat") for r in res)
        times = sorted(res[i].seconds for i in both)
        med = times[len(times) // 2] if times else float("nan")
        lines.append(f"| {b} | {decided}/{len(res)} | {med:.2f} | - |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap", type=float, default=30.0)
    ap.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS))
    ap.add_argument("--compare", type=int, default=0, help="ACAS Xu rows for the branching comparison")
    ap.add_argument("--from-csv", action="store_true", help="rebuild tables from the rows of earlier runs")
    ap.add_argument("--rerun-open", action="store_true", help="rerun what the cap left open at own time-outs")
    args = ap.parse_args()
    missing = [n for n in args.benchmarks if not BENCHMARKS[n].exists()]
    if missing:
        print(f"benchmarks not found (../shared/models missing?): {', '.join(missing)}")
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    threads = torch.get_num_threads()
    rerun_stamp = f"{date.today().isoformat()}, commit {commit}, {threads} torch threads"
    stamp = f"{date.today().isoformat()}, commit {commit}, cap {args.cap:g} s, {threads} torch threads"
    for name in args.benchmarks:
        stamp_file = OUT / "vnnlib" / f"{name}.run.txt"
        if args.from_csv:
            results = from_csv(name)
            run_stamp = stamp_file.read_text().strip() if stamp_file.exists() else "an earlier run"
            found = re.search(r"cap ([0-9.]+) s", run_stamp)
            cap = float(found.group(1)) if found else args.cap  # the cap the rows were run at
        else:
            results = run(name, args.cap, VerifierConfig())
            stamp_file.write_text(stamp + "\n")
            run_stamp, cap = stamp, args.cap
        reruns = None
        if args.rerun_open:
            left = [
                r.instance for r in results if r.status not in ("sat", "unsat") and r.instance.timeout > cap
            ]
            reruns = list(
                run_instances(left, OUT / "vnnlib" / f"{name}_open.csv", load, name, None, VerifierConfig())
            )
        elif (OUT / "vnnlib" / f"{name}_open.csv").exists() and args.from_csv:
            reruns = from_csv(f"{name}_open", name)
        part = table(name, results, cap, reruns)
        (OUT / "vnnlib" / f"{name}.md").write_text(
            "\n".join(
                [
                    part[0],
                    "",
                    f"Run: {run_stamp}"
                    + (f"; open ones rerun at their own time-outs {rerun_stamp}" if reruns else "")
                    + ".",
                    *part[1:],
                ]
            )
            + "\n"
        )
    if args.compare:
        (OUT / "vnnlib" / "branching.md").write_text(
            "\n".join(compare_branching(args.compare, args.cap)) + "\n"
        )
    lines = [
        "# The complete verifier on the shared VNN-COMP benchmarks",
        "",
        "Each benchmark was run alone on the 2-core CPU machine with `VerifierConfig()` defaults "
        "(its run line gives the date, commit and cap); reproduce one with "
        "`.venv/bin/python experiments/vnnlib.py --benchmarks NAME --cap S`. The time-out of an "
        "instance is min(its own, the cap). Published tools ran on the competition's cloud machines "
        "(several with GPUs) at the instances' own time-outs: their counts are not this machine's. "
        "Rows of every run: "
        "`experiments/results/vnnlib/<benchmark>.csv` (competition layout; counterexamples beside it).",
        "",
    ]
    for name in [*BENCHMARKS, "branching"]:
        part = OUT / "vnnlib" / f"{name}.md"
        if part.exists():
            lines += [part.read_text()]
    (OUT / "vnnlib.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
