"""An access log that is a FIFO (``mkfifo``): followed as a stream, never blocking the loop.

Writers come and go (NGINX's ``nginx -t``, start, reload, reopen and stop; a test's own
writers): every line any of them wrote is read once, and ``run`` exits 0 on SIGTERM. Opening a
FIFO for reading without ``O_NONBLOCK`` waits for a writer: where a test would then hang,
:func:`unblocking` opens the FIFO for writing after a while, so the test fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import EXAMPLE_CONFIG, Cluster, NginxNode, Origin, find_nginx, wait_until
from logwarden.config import load_config
from logwarden.ops.metrics import Metrics
from logwarden.sources import LineQueue
from logwarden.sources.fifo import STREAM_NOTE, FifoSource
from logwarden.sources.file import FileSource
from tests.agents import StartAgent, refreshes_seen, start_daemon
from tests.lines import FMT, line
from tests.peers import RecordingPeer

UNBLOCK_AFTER = 3.0
"""Seconds after which :func:`unblocking` lets a blocked open() of the FIFO return."""


@contextlib.contextmanager
def unblocking(fifo: Path) -> Iterator[None]:
    """If the code under test blocks opening ``fifo`` for reading (waiting for a writer), a
    writer opens and closes it after ``UNBLOCK_AFTER`` s, so the test goes on (and fails on
    its timing) instead of hanging."""
    done = threading.Event()

    def writer() -> None:
        if not done.wait(UNBLOCK_AFTER):
            with contextlib.suppress(OSError):  # ENXIO: nobody is opening it for reading
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def take(queue: LineQueue) -> list[bytes]:
    got: list[bytes] = []
    while not queue.empty():
        batch = queue.get_nowait()
        assert batch is not None
        got.extend(batch)
    return got


async def collect(queue: LineQueue, got: list[bytes], count: int) -> None:
    """Take lines from ``queue`` into ``got`` until it holds ``count``."""
    async with asyncio.timeout(5):
        while len(got) < count:
            got.extend(take(queue))
            await asyncio.sleep(0.01)


class Writer:
    """One writer of the FIFO, opened (the source reads it already, so no wait)."""

    def __init__(self, fifo: Path) -> None:
        self.fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)

    def write(self, data: bytes) -> None:
        assert os.write(self.fd, data) == len(data)

    def close(self) -> None:
        os.close(self.fd)


async def test_reads_every_writer_without_blocking_the_loop(tmp_path: Path) -> None:
    fifo = tmp_path / "access.log"
    os.mkfifo(fifo)
    metrics, queue = Metrics(), LineQueue()
    source = FifoSource(fifo, queue, metrics, poll_interval=0.05, max_line_bytes=64)
    with unblocking(fifo):
        started = time.monotonic()
        source.bind()
        task = asyncio.create_task(source.run())
        await asyncio.sleep(0.05)  # the loop runs on, no writer yet
        assert time.monotonic() - started < 1.0
    assert source.state == "streaming"
    got: list[bytes] = []

    first = Writer(fifo)  # writes, then is gone: EOF, its unterminated line is complete
    first.write(b"one\ntwo\npart")
    first.close()
    await collect(queue, got, 3)
    second, third = Writer(fifo), Writer(fifo)  # the next writers, overlapping
    second.write(b"x" * 100 + b"\nthree\n")  # over max_line_bytes: left out, counted
    second.close()
    third.write(b"four\n")
    await collect(queue, got, 5)
    third.write(b"five\n")
    source.stop()  # what was written before the stop is read
    async with asyncio.timeout(5):
        await task
    third.close()
    got.extend(take(queue))
    assert got == [b"one", b"two", b"part", b"three", b"four", b"five"]
    value = metrics.registry.get_sample_value
    assert value("logwarden_lines_total") == 6
    assert value("logwarden_lines_too_long_total") == 1
    assert value("logwarden_open_files") == 0


async def test_a_fifo_replaced_while_no_writer_is_opened_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    fifo = tmp_path / "access.log"
    os.mkfifo(fifo)
    metrics, queue = Metrics(), LineQueue()
    caplog.set_level(logging.INFO, "logwarden.sources.fifo")
    source = FifoSource(fifo, queue, metrics, poll_interval=0.05)
    source.bind()
    task = asyncio.create_task(source.run())
    writer = Writer(fifo)
    writer.write(b"old\n")
    got: list[bytes] = []
    await collect(queue, got, 1)
    fifo.unlink()
    writer.close()  # EOF with nothing at the path: retried
    async with asyncio.timeout(5):
        while not metrics.registry.get_sample_value(
                "logwarden_file_errors_total", {"error": "FileNotFoundError"}):
            await asyncio.sleep(0.01)
    os.mkfifo(fifo)
    async with asyncio.timeout(5):
        while True:
            with contextlib.suppress(OSError):  # ENXIO until the source has it open
                writer = Writer(fifo)
                break
            await asyncio.sleep(0.01)
    writer.write(b"new\n")
    await collect(queue, got, 2)
    source.stop()
    async with asyncio.timeout(5):
        await task
    writer.close()
    assert got == [b"old", b"new"]
    said = [r.getMessage() for r in caplog.records if r.name == "logwarden.sources.fifo"]
    assert said[0] == f"{fifo} is {STREAM_NOTE}"
    assert sum("cannot open" in s for s in said) == 1  # said once, not on every retry
    assert said[-1] == f"{fifo} can be read again"


async def test_a_file_source_never_opens_a_fifo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A glob matching a FIFO (the file source's open() would wait for a writer, then its
    positions' pread() fail with "Illegal seek"): the FIFO is said and left alone."""
    os.mkfifo(tmp_path / "a.log")
    (tmp_path / "b.log").write_bytes(b"")
    queue: LineQueue = asyncio.Queue()
    source = FileSource(tmp_path / "*.log", queue, Metrics(), poll_interval=0.05)
    with unblocking(tmp_path / "a.log"):
        started = time.monotonic()
        await source.poll()
        await source.poll()
        assert time.monotonic() - started < 1.0
    with open(tmp_path / "b.log", "ab") as fh:
        fh.write(b"b\n")
    await source.poll()
    assert list(source.current) == [str(tmp_path / "b.log")]
    source.close()
    assert take(queue) == [b"b"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{tmp_path / 'a.log'} is not a regular file; not tailed (a FIFO is "
                      "followed, as a stream, only when --access-log names it at start)"]


async def test_the_daemon_decides_fifo_lines_and_refreshes_a_peer(tmp_path: Path) -> None:
    fifo = tmp_path / "access.log"
    os.mkfifo(fifo)
    peer = await RecordingPeer().start()
    positions = tmp_path / "positions.json"
    config = load_config({
        "access_log": (str(fifo),), "log_format": FMT, "self": "http://127.0.0.1:1",
        "peer": ("http://127.0.0.1:1", peer.url), "metrics_listen": "off",
        "positions": str(positions),
    }, None, {})
    with unblocking(fifo):
        daemon, task = await start_daemon(config)
    assert daemon.health()["sources"] == {str(fifo): "streaming"}
    writer = Writer(fifo)
    writer.write(line("/changed") + line("/hit", "HIT") + b"garbage\n")
    writer.close()
    async with asyncio.timeout(5):
        while not peer.heads:
            await asyncio.sleep(0.01)
    daemon.stopping.set()  # what SIGTERM does
    assert await task == 0
    await peer.close()
    assert peer.request_lines() == [b"HEAD /changed HTTP/1.1"]
    value = daemon.metrics.registry.get_sample_value
    assert value("logwarden_lines_total") == 3
    assert value("logwarden_lines_malformed_total") == 1
    assert value("logwarden_triggers_total", {"cache_status": "MISS"}) == 1
    assert value("logwarden_refreshes_total", {"peer": peer.url, "outcome": "ok"}) == 1
    assert not positions.exists() or json.loads(positions.read_text())["files"] == []


def test_check_says_a_fifo_is_a_stream_and_never_reads_it(tmp_path: Path) -> None:
    fifo = tmp_path / "access.log"
    os.mkfifo(fifo)
    out = subprocess.run(
        [sys.executable, "-m", "logwarden", "check", "--access-log", str(fifo),
         "--log-format", FMT, "--peer", "http://127.0.0.12"],
        capture_output=True, text=True, timeout=10)  # a blocking open() would hang it
    assert out.returncode == 0, out.stderr
    assert f"# access_log {fifo}: {STREAM_NOTE}; not sampled" in out.stderr


@pytest.mark.nginx
def test_run_follows_nginx_writing_into_a_fifo(
    origin: Origin, tmp_path: Path, start_agent: StartAgent,
) -> None:
    """NGINX writes its access log into a FIFO: the agent beside it, started first (NGINX's
    open() of a FIFO waits for a reader), refreshes the peer on every MISS across NGINX's
    test, start, reload, reopen and stop, and exits 0 on SIGTERM."""
    if find_nginx() is None:
        pytest.skip("nginx not found on PATH or in /usr/sbin (Debian: make system-deps)")
    with Cluster(tmp_path / "cluster", nodes=1, origin=origin) as cluster:
        peer = cluster[0]
        node = NginxNode("fifo", "127.0.0.12", EXAMPLE_CONFIG, origin.url, cluster.peers,
                         tmp_path)
        node.access_log.parent.mkdir(parents=True)
        os.mkfifo(node.access_log)
        agent = start_agent(node, [node.url, peer.url])
        with node:  # `nginx -t`, then the master: two writers, one after the other
            for n, change in enumerate((None, signal.SIGHUP, signal.SIGUSR1)):
                if change is not None:  # reload: new workers; reopen: the log opened again
                    assert node.pid is not None
                    os.kill(node.pid, change)
                target = f"/fifo/{n}?ma=60"
                assert node.get(target).headers["X-Cache-Status"] == "MISS"
                wait_until(lambda: bool(refreshes_seen(peer, target)), 5,  # noqa: B023
                           what=f"the refresh of {target} on the peer")
        wait_until(lambda: agent.value("logwarden_lines_total") >= 3, 5, what="lines")
        assert agent.value("logwarden_triggers_total", cache_status="MISS") == 3
        assert agent.total("logwarden_lines_malformed_total") == 0
        assert agent.stop() == 0
    assert agent.stderr_path is not None
    said = agent.stderr_path.read_text()
    assert said.count(f"{node.access_log} is {STREAM_NOTE}") == 1
    assert "Traceback" not in said
