"""The file source against real files being appended to, rotated and truncated."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from logwarden.ops.metrics import Metrics
from logwarden.sources import LineQueue
from logwarden.sources.file import FileSource

Scenario = Callable[[Path, Callable[[int], Awaitable[list[bytes]]]], Awaitable[None]]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def run_scenario(path: Path, scenario: Scenario, **kw: object) -> tuple[list[bytes], Metrics]:
    """Run a FileSource on ``path`` while ``scenario`` writes; returns every line emitted."""
    metrics = Metrics()
    got: list[bytes] = []

    async def main() -> None:
        queue: LineQueue = asyncio.Queue(4)
        source = FileSource(path, queue, metrics, poll_interval=0.05, rotate_wait=0.3,
                            **kw)  # type: ignore[arg-type]
        task = asyncio.create_task(source.run())

        async def wait_for(n: int) -> list[bytes]:
            async with asyncio.timeout(5):
                while len(got) < n:
                    batch = await queue.get()
                    assert batch is not None
                    got.extend(batch)
            return got

        await asyncio.sleep(0.1)  # let the source open the file
        await scenario(path, wait_for)
        source.stop()
        await task
        while not queue.empty():
            batch = queue.get_nowait()
            assert batch is not None
            got.extend(batch)

    asyncio.run(main())
    return got, metrics


def test_starts_at_end_and_emits_only_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"old 1\nold 2\n")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        append(path, b"new 1\nnew 2 part")
        assert await wait_for(1) == [b"new 1"]
        await asyncio.sleep(0.2)
        append(path, b"ial\n")
        assert await wait_for(2) == [b"new 1", b"new 2 partial"]

    got, metrics = run_scenario(log, scenario)
    assert got == [b"new 1", b"new 2 partial"]
    assert metrics.registry.get_sample_value("logwarden_lines_total") == 2


def test_from_start_reads_existing_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"old 1\nold 2\n")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        await wait_for(2)

    got, _ = run_scenario(log, scenario, from_start=True)
    assert got == [b"old 1", b"old 2"]


def test_rename_and_reopen_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """logrotate create + nginx -s reopen: the writer goes on in the renamed file for a while."""
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        old = open(path, "ab", buffering=0)  # noqa: SIM115 - the writer keeps its fd, like NGINX
        old.write(b"a1\na2\n")
        await wait_for(2)
        os.rename(path, tmp_path / "access.log.1")
        path.write_bytes(b"")  # logrotate's create
        await asyncio.sleep(0.2)  # the tailer sees the new file before NGINX reopens
        old.write(b"a3\na4 unterminated")  # still writing into the renamed file
        await asyncio.sleep(0.1)
        old.close()  # nginx -s reopen
        append(path, b"b1\nb2\n")
        await wait_for(6)

    got, metrics = run_scenario(log, scenario)
    assert sorted(got) == sorted([b"a1", b"a2", b"a3", b"a4 unterminated", b"b1", b"b2"])
    assert got.index(b"a3") < got.index(b"a4 unterminated")
    assert metrics.registry.get_sample_value("logwarden_file_rotations_total") == 1


def test_truncation_restarts_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        append(path, b"x" * 50 + b"\n")
        await wait_for(1)
        with open(path, "r+b") as fh:  # copytruncate
            fh.truncate(0)
        await asyncio.sleep(0.2)
        append(path, b"after\n")
        await wait_for(2)

    got, metrics = run_scenario(log, scenario)
    assert got == [b"x" * 50, b"after"]
    assert metrics.registry.get_sample_value("logwarden_file_truncations_total") == 1


def test_waits_for_a_file_that_appears_3_s_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    log = tmp_path / "access.log"

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        await asyncio.sleep(3)
        path.write_bytes(b"first\n")
        await wait_for(1)

    with caplog.at_level(logging.INFO, "logwarden.sources.file"):
        got, metrics = run_scenario(log, scenario)
    assert got == [b"first"]  # read from its start: it is new
    said = [r.getMessage() for r in caplog.records if "does not exist yet" in r.getMessage()]
    assert said == [f"{log} does not exist yet; waiting for it"]  # once, not every poll
    assert metrics.registry.get_sample_value("logwarden_open_files") == 0  # closed at stop


def test_delete_and_recreate(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        append(path, b"old 1\n")
        await wait_for(1)
        with open(path, "ab") as writer:  # a writer still holding the deleted file
            path.unlink()
            writer.write(b"old 2\n")
            writer.flush()
            await wait_for(2)
            path.write_bytes(b"new 1\n")
            await wait_for(3)
            writer.write(b"old 3\n")
        await wait_for(4)
        await asyncio.sleep(0.5)  # past rotate_wait: the deleted file is closed

    got, metrics = run_scenario(log, scenario)
    assert got == [b"old 1", b"old 2", b"new 1", b"old 3"]
    value = metrics.registry.get_sample_value
    assert value("logwarden_file_rotations_total") == 1
    assert value("logwarden_open_files") == 0


def test_glob_picks_up_new_files(tmp_path: Path) -> None:
    (tmp_path / "a.access.log").write_bytes(b"a old\n")
    (tmp_path / "other.log").write_bytes(b"")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        append(tmp_path / "a.access.log", b"a 1\n")
        await wait_for(1)
        (tmp_path / "b.access.log").write_bytes(b"b 1\n")  # new: read from its start
        append(tmp_path / "other.log", b"not ours\n")
        await wait_for(2)

    got, metrics = run_scenario(tmp_path / "*.access.log", scenario)
    assert got == [b"a 1", b"b 1"]
    assert metrics.registry.get_sample_value("logwarden_open_files") == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_is_reported_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    log.chmod(0)

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        await asyncio.sleep(0.3)
        path.chmod(0o644)
        append(path, b"readable\n")
        await wait_for(1)

    with caplog.at_level(logging.INFO, "logwarden.sources.file"):
        got, metrics = run_scenario(log, scenario, from_start=True)
    assert got == [b"readable"]
    assert [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()] == [
        f"cannot open {log}: Permission denied; retrying"]
    assert metrics.registry.get_sample_value(
        "logwarden_file_errors_total", {"error": "PermissionError"}) >= 1


def test_over_long_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    async def scenario(path: Path, wait_for: Callable[[int], Awaitable[list[bytes]]]) -> None:
        append(path, b"ok1\n" + b"y" * 300 + b"\nok2\n")
        append(path, b"z" * 150)  # over the limit before its newline arrives
        await asyncio.sleep(0.2)
        append(path, b"z" * 150 + b"\nok3\n")
        await wait_for(3)

    got, metrics = run_scenario(log, scenario, max_line_bytes=100)
    assert got == [b"ok1", b"ok2", b"ok3"]
    assert metrics.registry.get_sample_value("logwarden_lines_too_long_total") == 2
