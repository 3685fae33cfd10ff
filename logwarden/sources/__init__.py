"""Sources read access-log lines and put them, in batches of bytes, on the parser queue."""

from __future__ import annotations

import asyncio
from typing import Protocol

from logwarden.positions import Checkpoint


class Batch(list[bytes]):
    """Complete lines without their newline, in the order they were written.

    A file source sets ``checkpoint`` (where the batch ends in its file); the processor commits
    it to the positions once the lines are handled. Other sources may put plain lists.
    """

    checkpoint: Checkpoint | None = None


LineQueue = asyncio.Queue[list[bytes] | None]
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
