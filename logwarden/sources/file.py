"""Tail an access log by name and hand complete lines, in batches, to the parser queue.

Rotation policy (NGINX facts §8): after ``mv access.log access.log.1`` NGINX keeps writing into
the renamed file until it is told to reopen, so when the path starts naming a new file the old
one is kept open and read ("draining") until it has been quiet for ``rotate_wait`` seconds;
the new file is read from offset 0 at the same time. A file that shrinks below the read offset
was truncated (copytruncate) and is read again from 0. Only complete lines are emitted; the
partial tail of a drained file is emitted when it is closed for good.

Events are hints: watchdog (inotify) wakes the tailer early, a ``poll_interval`` stat() loop
covers lost events and files that do not exist yet. Reading never waits for the consumer
longer than the bounded queue forces it to: the file itself is the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from logwarden.metrics import Metrics
from logwarden.sources import Batch, LineQueue

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


@dataclass
class _OpenFile:
    """A file being read: identity, offset and the bytes of a line not yet complete."""

    fd: int
    dev: int
    ino: int
    offset: int
    partial: bytes = b""
    skipping: bool = False
    """True while discarding the rest of a line that exceeded ``max_line_bytes``."""
    quiet_since: float = field(default=0.0)

    @classmethod
    def open(cls, path: Path, at_end: bool) -> _OpenFile:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        return cls(fd, st.st_dev, st.st_ino, st.st_size if at_end else 0)

    def same_file(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def close(self) -> None:
        os.close(self.fd)


class _Waker(FileSystemEventHandler):
    """Runs on watchdog's thread; wakes the tailer's loop without flooding it with calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self.loop = loop
        self.event = event
        self.pending = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not self.pending.is_set():
            self.pending.set()
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.pending.clear()
        self.event.set()


class FileSource:
    """Follows one path by name: ``run()`` until ``stop()``, then reads what is there and ends."""

    def __init__(
        self,
        path: str | Path,
        out: LineQueue,
        metrics: Metrics,
        *,
        from_start: bool = False,
        poll_interval: float = 1.0,
        rotate_wait: float = 5.0,
        max_line_bytes: int = 64 * 1024,
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.out = out
        self.metrics = metrics
        self.from_start = from_start
        self.poll_interval = poll_interval
        self.rotate_wait = rotate_wait
        self.max_line_bytes = max_line_bytes
        self.current: _OpenFile | None = None
        self.draining: list[_OpenFile] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self.started = False
        """True once the first attempt to open the path was made: lines from now on are read."""

    @property
    def state(self) -> str:
        return "tailing" if self.current is not None else "waiting" if self.started else "starting"

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        observer = self._watch()
        try:
            await self._open_first()
            while not self._stopping:
                await self._check_path()
                await self._read_all()
                await self._sleep()
            await self._read_all()  # what was written before the stop is not lost
        finally:
            if observer.is_alive():
                observer.stop()
                await asyncio.to_thread(observer.join)
            for f in [*self.draining, *([self.current] if self.current else [])]:
                f.close()

    def _watch(self) -> BaseObserver:
        observer = Observer()
        handler = _Waker(asyncio.get_running_loop(), self._wake)
        observer.schedule(handler, str(self.path.parent), recursive=False)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:  # e.g. the directory does not exist yet: polling covers it
            log.warning("cannot watch %s (%s); polling every %ss", self.path.parent, exc,
                        self.poll_interval)
        return observer

    async def _sleep(self) -> None:
        try:
            async with asyncio.timeout(self.poll_interval):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    async def _open_first(self) -> None:
        """Open the path, at its end if it exists now; a file that appears later is all new."""
        at_end, said = not self.from_start, False
        while not self._stopping:
            try:
                self.current = _OpenFile.open(self.path, at_end)
                log.info("tailing %s from offset %d", self.path, self.current.offset)
                return
            except FileNotFoundError:
                if not said:
                    log.warning("%s does not exist yet; waiting for it", self.path)
                at_end, said = False, True
            except PermissionError as exc:
                log.error("cannot open %s: %s; retrying", self.path, exc.strerror)
            finally:
                self.started = True
            await self._sleep()

    async def _check_path(self) -> None:
        """Notice rotation and truncation by comparing the path's identity and size."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed away, not yet recreated: keep reading what we have
        except PermissionError:
            return
        cur = self.current
        if cur is None:
            await self._open_first()
            return
        if not cur.same_file(st):
            try:
                new = _OpenFile.open(self.path, at_end=False)
            except (FileNotFoundError, PermissionError):
                return  # raced with another rename; the next check sees it
            log.info("%s was rotated; draining the old file, reading the new one", self.path)
            self.metrics.file_rotations.inc()
            cur.quiet_since = asyncio.get_running_loop().time()
            self.draining.append(cur)
            self.current = new
        elif st.st_size < cur.offset:
            log.info("%s was truncated (%d < %d); reading from the start", self.path,
                     st.st_size, cur.offset)
            self.metrics.file_truncations.inc()
            cur.offset, cur.partial, cur.skipping = 0, b"", False

    async def _read_all(self) -> None:
        now = asyncio.get_running_loop().time()
        for old in list(self.draining):
            if await self._read(old):
                old.quiet_since = now
            elif now - old.quiet_since >= self.rotate_wait or self._stopping:
                await self._finish(old)
        if self.current is not None:
            await self._read(self.current)

    async def _finish(self, f: _OpenFile) -> None:
        """Close a rotated file for good; its unterminated last line is now complete."""
        if f.partial and not f.skipping:
            await self._emit([f.partial])
        self.draining.remove(f)
        f.close()

    async def _read(self, f: _OpenFile) -> bool:
        """Read ``f`` to its current end; True if anything was read."""
        got = False
        while chunk := os.pread(f.fd, READ_SIZE, f.offset):
            got = True
            f.offset += len(chunk)
            lines = self._split(f, chunk)
            if lines:
                await self._emit(lines)
        return got

    def _split(self, f: _OpenFile, chunk: bytes) -> Batch:
        lines = (f.partial + chunk).split(b"\n")
        f.partial = lines.pop()
        if f.skipping:  # the first piece ends an over-long line we are discarding
            if not lines:
                f.partial = b""
                return []
            lines.pop(0)
            f.skipping = False
        if len(f.partial) > self.max_line_bytes:
            self.metrics.lines_too_long.inc()
            f.partial, f.skipping = b"", True
        limit = self.max_line_bytes
        if lines and max(map(len, lines)) > limit:
            kept = [line for line in lines if len(line) <= limit]
            self.metrics.lines_too_long.inc(len(lines) - len(kept))
            lines = kept
        return lines

    async def _emit(self, lines: Batch) -> None:
        self.metrics.lines.inc(len(lines))
        await self.out.put(lines)
