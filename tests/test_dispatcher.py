"""Dispatcher against real HTTP peers on loopback: exact bytes, isolation, outcomes, drain."""

from __future__ import annotations

import asyncio

from logwarden.dispatcher import Dispatcher, DispatchSettings
from logwarden.metrics import Metrics
from logwarden.triggers import USER_AGENT, Refresh
from tests.peers import RecordingPeer, dead_url


def refresh(target: bytes = b"/a?b=1", host: str = "www.example.com") -> Refresh:
    return Refresh("http", host, target, "MISS")


def count(m: Metrics, peer: str, outcome: str) -> float:
    value = m.registry.get_sample_value(
        "logwarden_refreshes_total", {"peer": peer, "outcome": outcome})
    return value or 0.0


async def settle(d: Dispatcher, m: Metrics, expected: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while sum(count(m, p.url, o) for p in d.peers
                  for o in ("ok", "http_error", "timeout", "connect_error")) < expected:
            await asyncio.sleep(0.01)


def test_target_host_and_headers_are_sent_exactly() -> None:
    targets = [b"/basic/enc1?a=1&b=2", b"/basic/enc1?b=2&a=1", b"/basic/enc%31?a=1",
               b"/basic/./enc1?a=1", b"/basic//enc1?a=1", b"/x/%0d%0a?q=%22x%22", b"/q?\"x\"|{}`^"]

    async def go() -> RecordingPeer:
        peer = await RecordingPeer().start()
        m = Metrics()
        d = Dispatcher((peer.url,), DispatchSettings(header=("X-Refresh", "1")), m)
        d.start()
        for t in targets:
            assert d.submit(refresh(t, host="static.example.com"))
        await settle(d, m, len(targets))
        await d.close(1)
        await peer.close()
        return peer

    peer = asyncio.run(go())
    assert sorted(peer.request_lines()) == sorted(b"HEAD %s HTTP/1.1" % t for t in targets)
    h = peer.headers(0)
    assert h[b"host"] == b"static.example.com"
    assert h[b"x-refresh"] == b"1"
    assert h[b"user-agent"] == USER_AGENT.encode()


def test_get_method_and_custom_header() -> None:
    async def go() -> RecordingPeer:
        peer = await RecordingPeer().start()
        m = Metrics()
        d = Dispatcher((peer.url,), DispatchSettings(method="GET", header=("X-Warm", "yes")), m)
        d.start()
        d.submit(refresh())
        await settle(d, m, 1)
        await d.close(1)
        await peer.close()
        assert count(m, peer.url, "ok") == 1
        return peer

    peer = asyncio.run(go())
    assert peer.request_lines() == [b"GET /a?b=1 HTTP/1.1"]
    assert peer.headers(0)[b"x-warm"] == b"yes"


def test_injection_is_refused_and_counted() -> None:
    async def go() -> None:
        peer = await RecordingPeer().start()
        m = Metrics()
        d = Dispatcher((peer.url,), DispatchSettings(), m)
        d.start()
        assert not d.submit(refresh(b"/a\r\nX-Evil: 1"))
        assert not d.submit(refresh(b"/a b"))
        assert not d.submit(refresh(b"/a", host="evil\r\nx: y"))
        assert not d.submit(refresh(b"/a\x00"))
        assert not d.submit(refresh(b"/caf\xc3\xa9"))
        await d.close(1)
        await peer.close()
        assert count(m, peer.url, "refused") == 5
        assert peer.heads == []

    asyncio.run(go())


def test_dead_and_stalled_peers_do_not_hold_up_the_live_one() -> None:
    async def go() -> None:
        live = await RecordingPeer().start()
        stalled = await RecordingPeer(delay=30).start()
        failing = await RecordingPeer(status=503).start()
        dead = dead_url()
        m = Metrics()
        d = Dispatcher((dead, stalled.url, live.url, failing.url),
                       DispatchSettings(timeout=0.5, peer_concurrency=2), m)
        d.start()
        for i in range(5):
            d.submit(refresh(b"/%d" % i))
        # The live peer is done long before the stalled one's first timeout.
        async with asyncio.timeout(0.4):
            while count(m, live.url, "ok") < 5:
                await asyncio.sleep(0.01)
        await settle(d, m, 20, timeout=10)
        assert count(m, dead, "connect_error") == 5
        assert count(m, stalled.url, "timeout") == 5
        assert count(m, failing.url, "http_error") == 5
        await d.close(1)
        for p in (live, stalled, failing):
            await p.close()

    asyncio.run(go())


def test_full_peer_queue_drops_and_counts() -> None:
    async def go() -> None:
        stalled = await RecordingPeer(delay=30).start()
        m = Metrics()
        d = Dispatcher((stalled.url,), DispatchSettings(timeout=5, peer_concurrency=1,
                                                        queue_size=3), m)
        d.start()
        d.submit(refresh(b"/0"))
        await asyncio.sleep(0.05)
        for i in range(1, 10):
            d.submit(refresh(b"/%d" % i))
        await asyncio.sleep(0.1)
        # one in flight, three queued, six dropped on arrival
        assert count(m, stalled.url, "dropped") == 6
        cut = await d.close(0.2)
        assert cut == 4
        assert count(m, stalled.url, "dropped") == 10
        await stalled.close()

    asyncio.run(go())


def test_close_finishes_queued_work_within_deadline() -> None:
    async def go() -> None:
        slowish = await RecordingPeer(delay=0.05).start()
        m = Metrics()
        d = Dispatcher((slowish.url,), DispatchSettings(peer_concurrency=2), m)
        d.start()
        for i in range(10):
            d.submit(refresh(b"/%d" % i))
        assert await d.close(5) == 0
        assert count(m, slowish.url, "ok") == 10
        await slowish.close()

    asyncio.run(go())
