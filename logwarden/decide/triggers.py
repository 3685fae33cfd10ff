"""Decide which records are worth propagating to the peers: pure rules plus a dedup window.

The rules follow what NGINX actually logs (see README "Trigger rules"): a triggering
``$upstream_cache_status`` on a GET/HEAD that succeeded, not served while the origin was
failing, and not caused by logwarden (that would make nodes ping-pong): neither its own
refresh requests, nor the first MISS after one of its purges emptied the entry.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from logwarden.model import Record, Refresh, final_upstream_status, is_5xx

_REPLAYABLE_METHODS = frozenset({"GET", "HEAD"})
FAILED_UPDATE_SECONDS = 5.0
"""How long a failed background fetch's line marks its client's line (written right after)."""
PURGE_MEMORY_SECONDS = 3600.0
"""How long a purge by logwarden marks its URL's next MISS as the refill, not a change."""


class Triggers:
    """Turns records into refreshes. Owns the dedup memory; everything else is a pure rule."""

    def __init__(
        self,
        statuses: Iterable[str],
        *,
        dedup_window: float,
        default_host: str | None = None,
        max_age: float = 0.0,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.statuses = frozenset(statuses)
        self.default_host = default_host
        self.max_age = max_age
        self.wall_clock = wall_clock
        self._dedup = _Window(dedup_window, max_keys, clock)
        self._purged = _Window(PURGE_MEMORY_SECONDS, max_keys, clock)
        self._failed = _Window(FAILED_UPDATE_SECONDS, max_keys, clock)

    def skip_reason(self, record: Record) -> str | None:
        """Why this record must not trigger, or ``None`` when it should (pure rules only)."""
        if record.cache_status not in self.statuses:
            return "cache_status"
        if record.method not in _REPLAYABLE_METHODS:
            return "method"
        if record.status is not None and record.status >= 400:
            return "status"
        if _origin_failed(record.upstream_status):
            # EXPIRED/STALE with a 5xx upstream: nothing new was stored, nothing to spread.
            return "origin_error"
        if record.own:
            return "own_refresh"
        if not record.target.startswith(b"/"):
            return "bad_target"
        if not (record.host or self.default_host):
            return "no_host"
        if self.max_age and record.time and self.wall_clock() - record.time > self.max_age:
            return "too_old"  # a backlog read after downtime: those changes are long served
        return None

    def after_purges(self, record: Record, reason: str | None) -> str | None:
        """``reason`` from :meth:`skip_reason`, ``refill`` or ``origin_error``; remembers
        logwarden's purges and failed background fetches.

        The first MISS of a URL that another node's agent purged here refills the entry: it is
        not news. Fanning it out would purge the other nodes, whose next MISS would purge this
        one again, for ever. Call it for every record: the purges are seen on their own lines.
        """
        if record.own:
            self._note_own(record)
        elif reason is None and record.cache_status == "MISS" \
                and self._purged.discard(self._key(record)):
            return "refill"
        elif record.cache_status == "STALE":
            return self._after_failed_update(record, reason)
        return reason

    def _after_failed_update(self, record: Record, reason: str | None) -> str | None:
        """With ``log_subrequest on``, a failed background update logs its own line (STALE,
        the origin's 5xx) just before its client's, which reads like a good update (STALE, no
        upstream status). That one must not fan out either: every peer's refresh would only
        meet the failing origin (measured on NGINX 1.22)."""
        key = self._key(record)
        if reason == "origin_error":
            self._failed.admit(key)
        elif reason is None and record.upstream_status is None and self._failed.discard(key):
            return "origin_error"
        return reason

    def _note_own(self, record: Record) -> None:
        """A purge that emptied an entry marks it; logwarden's own refresh refilled it."""
        key = self._key(record)
        if record.method in _REPLAYABLE_METHODS:
            self._purged.discard(key)
        elif record.status in (200, 204):
            self._purged.admit(key)

    def _key(self, record: Record) -> tuple[str, str | None, bytes]:
        return record.scheme or "http", record.host or self.default_host, record.target

    def refresh_for(self, record: Record) -> Refresh:
        """The refresh a triggering record asks for (call after :meth:`skip_reason`)."""
        host = record.host or self.default_host
        assert host is not None
        return Refresh(record.scheme or "http", host, record.target, record.cache_status,
                       record.time)

    def first_in_window(self, refresh: Refresh) -> bool:
        """True unless the same URL already fanned out within the dedup window."""
        return self._dedup.admit(refresh.key)

    @property
    def remembered(self) -> int:
        """URLs the dedup window holds now (at most ``max_keys``)."""
        return len(self._dedup)


def _origin_failed(upstream_status: str | None) -> bool:
    """True when the last upstream answer was a 5xx (a ``"502, 200"`` list ends with the final)."""
    if not upstream_status:
        return False
    return is_5xx(final_upstream_status(upstream_status))


class _Window:
    """Keys seen within the last ``window`` seconds, bounded to ``max_keys`` (oldest evicted).

    Insertion order is time order, so expired keys are all at the front; ``_head``, the time of
    the front key, spares looking there on the calls where nothing expires. An OrderedDict, not
    a dict: evicting its oldest key is O(1), where a dict scans the deleted slots at its front."""

    def __init__(self, window: float, max_keys: int, clock: Callable[[], float]) -> None:
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[object, float] = OrderedDict()
        self._head = math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: object) -> bool:
        now = self.clock()
        if now - self._head >= self.window:
            self._expire(now)
        seen = self._seen
        if key in seen:
            return False
        seen[key] = now
        if len(seen) > self.max_keys:
            seen.popitem(last=False)
            self._head = next(iter(seen.values()), math.inf)
        elif len(seen) == 1:
            self._head = now
        return True

    def discard(self, key: object) -> bool:
        """Forget ``key``; True if it was seen within the window."""
        now = self.clock()
        if now - self._head >= self.window:
            self._expire(now)
        seen = self._seen
        if seen.pop(key, None) is None:
            return False
        self._head = next(iter(seen.values()), math.inf)
        return True

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, t = next(iter(seen.items()))
            if now - t < self.window:
                self._head = t
                return
            del seen[key]
        self._head = math.inf
