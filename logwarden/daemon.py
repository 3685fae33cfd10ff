"""Wire the stages and own the lifecycle: start, signals, orderly drain, exit code.

    sources ─lines queue─▶ ProcessStage (decide) ─▶ Router ─▶ dispatcher ─per-peer queues─▶ peers
                                                          └─▶ bus (--bus) ─▶ other nodes

Shutdown flows downstream: sources stop and read what is already written, the processing stage
drains the lines queue, the dispatcher finishes queued refreshes until the deadline and counts
what it had to cut off. A second SIGINT/SIGTERM exits at once. SIGHUP reads the peers file,
the peers' DNS names and the refresh header file again.

``/healthz`` is liveness (``ok`` while running); ``/status`` is what the agent sees, built at
request time from its parts, ``degraded`` when no peer can be refreshed or no line came for
``--max-quiet`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from logwarden import __version__
from logwarden.config import Config, ConfigError, read_header_file
from logwarden.decide.origin import OriginWatch
from logwarden.decide.process import Processor, ProcessStage, triggers_for
from logwarden.decide.window import Window
from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
from logwarden.deliver.downstream import AfterPublish, Downstreams
from logwarden.model import Refresh
from logwarden.ops.logs import hide
from logwarden.ops.metrics import Metrics, MetricsServer
from logwarden.ops.sdnotify import notify
from logwarden.route.bus import Bus, BusError, BusSettings
from logwarden.route.discovery import PeerList
from logwarden.route.router import AlsoHere, Recorder, Router, Target
from logwarden.sources import LineQueue, Source, SourceError
from logwarden.sources.fifo import FifoSource, is_fifo
from logwarden.sources.file import FileSource
from logwarden.sources.positions import Positions, PositionsLocked
from logwarden.sources.positions import lock as lock_positions
from logwarden.sources.syslog import SyslogSource

log = logging.getLogger(__name__)

LINES_QUEUE_BATCHES = 8
"""Batches (of up to ~1 MiB of lines, or 1024 datagrams) between the sources and the parser.

Enough to keep the parser busy; the file is the real buffer. A queued MiB of lines cost ~1.5 MiB
of RSS (64 had a file backlog peak at 141 MiB, bench/README.md, benchmark 5); a batch from a
file source is its 1 MiB of bytes."""


class StartupError(RuntimeError):
    """logwarden cannot start; the message names the problem and the fix (exit code 2)."""


class Daemon:
    """One running logwarden, built from the config; ``await run()`` returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = cfg = config
        self.metrics = m = Metrics()
        parser = cfg.log_format_parser()
        self.positions = Positions(cfg.positions_path)
        self.lines: LineQueue = asyncio.Queue(LINES_QUEUE_BATCHES)
        self.sources = self._sources()
        self.stopping = asyncio.Event()
        self.reload = asyncio.Event()
        """Set on SIGHUP: the peer follower reads the peers file and DNS again."""
        self.peer_list = PeerList(cfg.peer, self_url=cfg.self_url, peers_file=cfg.peers_file,
                                      dns=cfg.peers_dns)
        settings = DispatchSettings.from_config(cfg)
        classes = len(cfg.variants) > 1 and not cfg.dry_run  # this node's other classes too
        self.downstreams = Downstreams.from_config(cfg, m) \
            if cfg.downstreams and not cfg.dry_run else None
        """The caches in front: purged once the cluster holds a changed copy."""
        self.dispatcher = Dispatcher((), settings, m, propagation="msec" in parser.variables,
                                     own=cfg.self_url if classes and not cfg.bus else None,
                                     home=cfg.self_url, on_changed=self.downstreams.submit
                                     if self.downstreams else None)
        """The peers: every refresh in direct mode; the fallback in bus mode."""
        self.local: Dispatcher | None = None
        """Bus mode: refreshes this node's own NGINX on the other nodes' messages."""
        self.bus: Bus | None = None
        if cfg.bus and not cfg.dry_run:
            self.local = Dispatcher([cfg.local], settings, m, propagation=True)
            self.bus = self._bus(self.local)
        target: Target = self.dispatcher
        if self.bus is not None and self.local is not None:
            target = AlsoHere(self.bus, self.local) if classes else self.bus
            if self.downstreams is not None:
                target = AfterPublish(target, self.downstreams, cfg.downstream_delay)
        if cfg.dry_run:  # decided and admitted as usual; nothing is sent
            target = Recorder(cfg.targets, dynamic=self.peer_list.dynamic, metrics=m)
        self.router = Router.from_config(cfg, target, m)
        origin = OriginWatch(m, parser, default_host=cfg.default_host,
                             host_labels=cfg.origin_host_labels)
        self.stage = ProcessStage(Processor(parser, triggers_for(cfg), origin=origin),
                                  self.lines, self.router, m, self.positions)
        self.server = MetricsServer(m, self.health, self.status)
        self.metrics_address: tuple[str, int] | None = None
        self._started = time.time()
        self._positions_lock: int | None = None
        # Read at scrape time: a value set when a batch passes would stick while idle.
        m.queue_depth.labels("lines").set_function(self.lines.qsize)
        m.queue_depth.labels("refreshes").set_function(self._refresh_depth)
        for source in self.sources:
            m.last_line.labels(source.name).set_function(_last_line_of(source))

    def _sources(self) -> list[Source]:
        cfg = self.config
        files: list[Source] = [
            FifoSource(path, self.lines, self.metrics, poll_interval=cfg.poll_interval,
                       max_line_bytes=cfg.max_line_bytes) if is_fifo(path) else
            FileSource(path, self.lines, self.metrics, positions=self.positions,
                       from_start=cfg.from_start, poll_interval=cfg.poll_interval,
                       rotate_wait=cfg.rotate_wait, max_line_bytes=cfg.max_line_bytes)
            for path in cfg.access_log]
        listeners: list[Source] = [
            SyslogSource(url, self.lines, self.metrics, tag=cfg.syslog_tag,
                         rcvbuf=cfg.syslog_rcvbuf, allow=cfg.syslog_allow,
                         max_line_bytes=cfg.max_line_bytes, address=address)
            for url, address in zip(cfg.syslog, cfg.syslog_addresses, strict=True)]
        return files + listeners

    def _bus(self, local: Dispatcher) -> Bus:
        """The bus: publishes what the router admits, refreshes ``local`` on the other nodes'
        entries (admitted again here: only what this node's NGINX can take, a URL once per
        dedup window; the bus counts the outcomes), and while Redis is away hands triggers
        to the peers, if there are any."""
        cfg, m = self.config, self.metrics
        receive = Router(local, m, dedup=Window(cfg.dedup_window, cfg.dedup_max_urls,
                                                time.monotonic), counts={})
        fallback = Router(self.dispatcher, m)

        def to_peers(refresh: Refresh) -> None:
            if self.dispatcher.peers:
                fallback.route(refresh)

        return Bus(BusSettings.from_config(cfg), m, self.positions, receive=receive.route,
                   fallback=to_peers)

    def _refresh_depth(self) -> int:
        return sum(d.depth() for d in (self.dispatcher, self.local) if d is not None)

    async def run(self) -> int:
        cfg = self.config
        try:
            await self._start()
        except BaseException:
            self._unlock_positions()
            raise
        tasks = [asyncio.create_task(s.run(), name=f"source {s.name}") for s in self.sources]
        if self.peer_list.dynamic and not cfg.dry_run:
            tasks.append(asyncio.create_task(self.peer_list.follow(
                self.dispatcher, self.reload, poll_interval=cfg.poll_interval,
                dns_refresh=cfg.dns_refresh), name="peers"))
        if self.bus is not None:
            tasks.append(asyncio.create_task(self.bus.run(), name="bus"))
        stage = asyncio.create_task(self.stage.run(), name="process")
        helpers = [asyncio.create_task(self.positions.run(cfg.positions_interval),
                                       name="positions"),
                   asyncio.create_task(self._announce_ready(), name="ready")]
        if cfg.summary_interval:
            helpers.append(asyncio.create_task(self._summaries(cfg.summary_interval),
                                               name="summaries"))
        log.info("logwarden running: %d source(s), refreshing %s%s", len(self.sources),
                 ", ".join(self.dispatcher.urls) or "no peer yet",
                 " (dry run: nothing is sent)" if cfg.dry_run else "")
        for warning in cfg.warnings:
            log.warning("%s", warning)
        code = await self._wait([*tasks, stage])
        await self._stop(tasks, stage, helpers)
        log.info("logwarden stopped: %s", Metrics.summary(self.metrics.counts()))
        return code

    async def _summaries(self, interval: float) -> None:
        """Say every ``interval`` seconds what the agent did since the last time: at info
        level, the only sign of life between start and stop otherwise."""
        before = self.metrics.counts()
        while True:
            await asyncio.sleep(interval)
            now = self.metrics.counts()
            log.info("last %gs: %s", interval, Metrics.summary(now - before))
            before = now

    async def _start(self) -> None:
        """Everything that can fail at start-up fails here, before any line is read."""
        cfg = self.config
        self._lock_positions()
        self.peer_list.reload_file()
        await self.peer_list.resolve()
        self.dispatcher.set_peers(() if cfg.dry_run else self.peer_list.current())
        try:
            for source in self.sources:
                source.bind()
        except SourceError as exc:
            raise StartupError(str(exc)) from exc
        if self.bus is not None:
            try:
                await self.bus.start()
            except BusError as exc:
                raise StartupError(str(exc)) from None
        if cfg.metrics_listen != "off":
            try:
                assert cfg.metrics_address is not None
                self.metrics_address = await self.server.start(*cfg.metrics_address)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise StartupError(
                    f"metrics_listen: {cfg.metrics_listen!r} cannot be served ({reason}): "
                    "is another logwarden running? Give a free --metrics-listen HOST:PORT, or "
                    "'off'") from exc
        self._install_signals()
        for dispatcher in (self.dispatcher, self.local):
            if dispatcher is not None:
                dispatcher.start()
        if self.downstreams is not None:
            self.downstreams.start()
        if self.bus is not None:
            log.info("bus mode: triggers go to %s stream %r; the other nodes' refresh %s%s",
                     cfg.bus, cfg.bus_channel, cfg.local,
                     " (peers are the fallback)" if self.dispatcher.peers else "")

    async def _stop(self, tasks: list[asyncio.Task[None]], stage: asyncio.Task[None],
                    helpers: list[asyncio.Task[None]]) -> None:
        """Downstream order: sources read what is written, the stage drains the queue, the
        positions are saved, the dispatchers finish within the deadline."""
        cfg = self.config
        for s in self.sources:
            s.stop()
        sources, others = tasks[:len(self.sources)], tasks[len(self.sources):]
        await asyncio.gather(*sources, return_exceptions=True)
        await self.lines.put(None)
        await stage
        for task in (*others, *helpers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.positions.save()
        self._unlock_positions()
        deadline = time.monotonic() + cfg.shutdown_timeout
        for dispatcher in (self.dispatcher, self.local):
            if dispatcher is not None:
                await dispatcher.close(cfg.shutdown_timeout)
        if self.downstreams is not None:  # last: the dispatchers' drain may converge changes
            await self.downstreams.close(max(0.0, deadline - time.monotonic()))
        await self.server.close()

    def _lock_positions(self) -> None:
        """One agent per positions file: a second one would overwrite the first's entries, and
        after a restart one of them would skip what was written meanwhile."""
        path = self.positions.path
        if path is None:
            return
        try:
            self._positions_lock = lock_positions(path)
        except PositionsLocked as exc:
            raise StartupError(
                f"positions: {str(path)!r} is in use by another logwarden (pid "
                f"{exc.args[0] or '?'}): give each agent its own --positions FILE, or an "
                "--instance NAME") from None
        except OSError as exc:
            raise StartupError(f"positions: {str(path)!r} cannot be locked ({exc.strerror}): "
                               "give a --positions FILE in a writable directory, or 'off'"
                               ) from exc

    def _unlock_positions(self) -> None:
        if self._positions_lock is not None:
            os.close(self._positions_lock)
            self._positions_lock = None

    async def _wait(self, tasks: list[asyncio.Task[None]]) -> int:
        """Wait for a stop request; a stage that dies on its own is a bug: fail loudly."""
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done - {stop}:
            exc = task.exception() if not task.cancelled() else None
            log.error("%s ended unexpectedly", task.get_name(), exc_info=exc)
            return 1
        return 0

    async def _announce_ready(self) -> None:
        """Tell systemd (Type=notify) once /healthz would say ok: no line is missed from then
        on. Ends by itself, also when a stop comes first."""
        while self.health()["status"] == "starting":
            await asyncio.sleep(0.05)
        if not self.stopping.is_set():
            notify("READY=1")

    def health(self) -> dict[str, object]:
        """``ok`` once every source reads (or waits for) its file or listens: no line is missed."""
        sources = {s.name: s.state for s in self.sources}
        starting = not sources or "starting" in sources.values()
        status = "stopping" if self.stopping.is_set() else "starting" if starting else "ok"
        state: dict[str, object] = {
            "status": status,
            "uptime_seconds": round(time.time() - self._started, 3),
            "sources": sources,
            "peers": list(self.dispatcher.urls),
        }
        if self.bus is not None:  # informational: a node without the bus still works
            state["bus"] = "connected" if self.bus.connected else "disconnected"
        return state

    def status(self) -> dict[str, Any]:
        """``/status``: each peer (breaker, last ok, last outcome, queue), each source (what it
        reads or where it listens, offset, lag, its last line), the bus, and ``degraded``
        with the reasons when no peer can be refreshed or no line came for too long."""
        cfg, now = self.config, time.time()
        live = self.health()
        reasons = self._degraded(now)
        doc: dict[str, Any] = {
            "status": "degraded" if live["status"] == "ok" and reasons else live["status"],
            "degraded": reasons, "version": __version__, "instance": cfg.agent_name,
            "uptime_seconds": live["uptime_seconds"],
            "peers": [{**p, "last_ok_age_seconds": _age(p["last_ok"], now)}
                      for p in (peer.status() for peer in self.dispatcher.peers)],
            "sources": [{"name": s.name, "state": s.state, "last_line": s.last_line_at or None,
                         "last_line_age_seconds": _age(s.last_line_at, now), **s.status()}
                        for s in self.sources],
            "bus": None,
            "queues": {"lines": self.lines.qsize(), "refreshes": self._refresh_depth()},
        }
        if self.bus is not None:
            doc["bus"] = {"url": cfg.bus, "channel": cfg.bus_channel,
                          "connected": self.bus.connected}
        return doc

    def _degraded(self, now: float) -> list[str]:
        cfg, reasons = self.config, []
        bus_up = self.bus is not None and self.bus.connected
        if not cfg.dry_run and not bus_up and not self.dispatcher.refreshable:
            where = "the bus is disconnected and " if self.bus is not None else ""
            reasons.append(f"{where}no peer can be refreshed" + (
                ": every peer's breaker is open" if self.dispatcher.peers else ": no peer"))
        last = max((s.last_line_at for s in self.sources), default=0.0) or self._started
        if cfg.max_quiet and now - last > cfg.max_quiet:
            reasons.append(f"no line read for {now - last:.0f} s (max_quiet {cfg.max_quiet:g} s)")
        return reasons

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self) -> None:
        if self.config.refresh_header_file:
            self._reload_refresh_header(self.config.refresh_header_file)
        elif not self.peer_list.dynamic:
            log.info("SIGHUP: no --peers-file, --peers-dns or --refresh-header-file to reload")
        self.reload.set()

    def _reload_refresh_header(self, path: str) -> None:
        """Read the refresh header file again (a rotated secret, README "Rotating the
        secret"); on an error keep the header in use."""
        try:
            header = read_header_file("refresh_header_file", path)
        except ConfigError as exc:
            log.error("SIGHUP: %s; refreshes keep the header read before", exc)
            return
        if header == self.config.refresh_header:
            log.info("SIGHUP: the refresh header in %s is unchanged", path)
            return
        self.config = cfg = dataclasses.replace(self.config, refresh_header=header)
        for secret in cfg.secrets:
            hide(secret)
        for dispatcher in (self.dispatcher, self.local):
            if dispatcher is not None:
                dispatcher.set_mode(cfg.refresh_mode)
        log.info("SIGHUP: refreshes not yet sent now carry the %s header read again from %s",
                 cfg.refresh_header_pair[0], path)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            log.warning("%s again: exiting now", sig.name)
            os._exit(1)
        log.info("%s received: finishing queued refreshes (up to %ss)", sig.name,
                 self.config.shutdown_timeout)
        self.stopping.set()
        notify("STOPPING=1")


def _last_line_of(source: Source) -> Callable[[], float]:
    return lambda: source.last_line_at


def _age(at: float | None, now: float) -> float | None:
    """Seconds since ``at`` (None for never: 0 or None)."""
    return round(now - at, 3) if at else None


async def _main(config: Config) -> int:
    return await Daemon(config).run()


def run(config: Config) -> int:
    try:  # the uvloop extra: a faster event loop under the refresh sender (README "Performance")
        import uvloop
    except ImportError:
        return asyncio.run(_main(config))
    return uvloop.run(_main(config))
