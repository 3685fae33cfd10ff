"""The processing stage: batches of lines in, the refreshes they ask for out to the router.

    lines queue ─Batch─▶ ProcessStage ─▶ Processor.batch (sift, parse, rules) ─▶ Router

:class:`Processor` is the pure core (a batch in; its triggering refreshes and a tally of every
line's fate out); ``logwarden replay`` runs it on a file read once, :class:`ProcessStage` on
what the sources deliver. Both hand the refreshes to the same router, so a replay shows what
the live agent would have done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from logwarden.config import Config
from logwarden.decide.origin import WATCHED_STATUSES, OriginWatch
from logwarden.decide.triggers import Triggers
from logwarden.model import OWN_AGENT_MARK, Refresh
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat
from logwarden.parse.prefilter import Prefilter
from logwarden.route.router import Router
from logwarden.sources import Batch, LineQueue
from logwarden.sources.positions import Positions


def triggers_for(config: Config, clock: Callable[[], float] | None = None) -> Triggers:
    """The rules ``config`` asks for. A ``clock`` (replay's line time) is also the wall
    clock, and the age limit is off: replayed lines are all history."""
    timing: dict[str, Any] = {"max_age": config.max_line_age}
    if clock is not None:
        timing = {"max_age": 0.0, "clock": clock, "wall_clock": clock}
    return Triggers(config.statuses, max_keys=config.dedup_max_urls,
                    default_host=config.default_host, **timing)


class Processor:
    """Decides batches of lines with one parser and one :class:`Triggers` (its memory)."""

    def __init__(self, parser: LogFormat, triggers: Triggers,
                 line_clock: LineClock | None = None, origin: OriginWatch | None = None) -> None:
        """``origin``: also hand it the lines that may show the origin failing, triggering or
        not (their statuses pass the sift: free; a 5xx test there made it 1.5x slower)."""
        self.parse = parser.parse
        self.triggers = triggers
        self.origin = origin
        watched = WATCHED_STATUSES if origin is not None and origin.enabled else frozenset()
        self.prefilter = Prefilter(parser, triggers.statuses | watched, keep_agent=OWN_AGENT_MARK)
        self.line_clock = line_clock

    def batch(self, lines: Batch) -> tuple[list[Refresh], Tally]:
        """Lines a cheap cache-status test rules out (mostly HITs) skip the full parse and count
        as ignored (logwarden.parse.prefilter says what that means for malformed lines). The
        batch is tested without splitting it into lines (Prefilter.sift_block) where the format
        allows."""
        parse, triggers, origin = self.parse, self.triggers, self.origin
        candidates = self.prefilter.sift_block(lines.data, lines.count)
        tally = Tally(skipped=len(lines) - len(candidates))
        refreshes = []
        for line in candidates:
            record = parse(line)
            if record is None:
                tally.malformed += 1
                continue
            ust = record.upstream_status  # tested inline: a call per candidate costs
            if ust is not None and ("5" in ust or record.cache_status == "STALE") and origin:
                origin.note(record)
            if self.line_clock is not None and record.time is not None:
                self.line_clock.now = record.time
            reason = triggers.decide(record)
            if reason is not None:
                tally.ignored[reason] += 1
                continue
            refresh = triggers.refresh_for(record)
            tally.triggers[refresh.cache_status] += 1
            refreshes.append(refresh)
        if origin:
            origin.flush()
        return refreshes, tally


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
        self.triggers: Counter[str] = Counter()

    def add(self, other: Tally) -> None:
        """Sum ``other`` into this tally (replay's totals)."""
        self.skipped += other.skipped
        self.malformed += other.malformed
        self.ignored.update(other.ignored)
        self.triggers.update(other.triggers)

    def add_to(self, m: Metrics) -> None:
        self.ignored["cache_status"] += self.skipped
        for reason, n in self.ignored.items():
            m.records_ignored.labels(reason).inc(n)
        for status, n in self.triggers.items():
            m.triggers.labels(status).inc(n)
        if self.malformed:
            m.lines_malformed.inc(self.malformed)


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
