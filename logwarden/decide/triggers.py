"""Decide which records are worth propagating to the peers: pure rules plus a little memory.

The rules follow what NGINX actually logs (see README "Trigger rules"): a triggering
``$upstream_cache_status`` on a GET/HEAD that succeeded, not served while the origin was
failing, and not caused by logwarden (that would make nodes ping-pong): neither its own
refresh requests, nor the first MISS after one of its purges emptied the entry. Repeats of
one URL are the router's to fold (its dedup window), after every rule here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from logwarden.decide.cacheable import FETCHED, CachePolicy, header_rule, uncacheable_rule
from logwarden.decide.versions import Versions
from logwarden.decide.window import Window
from logwarden.model import (
    STORED_COPY,
    Caching,
    Record,
    Refresh,
    final_upstream_status,
    is_5xx,
)

_REPLAYABLE_METHODS = frozenset({"GET", "HEAD"})
FAILED_UPDATE_SECONDS = 5.0
"""How long a failed background fetch's line marks its client's line (written right after)."""
PURGE_MEMORY_SECONDS = 3600.0
"""How long a purge by logwarden marks its URL's next MISS as the refill, not a change."""
UNCACHEABLE_SECONDS = 600.0
"""How long a MISS is remembered, and a URL MISSed twice is held uncacheable (each further MISS
extends it). A stored copy is answered HIT, EXPIRED, STALE or UPDATING until NGINX drops it, so
a second MISS means nothing was stored (no-store, private, max-age=0, Set-Cookie: measured), or
the copy was evicted: shorter than the example's ``inactive=60m``, so an idle copy that NGINX
dropped does not count; long enough that a URL asked every few minutes stays marked."""


class Triggers:
    """Turns records into refreshes. Owns the memory of logwarden's own purges and of failed
    background updates (bounded to ``max_keys`` each); everything else is a pure rule."""

    def __init__(
        self,
        statuses: Iterable[str],
        *,
        default_host: str | None = None,
        max_age: float = 0.0,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        policy: CachePolicy | None = None,
    ) -> None:
        """``policy``: what the NGINX config says about storing (``--nginx-conf``); None
        when it is not known."""
        self.statuses = frozenset(statuses)
        self.policy = policy
        self.default_host = default_host
        self.max_age = max_age
        self.wall_clock = wall_clock
        self._purged = Window(PURGE_MEMORY_SECONDS, max_keys, clock)
        self._failed = Window(FAILED_UPDATE_SECONDS, max_keys, clock)
        self._missed = Window(UNCACHEABLE_SECONDS, max_keys, clock)
        self._uncacheable = Window(UNCACHEABLE_SECONDS, max_keys, clock)
        self.versions = Versions(max_keys)

    def decide(self, record: Record, judged: tuple[str | None, bool] | None = None
               ) -> str | None:
        """Why ``record`` does not trigger, or None: the pure rules, then what the memory
        says (logwarden's purges, failed updates), then whether NGINX stored the answer (its
        caching headers, else its URL's MISSes). An uncacheable one gives its rule
        (:data:`logwarden.decide.cacheable.RULES`). ``judged``: what :meth:`at_once` said
        of the record's line, when asked."""
        caching = record.caching
        if caching is not None and record.cache_status in FETCHED and not record.own:
            rule = uncacheable_rule(caching, record.status, record.time or self.wall_clock(),
                                    self.policy, judged)
            if rule is not None:  # first: all it needs is on the line (see at_once)
                return rule
        return self.after_misses(record, self.after_purges(record, self.skip_reason(record)))

    def at_once(self, caching: Caching) -> tuple[str | None, bool]:
        """What the caching headers alone of a MISS or EXPIRED line (not logwarden's own)
        say (:func:`~logwarden.decide.cacheable.header_rule`): with a rule, :meth:`decide`
        would give it, so the processor skips the full parse of the line; else it hands
        this to :meth:`decide` with the record, which goes on from there."""
        return header_rule(caching, self.policy)

    def after_misses(self, record: Record, reason: str | None) -> str | None:
        """``repeated_miss`` for a MISS of a URL MISSed on this node within
        :data:`UNCACHEABLE_SECONDS` (no copy was stored: every peer's refresh would store none
        either, and only multiply the origin's load). An answer from a stored copy (EXPIRED,
        STALE, UPDATING, REVALIDATED) clears the URL: its next change propagates again."""
        status = record.cache_status
        if status == "MISS":
            if reason is not None:
                return reason
            key = self._key(record)
            if self._uncacheable and self._uncacheable.discard(key):
                self._uncacheable.admit(key)  # still not stored: the mark goes on
                return "repeated_miss"
            if self._missed and self._missed.discard(key):
                self._uncacheable.admit(key)
                return "repeated_miss"
            self._missed.admit(key)
        elif status in STORED_COPY and (self._missed or self._uncacheable):
            key = self._key(record)
            self._missed.discard(key)
            self._uncacheable.discard(key)
        return reason

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
        elif reason is None and record.cache_status == "MISS" and self._purged \
                and self._purged.discard(self._key(record)):  # no purge remembered: no key
            return "refill"
        elif record.cache_status == "STALE":
            return self._after_failed_update(record, reason)
        return reason

    def _after_failed_update(self, record: Record, reason: str | None) -> str | None:
        """With ``log_subrequest on``, a failed background update logs its own line (STALE,
        the origin's 5xx) just before its client's, which reads like a good update (STALE, no
        upstream status). That one must not fan out either: every peer's refresh would only
        meet the failing origin (measured on NGINX 1.22)."""
        if reason == "origin_error":
            self._failed.admit(self._key(record))
        elif reason is None and record.upstream_status is None and self._failed \
                and self._failed.discard(self._key(record)):
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

    def refresh_for(self, record: Record, note: bool = True) -> Refresh:
        """The refresh a triggering record asks for (call after :meth:`skip_reason`).
        ``note``: remember its version (False: only to name the URL)."""
        host = record.host or self.default_host
        assert host is not None
        # The upstream fields of a STALE/UPDATING line (or a REVALIDATED 304) show the copy
        # it was served from, not the one fetched: only a MISS or EXPIRED names the new copy.
        variant = record.variant
        version = record.version if record.cache_status in FETCHED else None
        refresh = Refresh(record.scheme or "http", host, record.target, record.cache_status,
                          record.time, variant=None if variant is None else
                          variant.decode("latin-1"))
        if version is None or not note:
            return refresh
        return refresh._replace(version=version, changed=self.versions.note(
            (refresh.key, refresh.variant), version))


def _origin_failed(upstream_status: str | None) -> bool:
    """True when the last upstream answer was a 5xx (a ``"502, 200"`` list ends with the final).
    Most lines show no 5 at all: that test alone spares them the split."""
    if not upstream_status or "5" not in upstream_status:
        return False
    return is_5xx(final_upstream_status(upstream_status))
