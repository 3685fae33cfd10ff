"""Benchmark 1's logwarden half for two checkouts, interleaved in one run: is a change slower?

    python -m bench.before_after OTHER_CHECKOUT [LINES] [ROUNDS] [--mix realistic]

``OTHER_CHECKOUT`` is a work tree of the code to compare with (``git worktree add /tmp/base
REV``); each round runs it, then this one, on the same generated log, so that the machine's
load falls on both alike. Prints each run, the medians and their ratio. ``--mix realistic``:
benchmark 1b's lines instead (bench/gen.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import gen, throughput
from bench.common import ROOT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (run first each round)")
    parser.add_argument("lines", type=int, nargs="?", default=300_000)
    parser.add_argument("rounds", type=int, nargs="?", default=6)
    parser.add_argument("--mix", choices=sorted(gen.MIXES), default="busy")
    args = parser.parse_args()
    trees = {"before": args.other.resolve(), "after": ROOT}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp:
        source = Path(tmp, "source.log")
        gen.write(str(source), gen.MIXES[args.mix](args.lines, start=time.time()))
        for round_ in range(args.rounds):
            for name, root in trees.items():
                work = Path(tmp, f"{round_}-{name}")
                work.mkdir()
                rates[name].append(throughput.logwarden_rate(work, source, args.lines, root))
                print(f"{name}: {rates[name][-1] / 1000:.0f} k lines/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name} ({trees[name]}): median {medians[name] / 1000:.0f} k/s, runs "
              f"{', '.join(f'{v / 1000:.0f}' for v in values)}")
    print(f"after / before = {medians['after'] / medians['before']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
