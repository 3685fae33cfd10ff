"""Sources read access-log lines and put them, in batches of bytes, on the parser queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Protocol

from logwarden.positions import Checkpoint


class Batch(list[bytes]):
    """Complete lines without their newline, in the order they were written.

    The syslog source puts these; a file source puts a :class:`Block`, whose ``checkpoint``
    (where it ends in its file) the processor commits to the positions once the lines are
    handled. Other sources may put plain lists.
    """

    checkpoint: Checkpoint | None = None


class Block:
    """Complete lines as a file source read them: ``data`` holds each line followed by its
    ``\\n``. The processor tests them all in the block (LogFormat.block_sifter) and makes
    objects only of the few it parses; iterating gives the lines, as a Batch does."""

    __slots__ = ("checkpoint", "count", "data")

    def __init__(self, data: bytes, checkpoint: Checkpoint | None = None) -> None:
        self.data = data
        self.count = data.count(b"\n")
        """Lines in the block."""
        self.checkpoint = checkpoint
        """Where the block ends in its file, as for a Batch."""

    def lines(self) -> list[bytes]:
        lines = self.data.split(b"\n")
        lines.pop()  # after the last newline
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.lines())

    def __len__(self) -> int:
        return self.count


LineQueue = asyncio.Queue[list[bytes] | Block | None]
"""Bounded queue from the sources to the parser; ``None`` (put by the daemon) ends it."""


class Source(Protocol):
    """What the daemon needs of a source. ``run()`` until ``stop()``; it never puts ``None``."""

    name: str
    """For logs and /healthz, e.g. the file path or the listen URL."""

    @property
    def state(self) -> str:
        """``starting`` until lines can be received, then e.g. ``tailing``/``waiting``."""
        ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...
