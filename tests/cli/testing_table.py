"""Print the bad-input table of TESTING.md: every case of tests/cli/test_bad_input.py run through the
CLI, with its exit status and the line of output that names the file and the problem. What changes from
run to run (process ids, timings, timestamps, this machine's memory, temporary folders) is written as a
placeholder (:data:`VOLATILE`), so that regenerating the table changes only what the code changed.

    .venv/bin/python tests/cli/testing_table.py > /tmp/table.md   # then paste it into TESTING.md
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for the package `tests`

import tests.cli.test_bad_input as cases  # noqa: E402
from rooftrace.cli import main  # noqa: E402
from tests.conftest import REPO, write_tiny_model  # noqa: E402

#: Output that changes from one run to the next, and what the table shows instead (the table is regenerated into
#: TESTING.md: a regeneration must change only what the code changed).
VOLATILE = [
    (re.compile(r"\(process \d+\)"), "(process PID)"),
    (re.compile(r"\b\d+\.\d+ (tiles/s|s/km²|window/s|s)\b"), r"T \1"),
    (re.compile(r"(\d{8})-(\d{6})(-\d+)?\b"), "YYYYMMDD-HHMMSS"),
    (re.compile(r"the bound of [0-9.]+ [KMGTP]iB \(half this machine's memory"), "the bound of M GiB (half this machine's memory"),
    (re.compile(r"/tmp/[^\s'\\`)]*/"), "TMP/"),
]


def normalise(line: str) -> str:
    """``line`` without what changes on every run: process ids, timings and rates, run-folder timestamps, this machine's
    memory bound, temporary folders."""
    for pattern, repl in VOLATILE:
        line = pattern.sub(repl, line)
    return line


def run() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="rooftrace-bad-input-") as tmp:  # removed afterwards, cases and all
        cwd = os.getcwd()
        try:
            return _run(Path(tmp))
        finally:
            os.chdir(cwd)


def _run(base: Path) -> list[str]:
    model = write_tiny_model(base / "model" / "tiny.safetensors", base_channels=4)
    rows = ["| case | bad input | command | exit | what the user sees (the line naming it) |", "|---|---|---|---|---|"]
    for c in cases.CASES:
        tmp = base / c.id
        tmp.mkdir()
        os.chdir(tmp)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            argv = c.setup(tmp, model)  # what a setup prints (a first run) is not the case's output, nor the table's
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), c.around() if c.around else contextlib.nullcontext():
            code = main(argv)
        text = re.sub(r"[^\n]*\r", "", out.getvalue() + "\n" + err.getvalue())  # a line is what the terminal shows last
        lines = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln] or ["(nothing)"]
        hit = max(lines, key=lambda ln: (c.says[0] in ln, sum(s in ln for s in c.says)))
        hit = hit.replace(str(tmp) + "/", "").replace(str(base) + "/", "").replace(str(REPO) + "/", "").strip()
        hit = normalise(hit).replace("|", "\\|")
        rows.append(f"| `{c.id}` | {c.what} | `rooftrace {argv[0]}` | {code} | `{hit}` |")
    return rows


if __name__ == "__main__":
    print("\n".join(run()))
