"""When a request is tried again, how long to wait first, what a failed attempt is called, and
how a queue's workers stop: shared by the refreshes to the peers
(:mod:`logwarden.deliver.dispatcher`) and the purges of the caches in front
(:mod:`logwarden.deliver.downstream`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from logwarden.deliver.peerhttp import ConnectError, PeerError, TLSError

RETRY_STATUSES = frozenset({502, 503, 504})
"""Answers a node's NGINX gives while its upstream is away: worth another attempt."""
TRANSPORT_FAILURES = frozenset({"connect_error", "timeout"})
"""Outcomes of an attempt that got no answer at all: retried, and counted by the breaker."""


def backoff(base: float, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): ``base`` doubled for each
    retry after the first, ±50 % jitter so that many senders do not come back in step."""
    return base * 2.0 ** (attempt - 1) * random.uniform(0.5, 1.5)


def failure(exc: TimeoutError | PeerError) -> str:
    """The outcome of an attempt that raised ``exc`` (:class:`~logwarden.deliver.peerhttp.
    PeerError`'s tree, or the caller's timeout)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, TLSError):
        return "tls_error"
    return "connect_error" if isinstance(exc, ConnectError) else "http_error"


async def cut_off(queue: asyncio.Queue[Any], workers: Sequence[asyncio.Task[None]],
                  busy: Callable[[], int], deadline: float) -> int:
    """Let ``workers`` finish ``queue`` until the loop-time ``deadline``, then cancel them;
    returns how many items were cut off (``busy()``: those the workers held at the deadline)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await queue.join()
    cut = busy() + queue.qsize()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return cut
