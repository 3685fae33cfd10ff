"""Bus mode (``--bus``): one small message per trigger on Redis pub/sub instead of a fan-out.

    triggers ─▶ Bus.publish ─▶ Redis channel ─▶ Bus.run on every other node ─▶ local dispatcher
                                                                               ─▶ its own NGINX

Why: with direct fan-out every agent must know every peer and sends N-1 requests per change.
On the bus each agent publishes once and refreshes only the NGINX beside it (``--local``), so
the refresh header needs to be accepted from loopback alone and no peer list is kept anywhere.

A message is a JSON object with a version ``v`` (only :data:`VERSION` is understood; others are
counted and skipped, so a fleet can be upgraded node by node), the URL (``scheme``, ``host``,
``target``), the publisher's refresh ``method`` (for the record: a receiver refreshes with its
own settings), ``source`` (the publisher's ``ADDRESS:PORT`` for origin offload, or null: the
``Refresh.holder``),
``time`` (the triggering line's), ``variant`` (the triggering class with ``--variant``, or
null; absent from older agents' messages) and ``node``, the publisher's id: a node ignores its
own messages. Pub/sub keeps nothing: what is published while a node is disconnected is lost to it.

:class:`Bus` owns two Redis connections (publishing and the subscription) and reconnects the
subscription with exponential backoff and jitter; while it is down, triggers are counted as
``bus_unavailable`` and handed to the fallback (a direct fan-out when peers are configured).
It stops when its task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from logwarden.model import Refresh
from logwarden.ops.metrics import BUS_PUBLISH_OUTCOMES, BUS_RECEIVE_OUTCOMES, Metrics

if TYPE_CHECKING:  # imported when a Bus is made: ~7 MiB of RSS an agent without --bus saves
    import redis.asyncio as redis

log = logging.getLogger(__name__)

VERSION = 1
MAX_MESSAGE_BYTES = 16384
"""A message carries one URL of at most --max-target-bytes (8 KiB by default): anything
larger is not ours."""
PUBLISH_QUEUE = 10000
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
"""Reconnect delays (doubling, ±50% jitter): a restarted Redis is noticed within ~2 s."""
_POLL = 1.0  # seconds between health checks of an idle subscription


class UnknownVersion(ValueError):
    """A message of a version this node does not understand."""


def parse_bus_url(url: str) -> None:
    """Raise ValueError unless ``url`` is ``redis(s)://HOST[:PORT][/DB]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("is not a redis://HOST[:PORT][/DB] URL")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("has a bad port: ports are 1-65535")
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise ValueError("has a database that is not a number")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query or credentials (logwarden check prints it)")


def node_id() -> str:
    """Unique per running agent: a restarted agent must not take its predecessor's messages
    for its own."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def encode(refresh: Refresh, node: str, method: str) -> bytes:
    return json.dumps({
        "v": VERSION, "node": node, "scheme": refresh.scheme, "host": refresh.host,
        "target": refresh.target.decode("latin-1"), "method": method,
        "source": refresh.holder, "time": refresh.logged_at or time.time(),
        "variant": refresh.variant,
    }, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[str, Refresh]:
    """``(node, refresh)`` from a message; UnknownVersion or ValueError (RecursionError for
    deeply nested JSON) when unusable."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    msg = json.loads(data)
    if not isinstance(msg, dict) or "v" not in msg:
        raise ValueError("not a logwarden message")
    if msg["v"] != VERSION:
        raise UnknownVersion(f"version {msg['v']!r}")
    node, scheme, host, target = (_text(msg, k) for k in ("node", "scheme", "host", "target"))
    holder, logged_at, variant = msg.get("source"), msg.get("time"), msg.get("variant")
    if not (variant is None or isinstance(variant, str)):
        raise ValueError("bad field")
    if scheme not in ("http", "https") or not (holder is None or isinstance(holder, str)) \
            or not (logged_at is None or isinstance(logged_at, int | float)):
        raise ValueError("bad field")
    return node, Refresh(scheme, host, target.encode("latin-1"), "bus",
                         float(logged_at) if logged_at else None, holder or None, variant)


def _client(url: str) -> redis.Redis:
    """No retries inside the client: a failure must surface in :class:`Bus`, to be counted
    and to fall back, not hide behind the client's own reconnect loop."""
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2,
                                health_check_interval=5, retry=Retry(NoBackoff(), 0))


def _text(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} missing")
    return value


class Bus:
    """Publishes this node's triggers and hands the other nodes' to ``receive``.

    A router's target (:class:`logwarden.route.router.Target`): the router admits what is
    published. ``receive`` (the receiving side's admission of a message, to the local
    dispatcher) returns False when it refused a refresh;
    ``fallback`` gets the triggers that could not be published. ``accept_holder``: keep the
    publisher's address (origin offload), else refresh the local NGINX from the origin.
    """

    def __init__(self, url: str, channel: str, metrics: Metrics, *, method: str,
                 receive: Callable[[Refresh], bool], fallback: Callable[[Refresh], object],
                 accept_holder: bool = False, node: str | None = None) -> None:
        self.url = url
        self.channel = channel
        self.node = node or node_id()
        self.method = method
        self.receive = receive
        self.fallback = fallback
        self.accept_holder = accept_holder
        self.metrics = metrics
        self.connected = False
        self._queue: asyncio.Queue[Refresh] = asyncio.Queue(PUBLISH_QUEUE)
        self._published = {o: metrics.bus_published.labels(o) for o in BUS_PUBLISH_OUTCOMES}
        self._received = {o: metrics.bus_received.labels(o) for o in BUS_RECEIVE_OUTCOMES}
        self._delay = BACKOFF_MIN
        self._told = False
        # Two clients, so that a new subscription can drop the publisher's pooled connections
        # to a Redis that went away, instead of failing the next publish on one of them.
        self._client = _client(url)
        self._subscriber = _client(url)
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError)

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

    async def run(self) -> None:
        """Publish and stay subscribed until cancelled."""
        publisher = asyncio.create_task(self._publish_loop(), name="bus publish")
        try:
            await self._subscribe_loop()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            self._set_connected(False)
            await self._client.aclose()
            await self._subscriber.aclose()

    async def _publish_loop(self) -> None:
        while True:
            refresh = await self._queue.get()
            try:
                receivers = await self._client.publish(
                    self.channel, encode(refresh, self.node, self.method))
            except self._errors as exc:
                log.debug("publish to %s failed: %s", self.url, exc)
                self._unavailable(refresh)
            else:
                self._published["ok"].inc()
                self.metrics.bus_receivers.set(receivers)

    async def _subscribe_loop(self) -> None:
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self._listen(pubsub)
            except self._errors as exc:
                self._lost(exc)
            delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))

    async def _listen(self, pubsub: redis.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=_POLL)
            if message is None:
                continue
            if message["type"] == "subscribe":
                await self._client.connection_pool.disconnect(inuse_connections=False)
                self._set_connected(True)
                self._delay = BACKOFF_MIN
            elif message["type"] == "message":
                self._received[self._handle(message["data"])].inc()

    def _handle(self, data: bytes) -> str:
        try:
            node, refresh = decode(data)
        except UnknownVersion as exc:
            log.debug("bus message of unknown %s skipped", exc)
            return "unknown_version"
        except (ValueError, RecursionError):  # deep nesting: json raises RecursionError
            return "malformed"
        if node == self.node:
            return "own"
        if not self.accept_holder and refresh.holder:
            refresh = refresh._replace(holder=None)
        return "ok" if self.receive(refresh) else "refused"

    def _lost(self, exc: BaseException) -> None:
        """Say so once per outage (and at a start without Redis), not at every retry."""
        if self.connected or not self._told:
            log.warning("bus %s unreachable (%s): retrying; meanwhile triggers count as "
                        "bus_unavailable", self.url, exc)
            self._told = True
        else:
            log.debug("bus %s still unreachable: %s", self.url, exc)
        self._set_connected(False)

    def _set_connected(self, up: bool) -> None:
        if up and not self.connected:
            log.info("bus %s: subscribed to %r as %s", self.url, self.channel, self.node)
            self._told = False
        self.connected = up
        self.metrics.bus_connected.set(1 if up else 0)
