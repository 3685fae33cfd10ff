"""Follow an access log that is a named pipe (``mkfifo``) as a stream, and hand its complete
lines, in batches, to the parser queue.

    NGINX workers ─write()─▶ pipe buffer (64 KiB) ─▶ FifoSource ─Batch─▶ lines queue

A pipe has no offsets and no file to rotate: there are no positions (what is read is gone;
what NGINX writes while logwarden is not running is lost, or makes NGINX's ``open()`` wait
for a reader at its start, reload and reopen) and no rotation handling. Lines are read from the
start of logwarden on. The pipe is the buffer: when the lines queue is full, reading waits and
NGINX's writes wait once the pipe is full, as a file source waits (the file is its buffer).

The event loop never blocks on the pipe: it is opened with ``O_NONBLOCK`` (an ``open()`` for
reading would otherwise wait for a writer) and read when the loop reports it readable. When
its last writer closes (NGINX stopped, ``nginx -t`` ran, a writer of a test), a read gives
EOF and the pipe would report itself readable for ever: the path is opened again for the next
writer — before the old descriptor is closed, so NGINX never finds the pipe without a reader —
and reading goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
from pathlib import Path

from logwarden.ops.metrics import Metrics
from logwarden.sources import Batch, LineQueue, SourceError
from logwarden.sources.framing import LineBuffer

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16
"""A pipe's default capacity: one read takes what a full pipe holds."""
READS_PER_WAKE = 16
"""Reads per wake-up at most (1 MiB, the largest pipe an unprivileged user can ask for), so a
busy writer cannot starve the event loop; the stop's last pass reads that much too."""
STREAM_NOTE = ("a FIFO: followed as a stream of what is written from the start on (no "
               "positions, no rotation handling)")
"""How a FIFO is followed; said in the log at the start and by ``check``."""


def is_fifo(path: str) -> bool:
    """Whether ``path`` is a named pipe now (a glob, a missing path: no)."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class FifoSource:
    """Follows the FIFO at ``path`` from ``bind()``; ``run()`` until ``stop()``, then reads what
    the pipe holds. A path that is no FIFO any more when a writer left is retried every
    ``poll_interval`` seconds."""

    def __init__(self, path: str | Path, out: LineQueue, metrics: Metrics, *,
                 poll_interval: float = 1.0, max_line_bytes: int = 64 * 1024) -> None:
        self.name = str(path)
        self.out = out
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.max_line_bytes = max_line_bytes
        self.lines = LineBuffer()
        self._fd: int | None = None
        self._readable = asyncio.Event()
        """Set by the loop when the pipe can be read (data, or EOF), and by ``stop()``."""
        self._stopping = False
        self._failing = False
        self.last_line_at = 0.0

    @property
    def state(self) -> str:
        return "starting" if self._fd is None else "streaming"

    def status(self) -> dict[str, object]:
        """A stream has no offset nor lag: only whether a writer's pipe is open."""
        return {"kind": "fifo", "open": self._fd is not None}

    def bind(self) -> None:
        """Open the pipe now: from here on NGINX's writes reach logwarden."""
        try:
            self._fd = _open_fifo(self.name)
        except OSError as exc:
            raise SourceError(f"access_log: {self.name!r} cannot be opened ({exc.strerror}): "
                              "give the FIFO NGINX's access_log writes to") from None
        self.metrics.open_files.inc()
        log.info("%s is %s", self.name, STREAM_NOTE)

    def stop(self) -> None:
        self._stopping = True
        self._readable.set()

    async def run(self) -> None:
        if self._fd is None:
            self.bind()
        loop = asyncio.get_running_loop()
        try:
            while True:
                assert self._fd is not None
                self._readable.clear()
                loop.add_reader(self._fd, self._readable.set)
                writers_left = await self._follow()
                loop.remove_reader(self._fd)
                if not writers_left:
                    return
                await self._emit(self.lines.rest())  # its writer is done with that line
                if not await self._reopen():
                    return
        finally:
            self._close()

    async def _follow(self) -> bool:
        """Read whenever the pipe is readable; True at EOF (its last writer closed), False
        once stopped, after reading what was written before the stop."""
        while not self._stopping:
            await self._readable.wait()
            self._readable.clear()
            if await self._read():
                return True
        return await self._read()

    async def _read(self) -> bool:
        """Read what the pipe holds (``READS_PER_WAKE`` reads at most); True at EOF."""
        assert self._fd is not None
        for _ in range(READS_PER_WAKE):
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            block, too_long = self.lines.complete(chunk, self.max_line_bytes)
            if too_long:
                self.metrics.lines_too_long.inc(too_long)
            await self._emit(block)
        return False

    async def _reopen(self) -> bool:
        """A new descriptor of the path for the next writer (see the module docstring); while
        it cannot be opened, tried again every ``poll_interval``. False once stopped."""
        while not self._stopping:
            try:
                fd = _open_fifo(self.name)
            except OSError as exc:
                self.metrics.file_errors.labels(type(exc).__name__).inc()
                if not self._failing:
                    self._failing = True
                    log.error("cannot open %s again (%s); retrying", self.name, exc.strerror)
                self._readable.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._readable.wait()  # stop() ends the wait
                continue
            if self._failing:
                self._failing = False
                log.info("%s can be read again", self.name)
            assert self._fd is not None
            os.close(self._fd)
            self._fd = fd
            return True
        return False

    async def _emit(self, block: bytes) -> None:
        if block:
            batch = Batch(block)
            self.metrics.lines.inc(batch.count)
            if batch.count:
                self.last_line_at = time.time()
            await self.out.put(batch)

    def _close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
            self.metrics.open_files.dec()


def _open_fifo(path: str) -> int:
    """``path`` opened for reading without waiting for a writer; OSError unless a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a FIFO any more")
    return fd
