"""Checkpoints: where in each tailed file the last fully processed line ends.

A file is known by its device and inode, not its name: after a rotation the same name is
another file. Inodes are reused as soon as a file is deleted, so an entry also keeps a
fingerprint of the file's first bytes; a file whose head differs is a new file, not ours.

The offsets recorded here only move when the processor has handled a batch
(not when the tailer read it), so a crash repeats at most the lines read since the last save
and never skips one. Writes are atomic: temp file, fsync, rename.

Bus mode keeps one more, separate mark in the same file (``"bus"``): per stream, the ID of
the last entry this node handled and how many entries the stream had added up to it
(:class:`BusMark`), so a restarted agent reads on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
HEAD_BYTES = 256
"""How much of a file's start its fingerprint covers."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The end of a batch in one file; ``final`` when the file is done for good (rotated away)."""

    path: str
    dev: int
    ino: int
    offset: int
    head: str = ""
    final: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    dev: int
    ino: int
    offset: int
    head: str = ""

    def is_file(self, fd: int) -> bool:
        """Whether the open file ``fd`` (same inode) is still the file this entry was saved for."""
        return same_head(fd, self.head)


@dataclass(frozen=True, slots=True)
class BusMark:
    """The last bus entry handled: its stream ID, and the stream's ``entries-added`` then."""

    id: str
    offset: int


def fingerprint(fd: int, upto: int) -> str:
    """``"n:hash"`` of the first ``min(upto, HEAD_BYTES)`` bytes; "" for an empty head."""
    data = os.pread(fd, min(upto, HEAD_BYTES), 0)
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=8).hexdigest()}" if data else ""


def same_head(fd: int, head: str) -> bool:
    """Whether ``fd`` still starts with the bytes ``head`` was taken from ("" matches all)."""
    return not head or fingerprint(fd, int(head.partition(":")[0])) == head


class Positions:
    """The positions file, loaded once at start, committed to as batches are processed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[tuple[int, int], Entry] = {}
        self._bus: dict[str, BusMark] = {}
        self._dirty = False
        if path is not None:
            doc = _read(path)
            self._entries = {(e.dev, e.ino): e for e in _load(path, doc)}
            self._bus = _load_bus(path, doc)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def for_path(self, path: str) -> list[Entry]:
        """What was saved for files that were at ``path`` (the current one and rotated ones)."""
        return [e for e in self._entries.values() if e.path == path]

    def commit(self, cp: Checkpoint) -> None:
        key = (cp.dev, cp.ino)
        if cp.final:
            self._dirty |= self._entries.pop(key, None) is not None
            return
        old = self._entries.get(key)
        if old is None or (old.offset, old.path, old.head) != (cp.offset, cp.path, cp.head):
            self._entries[key] = Entry(cp.path, cp.dev, cp.ino, cp.offset, cp.head)
            self._dirty = True

    def bus(self, stream: str) -> BusMark | None:
        return self._bus.get(stream)

    def commit_bus(self, stream: str, mark: BusMark) -> None:
        self._bus[stream] = mark
        self._dirty = True

    def save(self) -> None:
        """Write the file if anything changed; errors are logged, tailing goes on."""
        if self.path is None or not self._dirty:
            return
        doc: dict[str, object] = {"version": VERSION,
                                  "files": [asdict(e) for e in self._entries.values()]}
        if self._bus:
            doc["bus"] = {stream: asdict(mark) for stream, mark in self._bus.items()}
        try:
            _atomic_write(self.path, json.dumps(doc, indent=1).encode() + b"\n")
            self._dirty = False
        except OSError as exc:
            log.error("cannot save positions to %s: %s", self.path, exc)

    async def run(self, interval: float) -> None:
        """Save every ``interval`` seconds until cancelled; the daemon saves once more at exit."""
        while True:
            await asyncio.sleep(interval)
            self.save()


def _read(path: Path) -> dict[str, Any]:
    """The positions document, or {} when there is none (or none to use)."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Starting from the end is safe; refusing to start over a damaged file is not helpful.
        log.error("ignoring unreadable positions file %s: %s", path, exc)
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        log.error("ignoring positions file %s: unknown version", path)
        return {}
    return doc


def _load(path: Path, doc: dict[str, Any]) -> list[Entry]:
    entries = []
    for item in doc.get("files", []):
        try:
            entries.append(Entry(str(item["path"]), int(item["dev"]), int(item["ino"]),
                                 int(item["offset"]), str(item.get("head", ""))))
        except (KeyError, TypeError, ValueError):
            log.error("ignoring a malformed entry in %s: %r", path, item)
    return entries


def _load_bus(path: Path, doc: dict[str, Any]) -> dict[str, BusMark]:
    found, marks = doc.get("bus", {}), {}
    if not isinstance(found, dict):
        log.error("ignoring the bus marks in %s: not an object", path)
        return {}
    for stream, item in found.items():
        try:
            marks[str(stream)] = BusMark(str(item["id"]), int(item["offset"]))
        except (KeyError, TypeError, ValueError):
            log.error("ignoring a malformed bus mark in %s: %r", path, item)
    return marks


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def default_path(name: str) -> Path:
    """The file ``name`` in ``$STATE_DIRECTORY`` (systemd), else in /var/lib/logwarden as root,
    else ``logwarden-NAME`` in the working directory."""
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0]) / name
    if os.geteuid() == 0:
        return Path("/var/lib/logwarden") / name
    return Path(f"logwarden-{name}")


def lock(path: Path) -> int:
    """Hold ``PATH.lock`` (the positions file itself is replaced on every save) for as long as
    the returned descriptor is open, with this process's pid in it. Raises
    :class:`PositionsLocked` naming the holder's pid when another process holds it, OSError
    when it cannot be created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise PositionsLocked(holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class PositionsLocked(Exception):
    """Another process holds the positions file; the argument is its pid, as it wrote it."""
