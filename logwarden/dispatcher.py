"""Fan refreshes out to the other peers: one bounded queue and worker set per peer.

Each peer is isolated: a dead or slow peer fills only its own queue (new refreshes for it are
dropped and counted) and holds only its own workers, so live peers keep being refreshed and
the log keeps being read. A global semaphore bounds the requests in flight across all peers.

Stopping: :meth:`Dispatcher.close` lets the workers finish what is queued until the deadline,
then cancels them and counts what was cut off as ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from logwarden.metrics import Metrics
from logwarden.triggers import USER_AGENT, Refresh

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DispatchSettings:
    """What the dispatcher needs from the config, and nothing else."""

    method: str = "HEAD"
    header: tuple[str, str] = ("X-Refresh", "1")
    timeout: float = 5.0
    concurrency: int = 64
    peer_concurrency: int = 8
    queue_size: int = 10000


_PRINTABLE = bytes(range(0x21, 0x7F))


class _ExactTargetURL(httpx.URL):
    """An httpx URL whose request target is sent byte for byte.

    httpx normalises the path (``/a/./b`` becomes ``/a/b``, RFC 3986 §5.2.4) and re-quotes
    characters outside its safe set; NGINX keys its cache on the raw ``$request_uri``, so a
    refresh must carry exactly the bytes the client sent, or it refreshes another entry.
    The transport reads ``raw_path`` to build the request line.
    """

    def __init__(self, base: str, target: bytes) -> None:
        super().__init__(base)
        self._target = target

    @property
    def raw_path(self) -> bytes:
        return self._target


def request_target_ok(target: bytes) -> bool:
    """Only printable ASCII can be replayed: anything else could inject into the request line
    (CR, LF, NUL, spaces), and HTTP/1.1 (h11) refuses raw bytes >= 0x80 in a target, which
    NGINX does accept; percent-encoding them would refresh a different cache entry."""
    return target.startswith(b"/") and not target.translate(None, _PRINTABLE)


def host_ok(host: str) -> bool:
    return bool(host) and not any(ord(c) <= 0x20 or ord(c) == 0x7F or c in "/\\" for c in host)


class Peer:
    """One peer: its queue, its workers and its connection pool."""

    def __init__(self, url: str, settings: DispatchSettings, metrics: Metrics,
                 slots: asyncio.Semaphore, tls: ssl.SSLContext) -> None:
        self.url = url
        self.base = url.rstrip("/")
        self.settings = settings
        self.metrics = metrics
        self.slots = slots
        self.queue: asyncio.Queue[Refresh] = asyncio.Queue(settings.queue_size)
        self._busy = 0
        self.failing = False
        limits = httpx.Limits(max_connections=settings.peer_concurrency,
                              max_keepalive_connections=settings.peer_concurrency)
        self.client = httpx.AsyncClient(
            timeout=settings.timeout, limits=limits, follow_redirects=False, trust_env=False,
            verify=tls)
        self.workers: list[asyncio.Task[None]] = []
        metrics.init_peer(url)

    def start(self) -> None:
        name = urlsplit(self.url).netloc
        self.workers = [asyncio.create_task(self._work(), name=f"peer {name} #{i}")
                        for i in range(self.settings.peer_concurrency)]

    def offer(self, refresh: Refresh) -> None:
        try:
            self.queue.put_nowait(refresh)
        except asyncio.QueueFull:
            self.metrics.refreshes.labels(self.url, "dropped").inc()

    async def _work(self) -> None:
        while True:
            refresh = await self.queue.get()
            self._busy += 1
            try:
                async with self.slots:
                    outcome = await self.send(refresh)
                self.metrics.refreshes.labels(self.url, outcome).inc()
                self._note(outcome)
            finally:
                self._busy -= 1
                self.queue.task_done()

    def _note(self, outcome: str) -> None:
        """Log when the peer starts and stops failing, not every failed request."""
        failing = outcome != "ok"
        if failing != self.failing:
            self.failing = failing
            if failing:
                log.warning("peer %s is failing (%s); see logwarden_refreshes_total", self.url,
                            outcome)
            else:
                log.info("peer %s answers again", self.url)

    async def send(self, refresh: Refresh) -> str:
        """Send one refresh request; returns its outcome label. Never raises for I/O errors."""
        name, value = self.settings.header
        request = self.client.build_request(
            self.settings.method, self.base,
            headers={"Host": refresh.host, name: value, "User-Agent": USER_AGENT})
        request.url = _ExactTargetURL(self.base, refresh.target)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await self.client.send(request, stream=True)
                try:
                    async for _ in response.aiter_raw():
                        pass  # a GET refresh: drain the body so the connection is reused
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            outcome = "timeout"
        except httpx.RemoteProtocolError:
            outcome = "http_error"
        except httpx.TransportError:
            outcome = "connect_error"
        else:
            outcome = "ok" if response.status_code < 400 else "http_error"
        self.metrics.refresh_duration.labels(self.url).observe(time.perf_counter() - started)
        log.debug("refresh %s %s%s host=%s -> %s", self.settings.method, self.url,
                  refresh.target.decode("latin-1"), refresh.host, outcome)
        return outcome

    async def close(self, deadline: float) -> int:
        """Finish queued work until the loop-time ``deadline``; returns requests cut off."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.queue.join()
        cut = self._busy + self.queue.qsize()
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        if cut:
            self.metrics.refreshes.labels(self.url, "dropped").inc(cut)
        await self.client.aclose()
        return cut


class Dispatcher:
    """Hands each refresh to every target peer's queue."""

    def __init__(self, peers: tuple[str, ...], settings: DispatchSettings,
                 metrics: Metrics) -> None:
        self.metrics = metrics
        slots = asyncio.Semaphore(settings.concurrency)
        tls = ssl.create_default_context()  # one for all peers: each load costs ~30-150 ms
        self.peers = [Peer(url, settings, metrics, slots, tls) for url in peers]

    def start(self) -> None:
        for peer in self.peers:
            peer.start()

    def submit(self, refresh: Refresh) -> bool:
        """Queue the refresh for every peer; False if it was refused as unsafe to replay."""
        if not (request_target_ok(refresh.target) and host_ok(refresh.host)):
            for peer in self.peers:
                self.metrics.refreshes.labels(peer.url, "refused").inc()
            return False
        for peer in self.peers:
            peer.offer(refresh)
        return True

    def depth(self) -> int:
        return sum(peer.queue.qsize() for peer in self.peers)

    async def close(self, timeout: float) -> int:
        """Drain every peer within ``timeout`` seconds; returns how many refreshes were cut off."""
        deadline = _now() + timeout
        cut = sum(await asyncio.gather(*(peer.close(deadline) for peer in self.peers)))
        if cut:
            log.warning("shutdown deadline reached: %d refresh requests cut off", cut)
        return cut


def _now() -> float:
    return asyncio.get_running_loop().time()
