"""The processing stage: batches of lines in, the refreshes they ask for out to the router.

    lines queue ─Batch─▶ ProcessStage ─▶ Processor.batch (sift, parse, rules) ─▶ Router

:class:`Processor` is the pure core (a batch in; its triggering refreshes and a tally of every
line's fate out); ``logwarden replay`` runs it on a file read once, :class:`ProcessStage` on
what the sources deliver. Both hand the refreshes to the same router, so a replay shows what
the live agent would have done.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from logwarden.config import Config
from logwarden.decide.cacheable import FETCHED
from logwarden.decide.cacheable import RULES as UNCACHEABLE_RULES
from logwarden.decide.origin import WATCHED_STATUSES, OriginWatch
from logwarden.decide.triggers import Triggers
from logwarden.model import OWN_AGENT_MARK, Record, Refresh
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat
from logwarden.parse.prefilter import Prefilter
from logwarden.route.router import Router
from logwarden.sources import Batch, LineQueue
from logwarden.sources.positions import Positions

_FETCHED = frozenset(status.encode() for status in FETCHED)
JUDGED_MAX = 4096
"""Distinct caching-header stretches remembered by :meth:`Processor._at_once`: an origin
sends a few combinations over and over."""


def triggers_for(config: Config, clock: Callable[[], float] | None = None) -> Triggers:
    """The rules ``config`` asks for. A ``clock`` (replay's line time) is also the wall
    clock, and the age limit is off: replayed lines are all history."""
    timing: dict[str, Any] = {"max_age": config.max_line_age}
    if clock is not None:
        timing = {"max_age": 0.0, "clock": clock, "wall_clock": clock}
    return Triggers(config.statuses, max_keys=config.dedup_max_urls,
                    default_host=config.default_host, policy=config.cache_policy, **timing)


class Processor:
    """Decides batches of lines with one parser and one :class:`Triggers` (its memory)."""

    def __init__(self, parser: LogFormat, triggers: Triggers,
                 line_clock: LineClock | None = None, origin: OriginWatch | None = None,
                 on_uncacheable: Callable[[Record, str], None] | None = None) -> None:
        """``origin``: also hand it the lines that may show the origin failing, triggering or
        not (their statuses pass the sift: free; a 5xx test there made it 1.5x slower).
        ``on_uncacheable``: told each record taken as uncacheable and its rule (replay's
        list of them)."""
        self.match, self.record = parser.match, parser.record
        self.glance = parser.glance
        self.caching = parser.caching if parser.logs_caching and on_uncacheable is None \
            else None
        """Set when a line's caching headers may decide it before its record is built
        (replay wants the record of every uncacheable line: it lists their URLs)."""
        self.caching_span = parser.caching_span
        self._judged: dict[bytes, tuple[str | None, bool]] = {}
        self.triggers = triggers
        self.origin = origin
        self.on_uncacheable = on_uncacheable
        watched = WATCHED_STATUSES if origin is not None and origin.enabled else frozenset()
        self.prefilter = Prefilter(parser, triggers.statuses | watched, keep_agent=OWN_AGENT_MARK)
        self.line_clock = line_clock

    def batch(self, lines: Batch) -> tuple[list[Refresh], Tally]:
        """Lines a cheap cache-status test rules out (mostly HITs) skip the full parse and count
        as ignored (logwarden.parse.prefilter says what that means for malformed lines). The
        batch is tested without splitting it into lines (Prefilter.sift_block) where the format
        allows."""
        match, build, triggers, origin = self.match, self.record, self.triggers, self.origin
        candidates = self.prefilter.sift_block(lines.data, lines.count)
        tally = Tally(skipped=len(lines) - len(candidates))
        refreshes = []
        at_once = self._at_once if self.caching is not None else None
        for line in candidates:
            matched = match(line)
            if matched is None:
                tally.malformed += 1
                continue
            judged = at_once(matched) if at_once is not None else None
            if judged is not None and judged[0] is not None:
                tally.uncacheable[judged[0]] += 1
                tally.ignored["uncacheable"] += 1
                continue
            record = build(matched, line)
            ust = record.upstream_status  # tested inline: a call per candidate costs
            if ust is not None and ("5" in ust or record.cache_status == "STALE") and origin:
                origin.note(record)
            if self.line_clock is not None and record.time is not None:
                self.line_clock.now = record.time
            reason = triggers.decide(record, judged)
            if reason is not None:
                if reason in UNCACHEABLE_RULES:
                    tally.uncacheable[reason] += 1
                    if self.on_uncacheable is not None:
                        self.on_uncacheable(record, reason)
                    reason = "uncacheable"
                tally.ignored[reason] += 1
                continue
            refresh = triggers.refresh_for(record)
            tally.triggers[refresh.cache_status] += 1
            if refresh.changed is not None:
                tally.changed[refresh.changed] += 1
            refreshes.append(refresh)
        if origin:
            origin.flush()
        return refreshes, tally


    def _at_once(self, matched: re.Match[bytes]) -> tuple[str | None, bool] | None:
        """What the caching headers of a line say (:meth:`Triggers.at_once`), for a MISS or
        EXPIRED not logwarden's own (the triggers remember its purges) nor one for the
        origin watch; else None. Remembered by the stretch of line that holds them
        (bounded)."""
        status, agent, upstream = self.glance(matched)
        if status not in _FETCHED or (agent is not None and agent.startswith(OWN_AGENT_MARK)) \
                or (self.origin and upstream is not None and b"5" in upstream):
            return None
        span = self.caching_span(matched)
        try:
            return self._judged[span]
        except KeyError:
            if len(self._judged) >= JUDGED_MAX:
                self._judged.clear()
            assert self.caching is not None
            judged = self._judged[span] = self.triggers.at_once(self.caching(matched))
            return judged


class LineClock:
    """Replay's clock: the time of the line being decided, so that the dedup window and the
    token bucket span the log's own time, not the reading time. Stays put on lines without one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tally:
    """One batch's outcomes, added to the metrics once per batch: a labelled inc() costs
    more than deciding a line (bench/README.md)."""

    def __init__(self, skipped: int) -> None:
        self.skipped = skipped
        self.malformed = 0
        self.ignored: Counter[str] = Counter()
        self.uncacheable: Counter[str] = Counter()
        """The ``uncacheable`` ones of :attr:`ignored`, by rule."""
        self.triggers: Counter[str] = Counter()
        self.changed: Counter[bool] = Counter()
        """Triggers whose copy differs (True) from the URL's last one seen, or not."""

    def add(self, other: Tally) -> None:
        """Sum ``other`` into this tally (replay's totals)."""
        self.skipped += other.skipped
        self.malformed += other.malformed
        self.ignored.update(other.ignored)
        self.uncacheable.update(other.uncacheable)
        self.changed.update(other.changed)
        self.triggers.update(other.triggers)

    def add_to(self, m: Metrics) -> None:
        self.ignored["cache_status"] += self.skipped
        for reason, n in self.ignored.items():
            m.records_ignored.labels(reason).inc(n)
        for rule, n in self.uncacheable.items():
            m.uncacheable.labels(rule).inc(n)
        for status, n in self.triggers.items():
            m.triggers.labels(status).inc(n)
        if self.malformed:
            m.lines_malformed.inc(self.malformed)
        if self.changed:
            m.changes.inc(self.changed[True])
            m.unchanged.inc(self.changed[False])


class ProcessStage:
    """Takes batches off the lines queue until its ``None``: decides them, routes their
    refreshes, adds the tally to the metrics and commits each batch's checkpoint once its
    lines are handled. Ends when the queue does (the daemon puts the ``None``)."""

    def __init__(self, processor: Processor, lines: LineQueue, router: Router,
                 metrics: Metrics, positions: Positions) -> None:
        self.processor = processor
        self.lines = lines
        self.router = router
        self.metrics = metrics
        self.positions = positions

    async def run(self) -> None:
        m = self.metrics
        while (batch := await self.lines.get()) is not None:
            refreshes, tally = self.processor.batch(batch)
            self.router.route_all(refreshes)
            tally.add_to(m)
            if batch.checkpoint is not None:
                self.positions.commit(batch.checkpoint)
