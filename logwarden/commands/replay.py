"""``logwarden replay FILE``: read an access log once and show what the agent would send.

No network: this is how an operator tries a format, the statuses and the filters on a real
log before turning logwarden on. Lines are decided by the daemon's own processor and admitted
by the daemon's own router (:class:`logwarden.route.router.Router`: dedup, no listener,
refused targets, storm control), whose target here records instead of sending. Time is the
log's own (``$msec``, ``$time_local``…): the dedup window and the token bucket span it, and
``--max-line-age`` is off, since every line is history.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from logwarden.config import Config
from logwarden.decide.process import LineClock, Processor, Tally, triggers_for
from logwarden.model import Record, Refresh
from logwarden.ops.metrics import Metrics
from logwarden.route.router import Recorder, Router
from logwarden.sources import Batch

BATCH_LINES = 4096
"""Lines decided at once: the batch size the daemon sees under load, bounded memory."""
TOP = 10
"""URLs and hosts shown in each "top" list of the summary."""


class Replay:
    """Decides the lines of one log like the agent would; ``summary()`` when done."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = LineClock()
        self.parser = config.log_format_parser()
        self.mode = config.refresh_mode
        self.processor = Processor(self.parser, triggers_for(config, self.clock), self.clock,
                                   on_uncacheable=self._uncacheable)
        self._sent: list[Refresh] = []
        self.recorder = Recorder(config.targets, dynamic=bool(config.peers_file
                                                              or config.peers_dns),
                                 on_submit=self._sent.append)
        self.router = Router.from_config(config, self.recorder, Metrics(), clock=self.clock)
        self.tally = Tally(skipped=0)
        self.lines = self.too_long = self.refreshes = self.deduplicated = 0
        self.not_sent: Counter[str] = Counter()
        self.fanouts: Counter[str] = Counter()
        """Fan-outs per URL (one per URL per peer scheme), and per host below: where the
        refreshes go. One entry per distinct URL: replay reads a file, it can afford them."""
        self.host_fanouts: Counter[str] = Counter()
        self.uncacheable: Counter[tuple[str, str]] = Counter()
        """Lines per (URL, rule) taken as uncacheable."""

    def run(self, lines: Iterable[bytes]) -> Iterator[Refresh]:
        """The refreshes that would be sent, in log order."""
        for batch in _batches(lines, BATCH_LINES):
            self.lines += len(batch)
            kept = [line for line in batch if len(line) <= self.config.max_line_bytes]
            self.too_long += len(batch) - len(kept)
            refreshes, tally = self.processor.batch(
                Batch.of(line.removesuffix(b"\n") for line in kept))
            self.tally.add(tally)
            for refresh in refreshes:
                if refresh.logged_at is not None:  # the batch is decided: back to its time
                    self.clock.now = refresh.logged_at
                reason = self.router.route(refresh)
                if reason == "deduplicated":
                    self.deduplicated += 1
                elif reason is not None:
                    self.not_sent[reason] += 1
            self.refreshes += len(self._sent)
            self.fanouts.update(refresh.url for refresh in self._sent)
            self.host_fanouts.update(refresh.host for refresh in self._sent)
            yield from self._sent
            self._sent.clear()

    def _uncacheable(self, record: Record, rule: str) -> None:
        self.uncacheable[self.processor.triggers.refresh_for(record, note=False).url, rule] += 1

    def describe(self, refresh: Refresh) -> dict[str, Any]:
        target = refresh.target.decode("latin-1")
        return {
            "cache_status": refresh.cache_status, "methods": list(self.mode.methods),
            "url": refresh.url, "host": refresh.host, "target": target,
            "time": refresh.logged_at, "peers": self.recorder.peers_of(refresh.scheme),
        }

    def summary(self) -> dict[str, Any]:
        t = self.tally
        ignored = Counter(t.ignored)
        ignored["cache_status"] += t.skipped
        return {
            "lines": self.lines, "too_long": self.too_long, "malformed": t.malformed,
            "ignored": dict(ignored), "triggers": dict(t.triggers),
            "deduplicated": self.deduplicated, "not_sent": dict(self.not_sent),
            "refreshes": self.refreshes, "line_time": self._has_time(),
            "uncacheable": dict(t.uncacheable),
            "top_urls": [{"url": url, "fanouts": n} for url, n in self.fanouts.most_common(TOP)],
            "top_hosts": [{"host": host, "fanouts": n}
                          for host, n in self.host_fanouts.most_common(TOP)],
            "top_uncacheable": [{"url": url, "rule": rule, "lines": n}
                                for (url, rule), n in self.uncacheable.most_common(TOP)],
        }

    def _has_time(self) -> bool:
        return bool({"msec", "time_local", "time_iso8601"} & set(self.parser.variables))


def replay_file(config: Config, path: str, emit: Callable[[str], None], *,
                as_json: bool = False) -> dict[str, Any]:
    """Print each refresh of ``path``, then the summary; returns the summary."""
    replay = Replay(config)
    with open(path, "rb") as fh:
        for refresh in replay.run(fh):
            shown = replay.describe(refresh)
            emit(json.dumps(shown) if as_json else _text(shown))
    summary = replay.summary()
    emit(json.dumps({"summary": summary}) if as_json else _summary_text(summary))
    return summary


def _batches(lines: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(shown: dict[str, Any]) -> str:
    peers = ", ".join(shown["peers"]) or "the peers"
    return (f"{shown['cache_status']:<8} {'+'.join(shown['methods'])} {shown['url']} "
            f"-> {peers}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"lines {s['lines']} (malformed {s['malformed']}, too long {s['too_long']})",
        f"ignored: {_counts(s['ignored'])}",
        f"triggers {sum(s['triggers'].values())}: {_counts(s['triggers'])}",
        f"refreshes after dedup {s['refreshes']} (deduplicated {s['deduplicated']}; "
        f"not sent: {_counts(s['not_sent'])})",
    ]
    if s["uncacheable"]:
        lines.append(f"uncacheable (NGINX stored no copy; no refresh sent) by rule: "
                     f"{_counts(s['uncacheable'])}")
    lines += _top("top URLs by fan-outs", [(t["url"], t["fanouts"]) for t in s["top_urls"]])
    lines += _top("top hosts by fan-outs", [(t["host"], t["fanouts"]) for t in s["top_hosts"]])
    lines += _top("top uncacheable URLs (lines, rule)",
                  [(f"{t['url']} ({t['rule']})", t["lines"]) for t in s["top_uncacheable"]])
    if not s["line_time"]:
        lines.append("note: the format has no $msec/$time_local/$time_iso8601: the dedup "
                     "window and the rate limit took the whole file as one instant")
    return "\n".join(lines)


def _top(title: str, rows: list[tuple[str, int]]) -> list[str]:
    return [f"{title}:", *(f"  {n:>8}  {what}" for what, n in rows)] if rows else []
