"""The file source against real files being appended to, rotated and truncated.

The tailer's passes are driven by the test (:class:`StepWaker`): each ``step()`` is one pass,
so every test says exactly what one pass emits and none waits for a poll interval. Only the
end of draining is real time (``rotate_wait``). The production waker (watchdog + poll interval)
has tests of its own at the end; the real NGINX rotations are in test_tail_nginx.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from logwarden.ops.metrics import Metrics
from logwarden.sources import LineQueue
from logwarden.sources.file import FileSource
from logwarden.sources.watch import WatchdogWaker

ROTATE_WAIT = 0.2


class StepWaker:
    """A waker the test fires: the tailer makes one pass per :meth:`step`, none on its own."""

    def __init__(self) -> None:
        self.closed = False
        self._due = asyncio.Event()
        self._waiting = asyncio.Event()

    def start(self) -> None:
        pass

    async def wait(self) -> None:
        self._waiting.set()
        await self._due.wait()
        self._due.clear()

    def wake(self) -> None:
        self._due.set()

    async def close(self) -> None:
        self.closed = True

    async def idle(self) -> None:
        """Return once the tailer has made its passes and waits for the next."""
        async with asyncio.timeout(5):
            await self._waiting.wait()

    async def step(self) -> None:
        """Let the tailer make one pass; return when it is done with it."""
        await self.idle()
        self._waiting.clear()
        self.wake()
        await self.idle()


class Tailer:
    """A :class:`FileSource` driven by a :class:`StepWaker`, and the lines it emitted."""

    def __init__(self, path: Path, **options: object) -> None:
        self.metrics = Metrics()
        self.queue: LineQueue = asyncio.Queue()  # unbounded: a pass never waits for the test
        self.waker = StepWaker()
        self.source = FileSource(path, self.queue, self.metrics, waker=self.waker,
                                 rotate_wait=ROTATE_WAIT, **options)  # type: ignore[arg-type]
        self.got: list[bytes] = []

    async def step(self) -> list[bytes]:
        """One pass; the lines it emitted."""
        await self.waker.step()
        return self.take()

    def take(self) -> list[bytes]:
        """The lines emitted since the last ``take()``."""
        new: list[bytes] = []
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            assert batch is not None
            new.extend(batch)
        self.got.extend(new)
        return new

    def value(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)


@contextlib.asynccontextmanager
async def tailing(path: Path, **options: object) -> AsyncIterator[Tailer]:
    """A running tailer that has made its first pass; stopped (a last pass) at the end."""
    tailer = Tailer(path, **options)
    task = asyncio.create_task(tailer.source.run())
    try:
        await tailer.waker.idle()
        yield tailer
    finally:
        tailer.source.stop()
        async with asyncio.timeout(5):
            await task
    tailer.take()
    assert tailer.waker.closed


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


async def test_starts_at_end_and_emits_only_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"old 1\nold 2\n")
    async with tailing(log) as t:
        assert t.take() == []
        append(log, b"new 1\nnew 2 part")
        assert await t.step() == [b"new 1"]
        assert await t.step() == []  # the partial line waits for its newline
        append(log, b"ial\n")
        assert await t.step() == [b"new 2 partial"]
    assert t.got == [b"new 1", b"new 2 partial"]
    assert t.value("logwarden_lines_total") == 2


async def test_from_start_reads_existing_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"old 1\nold 2\n")
    async with tailing(log, from_start=True) as t:
        assert t.take() == [b"old 1", b"old 2"]  # in the first pass


async def test_what_is_written_before_the_stop_is_read(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    async with tailing(log) as t:
        append(log, b"last\n")
    assert t.got == [b"last"]


async def test_rename_and_reopen_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """logrotate create + nginx -s reopen: the writer goes on in the renamed file for a while."""
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    async with tailing(log) as t:
        old = open(log, "ab", buffering=0)  # noqa: SIM115 - the writer keeps its fd, like NGINX
        old.write(b"a1\na2\n")
        assert await t.step() == [b"a1", b"a2"]
        os.rename(log, tmp_path / "access.log.1")
        log.write_bytes(b"")  # logrotate's create
        assert await t.step() == []  # the tailer sees the new file before NGINX reopens
        assert t.value("logwarden_file_rotations_total") == 1
        old.write(b"a3\na4 unterminated")  # still writing into the renamed file
        assert await t.step() == [b"a3"]
        old.close()  # nginx -s reopen
        append(log, b"b1\nb2\n")
        assert await t.step() == [b"b1", b"b2"]
        assert t.value("logwarden_open_files") == 2  # the renamed file is drained still
        await asyncio.sleep(ROTATE_WAIT)
        assert await t.step() == [b"a4 unterminated"]  # quiet for rotate_wait: complete now
        assert t.value("logwarden_open_files") == 1
    assert t.got == [b"a1", b"a2", b"a3", b"b1", b"b2", b"a4 unterminated"]
    assert t.value("logwarden_file_rotations_total") == 1


async def test_truncation_restarts_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    async with tailing(log) as t:
        append(log, b"x" * 50 + b"\n")
        assert await t.step() == [b"x" * 50]
        with open(log, "r+b") as fh:  # copytruncate
            fh.truncate(0)
        assert await t.step() == []
        assert t.value("logwarden_file_truncations_total") == 1
        append(log, b"after\n")
        assert await t.step() == [b"after"]
    assert t.got == [b"x" * 50, b"after"]
    assert t.value("logwarden_file_truncations_total") == 1


async def test_waits_for_a_file_that_appears_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    log = tmp_path / "access.log"
    with caplog.at_level(logging.INFO, "logwarden.sources.file"):
        async with tailing(log) as t:
            assert t.source.state == "waiting"
            for _ in range(3):
                assert await t.step() == []
            log.write_bytes(b"first\n")
            assert await t.step() == [b"first"]  # read from its start: it is new
            assert t.source.state == "tailing"
    said = [r.getMessage() for r in caplog.records if "does not exist yet" in r.getMessage()]
    assert said == [f"{log} does not exist yet; waiting for it"]  # once, not every pass
    assert t.value("logwarden_open_files") == 0  # closed at stop


def test_bind_takes_nothing_a_missing_file_is_waited_for(tmp_path: Path) -> None:
    source = FileSource(tmp_path / "access.log", asyncio.Queue(), Metrics(), waker=StepWaker())
    source.bind()  # not a start-up error
    assert (source.state, source.current) == ("starting", {})


async def test_delete_and_recreate(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    async with tailing(log) as t:
        append(log, b"old 1\n")
        assert await t.step() == [b"old 1"]
        with open(log, "ab", buffering=0) as writer:  # a writer still holding the deleted file
            log.unlink()
            writer.write(b"old 2\n")
            assert await t.step() == [b"old 2"]
            log.write_bytes(b"new 1\n")
            assert await t.step() == [b"new 1"]
            writer.write(b"old 3\n")
            assert await t.step() == [b"old 3"]
        await asyncio.sleep(ROTATE_WAIT)
        assert await t.step() == []
        assert t.value("logwarden_open_files") == 1  # past rotate_wait: the deleted one closed
    assert t.got == [b"old 1", b"old 2", b"new 1", b"old 3"]
    assert t.value("logwarden_file_rotations_total") == 1
    assert t.value("logwarden_open_files") == 0


async def test_glob_picks_up_new_files(tmp_path: Path) -> None:
    (tmp_path / "a.access.log").write_bytes(b"a old\n")
    (tmp_path / "other.log").write_bytes(b"")
    async with tailing(tmp_path / "*.access.log") as t:
        append(tmp_path / "a.access.log", b"a 1\n")
        assert await t.step() == [b"a 1"]
        (tmp_path / "b.access.log").write_bytes(b"b 1\n")  # new: read from its start
        append(tmp_path / "other.log", b"not ours\n")
        assert await t.step() == [b"b 1"]
        assert t.value("logwarden_open_files") == 2
    assert t.got == [b"a 1", b"b 1"]
    assert t.value("logwarden_open_files") == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_permission_denied_is_reported_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    log.chmod(0)
    with caplog.at_level(logging.INFO, "logwarden.sources.file"):
        async with tailing(log, from_start=True) as t:
            assert await t.step() == []
            log.chmod(0o644)
            append(log, b"readable\n")
            assert await t.step() == [b"readable"]
    assert t.got == [b"readable"]
    assert [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()] == [
        f"cannot open {log}: Permission denied; retrying"]
    assert f"{log} can be read now" in caplog.text
    assert t.metrics.registry.get_sample_value(
        "logwarden_file_errors_total", {"error": "PermissionError"}) == 2  # both passes


async def test_over_long_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    async with tailing(log, max_line_bytes=100) as t:
        append(log, b"ok1\n" + b"y" * 300 + b"\nok2\n")
        append(log, b"z" * 150)  # over the limit before its newline arrives
        assert await t.step() == [b"ok1", b"ok2"]
        assert t.value("logwarden_lines_too_long_total") == 2
        append(log, b"z" * 150 + b"\nok3\n")
        assert await t.step() == [b"ok3"]
    assert t.got == [b"ok1", b"ok2", b"ok3"]
    assert t.value("logwarden_lines_too_long_total") == 2


# -- the production waker ----------------------------------------------------------------------

async def test_an_event_in_the_directory_wakes_the_waker_before_the_poll_interval(
    tmp_path: Path,
) -> None:
    waker = WatchdogWaker(str(tmp_path / "access.log"), poll_interval=60)
    waker.start()
    try:
        (tmp_path / "access.log").write_bytes(b"x\n")
        async with asyncio.timeout(5):
            await waker.wait()
        waker.wake()  # as FileSource.stop() does
        async with asyncio.timeout(5):
            await waker.wait()
    finally:
        await waker.close()


async def test_a_directory_that_cannot_be_watched_is_polled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "later" / "access.log"
    waker = WatchdogWaker(str(path), poll_interval=0.05)
    waker.start()
    try:
        async with asyncio.timeout(5):
            await waker.wait()  # the poll interval ends it
    finally:
        await waker.close()
    assert f"cannot watch the directory of {path}" in caplog.text
    assert "polling every 0.05s" in caplog.text


async def test_the_default_waker_wakes_the_tailer_on_a_write(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    queue: LineQueue = asyncio.Queue()
    source = FileSource(log, queue, Metrics(), poll_interval=60)  # only an event can wake it
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(5):
            while source.state == "starting":
                await asyncio.sleep(0.005)
            append(log, b"seen\n")
            batch = await queue.get()
        assert batch is not None and batch.lines() == [b"seen"]
    finally:
        source.stop()
        await task
