"""Two commands timed as whole processes, in turn (A B A B ...), with the ratio A/B pair by pair.

Each run is a fresh process; its wall time is measured around it, its CPU time and peak memory come from the
operating system's accounting of the finished child (``os.wait4``). One warm-up pair is not counted. The
median of the per-pair ratios is the figure to quote: a machine whose speed drifts moves both commands of a
pair alike. Run from the repository root::

    .venv/bin/python benchmarks/whole_process.py -n 6 --a "CMD A ..." --b "CMD B ..."

Output: each command's median wall, CPU and peak memory, then the median, minimum and maximum of the ratios.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import time


def run_once(cmd: list[str]) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (user + system), peak resident bytes, exit status of one run of ``cmd``."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="command A, one string split as a shell would")
    ap.add_argument("--b", required=True, help="command B")
    ap.add_argument("-n", type=int, default=5, help="counted pairs (after one warm-up pair)")
    args = ap.parse_args(argv)
    cmds = {"A": shlex.split(args.a), "B": shlex.split(args.b)}
    runs: dict[str, list[tuple[float, float, int, int]]] = {"A": [], "B": []}
    for i in range(args.n + 1):
        for name, cmd in cmds.items():
            r = run_once(cmd)
            if i:
                runs[name].append(r)
    for name in cmds:
        rs = runs[name]
        codes = sorted({r[3] for r in rs})
        print(f"{name}: {args.a if name == 'A' else args.b}\n   wall {statistics.median(r[0] for r in rs):.2f} s, "
              f"CPU {statistics.median(r[1] for r in rs):.2f} s, peak memory {statistics.median(r[2] for r in rs) / 2**20:,.0f} MiB "
              f"(median of {len(rs)}; exit status {codes})")
    for i, what in ((0, "wall"), (1, "CPU")):
        ratios = [a[i] / b[i] for a, b in zip(runs["A"], runs["B"])]
        print(f"A/B {what}: median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
