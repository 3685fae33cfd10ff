"""Sources read access-log lines and put them, in batches of bytes, on the parser queue."""

from __future__ import annotations

import asyncio

Batch = list[bytes]
"""Complete lines without their newline, in the order they were written."""
LineQueue = asyncio.Queue[Batch | None]
"""Bounded queue from the sources to the parser; ``None`` (put by the daemon) ends it."""
