"""When a request is tried again, how long to wait first, and what a failed attempt is called:
shared by the refreshes to the peers (:mod:`logwarden.deliver.dispatcher`) and the purges of the
caches in front (:mod:`logwarden.deliver.downstream`)."""

from __future__ import annotations

import random

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
