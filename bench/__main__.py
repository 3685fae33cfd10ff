"""``python -m bench [--quick]``: every benchmark, each beside its reference, then one table.

Figures drift with the machine's load; the ratios, measured in the same run, hold. See
bench/README.md for what each one does and the latest figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from typing import NamedTuple

from bench import convergence, memory, propagation, refresh, syslog, throughput
from bench.common import Row


class Sizes(NamedTuple):
    lines: int
    line_rounds: int  # benchmarks 1 and 1b: short runs at quick sizes need more for a median
    refreshes: int
    refresh_rounds: int
    changes: int
    convergence_seconds: float
    memory_lines: int
    syslog_seconds: float


FULL = Sizes(lines=1_000_000, line_rounds=2, refreshes=20_000, refresh_rounds=3,
             changes=1000, convergence_seconds=30,
             memory_lines=10_000_000, syslog_seconds=3.0)
QUICK = Sizes(lines=300_000, line_rounds=4, refreshes=6_000, refresh_rounds=2,
              changes=200, convergence_seconds=8,
              memory_lines=1_000_000, syslog_seconds=1.0)
SYSLOG_RATES = (50_000, 100_000, 150_000, 200_000, 300_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under 2 minutes")
    args = parser.parse_args()
    missing = [tool for tool in ("mtail", "wrk", "nginx", "taskset") if not shutil.which(tool)]
    if missing:
        print(f"missing: {', '.join(missing)} (make bench installs them as root)", file=sys.stderr)
        return 2
    size = QUICK if args.quick else FULL
    started = time.monotonic()
    rows = throughput.run(size.lines, size.line_rounds)
    refresh_rows, senders = refresh.run(size.refreshes, size.refresh_rounds)
    rows += [*refresh_rows, *propagation.run(size.changes)]
    rows += convergence.run(size.convergence_seconds)
    rows += convergence.run_fast(size.convergence_seconds)
    rows += memory.run(size.memory_lines)
    rows += syslog.run(size.syslog_seconds, SYSLOG_RATES)
    print(_machine(), f"python -m bench{' --quick' if args.quick else ''},",
          f"{time.monotonic() - started:.0f} s")
    print(table(sorted(rows, key=lambda r: r.benchmark)))
    print("\nbenchmark 2, every sender:")
    print("\n".join(refresh.report(senders)))
    return 0


def table(rows: list[Row]) -> str:
    head = ("benchmark", "logwarden", "reference", "ratio", "target", "met")
    cells = [head, *[(r.benchmark, r.logwarden, r.reference, r.ratio, r.target,
                      "-" if r.met is None else "yes" if r.met else "NO") for r in rows]]
    lines = ["| " + " | ".join(c) + " |" for c in cells]
    lines.insert(1, "|" + "---|" * len(head))
    return "\n".join(lines)


def _machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()};"


if __name__ == "__main__":
    sys.exit(main())
