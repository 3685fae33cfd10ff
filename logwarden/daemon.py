"""Wire the stages and own the lifecycle: start, signals, orderly drain, exit code.

    sources ─lines queue─▶ process (parse, decide, dedup) ─▶ dispatcher ─per-peer queues─▶ peers

Shutdown flows downstream: sources stop and read what is already written, the processor
drains the lines queue, the dispatcher finishes queued refreshes until the deadline and
counts what it had to cut off. A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from logwarden.config import Config, parse_listen
from logwarden.decide.origin import OriginWatch
from logwarden.decide.process import Processor, triggers_for
from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
from logwarden.model import Refresh
from logwarden.ops.metrics import Metrics, MetricsServer
from logwarden.ops.sdnotify import notify
from logwarden.parse.logformat import LogFormat
from logwarden.route.bus import Bus
from logwarden.route.discovery import PeerSource
from logwarden.route.storm import StormControl
from logwarden.sources import LineQueue, Source
from logwarden.sources.file import FileSource
from logwarden.sources.positions import Positions
from logwarden.sources.syslog import SyslogSource

log = logging.getLogger(__name__)

LINES_QUEUE_BATCHES = 8
"""Batches (of up to ~1 MiB of lines, or 1024 datagrams) between the sources and the parser.

Enough to keep the parser busy; the file is the real buffer. A queued MiB of lines cost ~1.5 MiB
of RSS (64 had a file backlog peak at 141 MiB, bench/README.md, benchmark 5); a file source's
Block is now its 1 MiB of bytes."""


class StartupError(RuntimeError):
    """logwarden cannot start; the message names the problem and the fix (exit code 2)."""


class Daemon:
    """One running logwarden. ``await run()`` returns the process exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.parser: LogFormat = config.log_format_parser()
        self.triggers = triggers_for(config)
        self.origin = OriginWatch(self.metrics, self.parser, default_host=config.default_host,
                                  host_labels=config.origin_host_labels)
        self.positions = Positions(config.positions_path)
        self.lines: LineQueue = asyncio.Queue(LINES_QUEUE_BATCHES)
        self.stopping = asyncio.Event()
        self.metrics_address: tuple[str, int] | None = None
        self.sources: list[Source] = []
        self.peer_source = PeerSource(config.peer, self_url=config.self,
                                      peers_file=config.peers_file, dns=config.peers_dns)
        self.dispatcher: Dispatcher | None = None
        self.bus: Bus | None = None
        self.local: Dispatcher | None = None
        """Bus mode: refreshes this node's own NGINX on the other nodes' messages."""
        self.storm: StormControl | None = None
        self._source = config.source
        self.reload = asyncio.Event()
        self._started = time.time()

    async def run(self) -> int:
        cfg = self.config
        self.dispatcher = dispatcher = await self._dispatcher()
        self.sources = sources = self._sources()
        _bind_listeners(sources)
        server = MetricsServer(self.metrics, self.health)
        if cfg.metrics_listen != "off":
            try:
                self.metrics_address = await server.start(*parse_listen(cfg.metrics_listen))
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise StartupError(
                    f"metrics_listen: {cfg.metrics_listen!r} cannot be served ({reason}): "
                    "is another logwarden running? Give a free --metrics-listen HOST:PORT, or "
                    "'off'") from exc
        self._install_signals()
        dispatcher.start()
        bus_task = self._start_bus(dispatcher)
        processor = asyncio.create_task(self._process(dispatcher), name="process")
        source_tasks = [asyncio.create_task(s.run(), name=f"source {s.name}") for s in sources]
        saver = asyncio.create_task(self.positions.run(cfg.positions_interval), name="positions")
        follower: list[asyncio.Task[None]] = []  # a task only when there is one to follow
        if self.peer_source.dynamic and not cfg.dry_run:
            follower.append(asyncio.create_task(self._follow_peers(dispatcher), name="peers"))
        self._announcer = asyncio.create_task(self._announce_ready(), name="ready")
        log.info("logwarden running: %d source(s), refreshing %s%s", len(sources),
                 ", ".join(dispatcher.urls), " (dry run: nothing is sent)" if cfg.dry_run else "")
        code = await self._wait([*source_tasks, *follower, *bus_task], processor)
        for s in sources:
            s.stop()
        await asyncio.gather(*source_tasks, return_exceptions=True)
        await self.lines.put(None)
        await processor
        for task in (saver, *follower, *bus_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.positions.save()
        await dispatcher.close(cfg.shutdown_timeout)
        if self.local is not None:
            await self.local.close(cfg.shutdown_timeout)
        await server.close()
        log.info("logwarden stopped: %s", self.metrics.summary())
        return code

    def _sources(self) -> list[Source]:
        cfg = self.config
        files: list[Source] = [
            FileSource(path, self.lines, self.metrics, positions=self.positions,
                       from_start=cfg.from_start, poll_interval=cfg.poll_interval,
                       rotate_wait=cfg.rotate_wait, max_line_bytes=cfg.max_line_bytes)
            for path in cfg.access_log]
        listeners: list[Source] = [
            SyslogSource(url, self.lines, self.metrics, tag=cfg.syslog_tag,
                         rcvbuf=cfg.syslog_rcvbuf, allow=cfg.syslog_allow,
                         max_line_bytes=cfg.max_line_bytes)
            for url in cfg.syslog]
        return files + listeners

    async def _dispatcher(self) -> Dispatcher:
        cfg = self.config
        settings = DispatchSettings.from_config(cfg)
        self.storm = storm = StormControl(
            rate=cfg.max_refresh_rate, burst=cfg.max_refresh_burst,
            max_target_bytes=cfg.max_target_bytes, only=cfg.only, skip=cfg.skip)
        self._settings = settings
        self.peer_source.reload_file()
        await self.peer_source.resolve()
        peers = () if cfg.dry_run else self.peer_source.current()
        # Bus mode passes storm control before publishing; the peers are only the fallback.
        bus = cfg.bus and not cfg.dry_run
        return Dispatcher(peers, settings, self.metrics, None if bus else storm,
                          propagation="msec" in self.parser.variables)

    def _start_bus(self, dispatcher: Dispatcher) -> list[asyncio.Task[None]]:
        """Bus mode: the local dispatcher and the bus task (none without --bus, or dry run)."""
        cfg = self.config
        if not cfg.bus or cfg.dry_run:
            return []
        self.local = Dispatcher([cfg.local], self._settings, self.metrics, propagation=True)
        self.local.start()

        def fallback(refresh: Refresh) -> None:
            if dispatcher.peers:
                dispatcher.submit(refresh)

        self.bus = Bus(cfg.bus, cfg.bus_channel, self.metrics, method=cfg.refresh_method,
                       receive=self.local.submit, fallback=fallback,
                       accept_source=cfg.refresh_from_self)
        log.info("bus mode: triggers go to %s channel %r; the other nodes' refresh %s%s",
                 cfg.bus, cfg.bus_channel, cfg.local,
                 " (peers are the fallback)" if dispatcher.peers else "")
        return [asyncio.create_task(self.bus.run(), name="bus")]

    def _fan_out(self, dispatcher: Dispatcher, refresh: Refresh) -> None:
        """To the peers, or on the bus (after storm control); naming this node as the source
        of the new copy with --refresh-from-self (only for URLs of --self's scheme)."""
        source = self._source
        if source is not None and source[0] == refresh.scheme:
            refresh = refresh._replace(source=source[1])
        if self.bus is None:
            dispatcher.submit(refresh)
            return
        assert self.storm is not None
        reason = self.storm.refusal(refresh)
        if reason:
            self.metrics.storm_dropped.labels(reason).inc()
            return
        self.bus.publish(refresh)

    async def _follow_peers(self, dispatcher: Dispatcher) -> None:
        """Re-read the peers file when it changes, look the DNS names up every --dns-refresh
        seconds, both at once on SIGHUP; hand a changed peer list to the dispatcher."""
        source, cfg = self.peer_source, self.config
        next_lookup = time.monotonic() + cfg.dns_refresh
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.poll_interval):
                    await self.reload.wait()
            forced = self.reload.is_set()
            self.reload.clear()
            if forced or source.file_changed():
                source.reload_file()
            if source.dns and (forced or time.monotonic() >= next_lookup):
                next_lookup = time.monotonic() + cfg.dns_refresh
                await source.resolve()
            peers = source.current()
            if peers != dispatcher.urls:
                log.info("peers now: %s", ", ".join(peers) or "none")
                dispatcher.set_peers(peers)

    async def _wait(self, tasks: list[asyncio.Task[None]], processor: asyncio.Task[None]) -> int:
        """Wait for a stop request; a stage that dies on its own is a bug: fail loudly."""
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([stop, processor, *tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done - {stop}:
            exc = task.exception() if not task.cancelled() else None
            log.error("%s ended unexpectedly", task.get_name(), exc_info=exc)
            return 1
        return 0

    async def _process(self, dispatcher: Dispatcher) -> None:
        """Parse, decide and dedup each batch inline (logwarden.decide.process, shared with
        ``replay``), then hand the refreshes on."""
        processor, m = Processor(self.parser, self.triggers, origin=self.origin), self.metrics
        depth = m.queue_depth.labels("lines")
        while (batch := await self.lines.get()) is not None:
            depth.set(self.lines.qsize())
            debug = log.isEnabledFor(logging.DEBUG)
            refreshes, tally = processor.batch(batch)
            for refresh in refreshes:
                if debug:  # every decision, so an operator can see why a URL was refreshed
                    log.debug("%s %s://%s%s", refresh.cache_status, refresh.scheme, refresh.host,
                              refresh.target.decode("latin-1"))
                self._fan_out(dispatcher, refresh)
            tally.add_to(m)
            self.origin.flush()
            if batch.checkpoint is not None:
                self.positions.commit(batch.checkpoint)
            m.queue_depth.labels("refreshes").set(dispatcher.depth())

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
            "peers": list(self.dispatcher.urls if self.dispatcher else ()),
        }
        if self.bus is not None:  # informational: a node without the bus still works
            state["bus"] = "connected" if self.bus.connected else "disconnected"
        return state

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self) -> None:
        if not self.peer_source.dynamic:
            log.info("SIGHUP: no --peers-file or --peers-dns to reload")
        self.reload.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            log.warning("%s again: exiting now", sig.name)
            os._exit(1)
        log.info("%s received: finishing queued refreshes (up to %ss)", sig.name,
                 self.config.shutdown_timeout)
        self.stopping.set()
        notify("STOPPING=1")


def _bind_listeners(sources: list[Source]) -> None:
    """A syslog address in use is a start-up error, not a source that dies later."""
    for source in sources:
        if isinstance(source, SyslogSource):
            try:
                source.bind()
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise StartupError(
                    f"syslog: {source.name!r} cannot be bound ({reason}): does another process "
                    "(rsyslog, another logwarden) listen there? Give a free --syslog URL") from exc


def run(config: Config) -> int:
    return asyncio.run(Daemon(config).run())
