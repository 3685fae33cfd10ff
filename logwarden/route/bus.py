"""Bus mode (``--bus``): one signed entry per trigger on a Redis stream instead of a fan-out.

    triggers ─▶ Bus.submit ─XADD─▶ Redis stream ─XREAD─▶ Bus on every node ─▶ local dispatcher
                                                                             ─▶ its own NGINX

Why: with direct fan-out every agent must know every peer and sends N-1 requests per change.
On the bus each agent publishes once and refreshes only the NGINX beside it (``--local``), so
the refresh header needs to be accepted from loopback alone and no peer list is kept anywhere.

Why a stream, not pub/sub: pub/sub keeps nothing, so a node whose connection drops misses
what is published meanwhile and keeps serving old copies. A stream keeps the last
``--bus-maxlen`` entries (``XADD MAXLEN ~``), and each node reads on from the last entry it
handled, which it saves with the positions (:class:`logwarden.sources.positions.BusMark`):
after a reconnect or a restart it catches up, at least once. Bounded all the same: entries
published more than ``--max-line-age`` ago are skipped (``too_old``), the backlog stays in
Redis and is read at most ``--max-refresh-rate`` entries a second (the token bucket; a
backlog after a downtime must not storm the origin), and a URL repeated within
``--dedup-window`` is refreshed once. Entries are signed (:mod:`logwarden.route.busmessage`).

What is behind and what was lost comes from ``XINFO STREAM``'s ``entries-added`` (Redis 7.0
or later): the mark keeps that count as of the last entry handled, so ``entries-added`` minus
it is how many are behind, and entries removed from the stream beyond it were trimmed before
this node read them. Both are read in one transaction with the batch they describe.

:class:`Bus` owns two Redis clients (publishing and reading) and reconnects with exponential
backoff and jitter; while Redis is away, triggers are counted as ``bus_unavailable`` and handed
to the fallback (a direct fan-out when peers are configured). It stops when its task is
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logwarden.model import Refresh
from logwarden.ops.metrics import BUS_PUBLISH_OUTCOMES, BUS_RECEIVE_OUTCOMES, Metrics
from logwarden.route.busmessage import Rejected, check, decode, entry, verified
from logwarden.route.busredis import BusAddress, Servers, TlsFiles, settings_problem
from logwarden.route.storm import TokenBucket
from logwarden.sources.positions import BusMark, Positions

if TYPE_CHECKING:

    from logwarden.config import Config

log = logging.getLogger(__name__)

PUBLISH_QUEUE = 10000
PUBLISH_BATCH = 100
"""Entries sent in one pipeline when triggers come faster than Redis answers."""
READ_COUNT = 100
BLOCK_MS = 1000
"""How long one XREAD waits for a new entry before the reader looks at the stream again."""
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
"""Reconnect delays (doubling, ±50% jitter): a restarted Redis is noticed within ~2 s."""


class BusError(RuntimeError):
    """A bus setting that no retry fixes (login refused, certificate not trusted)."""


@dataclass(frozen=True)
class BusSettings:
    address: BusAddress
    tls: TlsFiles
    stream: str
    secrets: tuple[bytes, ...]
    """The first signs; every one is accepted (rolling the secret)."""
    maxlen: int
    max_skew: float
    max_age: float
    rate: float
    burst: int
    method: str
    accept_holder: bool
    """Keep the publisher's address (origin offload), else refresh from the origin."""

    @classmethod
    def from_config(cls, cfg: Config) -> BusSettings:
        assert cfg.bus_address is not None
        return cls(cfg.bus_address, TlsFiles(cfg.bus_ca, cfg.bus_cert, cfg.bus_key),
                   cfg.bus_channel, cfg.bus_secrets, cfg.bus_maxlen, cfg.bus_max_skew,
                   cfg.max_line_age, cfg.max_refresh_rate, cfg.max_refresh_burst,
                   cfg.refresh_method, cfg.refresh_from_self)


def node_id() -> str:
    """Unique per running agent: a restarted agent must not take its predecessor's messages
    for its own."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _id_time(entry_id: bytes) -> float:
    """When Redis added an entry: its ID's milliseconds."""
    return int(entry_id.partition(b"-")[0]) / 1000


def _after(a: str, b: str) -> bool:
    """Stream ID ``a`` comes after ``b``."""
    ms_a, _, seq_a = a.partition("-")
    ms_b, _, seq_b = b.partition("-")
    return (int(ms_a), int(seq_a or 0)) > (int(ms_b), int(seq_b or 0))


class Bus:
    """Publishes this node's triggers and hands the other nodes' to ``receive``.

    A router's target (:class:`logwarden.route.router.Target`): the router admits what is
    published. ``receive`` (the receiving side's admission of a refresh, to the local
    dispatcher) returns the router's refusal or None; ``fallback`` gets the triggers that
    could not be published. ``positions`` keeps where this node is in the stream.
    """

    def __init__(self, settings: BusSettings, metrics: Metrics, positions: Positions, *,
                 receive: Callable[[Refresh], str | None],
                 fallback: Callable[[Refresh], object], node: str | None = None) -> None:
        self.settings = s = settings
        self.shown = s.address.shown
        self.node = node or node_id()
        self.receive = receive
        self.fallback = fallback
        self.metrics = metrics
        self.positions = positions
        self.connected = False
        self.mark = positions.bus(s.stream)
        """The last entry handled; None until the stream was first seen."""
        self._bucket = TokenBucket(s.rate, s.burst)
        self._queue: asyncio.Queue[Refresh] = asyncio.Queue(PUBLISH_QUEUE)
        self._published = {o: metrics.bus_published.labels(o) for o in BUS_PUBLISH_OUTCOMES}
        self._received = {o: metrics.bus_received.labels(o) for o in BUS_RECEIVE_OUTCOMES}
        self._delay = BACKOFF_MIN
        self._told = False
        self._servers = Servers(s.address, s.tls)
        # Two clients, so that a new read connection can drop the publisher's pooled
        # connections to a Redis that went away (or a master that failed over), instead of
        # failing the next publish on one of them.
        self._client = self._servers.client(f"logwarden-publish-{self.node}")
        self._reader = self._servers.client(f"logwarden-read-{self.node}")
        from redis.exceptions import RedisError, ResponseError

        self._errors = (RedisError, OSError)
        self._response_error = ResponseError

    def has_listener(self, scheme: str) -> bool:
        """Any scheme: the receiving nodes admit what their own NGINX can take."""
        return True

    def refuse(self, refresh: Refresh) -> None:
        """Not published: every receiver would refuse it too."""
        self._published["refused"].inc()

    def submit(self, refresh: Refresh) -> None:
        """Queue ``refresh`` for the bus; never waits. While the bus is down it goes to the
        fallback at once."""
        if not self.connected:
            self._unavailable(refresh)
            return
        try:
            self._queue.put_nowait(refresh)
        except asyncio.QueueFull:
            self._published["dropped"].inc()

    def _unavailable(self, refresh: Refresh) -> None:
        self._published["bus_unavailable"].inc()
        self.fallback(refresh)

    async def start(self) -> None:
        """Log in once before any line is read: BusError for what no retry fixes. A Redis
        not reachable yet is only said; :meth:`run` keeps trying."""
        try:
            self._place(await self._stream_info())
        except self._errors as exc:
            problem = settings_problem(exc)
            if problem is not None:
                await self._servers.aclose()
                raise BusError(self._masked(f"bus {self.shown} {problem}")) from None
            self._lost(exc)

    async def run(self) -> None:
        """Publish and read until cancelled."""
        publisher = asyncio.create_task(self._publish_loop(), name="bus publish")
        try:
            await self._read_loop()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            self._set_connected(False)
            await self._servers.aclose()

    async def _publish_loop(self) -> None:
        s = self.settings
        while True:
            batch = [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for refresh in batch:
                        pipe.xadd(s.stream, entry(refresh, self.node, s.method, time.time(),
                                                  s.secrets[0], s.stream),  # type: ignore[arg-type]
                                  maxlen=s.maxlen, approximate=True)
                    await pipe.execute()
            except self._errors as exc:
                log.debug("publish to %s failed: %s", self.shown, self._masked(str(exc)))
                for refresh in batch:
                    self._unavailable(refresh)
            else:
                self._published["ok"].inc(len(batch))

    async def _read_loop(self) -> None:
        while True:
            try:
                await self._follow()
            except self._errors as exc:
                self._lost(exc)
            delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))

    async def _follow(self) -> None:
        """Catch up from the mark, then read new entries as they come; returns never."""
        catching_up = True
        while True:
            if self.mark is None:
                self._place(await self._stream_info())
                continue
            info, entries = await self._snapshot(self.mark.id)
            if not self.connected:
                await self._client.connection_pool.disconnect(inuse_connections=False)
                self._set_connected(True)
            self._place(info)
            if not entries:
                catching_up = False
                if info is not None:  # nothing after the mark: every entry added is behind it
                    self._move(BusMark(self.mark.id, info["entries-added"]))
                self.metrics.bus_behind.set(0)
                entries = await self._wait(self.mark.id)
            await self._handle_all(entries, catching_up)
            if info is not None:
                self.metrics.bus_behind.set(max(0, info["entries-added"] - self.mark.offset))

    async def _stream_info(self) -> dict[str, Any] | None:
        """``XINFO STREAM``, or None while the stream does not exist."""
        try:
            info: dict[str, Any] = await self._reader.xinfo_stream(self.settings.stream)
        except self._response_error as exc:
            if "no such key" in str(exc):
                return None
            raise
        return info

    async def _snapshot(self, after: str) -> tuple[dict[str, Any] | None, list[Any]]:
        """The stream's state and the entries after ``after``, in one transaction."""
        stream = self.settings.stream
        async with self._reader.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(stream)
            pipe.xread({stream: after}, count=READ_COUNT)
            info, read = await pipe.execute(raise_on_error=False)
        if isinstance(read, Exception):
            raise read
        if isinstance(info, Exception):
            if "no such key" not in str(info):
                raise info
            info = None
        return info, read[0][1] if read else []

    async def _wait(self, after: str) -> list[Any]:
        read: Any = await self._reader.xread({self.settings.stream: after}, count=READ_COUNT,
                                        block=BLOCK_MS)
        return read[0][1] if read else []

    def _place(self, info: dict[str, Any] | None) -> None:
        """Put the mark at the stream's end when there is none (a node that never read the
        stream starts there) or when it is past the end (a failover lost the last entries,
        or the stream was made anew); count the entries trimmed before they were read."""
        added = info["entries-added"] if info is not None else 0
        last = info["last-generated-id"].decode() if info is not None else "0-0"
        if self.mark is not None and _after(self.mark.id, last):
            log.warning("bus %s: the stream %r ends at %s, before this node's mark %s (a "
                        "failover lost entries, or the stream was made anew): reading on "
                        "from its end", self.shown, self.settings.stream, last, self.mark.id)
            self.mark = None
        if self.mark is None:
            self._move(BusMark(last, added))
            return
        if info is not None:
            gone = added - info["length"] - self.mark.offset
            if gone > 0:
                log.warning("bus %s: %d entries were trimmed from the stream before this node "
                            "read them (raise --bus-maxlen)", self.shown, gone)
                self.metrics.bus_trimmed.inc(gone)
                self._move(BusMark(self.mark.id, self.mark.offset + gone))

    def _move(self, mark: BusMark) -> None:
        if mark != self.mark:
            self.mark = mark
            self.positions.commit_bus(self.settings.stream, mark)

    async def _handle_all(self, entries: list[Any], catching_up: bool) -> None:
        for entry_id, fields in entries:
            self._received[await self._handle(entry_id, fields)].inc()
            if catching_up:
                self.metrics.bus_catchup.inc()
            assert self.mark is not None
            self._move(BusMark(entry_id.decode(), self.mark.offset + 1))

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> str:
        s = self.settings
        try:
            node, sent, refresh = decode(verified(fields, s.secrets, s.stream))
            if node == self.node:
                return "own"
            check(sent, _id_time(entry_id), time.time(), max_skew=s.max_skew,
                  max_age=s.max_age)
        except Rejected as exc:
            log.debug("bus entry %s skipped: %s", entry_id.decode(), exc)
            return exc.outcome
        if not s.accept_holder and refresh.holder:
            refresh = refresh._replace(holder=None)
        while not self._bucket.take():
            await asyncio.sleep(self._bucket.wait())
        reason = self.receive(refresh)
        return "ok" if reason is None else "deduplicated" if reason == "deduplicated" \
            else "refused"

    def _masked(self, text: str) -> str:
        password = self.settings.address.password
        return text.replace(password, "***") if password else text

    def _lost(self, exc: BaseException) -> None:
        """Say so once per outage (and at a start without Redis), not at every retry."""
        said = self._masked(settings_problem(exc) or f"unreachable ({exc})")
        if self.connected or not self._told:
            log.warning("bus %s %s: retrying; meanwhile triggers count as bus_unavailable",
                        self.shown, said)
            self._told = True
        else:
            log.debug("bus %s still %s", self.shown, said)
        self._set_connected(False)

    def _set_connected(self, up: bool) -> None:
        if up and not self.connected:
            log.info("bus %s: reading stream %r as %s", self.shown, self.settings.stream,
                     self.node)
            self._told = False
            self._delay = BACKOFF_MIN
        self.connected = up
        self.metrics.bus_connected.set(1 if up else 0)
