"""Prometheus metrics owned by one daemon, and the small HTTP server for ``/metrics``,
``/healthz`` (liveness), ``/status`` (what the agent sees, JSON) and ``/`` (the same as a page).

Every metric lives in a private ``CollectorRegistry`` (no global state, so tests can run many
daemons in one process), with the process and platform collectors of prometheus_client on it.
Labels are bounded: peers are the configured URLs, sources the configured paths and listeners,
never request URLs. Gauges of a state (queue depths, last line) are read at scrape time.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import platform
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from logwarden import __version__
from logwarden.ops.status import render_page

log = logging.getLogger(__name__)

# A counter's creation time doubles every series for no use on a scrape (and is global to
# prometheus_client: logwarden is its only user in the process).
disable_created_metrics()  # type: ignore[no-untyped-call]

REFRESH_OUTCOMES = ("ok", "not_cached", "not_refreshed", "unverified", "http_error", "timeout",
                    "connect_error", "tls_error", "skipped", "coalesced", "dropped", "refused",
                    "hit")
"""``not_refreshed``: the peer answered a bypass request from its cache (it ignores the refresh
header); ``unverified``: it answered without the cache-status header, so whether it refreshed
is unknown; ``hit``: ``warm --only-missing`` found the node holding the URL already; nothing
sent."""
STORM_REASONS = ("rate", "filtered", "too_long", "no_listener")
DOWNSTREAM_OUTCOMES = ("ok", "not_cached", "http_error", "timeout", "connect_error",
                       "tls_error", "skipped", "coalesced", "dropped")
"""Of each URL a downstream cache was to purge: ``not_cached`` (404/412: an edge held no copy,
a success), ``skipped`` (its breaker open), ``coalesced`` (the URL already waiting for it)."""
BUS_PUBLISH_OUTCOMES = ("ok", "bus_unavailable", "dropped", "refused")
BUS_RECEIVE_OUTCOMES = ("ok", "own", "deduplicated", "refused", "unsigned", "bad_signature",
                        "out_of_window", "too_old", "unknown_version", "malformed")
SUMMARY = ("lines", "malformed", "triggers", "fan-outs")
"""What the summary lines show first, then the refreshes by outcome."""


class Metrics:
    """All of logwarden's metrics; stages receive this object and update what they own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("logwarden_build", "The running logwarden and Python.", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        self.lines = Counter("logwarden_lines", "Log lines read.", registry=r)
        self.lines_malformed = Counter(
            "logwarden_lines_malformed", "Lines that did not match the log format.", registry=r)
        self.lines_too_long = Counter(
            "logwarden_lines_too_long", "Lines skipped for exceeding the line length limit.",
            registry=r)
        self.records_ignored = Counter(
            "logwarden_records_ignored", "Parsed lines that did not trigger, by rule.",
            ["reason"], registry=r)
        self.uncacheable = Counter(
            "logwarden_uncacheable", "Lines of answers NGINX did not store (the "
            "records_ignored reason uncacheable), by rule: the origin's caching headers "
            "(set_cookie, vary, x_accel_expires, no_cache, no_store, private, max_age, expires, "
            "no_valid: proxy_cache_valid covers not the status), or repeated_miss (MISSed "
            "again with no stored copy between).", ["rule"], registry=r)
        self.changes = Counter(
            "logwarden_changes", "Triggers whose copy (ETag, else Last-Modified) differs from "
            "the last one this node stored of the URL: content changes.", registry=r)
        self.unchanged = Counter(
            "logwarden_unchanged", "Triggers whose copy is the one stored before: expiries "
            "that fetched the same content.", registry=r)
        self.heals = Counter(
            "logwarden_heals", "Split rounds healed: a fan-out's peers fetched another copy "
            "than the triggering line's (the origin changed in between), so the nodes not on "
            "the newest were refreshed once more.", registry=r)
        self.downstream_purges = Counter(
            "logwarden_downstream_purges", "URLs purged from the caches in front of the "
            "cluster (--downstream) after every node came to hold a changed copy, by "
            "downstream and outcome.", ["downstream", "outcome"], registry=r)
        self.triggers = Counter(
            "logwarden_triggers", "Lines that asked for a fan-out, by $upstream_cache_status.",
            ["cache_status"], registry=r)
        self.triggers_deduplicated = Counter(
            "logwarden_triggers_deduplicated",
            "Triggers folded into a fan-out already made within the dedup window.", registry=r)
        self.fanouts = Counter(
            "logwarden_refresh_fanouts", "Fan-outs admitted: one refresh for each peer of the "
            "URL's scheme.", registry=r)
        self.storm_dropped = Counter(
            "logwarden_storm_dropped", "Fan-outs not admitted, by reason: rate (token bucket "
            "empty), filtered (--only/--skip), too_long (--max-target-bytes), no_listener (no "
            "peer URL of the URL's scheme).", ["reason"], registry=r)
        for reason in STORM_REASONS:
            self.storm_dropped.labels(reason)
        self.refreshes = Counter(
            "logwarden_refreshes", "Refresh requests by peer and outcome.",
            ["peer", "outcome"], registry=r)
        self.refresh_duration = Histogram(
            "logwarden_refresh_duration_seconds", "Time a refresh request took, per peer.",
            ["peer"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.propagation = Histogram(
            "logwarden_propagation_seconds", "From a triggering line's own time ($msec) to the "
            "last peer's answer of its fan-out.", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.refresh_requests = Counter(
            "logwarden_refresh_requests", "Refresh requests sent (retries not counted), by "
            "variant class (--variant; 'none' without classes): fan-outs x peers x classes.",
            ["variant"], registry=r)
        self.vary_uncovered = Counter(
            "logwarden_vary_uncovered", "Refresh answers that vary on a request header no "
            "--variant covers (their other copies cannot be refreshed), by host (the first 20, "
            "else 'other').", ["host"], registry=r)
        self.refresh_retries = Counter(
            "logwarden_refresh_retries", "Refresh attempts repeated after a connect error, a "
            "timeout or a 502/503/504.", ["peer"], registry=r)
        self.peer_up = Gauge(
            "logwarden_peer_up", "1 while a peer's breaker is closed, 0 while it is skipped.",
            ["peer"], registry=r)
        self.queue_depth = Gauge(
            "logwarden_queue_depth", "Items waiting in a pipeline queue.", ["queue"], registry=r)
        self.last_line = Gauge(
            "logwarden_last_line_timestamp_seconds", "When a source last gave a line (Unix "
            "time; 0: none yet), by configured path or listener.", ["source"], registry=r)
        self.stale_served = Counter(
            "logwarden_stale_served", "Lines where the node served a STALE copy because the "
            "origin failed, by host (top N, else 'other') and use_stale reason.",
            ["host", "reason"], registry=r)
        self.origin_errors = Counter(
            "logwarden_origin_errors", "Lines whose last upstream answer was a 5xx (NGINX's "
            "own 502/504 for a dead origin included), by host (top N, else 'other').",
            ["host"], registry=r)
        self.stale_age = Histogram(
            "logwarden_stale_age_seconds", "Age of the STALE copies served because the origin "
            "failed: line time minus the copy's $upstream_http_date.", registry=r,
            buckets=(1, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600,
                     86400, 2 * 86400, 7 * 86400))
        self.bus_published = Counter(
            "logwarden_bus_published", "Triggers for the bus, by outcome: ok (published), "
            "bus_unavailable (the bus was down: direct fan-out if peers are configured), "
            "dropped (publish queue full), refused (a target or host that cannot be sent "
            "byte for byte: not published).", ["outcome"], registry=r)
        self.bus_received = Counter(
            "logwarden_bus_received", "Bus entries read, by outcome: ok (local refresh "
            "queued), own (this node's), deduplicated, refused (not replayable here), "
            "unsigned, bad_signature (no valid HMAC of the bus secret), out_of_window (signed "
            "further from the time Redis added it than --bus-max-skew: replayed), too_old "
            "(published more than --max-line-age ago), unknown_version, malformed.",
            ["outcome"], registry=r)
        self.bus_connected = Gauge(
            "logwarden_bus_connected", "1 while the bus's stream is read, else 0.", registry=r)
        self.bus_behind = Gauge(
            "logwarden_bus_entries_behind", "Entries of the bus's stream after the last one "
            "this node handled.", registry=r)
        self.bus_catchup = Counter(
            "logwarden_bus_catchup_entries", "Entries read as a backlog, after a start or a "
            "reconnect, before reaching the stream's end.", registry=r)
        self.bus_trimmed = Counter(
            "logwarden_bus_trimmed_entries", "Entries the stream had trimmed (--bus-maxlen) "
            "before this node read them: lost to it.", registry=r)
        self.file_rotations = Counter(
            "logwarden_file_rotations", "Tailed files that left their path (renamed or deleted).",
            registry=r)
        self.file_truncations = Counter(
            "logwarden_file_truncations", "Tailed files that shrank below the read offset.",
            registry=r)
        self.file_errors = Counter(
            "logwarden_file_errors", "Failed attempts to open a tailed file, by error.",
            ["error"], registry=r)
        self.file_lag_bytes = Gauge(
            "logwarden_file_lag_bytes", "Bytes between the read offset and the file's size.",
            ["path"], registry=r)
        self.open_files = Gauge(
            "logwarden_open_files", "Files held open by the tailer (current and draining).",
            registry=r)
        self.syslog_datagrams = Counter(
            "logwarden_syslog_datagrams", "Datagrams a syslog listener received.",
            ["listener"], registry=r)
        self.syslog_ignored = Counter(
            "logwarden_syslog_ignored", "Syslog datagrams not read, by reason: malformed (not "
            "syslog), other_tag, disallowed (source outside --syslog-allow).",
            ["listener", "reason"], registry=r)
        self.syslog_queue_drops = Counter(
            "logwarden_syslog_queue_drops", "Syslog messages dropped because the lines queue "
            "was full.", ["listener"], registry=r)
        self.syslog_kernel_drops = Counter(
            "logwarden_syslog_kernel_drops", "Datagrams the kernel dropped on a listener's "
            "socket (receive buffer full).", ["listener"], registry=r)

    def init_peer(self, peer: str) -> None:
        """Create every outcome series at 0 so dashboards see a peer before its first failure."""
        for outcome in REFRESH_OUTCOMES:
            self.refreshes.labels(peer, outcome)
        self.refresh_duration.labels(peer)
        self.refresh_retries.labels(peer)
        self.peer_up.labels(peer).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def outcomes(self) -> dict[str, collections.Counter[str]]:
        """The refresh requests counted so far, per peer and outcome (zeros left out)."""
        counts: dict[str, collections.Counter[str]] = {}
        for s in (s for family in self.refreshes.collect() for s in family.samples):
            if s.name == "logwarden_refreshes_total" and s.value:
                counts.setdefault(s.labels["peer"], collections.Counter())[
                    s.labels["outcome"]] += int(s.value)
        return counts

    def counts(self) -> collections.Counter[str]:
        """What the run did so far: the :data:`SUMMARY` counters by name, and the refreshes
        by outcome as ``refreshes OUTCOME``."""
        counts = collections.Counter(dict(zip(SUMMARY, map(_total, (
            self.lines, self.lines_malformed, self.triggers, self.fanouts)), strict=True)))
        for peer in self.outcomes().values():
            counts.update({f"refreshes {outcome}": n for outcome, n in peer.items()})
        return counts

    @staticmethod
    def summary(counts: collections.Counter[str]) -> str:
        """``counts`` (:meth:`counts`, or the difference of two) as one log line."""
        head = [f"{name}={counts[name]}" for name in SUMMARY]
        outcomes = sorted((k.partition(" ")[2], n) for k, n in counts.items()
                          if k.startswith("refreshes ") and n)
        shown = [f"{o}={n}" for o, n in outcomes] or ["none"]
        return " ".join([*head, "refreshes:", *shown])


def _total(counter: Counter) -> int:
    """A counter's sum over its labels."""
    return int(sum(s.value for family in counter.collect() for s in family.samples
                   if s.name.endswith("_total")))


class MetricsServer:
    """Serves ``/metrics``, ``/healthz``, ``/status`` and ``/`` over HTTP/1.1, one short
    request per connection. ``health``: liveness (503 unless ``ok``); ``status``: what the
    agent sees (200 whatever it says)."""

    def __init__(self, metrics: Metrics, health: Callable[[], dict[str, object]],
                 status: Callable[[], dict[str, Any]]) -> None:
        self.metrics = metrics
        self.health = health
        self.status = status
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        sockname = self._server.sockets[0].getsockname()
        log.info("metrics on http://%s:%s/metrics", host, sockname[1])
        return host, sockname[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request_line = await reader.readline()
                while (await reader.readline()).strip():
                    pass  # headers are not needed
            status, ctype, body = self._route(request_line)
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status, ctype, len(body), body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _route(self, request_line: bytes) -> tuple[bytes, bytes, bytes]:
        parts = request_line.split()
        path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
        if len(parts) >= 2 and parts[0] not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", b"text/plain", b"GET only\n"
        if path == b"/metrics":
            return b"200 OK", CONTENT_TYPE_LATEST.encode(), self.metrics.render()
        if path == b"/healthz":
            state = self.health()
            code = b"200 OK" if state.get("status") == "ok" else b"503 Service Unavailable"
            return code, b"application/json", json.dumps(state).encode() + b"\n"
        if path == b"/status":
            return b"200 OK", b"application/json", json.dumps(self.status()).encode() + b"\n"
        if path == b"/":
            return b"200 OK", b"text/html; charset=utf-8", render_page(self.status())
        return b"404 Not Found", b"text/plain", b"try /, /status, /metrics or /healthz\n"
