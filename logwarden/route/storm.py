"""Storm control: which fan-outs may go out at all, before any peer is asked.

A fan-out multiplies one request into N-1 origin fetches, and anybody on the internet can
request endless unique URLs. So, after the dedup window, every fan-out passes three bounds
here, cheapest first: the target's length, the operator's path filters, and a global token
bucket. The router (:mod:`logwarden.route.router`) applies them and counts what is turned
away by reason; nothing refused is queued.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from logwarden.model import STORED_COPY, Refresh


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full. ``rate`` 0: no limit."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self, keep: float = 0.0) -> bool:
        """Take a token, if one is left beyond the ``keep`` others must find."""
        if not self.rate:
            return True
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1 + keep:
            return False
        self._tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until a token is back, as of the last :meth:`take` (0: one is there)."""
        return max(0.0, (1 - self._tokens) / self.rate) if self.rate else 0.0


def _any_of(patterns: Sequence[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


RESERVE_SHARE = 0.25
"""The share of the bucket (whole tokens) that only changes of stored copies may take."""


class StormControl:
    """Admits a fan-out or names why not: ``too_long``, ``filtered`` or ``rate``.

    ``only``/``skip`` are regular expressions searched in the raw request target (path and
    query, as logged); a target must match one ``only`` (when given) and no ``skip``.

    Real changes first: a fan-out whose line shows a stored copy replaced (EXPIRED, STALE,
    UPDATING, REVALIDATED: a page clients are being served from cache) may take any token; one
    of a first copy (MISS: a new URL, or one NGINX does not store) only while more than
    :data:`RESERVE_SHARE` of the burst is left. A flood of new or uncacheable URLs then drains
    the bucket down to that reserve and no further, and the next change still goes out at once.
    """

    def __init__(self, *, rate: float, burst: int, max_target_bytes: int,
                 only: Sequence[str] = (), skip: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_target_bytes = max_target_bytes
        self._only = _any_of(only)
        self._skip = _any_of(skip)
        self.bucket = TokenBucket(rate, burst, clock)
        self.reserve = float(int(burst * RESERVE_SHARE))

    def refusal(self, refresh: Refresh) -> str | None:
        if len(refresh.target) > self.max_target_bytes:
            return "too_long"
        if self._only or self._skip:
            target = refresh.target.decode("latin-1")
            if self._only and not self._only.search(target):
                return "filtered"
            if self._skip and self._skip.search(target):
                return "filtered"
        keep = 0.0 if refresh.cache_status in STORED_COPY else self.reserve
        return None if self.bucket.take(keep) else "rate"
