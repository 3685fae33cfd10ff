"""Tell the file tailer when to look at its files again; it reads what changed on each wake-up.

    watchdog thread (inotify) ─call_soon_threadsafe─▶ WatchdogWaker ─wait()─▶ FileSource pass
                              poll_interval timeout ─┘

Events are hints: one wakes the tailer early, and the ``poll_interval`` timeout covers lost
events, a directory that cannot be watched and files that do not exist yet. The tailer stat()s
its paths itself to learn what changed, so a burst of events costs one wake-up, not one each.

:class:`Waker` is the seam between watching and reading: a test gives the FileSource a waker
it fires itself, so that the tailer's passes happen when the test says, not on real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)


class Waker(Protocol):
    """What the FileSource waits on between its passes."""

    def start(self) -> None:
        """Begin watching; ``FileSource.run()`` calls it in its event loop, before any pass."""
        ...

    async def wait(self) -> None:
        """Return when another pass is due; at once if ``wake()`` was called since the last."""
        ...

    def wake(self) -> None:
        """Make the pending (or the next) ``wait()`` return: ``FileSource.stop()`` uses it."""
        ...

    async def close(self) -> None:
        """Stop watching; ``run()`` calls it on its way out, after the last pass."""
        ...


class WatchdogWaker:
    """Wakes on any watchdog event in the directory of ``path``, or after ``poll_interval`` s."""

    def __init__(self, path: str, poll_interval: float) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._woken = asyncio.Event()
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        observer = Observer()
        handler = _Handler(asyncio.get_running_loop(), self.wake)
        observer.schedule(handler, os.path.dirname(os.path.abspath(self.path)), recursive=False)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:  # e.g. the directory does not exist yet: polling covers it
            log.warning("cannot watch the directory of %s (%s); polling every %ss", self.path,
                        exc, self.poll_interval)
        self._observer = observer

    async def wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_interval):
                await self._woken.wait()
        self._woken.clear()

    def wake(self) -> None:
        self._woken.set()

    async def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None and observer.is_alive():
            observer.stop()
            await asyncio.to_thread(observer.join)


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread; wakes the tailer's loop without flooding it with calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.loop = loop
        self.wake = wake
        self.pending = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not self.pending.is_set():
            self.pending.set()
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.pending.clear()
        self.wake()
