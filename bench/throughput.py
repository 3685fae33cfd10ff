"""Benchmark 1: log lines per second on one core, logwarden beside mtail, in the same run.

Each contestant tails an empty file; the whole generated log is then appended to it as fast as
the disk cache takes it, and the clock stops when the contestant has accounted for every line
(logwarden: ignored + malformed + triggered, with ``--dry-run`` so nothing is sent; mtail: a
program counting lines by cache status). Both are pinned to the same single core.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import gen
from bench.common import (
    LOGWARDEN,
    ROOT,
    Row,
    core,
    fmt_rate,
    healthy,
    scrape,
    wait_for,
)
from lab import free_port
from lab.accounting import total
from lab.process import running

MTAIL_PROGRAM = r"""# Count access-log lines by $upstream_cache_status (the 8th TAB field).
counter lines_by_cache_status by cache_status

/^(?:[^\t]*\t){7}(?P<cache_status>[^\t]*)\t/ {
  lines_by_cache_status[$cache_status]++
}
"""
LINES_DONE = ("logwarden_records_ignored_total", "logwarden_lines_malformed_total",
              "logwarden_triggers_total")


def run(lines: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp:
        source = Path(tmp, "source.log")
        gen.write(str(source), gen.lines(lines, start=time.time()))
        ours = logwarden_rate(Path(tmp), source, lines)
        theirs = mtail_rate(Path(tmp), source, lines)
    ratio = ours / theirs
    return [Row(f"1. log lines/s, one core, vs mtail ({lines:,} lines)", fmt_rate(ours),
                fmt_rate(theirs), f"{ratio:.1f}x", ">= 500 k/s and >= 8x",
                ours >= 500_000 and ratio >= 8)]


def logwarden_rate(tmp: Path, source: Path, lines: int, root: Path = ROOT) -> float:
    """Lines/s of the logwarden in the checkout ``root`` (this one, or another to compare)."""
    log, port = tmp / "logwarden.log", free_port()
    log.touch()
    args = [*core(), *LOGWARDEN, "run", "--access-log", str(log), "--log-format", gen.FORMAT,
            "--peer", "http://127.0.0.1:9", "--dry-run", "--positions", "off",
            "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    with running(args, cwd=root):
        wait_for(lambda: healthy(port), timeout=30)
        return _timed_append(source, log, lines, lambda: total(scrape(port), *LINES_DONE))


def mtail_rate(tmp: Path, source: Path, lines: int) -> float:
    log, port, progs = tmp / "mtail.log", free_port(), tmp / "progs"
    log.touch()
    progs.mkdir()
    (progs / "cache_status.mtail").write_text(MTAIL_PROGRAM)
    args = [*core(), "mtail", "--progs", str(progs), "--logs", str(log), "--port", str(port),
            "--address", "127.0.0.1"]
    with running(args, cwd=tmp):
        wait_for(lambda: bool(scrape(port)), timeout=30)
        time.sleep(0.5)  # let it open the file before the lines arrive
        # The Prometheus parser names a counter's samples ..._total; mtail may not.
        return _timed_append(source, log, lines, lambda: total(
            scrape(port), "lines_by_cache_status", "lines_by_cache_status_total"))


def _timed_append(source: Path, log: Path, lines: int, counted: Callable[[], float]) -> float:
    """Append ``source`` to ``log`` and return lines/s until ``counted()`` reaches ``lines``."""
    started = time.monotonic()
    with open(source, "rb") as src, open(log, "ab") as dst:
        while block := src.read(8 << 20):
            dst.write(block)
    done = wait_for(lambda: counted() >= lines, timeout=600, interval=0.05)
    return lines / (done - started)

