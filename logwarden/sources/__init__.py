"""Sources read access-log lines and put them, in batches, on the parser queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Protocol

from logwarden.sources.positions import Checkpoint


class Batch:
    """Complete lines, in the order they were written, as one bytes object: ``data`` holds each
    line followed by its ``\\n``. The one thing on the lines queue, from every source.

    The processor tests all the lines in the data at once (Prefilter.sift_block) and makes
    objects only of the few it parses. A file source's batch is what one read gave; its
    ``checkpoint`` (where it ends in its file) is committed to the positions once the lines are
    handled. A syslog batch is one wake-up's datagrams.
    """

    __slots__ = ("checkpoint", "count", "data")

    def __init__(self, data: bytes, checkpoint: Checkpoint | None = None,
                 count: int | None = None) -> None:
        self.data = data
        self.count = data.count(b"\n") if count is None else count
        """Lines in the batch."""
        self.checkpoint = checkpoint

    @classmethod
    def of(cls, lines: Iterable[bytes]) -> Batch:
        """A batch of ``lines`` given without their newline (none may hold one)."""
        lines = list(lines)
        return cls(b"".join(line + b"\n" for line in lines), count=len(lines))

    def lines(self) -> list[bytes]:
        lines = self.data.split(b"\n")
        lines.pop()  # after the last newline
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.lines())

    def __len__(self) -> int:
        return self.count


LineQueue = asyncio.Queue[Batch | None]
"""Bounded queue from the sources to the parser; ``None`` (put by the daemon) ends it."""


class SourceError(Exception):
    """A source cannot start; the message names the problem and the fix, in one line."""


class Source(Protocol):
    """What the daemon needs of a source: ``bind()``, then ``run()`` until ``stop()``. It never
    puts ``None``."""

    name: str
    """For logs, /healthz and /status, e.g. the file path or the listen URL."""
    last_line_at: float
    """When it last put a line on the queue (``time.time()``); 0.0 until then."""

    @property
    def state(self) -> str:
        """``starting`` until lines can be received, then e.g. ``tailing``/``waiting``."""
        ...

    def status(self) -> dict[str, object]:
        """What ``/status`` shows of it besides its name, state and last line: ``kind``, and
        e.g. the files it reads with their offsets and lag, or where it listens."""
        ...

    def bind(self) -> None:
        """Take what the source cannot run without, e.g. its socket, before the daemon starts any
        task: a conflict is then a start-up error, not a source that dies later. Raises
        :class:`SourceError`."""
        ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...
