"""Benchmark 5: resident memory after many lines that all trigger, over many distinct URLs.

Worst case for the bounded structures: every line is a MISS of one of ``distinct`` URLs, the
storm limit is off (``--max-refresh-rate 0``) so every fan-out reaches the peer queue, and the
peer is a real NGINX answering 204. Judged, as the issue states it, on RSS once every line is
accounted for; the peak (VmHWM) is shown beside it. The reference is the target itself.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import gen
from bench.common import (
    LOGWARDEN,
    ROOT,
    Row,
    core,
    healthy,
    rss_mib,
    scrape,
    wait_for,
)
from bench.refresh import nginx
from bench.throughput import LINES_DONE
from lab import free_port
from lab.accounting import total
from lab.process import running

TARGET_MIB = 80.0


def run(lines: int, distinct: int = 1_000_000) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp, \
            nginx(Path(tmp), 1) as peers:
        rss, peak = _measure(Path(tmp), peers[0], lines, distinct)
    return [Row(f"5. RSS after {lines / 1e6:g} M triggering lines, {distinct / 1e6:g} M URLs",
                f"{rss:.0f} MiB (peak {peak:.0f})", f"{TARGET_MIB:.0f} MiB",
                f"{rss / TARGET_MIB:.2f}x", "<= 80 MiB after", rss <= TARGET_MIB)]


def _measure(tmp: Path, peer: str, lines: int, distinct: int) -> tuple[float, float]:
    log, port = tmp / "memory.log", free_port()
    log.touch()
    args = [*core(), *LOGWARDEN, "run", "--access-log", str(log), "--log-format", gen.FORMAT,
            "--peer", peer, "--max-refresh-rate", "0", "--positions", "off",
            "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    with running(args, cwd=ROOT) as proc:
        wait_for(lambda: healthy(port), timeout=30)
        gen.write(str(log), gen.triggering_lines(lines, distinct=distinct, start=time.time()))
        while total(scrape(port), *LINES_DONE) < lines:
            time.sleep(0.5)
        return rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")

