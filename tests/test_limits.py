"""Resource bounds: what a flood of distinct URLs or a busy peer can make logwarden hold."""

from __future__ import annotations

import asyncio
import os

from logwarden.config import REPLAY, load_config
from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
from logwarden.model import Refresh
from logwarden.ops.metrics import Metrics
from logwarden.route.router import Recorder, Router
from tests.peers import RecordingPeer


def test_dedup_memory_is_bounded_by_its_size() -> None:
    config = load_config({"log_format": "$host $request $upstream_cache_status",
                          "dedup_window": 3600, "dedup_max_urls": 10_000,
                          "max_refresh_rate": 0}, needs=REPLAY)
    router = Router.from_config(config, Recorder(), Metrics())
    for i in range(1_000_000):
        assert router.route(Refresh("http", "h", b"/u/%d" % i, "MISS")) is None
    assert router.dedup is not None and len(router.dedup) == 10_000
    # The newest are the ones kept: a repeat of the last URL is still folded.
    assert router.route(Refresh("http", "h", b"/u/999999", "MISS")) == "deduplicated"
    assert router.route(Refresh("http", "h", b"/u/0", "MISS")) is None


class CountingPeer(RecordingPeer):
    """Also tracks how many connections were open at once."""

    most_open: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.most_open = max(self.most_open, len(self.writers) + 1)
        await super()._handle(reader, writer)


def _open_sockets() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
               for fd in os.listdir("/proc/self/fd") if _exists(fd))


def _exists(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return True


async def test_connections_to_a_peer_are_bounded_by_its_pool() -> None:
    pool = 4

    peer = await CountingPeer(delay=0.005).start()
    metrics = Metrics()
    dispatcher = Dispatcher([peer.url], DispatchSettings(peer_concurrency=pool), metrics)
    dispatcher.start()
    before = _open_sockets()
    for i in range(500):
        dispatcher.submit(Refresh("http", "www.example.com", b"/p/%d" % i, "MISS"))
    most = 0
    async with asyncio.timeout(10):
        while len(peer.heads) < 500:
            most = max(most, _open_sockets() - before)
            await asyncio.sleep(0.002)
    await dispatcher.close(1)
    await peer.close()
    peer_side, client_side, left = peer.most_open, most, _open_sockets() - before
    # Each client socket shows twice here (client end and the peer's end): 2 per connection.
    assert peer_side <= pool, peer_side
    assert client_side <= 2 * pool, client_side
    assert left <= 0, left
