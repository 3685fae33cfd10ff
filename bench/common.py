"""What every benchmark shares: a result row, processes pinned to one core, metric scraping.

Children are run with :func:`lab.process.running`, samples summed with
:func:`lab.accounting.total`, ports found with :func:`lab.free_port`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.accounting import Key, parse_samples

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOGWARDEN = [PYTHON, "-m", "logwarden"]


@dataclass(frozen=True)
class Row:
    """One line of the final table. ``ratio`` is logwarden / reference (or as the target says)."""

    benchmark: str
    logwarden: str
    reference: str
    ratio: str
    target: str
    met: bool | None  # None: not measured here


def core() -> list[str]:
    """``taskset`` prefix that pins a process to one core (the last), so "one core" holds."""
    last = (os.cpu_count() or 1) - 1
    return ["taskset", "-c", str(last)] if shutil.which("taskset") else []


def scrape(port: int, path: str = "/metrics") -> dict[Key, float]:
    """Every sample on ``port``, keyed by (name, sorted labels); {} while the server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return parse_samples(resp.read().decode())
    except OSError:
        return {}


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll ``check`` until true; returns the monotonic time it first held. Raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"not done within {timeout}s")


def healthy(port: int) -> bool:
    """True once logwarden's /healthz on ``port`` says ok."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of ``pid`` now (``VmHWM``: its peak so far), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for {pid}")


def fmt_rate(per_second: float) -> str:
    return f"{per_second / 1000:,.0f} k/s" if per_second >= 10_000 else f"{per_second:,.0f}/s"
