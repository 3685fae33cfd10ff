"""Run a real ``logwarden run`` process beside a lab node, and read its metrics over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.accounting import Key, parse_samples, total
from lab.cluster import free_port
from lab.process import stop_process


def log_format_from_conf(conf_text: str, name: str = "logwarden") -> str:
    """The ``log_format NAME …;`` pieces exactly as written in nginx.conf (quotes included)."""
    match = re.search(rf"^\s*log_format\s+{name}\s+(.*?);\s*$", conf_text, re.M | re.S)
    if match is None:
        raise ValueError(f"no log_format {name} in the config")
    return match.group(1)


class Agent:
    """A logwarden subprocess; ``stop()`` sends SIGTERM and returns its exit code.

    It runs in its own session, so a Ctrl-C meant for the demo reaches the demo alone, which
    then stops the agents in order. ``self_url`` is one of its ``--peer``s, given or not in
    ``peers`` (logwarden requires it: the same peer list on every node).
    """

    def __init__(self, access_log: Path | None, log_format: str, self_url: str,
                 peers: Sequence[str], *, extra: Sequence[str] = (),
                 stderr: Path | None = None, env: Mapping[str, str] | None = None,
                 default_positions: bool = False) -> None:
        """``env``: added to the environment; ``default_positions``: no ``--positions`` (the
        agent's own default file), else one beside ``stderr`` (``off`` without it)."""
        self.metrics_port = free_port("127.0.0.1")
        positions = str(stderr.with_suffix(".positions.json")) if stderr else "off"
        self.args = [
            sys.executable, "-m", "logwarden", "run",
            *(["--access-log", str(access_log)] if access_log else []),
            "--log-format", log_format,
            "--self", self_url,
            *[a for p in dict.fromkeys([*peers, self_url]) for a in ("--peer", p)],
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            *([] if default_positions else ["--positions", positions]),
            *extra,
        ]
        self.stderr_path = stderr
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, timeout: float = 10.0) -> Agent:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.stderr_path is None:
            self.proc = subprocess.Popen(self.args, stderr=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        else:
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(self.args, stderr=err, env=env,
                                             start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"logwarden exited with {self.proc.returncode}: {self.args}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("logwarden did not become healthy in time")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s (exit code -9); None if never started."""
        return None if self.proc is None else stop_process(self.proc, signal.SIGTERM, timeout)

    def samples(self) -> dict[Key, float]:
        """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=5) as resp:
            return parse_samples(resp.read().decode())

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of ``name`` over every series whose labels include ``labels``."""
        return total(self.samples(), name, **labels)
