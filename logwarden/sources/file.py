"""Tail access logs by name (or glob) and hand complete lines, in batches, to the parser queue.

Rotation policy (NGINX facts §8): after ``mv access.log access.log.1`` NGINX keeps writing into
the renamed file until it is told to reopen, so when the path starts naming another file the
old one is kept open and read ("draining") until it has been quiet for ``rotate_wait`` seconds;
the new file is read from offset 0 meanwhile. Deleting the path does not end an open file
either: it is drained the same way. A file that shrinks below the read offset was truncated
(copytruncate) and is read again from 0. Only complete lines are emitted; the partial tail of a
drained file is emitted when it is closed for good.

Where to start: at the saved position when the positions file knows the file (a file rotated
while logwarden was down is found by inode and finished first); at the start for a file that
appeared after logwarden started or rotated in while it was down; otherwise at the end, since
replaying history would fire a storm of refreshes.

When to look again is the waker's business (:mod:`logwarden.sources.watch`: watchdog events
and a ``poll_interval`` timeout); each pass stat()s the paths to see what changed. The file is
the buffer: reading waits for the bounded queue rather than dropping lines.
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from logwarden.ops.metrics import Metrics
from logwarden.sources import Batch, LineQueue
from logwarden.sources.framing import LineBuffer
from logwarden.sources.positions import (
    HEAD_BYTES,
    Checkpoint,
    Entry,
    Positions,
    fingerprint,
    same_head,
)
from logwarden.sources.watch import Waker, WatchdogWaker

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
GLOB_CHARS = frozenset("*?[")


@dataclass
class _OpenFile:
    """A file being read: identity, offset and the bytes of a line not yet complete."""

    path: str
    fd: int
    dev: int
    ino: int
    offset: int
    lines: LineBuffer = field(default_factory=LineBuffer)
    quiet_since: float = 0.0
    head: str = ""
    """Fingerprint of the file's start (positions), final once it covers ``HEAD_BYTES``."""
    head_final: bool = False
    cut: bool = False
    """Truncated since the last batch: the next batch moves the saved position back."""

    @classmethod
    def open(cls, path: str) -> _OpenFile:
        """Open ``path``, positioned at its end."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        return cls(path, fd, st.st_dev, st.st_ino, st.st_size)

    @property
    def done_offset(self) -> int:
        """Offset just after the last complete line read."""
        return self.offset - len(self.lines.partial)

    def same_file(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def checkpoint(self, final: bool = False) -> Checkpoint:
        done = self.done_offset
        if not self.head_final and not final:
            self.head = fingerprint(self.fd, done)
            self.head_final = done >= HEAD_BYTES
        return Checkpoint(self.path, self.dev, self.ino, done, self.head, final)

    def restart(self) -> None:
        """Read again from the start: the file was cut."""
        self.offset, self.lines = 0, LineBuffer()
        self.head, self.head_final, self.cut = "", False, True

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class LogPattern:
    """One path, or a glob in its file name (``/var/log/nginx/*.access.log``): the paths a pass
    looks at, and whether a path in the positions file is one of ours."""

    text: str

    @property
    def is_glob(self) -> bool:
        return bool(GLOB_CHARS & set(os.path.basename(self.text)))

    def paths(self) -> list[str]:
        """The paths matching now; a plain path whether it exists or not (it is waited for)."""
        return glob.glob(self.text) if self.is_glob else [self.text]

    def matches(self, path: str) -> bool:
        return path == self.text or (self.is_glob and fnmatch.fnmatchcase(path, self.text))


class FileSource:
    """Follows one path or file-name glob: ``run()`` until ``stop()``, then reads what is there.

    Between passes it waits on ``waker``; the default one wakes on watchdog events in the
    directory and every ``poll_interval`` seconds (``poll_interval`` is for it alone).
    """

    def __init__(
        self,
        pattern: str | Path,
        out: LineQueue,
        metrics: Metrics,
        *,
        positions: Positions | None = None,
        from_start: bool = False,
        poll_interval: float = 1.0,
        rotate_wait: float = 5.0,
        max_line_bytes: int = 64 * 1024,
        waker: Waker | None = None,
    ) -> None:
        self.name = str(pattern)
        self.pattern = LogPattern(self.name)
        self.out = out
        self.metrics = metrics
        self.positions = positions or Positions(None)
        self._saved_paths = {e.path for e in self.positions.entries()}
        self.from_start = from_start
        self.waker = WatchdogWaker(self.name, poll_interval) if waker is None else waker
        self.rotate_wait = rotate_wait
        self.max_line_bytes = max_line_bytes
        self.current: dict[str, _OpenFile] = {}
        self.draining: list[_OpenFile] = []
        self._failing: dict[str, str] = {}
        self._stopping = False
        self._first_scan = True
        self.last_line_at = 0.0

    @property
    def state(self) -> str:
        if self._first_scan:
            return "starting"
        return "tailing" if self.current else "waiting"

    def status(self) -> dict[str, object]:
        """Each open file: its read offset (complete lines), the bytes after it, and whether
        it is a rotated file being drained."""
        return {"kind": "file", "files": [
            {"path": f.path, "offset": f.done_offset,
             "lag_bytes": max(0, os.fstat(f.fd).st_size - f.done_offset),
             "rotated": f in self.draining}
            for f in [*self.current.values(), *self.draining]]}

    def bind(self) -> None:
        """Nothing to take before the start: a missing or unreadable file is waited for, and
        reported, by ``run()`` (the configuration has checked what can be checked)."""

    def stop(self) -> None:
        self._stopping = True
        self.waker.wake()

    async def run(self) -> None:
        self.waker.start()
        try:
            while not self._stopping:
                await self.poll()
                await self.waker.wait()
            await self.poll()  # what was written before the stop is not lost
        finally:
            await self.waker.close()
            self.close()

    def close(self) -> None:
        """Close every file; unread lines stay for the next start (positions)."""
        for f in [*self.draining, *self.current.values()]:
            f.close()
        self.metrics.open_files.dec(len(self.draining) + len(self.current))
        self.draining, self.current = [], {}

    async def poll(self) -> None:
        """One pass: notice new, rotated and truncated files, then read everything available."""
        if self._first_scan:
            self._resume_saved()
        # And the open files' paths, matching or not: that is how a rename or delete is seen.
        for path in sorted({*self.pattern.paths(), *self.current}):
            self._check(path)
        if self._first_scan:
            # Saved at once: after a crash within the first save interval, a restart must
            # resume where this start began, not at a later end of the file.
            self.positions.save()
        self._first_scan = False
        await self._read_all()

    # -- noticing changes at a path ------------------------------------------------------------

    def _check(self, path: str) -> None:
        """Compare what is at ``path`` with the file we read from it."""
        try:
            st = os.stat(path)
        except OSError as exc:
            self._path_gone(path, exc)
            return
        cur = self.current.get(path)
        if not stat.S_ISREG(st.st_mode):
            # Opening a FIFO would wait for a writer and stall the loop; it has no offsets.
            if cur is not None:
                self._retire(cur, rotated=True)
            self._report(path, "not_a_file", f"{path} is not a regular file; not tailed (a "
                         "FIFO is followed, as a stream, only when --access-log names it at "
                         "start)")
            return
        if cur is None:
            if not self._is_open(st):
                self._open(path)
        elif not cur.same_file(st):
            log.info("%s was rotated; draining the old file, reading the new one", path)
            self._retire(cur, rotated=True)
            self._open(path, fresh=True)
        else:
            self._notice_truncation(cur, st.st_size)
            self._notice_new_head(cur)
        self.metrics.file_lag_bytes.labels(path).set(max(0, st.st_size - self._offset(path)))

    def _notice_truncation(self, f: _OpenFile, size: int) -> None:
        """A file shorter than what we read was cut (copytruncate): read it again from 0."""
        if size < f.offset:
            log.info("%s was truncated (%d < %d); reading from the start", f.path, size,
                     f.offset)
            self.metrics.file_truncations.inc()
            f.restart()

    def _notice_new_head(self, f: _OpenFile) -> None:
        """A file cut and written again past our offset before we looked: its start differs."""
        if not same_head(f.fd, f.head):
            log.info("%s was truncated and rewritten; reading from the start", f.path)
            self.metrics.file_truncations.inc()
            f.restart()

    def _offset(self, path: str) -> int:
        cur = self.current.get(path)
        return cur.offset if cur else 0

    def _path_gone(self, path: str, exc: OSError) -> None:
        cur = self.current.pop(path, None)
        if cur is not None:  # deleted, or renamed without a new file yet: drain what we hold
            log.info("%s is gone (%s); draining the file we have open", path, exc.strerror)
            self._retire(cur, rotated=True)
        elif self._first_scan and not self.pattern.is_glob:
            self._report(path, "missing", f"{path} does not exist yet; waiting for it")

    def _retire(self, f: _OpenFile, rotated: bool = False) -> None:
        if rotated:
            self.metrics.file_rotations.inc()
        f.quiet_since = asyncio.get_running_loop().time()
        self.draining.append(f)
        self.current.pop(f.path, None)

    def _start_offset(self, f: _OpenFile) -> int:
        """Where to start reading the file just opened at its path; see the module docstring."""
        saved = self.positions.for_path(f.path)
        for entry in saved:
            if (entry.dev, entry.ino) == (f.dev, f.ino):
                if entry.offset > f.offset or not entry.is_file(f.fd):
                    log.info("%s was cut or replaced while we were away; reading from the start",
                             f.path)
                    self.metrics.file_truncations.inc()
                    return 0
                return entry.offset
        if f.path in self._saved_paths or not self._first_scan or self.from_start:
            return 0  # a new file since we last read this path
        return f.offset

    def _resume_saved(self) -> None:
        """Finish files that were rotated away while logwarden was not running (found by inode)."""
        for entry in self.positions.entries():
            if not self.pattern.matches(entry.path) or self._at_path(entry):
                continue
            found = _find_rotated(entry)
            try:
                f = _OpenFile.open(found) if found else None
            except OSError:
                f = None
            if f is not None and not entry.is_file(f.fd):  # the inode was reused
                f.close()
                f = None
            if f is None:
                log.warning("a file rotated away from %s (inode %d) is gone; lines it had "
                            "after offset %d are lost", entry.path, entry.ino, entry.offset)
                self.positions.commit(Checkpoint(entry.path, entry.dev, entry.ino, 0,
                                                 final=True))
                continue
            log.info("finishing %s, rotated away from %s while logwarden was stopped", found,
                     entry.path)
            f.path, f.offset = entry.path, entry.offset  # its history is under that name
            self.metrics.open_files.inc()
            self._retire(f)

    @staticmethod
    def _at_path(entry: Entry) -> bool:
        """Whether the saved file is still at its path (the same inode with the same head)."""
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            return (st.st_dev, st.st_ino) == (entry.dev, entry.ino) and entry.is_file(fd)
        finally:
            os.close(fd)

    def _is_open(self, st: os.stat_result) -> bool:
        """A file we already read under another name (a glob matching rotated names)."""
        return any(f.same_file(st) for f in [*self.draining, *self.current.values()])

    def _open(self, path: str, fresh: bool = False) -> None:
        """Start reading the file at ``path``: from 0 when ``fresh``, else where it is due."""
        try:
            f = _OpenFile.open(path)
        except FileNotFoundError:
            return  # raced with a rename or delete; the next poll sees what is there
        except OSError as exc:
            self.metrics.file_errors.labels(type(exc).__name__).inc()
            self._report(path, "error", f"cannot open {path}: {exc.strerror}; retrying")
            return
        if self._failing.pop(path, None):
            log.info("%s can be read now", path)
        f.offset = 0 if fresh else self._start_offset(f)
        self.current[path] = f
        # Known from now on, so a rotation while logwarden is down finds it by inode.
        self.positions.commit(f.checkpoint())
        self.metrics.open_files.inc()
        log.info("tailing %s from offset %d", path, f.offset)

    def _report(self, path: str, kind: str, message: str) -> None:
        """Log a problem with a path once, not on every poll."""
        if self._failing.get(path) != kind:
            self._failing[path] = kind
            log.log(logging.WARNING if kind == "missing" else logging.ERROR, message)

    # -- reading --------------------------------------------------------------------------------

    async def _read_all(self) -> None:
        # Stopping does not finish draining files: their positions stay, and after a restart
        # they are found by inode and read on (NGINX may still be writing into them).
        now = asyncio.get_running_loop().time()
        for old in list(self.draining):
            self._notice_truncation(old, os.fstat(old.fd).st_size)
            if await self._read(old):
                old.quiet_since = now
            elif now - old.quiet_since >= self.rotate_wait and not self._stopping:
                await self._finish(old)
        for f in list(self.current.values()):
            await self._read(f)

    async def _finish(self, f: _OpenFile) -> None:
        """Close a rotated file for good; its unterminated last line is now complete."""
        await self._emit(f, f.lines.rest(), final=True)
        self.draining.remove(f)
        f.close()
        self.metrics.open_files.dec()

    async def _read(self, f: _OpenFile) -> bool:
        """Read ``f`` to its current end; True if anything was read."""
        got = False
        if f.cut:
            f.cut = False
            await self._emit(f, b"")
        while chunk := os.pread(f.fd, READ_SIZE, f.offset):
            got = True
            f.offset += len(chunk)
            block, too_long = f.lines.complete(chunk, self.max_line_bytes)
            if too_long:
                self.metrics.lines_too_long.inc(too_long)
            if block:
                await self._emit(f, block)
        return got

    async def _emit(self, f: _OpenFile, block: bytes, final: bool = False) -> None:
        batch = Batch(block, f.checkpoint(final))
        self.metrics.lines.inc(batch.count)
        if batch.count:
            self.last_line_at = time.time()
        await self.out.put(batch)


def _find_rotated(saved: Entry) -> str | None:
    """The file ``saved`` was rotated to, found by inode in its directory.

    Without a fingerprint (nothing was read from it) a reused inode cannot be told apart, so
    only names that rotation gives (``access.log.1``, ``access.log-20261123``) are accepted.
    """
    directory, name = os.path.split(os.path.abspath(saved.path))
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        if not saved.head and not entry.name.startswith(name):
            continue
        try:
            if entry.inode() == saved.ino and entry.stat(follow_symlinks=False).st_dev == saved.dev:
                return entry.path
        except OSError:
            continue
    return None
