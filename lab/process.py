"""Stopping a child process the one way the lab, the benchmarks and the tests need.

Ask first (SIGTERM, or SIGQUIT for NGINX's graceful stop), wait, then SIGKILL and reap: a child
that ignores the request still ends, none is left a zombie, and the owner learns how it ended.
A child started with ``start_new_session=True`` leads its own process group; with ``group`` the
SIGKILL goes to the whole group, so that what it forked (NGINX's workers) ends with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

ORPHAN_GRACE = 0.2
"""Seconds a group's members get to exit by themselves once their leader has gone (NGINX
workers after a master killed hard) before the SIGKILL."""


def stop_process(proc: subprocess.Popen[Any], sig: signal.Signals = signal.SIGTERM,
                 timeout: float = 10.0, *, group: bool = False) -> int:
    """Send ``sig`` to ``proc`` unless it has exited, wait up to ``timeout`` s, then SIGKILL
    and reap; its exit code (``-9``: it had to be killed, ``-sig``: the signal ended it).

    ``group``: ``proc`` leads its own process group. ``sig`` still goes to it alone (NGINX's
    master stops its workers itself); the SIGKILL goes to the whole group, and whatever is
    left of the group once ``proc`` has exited is killed too: nothing of it outlives the call.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if group:
                kill_group(proc.pid)
            else:
                proc.kill()
            proc.wait()
    if group and group_alive(proc.pid):
        time.sleep(ORPHAN_GRACE)
        kill_group(proc.pid)
    return proc.returncode


@contextlib.contextmanager
def running(args: Sequence[str], sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0,
            **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` started in a session (so a process group) of its own, with ``popen`` passed to
    :class:`subprocess.Popen`; stopped with :func:`stop_process` (``group``) however the block
    ends, so an exception in it leaves nothing running."""
    proc = subprocess.Popen(list(args), start_new_session=True, **popen)
    try:
        yield proc
    finally:
        stop_process(proc, sig, timeout, group=True)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid``; one already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` now (from /proc: NGINX's workers of a master)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if fields and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still exists (one we may not signal counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Running:
    """A lab service used as ``with Service(...) as service:``: ``start()`` returns it started,
    the end of the block calls ``stop()``, however the block ends."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
