"""What every benchmark shares: a result row, processes pinned to one core, metric scraping."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOGWARDEN = [PYTHON, "-m", "logwarden"]
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", re.M)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int, path: str = "/metrics") -> dict[str, float]:
    """Prometheus text → {``name{labels}``: value}; {} while the server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {name + (labels or ""): float(value) for name, labels, value in _SAMPLE.findall(text)}


def total(samples: dict[str, float], *names: str) -> float:
    """Sum of every series of the given metric names, whatever their labels."""
    return sum(v for k, v in samples.items() if k.partition("{")[0] in names)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll ``check`` until true; returns the monotonic time it first held. Raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"not done within {timeout}s")


@contextlib.contextmanager
def process(args: Sequence[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session, stopped with SIGTERM (then SIGKILL) however the block ends."""
    proc = subprocess.Popen(list(args), start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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
