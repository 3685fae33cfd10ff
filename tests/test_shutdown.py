"""Shutdown as operators see it: SIGTERM with a thousand refreshes queued behind a slow peer,
a second signal, and a clean restart that reads no line twice."""

from __future__ import annotations

import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import free_port, wait_until
from lab.process import stop_process
from tests.lines import FMT, line

QUEUED = 1000
DEADLINE = 2.0


class SlowPeer(http.server.ThreadingHTTPServer):
    """Answers every refresh after ``delay`` seconds (a verified ``ok``) and counts the answers
    it sent."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        self.delay, self.answered, self.lock = delay, 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), _SlowHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowPeer

    def do_HEAD(self) -> None:
        time.sleep(self.server.delay)
        self.send_response(204)
        self.send_header("X-Cache-Status", "BYPASS")  # as a refreshed NGINX peer answers
        self.end_headers()
        with self.server.lock:
            self.server.answered += 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_peer() -> Iterator[SlowPeer]:
    peer = SlowPeer(delay=0.05)
    thread = threading.Thread(target=peer.serve_forever, daemon=True)
    thread.start()
    yield peer
    peer.shutdown()
    peer.server_close()
    thread.join(5)


class Run:
    """One logwarden process on ``log`` with a positions file; stderr kept for the asserts."""

    def __init__(self, tmp_path: Path, peer: str, *extra: str) -> None:
        self.metrics = f"127.0.0.1:{free_port('127.0.0.1')}"
        self.stderr = (tmp_path / "stderr.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "logwarden", "run", "--access-log",
             str(tmp_path / "access.log"), "--log-format", FMT, "--peer", peer,
             "--metrics-listen", self.metrics, "--positions", str(tmp_path / "positions.json"),
             "--max-refresh-rate", "100000", "--max-refresh-burst", "100000",
             "--shutdown-timeout", str(DEADLINE), *extra],
            stderr=self.stderr)
        wait_until(lambda: self.health().get("status") == "ok", 10, what="logwarden healthy")

    def health(self) -> dict[str, object]:
        assert self.proc.poll() is None, "logwarden exited early"
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/healthz", timeout=1) as resp:
                doc: dict[str, object] = json.loads(resp.read())
                return doc
        except OSError:
            return {}

    def value(self, name: str) -> float:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def signal(self, sig: signal.Signals) -> tuple[int, float]:
        """Send ``sig``; the exit code and how long the exit took."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30), time.monotonic() - started

    def close(self) -> None:
        stop_process(self.proc, signal.SIGKILL)
        self.stderr.close()


def test_sigterm_with_a_thousand_queued_then_a_clean_restart(
    tmp_path: Path, slow_peer: SlowPeer,
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    run = Run(tmp_path, slow_peer.url, "--peer-concurrency", "8")
    try:
        with open(log, "ab") as fh:
            fh.writelines(line(f"/q/{i}") for i in range(QUEUED))
        wait_until(lambda: run.value("logwarden_refresh_fanouts_total") == QUEUED, 5,
                   what="all fan-outs queued")
        code, took = run.signal(signal.SIGTERM)
    finally:
        run.close()
    assert code == 0
    assert took < DEADLINE + 1, took
    stopped = (tmp_path / "stderr.log").read_text().splitlines()[-1]
    outcomes = dict(re.findall(r"(\w+)=(\d+)", stopped.split("refreshes:")[1]))
    assert set(outcomes) == {"ok", "dropped"}, stopped  # finished, or cut at the deadline
    ok, cut = int(outcomes["ok"]), int(outcomes["dropped"])
    assert ok + cut == QUEUED and 0 < ok <= slow_peer.answered, (ok, cut, slow_peer.answered)
    print(f"\nSIGTERM with {QUEUED} queued: {ok} finished, {cut} cut off, exit in {took:.2f} s")
    [saved] = json.loads((tmp_path / "positions.json").read_text())["files"]
    assert saved["offset"] == log.stat().st_size

    run = Run(tmp_path, slow_peer.url)  # the same positions file: nothing is read again
    try:
        with open(log, "ab") as fh:
            fh.writelines(line(f"/after/{i}") for i in range(5))
        wait_until(lambda: run.value("logwarden_lines_total") >= 5, 5, what="5 new lines")
        time.sleep(0.3)  # a line read twice would show up by now
        assert run.value("logwarden_lines_total") == 5
        assert run.signal(signal.SIGTERM)[0] == 0
    finally:
        run.close()


def test_a_second_signal_exits_at_once(tmp_path: Path, slow_peer: SlowPeer) -> None:
    (tmp_path / "access.log").write_bytes(b"")
    slow_peer.delay = 5
    run = Run(tmp_path, slow_peer.url)
    try:
        with open(tmp_path / "access.log", "ab") as fh:
            fh.writelines(line(f"/stuck/{i}") for i in range(20))
        wait_until(lambda: run.value("logwarden_refresh_fanouts_total") == 20, 5,
                   what="fan-outs queued")
        run.proc.send_signal(signal.SIGTERM)  # would wait up to the deadline for the peer
        time.sleep(0.2)
        code, took = run.signal(signal.SIGINT)
    finally:
        run.close()
    assert code == 1
    assert took < 0.5, took
