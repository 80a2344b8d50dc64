"""The bad-input table: every case of ``tests/cli/test_cli_errors.py`` run through the CLI, with
its exit code and the one line it printed.

Run: ``.venv/bin/python experiments/bad_inputs.py`` (about half a minute); writes
``experiments/results/bad_inputs.md``. The suite asserts the same cases (exit 2, one line, the
expected words, no run directory left behind).
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cli.test_cli_errors import CASES, MORE_CASES, make_files, make_more_files, run  # noqa: E402


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d1, d2 = Path(tmp) / "files", Path(tmp) / "more"
        d1.mkdir()
        d2.mkdir()
        make_files(d1)
        make_more_files(d2)
        for cases, d in ((CASES, d1), (MORE_CASES, d2)):
            for args, _ in cases:
                res = run(*(a.format(d=d) for a in args))
                lines = [ln for ln in res.output.splitlines() if ln.strip()]
                shown = " ".join(a.replace("{d}/", "") for a in args)
                message = (lines[0] if len(lines) == 1 else f"{len(lines)} lines").replace(str(d) + "/", "")
                rows.append((shown, res.exit_code, message.replace("|", "\\\\|")))
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    )
    lines = [
        "# Bad inputs",
        "",
        f"{datetime.date.today()}, commit {commit.stdout.strip()} (`experiments/bad_inputs.py`): every case "
        "of `tests/cli/test_cli_errors.py` through the CLI. File names are relative to the test's folder.",
        "",
        "| command | exit | message |",
        "|---|---|---|",
    ]
    lines += [f"| `nonuniform {c}` | {code} | {msg} |" for c, code, msg in rows]
    ok = sum(code == 2 and not msg.endswith("lines") for _, code, msg in rows)
    lines += ["", f"{ok} of {len(rows)} cases: one line, exit 2."]
    (ROOT / "experiments" / "results" / "bad_inputs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
