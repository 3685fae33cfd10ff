"""Dispatcher against real HTTP peers on loopback: exact bytes, isolation, retries, breaker,
refresh modes, coalescing, the router's refusals in front of it, outcomes, drain."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

import pytest

from logwarden.deliver.breaker import Breaker
from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
from logwarden.deliver.modes import Bypass, Purge, Variants, parse_variant, refreshed, verified_by
from logwarden.deliver.peerhttp import Answer, PeerClient, host_port
from logwarden.model import (
    USER_AGENT,
    Refresh,
    escaped,
    host_ok,
    refusal_reason,
    replayable,
    request_target_ok,
)
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat
from logwarden.route.router import Router
from logwarden.route.storm import StormControl
from tests.peers import RecordingPeer, dead_url, silent_url

DONE = ("ok", "not_cached", "not_refreshed", "unverified", "http_error", "timeout",
        "connect_error", "tls_error", "skipped")


def refresh(target: bytes = b"/a?b=1", host: str = "www.example.com") -> Refresh:
    return Refresh("http", host, target, "MISS")


def count(m: Metrics, peer: str, outcome: str) -> float:
    value = m.registry.get_sample_value(
        "logwarden_refreshes_total", {"peer": peer, "outcome": outcome})
    return value or 0.0


async def settle(d: Dispatcher, m: Metrics, expected: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while sum(count(m, p.url, o) for p in d.peers for o in DONE) < expected:
            await asyncio.sleep(0.01)


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


async def test_target_host_and_headers_are_sent_exactly() -> None:
    targets = [b"/basic/enc1?a=1&b=2", b"/basic/enc1?b=2&a=1", b"/basic/enc%31?a=1",
               b"/basic/./enc1?a=1", b"/basic//enc1?a=1", b"/x/%0d%0a?q=%22x%22", b"/q?\"x\"|{}`^",
               b"/caf\xc3\xa9?x=1", b"/\x80\xfe\xff"]  # raw UTF-8 and any byte >= 0x80

    peer = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(mode=Bypass(header=("X-Refresh", "1"))), m)
    d.start()
    for t in targets:
        d.submit(refresh(t, host="static.example.com"))
    await settle(d, m, len(targets))
    await d.close(1)
    await peer.close()
    peer = peer
    assert sorted(peer.request_lines()) == sorted(b"HEAD %s HTTP/1.1" % t for t in targets)
    h = peer.headers(0)
    assert h[b"host"] == b"static.example.com"
    assert h[b"x-refresh"] == b"1"
    assert h[b"user-agent"] == USER_AGENT.encode()


async def test_get_method_and_custom_header() -> None:
    peer = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(mode=Bypass("GET", ("X-Warm", "yes"))), m)
    d.start()
    d.submit(refresh())
    await settle(d, m, 1)
    await d.close(1)
    await peer.close()
    assert count(m, peer.url, "ok") == 1
    peer = peer
    assert peer.request_lines() == [b"GET /a?b=1 HTTP/1.1"]
    assert peer.headers(0)[b"x-warm"] == b"yes"


async def test_injection_is_refused_and_counted() -> None:
    peer = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(), m)
    route = Router(d, m).route
    d.start()
    assert route(refresh(b"/a\r\nX-Evil: 1")) == "refused"
    assert route(refresh(b"/a b")) == "refused"
    assert route(refresh(b"/a", host="evil\r\nx: y")) == "refused"
    assert route(refresh(b"/a\x00")) == "refused"
    assert route(refresh(b"/a\x7f")) == "refused"
    assert route(refresh(b"/a", host="caf\u00e9.example")) == "refused"  # no Host, no SNI
    await d.close(1)
    await peer.close()
    assert count(m, peer.url, "refused") == 6
    assert peer.heads == []


async def test_the_client_sends_raw_utf8_exactly_and_keeps_its_connection() -> None:
    """The target goes into the request line as it is (bytes >= 0x80 too), and the connection
    is kept alive across methods (a HEAD's answer has no body to wait for)."""
    peer = await RecordingPeer().start()
    client = PeerClient(*host_port(peer.url), None, 1)
    target = b"/caf\xc3\xa9?x=1"
    for method in ("HEAD", "GET", "PURGE"):
        answer = await client.fetch(method, target, "www.example.com", [("X-A", "1")],
                                    max_body=10)
        assert (answer.status, answer.body) == (200, b"" if method == "HEAD" else b"ok")
    with pytest.raises(ValueError, match="cannot be sent byte for byte"):
        await client.fetch("GET", b"/a\r\nX-Evil: 1", "www.example.com", [])
    await client.aclose()
    await peer.close()
    assert peer.request_lines() == [b"%s /caf\xc3\xa9?x=1 HTTP/1.1" % m
                                    for m in (b"HEAD", b"GET", b"PURGE")]
    assert peer.heads[1] == (b"GET /caf\xc3\xa9?x=1 HTTP/1.1\r\nHost: www.example.com\r\n"
                             b"X-A: 1\r\n\r\n")
    assert peer.connections == 1


async def test_dead_and_stalled_peers_do_not_hold_up_the_live_one() -> None:
    live = await RecordingPeer().start()
    stalled = await RecordingPeer(delay=30).start()
    failing = await RecordingPeer(status=503).start()
    dead = dead_url()
    m = Metrics()
    d = Dispatcher((dead, stalled.url, live.url, failing.url),
                   DispatchSettings(timeout=0.5, peer_concurrency=2, retries=0,
                                    breaker_failures=100), m)
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


async def test_full_peer_queue_drops_and_counts() -> None:
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


async def test_close_finishes_queued_work_within_deadline() -> None:
    slowish = await RecordingPeer(delay=0.05).start()
    m = Metrics()
    d = Dispatcher((slowish.url,), DispatchSettings(peer_concurrency=2), m)
    d.start()
    for i in range(10):
        d.submit(refresh(b"/%d" % i))
    assert await d.close(5) == 0
    assert count(m, slowish.url, "ok") == 10
    await slowish.close()


async def test_retries_502_503_504_but_never_other_4xx() -> None:
    flaky = await RecordingPeer(statuses=[503, 502]).start()
    failing = await RecordingPeer(status=504).start()
    missing = await RecordingPeer(status=404).start()
    m = Metrics()
    d = Dispatcher((flaky.url, failing.url, missing.url),
                   DispatchSettings(retries=2, retry_backoff=0.01), m)
    d.start()
    d.submit(refresh())
    await settle(d, m, 3)
    await d.close(1)
    for peer in (flaky, failing, missing):
        await peer.close()
    retries = "logwarden_refresh_retries_total"
    assert (len(flaky.heads), count(m, flaky.url, "ok"), value(m, retries, peer=flaky.url)) \
        == (3, 1, 2)
    assert (len(failing.heads), count(m, failing.url, "http_error")) == (3, 1)
    assert (len(missing.heads), count(m, missing.url, "http_error")) == (1, 1)
    assert value(m, retries, peer=missing.url) == 0


def test_breaker_opens_after_consecutive_failures_and_one_probe_closes_it() -> None:
    now = [0.0]
    b = Breaker(failures=3, cooldown=10, clock=lambda: now[0])
    assert [b.record(failed=True) for _ in range(3)] == [False, False, True]
    assert b.is_open and b.waiting() and not b.allow()
    now[0] = 10.0
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    assert not b.record(failed=True) and b.waiting()  # failed probe: cool down again
    now[0] = 20.0
    assert b.allow() and b.record(failed=False)
    assert not b.is_open and b.streak == 0
    b.record(failed=True)
    assert b.allow()  # one failure is not enough


async def test_open_breaker_skips_without_requests_then_probes() -> None:
    peer = await RecordingPeer(status=503).start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(retries=0, breaker_failures=2,
                                                breaker_cooldown=0.3), m)
    d.start()
    up = "logwarden_peer_up"
    assert value(m, up, peer=peer.url) == 1
    for i in range(4):
        d.submit(refresh(b"/%d" % i))
        await settle(d, m, i + 1)
    assert (count(m, peer.url, "http_error"), count(m, peer.url, "skipped")) == (2, 2)
    assert len(peer.heads) == 2 and value(m, up, peer=peer.url) == 0
    peer.status = 200
    await asyncio.sleep(0.35)
    d.submit(refresh(b"/probe"))
    await settle(d, m, 5)
    assert count(m, peer.url, "ok") == 1 and value(m, up, peer=peer.url) == 1
    await d.close(1)
    await peer.close()


async def _latencies(d: Dispatcher, m: Metrics, peer: RecordingPeer, tag: bytes,
                     n: int = 15) -> list[float]:
    """Seconds from submit() to the peer's answer, one refresh at a time."""
    out = []
    for i in range(n):
        before = count(m, peer.url, "ok")
        started = time.perf_counter()
        d.submit(refresh(b"/%s/%d" % (tag, i)))
        while count(m, peer.url, "ok") == before:
            await asyncio.sleep(0.001)
        out.append(time.perf_counter() - started)
    return out


async def test_faulty_peers_retry_break_and_leave_the_healthy_one_as_fast() -> None:
    """A dead peer, one that answers 503 twice then recovers, one that hangs, beside a healthy
    one, with a global pool of 2 slots they could starve. The healthy peer answers after 20 ms,
    so its latency is dominated by a stable part and the 2x comparison is not timer noise."""
    settings = DispatchSettings(timeout=0.3, retries=2, retry_backoff=0.02, breaker_failures=4,
                                breaker_cooldown=60, concurrency=2, peer_concurrency=2)

    healthy = await RecordingPeer(delay=0.02).start()
    alone_m = Metrics()
    alone = Dispatcher((healthy.url,), settings, alone_m)
    alone.start()
    baseline = statistics.median(await _latencies(alone, alone_m, healthy, b"alone"))
    await alone.close(1)

    hanging = await RecordingPeer(delay=30).start()
    flaky = await RecordingPeer(statuses=[503, 503]).start()
    dead = dead_url()
    m = Metrics()
    d = Dispatcher((dead, hanging.url, flaky.url, healthy.url), settings, m)
    d.start()
    with_faults = statistics.median(await _latencies(d, m, healthy, b"faults"))
    print(f"healthy peer latency: {baseline * 1000:.1f} ms alone, "
          f"{with_faults * 1000:.1f} ms with faulty peers")
    assert with_faults < 2 * baseline, (with_faults, baseline)

    await settle(d, m, 4 * 15, timeout=10)  # the hanging peer's breaker opens too
    up = "logwarden_peer_up"
    for peer in (dead, hanging.url):  # 3 attempts, then 1 more: 4 failures open it
        assert value(m, up, peer=peer) == 0
        assert count(m, peer, "skipped") == 13
    assert count(m, dead, "connect_error") == 2
    assert count(m, hanging.url, "timeout") == 2 and len(hanging.heads) == 4
    assert count(m, flaky.url, "ok") == 15 and value(m, up, peer=flaky.url) == 1
    assert value(m, "logwarden_refresh_retries_total", peer=flaky.url) == 2
    assert count(m, healthy.url, "ok") == 15
    await d.close(1)
    for peer in (healthy, hanging, flaky):
        await peer.close()


@pytest.mark.parametrize(("status", "outcome"), [
    (200, "ok"), (204, "ok"), (404, "not_cached"), (412, "not_cached"), (403, "http_error"),
])
async def test_purge_outcomes_are_final(status: int, outcome: str) -> None:
    peer = await RecordingPeer(status=status).start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(mode=Purge()), m)
    d.start()
    d.submit(refresh())
    await settle(d, m, 1)
    await d.close(1)
    await peer.close()
    assert count(m, peer.url, outcome) == 1
    peer = peer
    assert peer.request_lines() == [b"PURGE /a?b=1 HTTP/1.1"]
    assert peer.headers(0)[b"user-agent"] == USER_AGENT.encode()


async def test_purge_then_refresh_and_forbidden_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "logwarden.deliver.dispatcher")
    warm = await RecordingPeer(statuses=[404]).start()
    acl = await RecordingPeer(status=403).start()
    m = Metrics()
    secret = ("X-Refresh", "s3")
    d = Dispatcher((warm.url, acl.url), DispatchSettings(
        mode=Purge(header=secret, then_refresh=Bypass(header=secret))), m)
    d.start()
    for i in range(3):
        d.submit(refresh(b"/%d" % i))
    await settle(d, m, 6)
    await d.close(1)
    await warm.close()
    await acl.close()
    assert count(m, warm.url, "not_cached") == 1 and count(m, warm.url, "ok") == 2
    assert count(m, acl.url, "http_error") == 3
    lines = sorted(warm.request_lines())
    assert lines == sorted(b"%s /%d HTTP/1.1" % (m, i) for m in (b"PURGE", b"HEAD")
                           for i in range(3))
    assert {warm.headers(i)[b"x-refresh"] for i in range(6)} == {b"s3"}
    assert len(acl.heads) == 3  # the warm-up follows a purge only
    [record] = caplog.records
    assert "403" in record.getMessage() and acl.url in record.getMessage()


# --- verified refreshes ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cache", "outcome"), [
    (200, b"BYPASS", "ok"), (204, b"BYPASS", "ok"), (304, b"BYPASS", "ok"),
    (200, b"bypass", "ok"), (200, b" BYPASS ", "ok"),
    (200, b"HIT", "not_refreshed"), (200, b"STALE", "not_refreshed"),
    (200, b"UPDATING", "not_refreshed"), (200, b"REVALIDATED", "not_refreshed"),
    (200, b"EXPIRED", "not_refreshed"), (200, b"MISS", "not_refreshed"),
    (200, b"", "not_refreshed"), (200, None, "unverified"), (301, None, "unverified"),
    (404, b"BYPASS", "http_error"), (500, b"BYPASS", "http_error"), (403, None, "http_error"),
])
def test_a_bypass_is_ok_only_when_the_peer_says_bypass(
    status: int, cache: bytes | None, outcome: str,
) -> None:
    headers = [(b"x-cache-status", cache)] if cache is not None else []
    answer = Answer(status, headers, b"")
    assert verified_by("X-Cache-Status")(answer) == outcome
    assert refreshed(answer, b"x-cache-status") == outcome
    # Verification off (cache_status_header = ''): by status only, as before.
    assert verified_by("")(answer) == ("ok" if status < 400 else "http_error")


def test_the_cache_status_header_name_is_the_configured_one() -> None:
    answer = Answer(200, [(b"x-cache-status", b"BYPASS"), (b"x-cache", b"HIT")], b"")
    assert Bypass(cache_status="X-Cache").refresh.judge(answer) == "not_refreshed"
    assert Bypass(cache_status="X-Upstream-Cache").refresh.judge(answer) == "unverified"
    assert Bypass().refresh.judge(answer) == "ok"


def test_hints_match_their_outcome_and_status() -> None:
    purge = Purge().purge
    assert purge.hint("http_error", 403) is not None
    assert purge.hint("http_error", 500) is None and purge.hint("ok", 200) is None
    bypass = Bypass(header=("X-Warm", "s3cr3t")).refresh
    hint = bypass.hint("not_refreshed", 200)
    assert hint is not None and hint.level == logging.WARNING
    for fix in ("geo $logwarden_peer", '"$logwarden_peer:$http_x_warm" $logwarden_refresh',
                "X-Warm header", "proxy_cache_bypass $logwarden_refresh;"):
        assert fix in hint.text
    assert "s3cr3t" not in hint.text  # logs never show the secret
    assert bypass.hint("unverified", 200) is not None and bypass.hint("ok", 200) is None
    assert Bypass(cache_status="").refresh.hints == ()


async def test_a_deaf_peer_is_not_refreshed_named_once_and_keeps_its_breaker_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "logwarden.deliver.dispatcher")
    deaf = await RecordingPeer(cache_status="HIT").start()
    good = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((deaf.url, good.url), DispatchSettings(breaker_failures=2), m)
    d.start()
    for i in range(6):
        d.submit(refresh(b"/%d" % i))
    await settle(d, m, 12)
    await d.close(1)
    await deaf.close()
    await good.close()
    assert count(m, deaf.url, "not_refreshed") == 6 and count(m, deaf.url, "ok") == 0
    assert count(m, good.url, "ok") == 6
    assert len(deaf.heads) == 6  # an answer, not a failure: never retried, never skipped
    assert value(m, "logwarden_peer_up", peer=deaf.url) == 1
    told = [r for r in caplog.records if "answers refreshes from its cache" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.WARNING
    assert deaf.url in told[0].getMessage() and good.url not in told[0].getMessage()
    assert not [r for r in caplog.records if good.url in r.getMessage()]


async def test_a_peer_without_the_header_is_unverified_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "logwarden.deliver.dispatcher")
    silent = await RecordingPeer(cache_status=None).start()
    m = Metrics()
    d = Dispatcher((silent.url,), DispatchSettings(breaker_failures=1), m)
    d.start()
    for i in range(3):
        d.submit(refresh(b"/%d" % i))
    await settle(d, m, 3)
    await d.close(1)
    assert count(m, silent.url, "unverified") == 3
    assert value(m, "logwarden_peer_up", peer=silent.url) == 1
    [record] = caplog.records  # the hint only: unverified is not "failing"
    assert silent.url in record.getMessage() and "sends no X-Cache-Status header" in \
        record.getMessage()
    # Verification off: the same answers are ok, and nothing is said.
    caplog.clear()
    m = Metrics()
    d = Dispatcher((silent.url,), DispatchSettings(mode=Bypass(cache_status="")), m)
    d.start()
    d.submit(refresh())
    await settle(d, m, 1)
    await d.close(1)
    await silent.close()
    assert count(m, silent.url, "ok") == 1
    assert caplog.records == []


async def test_purge_then_refresh_judges_its_refresh_the_same_way() -> None:
    deaf = await RecordingPeer(cache_status="HIT").start()  # purges fine, ignores the bypass
    m = Metrics()
    d = Dispatcher((deaf.url,), DispatchSettings(mode=Purge(then_refresh=Bypass())), m)
    d.start()
    d.submit(refresh())
    await settle(d, m, 1)
    await d.close(1)
    await deaf.close()
    assert deaf.request_lines() == [b"PURGE /a?b=1 HTTP/1.1", b"HEAD /a?b=1 HTTP/1.1"]
    assert count(m, deaf.url, "not_refreshed") == 1 and count(m, deaf.url, "ok") == 0


async def test_queued_refresh_coalesces_repeats_but_one_in_flight_does_not() -> None:
    slow = await RecordingPeer(delay=0.2).start()
    m = Metrics()
    d = Dispatcher((slow.url,), DispatchSettings(), m)
    d.start()
    for _ in range(3):  # queued together: one request
        d.submit(refresh())
    await settle(d, m, 1)
    assert count(m, slow.url, "coalesced") == 2
    d.submit(refresh())  # in flight now: it may predate the change this repeat saw
    async with asyncio.timeout(2):
        while len(slow.heads) < 2:
            await asyncio.sleep(0.01)
    d.submit(refresh())  # while that one is out: sent as well, once
    d.submit(refresh())
    await settle(d, m, 3)
    await d.close(1)
    await slow.close()
    assert len(slow.heads) == 3
    assert count(m, slow.url, "coalesced") == 3


def test_storm_control_bounds_filters_and_rate() -> None:
    now = [0.0]
    storm = StormControl(rate=10, burst=5, max_target_bytes=20, only=[r"^/(a|b)/"],
                         skip=[r"\.m3u8$", r"nocache=1"], clock=lambda: now[0])

    def change(target: bytes) -> Refresh:  # a stored copy replaced: may take every token
        return Refresh("http", "www.example.com", target, "EXPIRED")

    assert storm.refusal(refresh(b"/a/" + b"x" * 20)) == "too_long"
    assert storm.refusal(refresh(b"/c/1")) == "filtered"
    assert storm.refusal(refresh(b"/a/x.m3u8")) == "filtered"
    assert storm.refusal(refresh(b"/b/1?nocache=1")) == "filtered"
    assert [storm.refusal(change(b"/a/%d" % i)) for i in range(6)] == [None] * 5 + ["rate"]
    now[0] = 0.25  # 2.5 tokens
    assert [storm.refusal(change(b"/b/%d" % i)) for i in range(3)] == [None, None, "rate"]
    now[0] = 100.0  # refills up to the burst only
    assert [storm.refusal(change(b"/b/%d" % i)) for i in range(6)] == [None] * 5 + ["rate"]
    now[0] = 200.0  # a first copy (MISS) leaves the reserve (a quarter: 1 of 5) to changes
    assert [storm.refusal(refresh(b"/a/m%d" % i)) for i in range(5)] == [None] * 4 + ["rate"]
    assert storm.refusal(change(b"/a/c")) is None
    assert StormControl(rate=0, burst=1, max_target_bytes=9).refusal(refresh()) is None


async def test_router_counts_what_storm_control_and_schemes_turn_away() -> None:
    peer = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(), m)
    route = Router(d, m, storm=StormControl(rate=1, burst=2, max_target_bytes=100)).route
    d.start()
    results = [route(refresh(b"/%d" % i)) for i in range(5)]
    assert route(Refresh("https", "www.example.com", b"/tls", "MISS")) == "no_listener"
    await settle(d, m, 2)
    await d.close(1)
    await peer.close()
    assert results == [None, None, "rate", "rate", "rate"]
    dropped = "logwarden_storm_dropped_total"
    assert value(m, dropped, reason="rate") == 3
    assert value(m, dropped, reason="no_listener") == 1
    assert value(m, "logwarden_refresh_fanouts_total") == 2
    assert len(peer.heads) == 2


async def test_cr_lf_after_unescaping_is_refused_but_escaped_text_is_sent() -> None:
    """NGINX logs a raw CR LF in the target as ``\\x0D\\x0A``; the parser turns it back into
    the bytes, which must never reach a request line. ``%0d%0a`` is plain text: sent as is."""
    fmt = LogFormat.compile('$host "$request" $status $upstream_cache_status')
    evil = fmt.parse(b'www.example.com "GET /a\\x0D\\x0AX-Evil:\\x201 HTTP/1.1" 200 MISS')
    text = fmt.parse(b'www.example.com "GET /a%0d%0aX-Evil:%201 HTTP/1.1" 200 MISS')
    assert evil is not None and evil.target == b"/a\r\nX-Evil: 1"
    assert text is not None and text.target == b"/a%0d%0aX-Evil:%201"

    peer = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(), m)
    route = Router(d, m).route
    d.start()
    assert route(refresh(evil.target)) == "refused"
    assert route(refresh(text.target)) is None
    await settle(d, m, 1)
    await d.close(1)
    await peer.close()
    assert count(m, peer.url, "refused") == 1
    _result = peer
    assert _result.request_lines() == [b"HEAD /a%0d%0aX-Evil:%201 HTTP/1.1"]


async def test_set_peers_keeps_queued_work_starts_new_peers_and_cuts_removed_ones() -> None:
    stays = await RecordingPeer(delay=0.05).start()
    leaves = await RecordingPeer(delay=30).start()
    joins = await RecordingPeer().start()
    m = Metrics()
    d = Dispatcher((stays.url, leaves.url), DispatchSettings(peer_concurrency=1), m)
    d.start()
    for i in range(4):
        d.submit(refresh(b"/before/%d" % i))
    await asyncio.sleep(0.02)  # one request in flight to each
    d.set_peers((stays.url, joins.url, joins.url, stays.url))
    assert d.urls == (stays.url, joins.url)
    d.submit(refresh(b"/after"))
    await settle(d, m, 6)
    await asyncio.sleep(0.05)  # the removed peer's cut-off is counted by its own task
    assert count(m, stays.url, "ok") == 5  # its queued work survived the change
    assert count(m, joins.url, "ok") == 1 and joins.request_lines() == [
        b"HEAD /after HTTP/1.1"]
    assert count(m, leaves.url, "dropped") == 4 and len(leaves.heads) == 1
    assert value(m, "logwarden_peer_up", peer=leaves.url) == 0  # the series is gone
    await d.close(1)
    for peer in (stays, leaves, joins):
        await peer.close()


async def test_propagation_is_observed_when_the_last_peer_answers() -> None:
    fast = await RecordingPeer().start()
    slow = await RecordingPeer(delay=0.2).start()
    m = Metrics()
    d = Dispatcher((fast.url, slow.url), DispatchSettings(), m, propagation=True)
    d.start()
    d.submit(Refresh("http", "www.example.com", b"/p", "MISS", time.time() - 0.5))
    d.submit(Refresh("http", "www.example.com", b"/no-time", "MISS"))
    await settle(d, m, 4)
    await d.close(1)
    await fast.close()
    await slow.close()
    assert value(m, "logwarden_propagation_seconds_count") == 1
    assert 0.7 <= value(m, "logwarden_propagation_seconds_sum") < 5


async def test_a_host_that_is_no_tls_server_name_costs_one_request_not_a_worker() -> None:
    with silent_url("https") as url:  # TCP connects; the TLS handshake never completes
        m = Metrics()
        d = Dispatcher((url,), DispatchSettings(retries=0, timeout=0.2,
                                                peer_concurrency=1), m)
        d.start()
        d.submit(Refresh("https", "a..b", b"/1", "MISS"))  # the idna codec refuses it
        d.submit(Refresh("https", "www.example.com", b"/2", "MISS"))
        await settle(d, m, 2)
        await d.close(1)
        assert (count(m, url, "tls_error"), count(m, url, "timeout")) == (1, 1)


def test_target_byte_classes() -> None:
    """Printable ASCII and bytes >= 0x80 are sent as they are; control bytes, space and DEL
    are refused, and the reason names the byte; only origin form is sent."""
    for byte in range(256):
        target = b"/a%cz" % byte
        sendable = 0x21 <= byte <= 0x7E or byte >= 0x80
        assert request_target_ok(target) is sendable, hex(byte)
        assert replayable(refresh(target)) is sendable, hex(byte)
        reason = refusal_reason(refresh(target))
        assert (reason is None) is sendable, hex(byte)
        if not sendable:
            assert reason == ("a space in the target" if byte == 0x20
                              else f"control byte 0x{byte:02X} in the target")
    for target in (b"", b"*", b"a/b", b"http://h/a", b"\xc3\xa9"):
        assert not request_target_ok(target)
        assert refusal_reason(refresh(target)) == "the target does not start with /"
    assert request_target_ok(b"/") and request_target_ok(b"/caf\xc3\xa9?x=1")
    assert refusal_reason(refresh(host="a b")) == \
        "the host is not printable ASCII without spaces, / or \\"


def test_escaped_is_nginx_log_escaping() -> None:
    assert escaped(b'/caf\xc3\xa9 "q"\\\r\n\x00\x7f~') == \
        '/caf\\xC3\\xA9 \\x22q\\x22\\x5C\\x0D\\x0A\\x00\\x7F~'
    fmt = LogFormat.compile('$host "$request" $status $upstream_cache_status')
    raw = bytes(range(0x20, 0x100))
    record = fmt.parse(b'h "GET /%s HTTP/1.1" 200 MISS' % escaped(raw).encode())
    assert record is not None and record.target == b"/" + raw  # what the parser undoes


def _host_ok_by_character(host: str) -> bool:
    """host_ok as it was first written: a test per character (the reference)."""
    return bool(host) and all(0x21 <= ord(c) < 0x7F and c not in "/\\" for c in host)


@pytest.mark.parametrize("host", [
    "", "a", "www.example.com", "[::1]", "h:80", "x" * 300, " ", "a b", "a/b", "a\\b", "/",
    "\\", "a\tb", "a\x00", "a\x7f", "a\x80", "\xe9t\xe9.example", "\u2028", "a\nb", "a\rb",
    "\U0001f600", "-_.~!$&'()*+,;=%@", "a\x1b[0m"])
def test_host_ok_table(host: str) -> None:
    assert host_ok(host) == _host_ok_by_character(host)


def test_host_ok_every_single_character() -> None:
    for code in [*range(0x300), 0x2028, 0xFEFF, 0x1F600]:
        for host in (chr(code), f"a{chr(code)}b"):
            assert host_ok(host) == _host_ok_by_character(host), hex(code)


async def test_a_peer_back_from_an_outage_gets_every_refresh_and_shows_up_without_traffic() -> None:
    """After the cool-down, refreshes arriving while the probe is out wait for its answer
    instead of being skipped; and with no refresh at all, a connect probe brings it back."""

    url = dead_url()
    port = int(url.rsplit(":", 1)[1])
    m = Metrics()
    d = Dispatcher((url,), DispatchSettings(retries=0, breaker_failures=1,
                                           breaker_cooldown=0.2), m)
    d.start()
    d.submit(refresh(b"/down"))
    await settle(d, m, 1)
    assert value(m, "logwarden_peer_up", peer=url) == 0
    peer = await RecordingPeer(port=port).start()
    await asyncio.sleep(0.25)  # past the cool-down, before the idle probe
    for i in range(10):  # the first is the probe, the rest arrive while it is out
        d.submit(refresh(b"/back/%d" % i))
    await settle(d, m, 11)
    assert (count(m, url, "ok"), count(m, url, "skipped")) == (10, 0)

    for i in range(2):  # down again, then back with no traffic at all
        d.submit(refresh(b"/500/%d" % i))
    peer.status = 503
    await settle(d, m, 13)
    assert value(m, "logwarden_peer_up", peer=url) == 0
    peer.status = 200
    async with asyncio.timeout(2):
        while value(m, "logwarden_peer_up", peer=url) != 1:
            await asyncio.sleep(0.02)
    await d.close(1)
    await peer.close()


async def test_variants_send_one_request_per_class_and_skip_the_triggering_one_here() -> None:
    peer, own = await RecordingPeer().start(), await RecordingPeer().start()
    br, gzip, none = (parse_variant(t) for t in ("Accept-Encoding: br",
                                                 "Accept-Encoding: gzip", ""))
    mode = Variants([(v, Bypass(variant=v)) for v in (br, gzip, none)])
    m = Metrics()
    d = Dispatcher((peer.url,), DispatchSettings(mode=mode), m, own=own.url)
    d.start()
    d.submit(Refresh("http", "h", b"/a", "MISS", variant="gzip", holder="10.0.0.1:80"))
    d.submit(Refresh("http", "h", b"/b", "MISS"))  # the class is not known: all of them here
    await settle(d, m, 2)
    async with asyncio.timeout(5):
        while count(m, own.url, "ok") < 2:
            await asyncio.sleep(0.01)
    await d.close(1)
    await peer.close()
    await own.close()

    def sent(p: RecordingPeer) -> list[tuple[bytes, bytes, bytes]]:
        """(target, Accept-Encoding, X-Logwarden-Source) of each request, b"" for none."""
        return [(p.request_lines()[i].split()[1], p.headers(i).get(b"accept-encoding", b""),
                 p.headers(i).get(b"x-logwarden-source", b"")) for i in range(len(p.heads))]

    assert sorted(sent(peer)) == sorted([
        (b"/a", b"br", b""), (b"/a", b"gzip", b"10.0.0.1:80"), (b"/a", b"", b""),
        (b"/b", b"br", b""), (b"/b", b"gzip", b""), (b"/b", b"", b"")])
    assert sorted(sent(own)) == sorted([  # the class its line stored is fresh there already
        (b"/a", b"br", b""), (b"/a", b"", b""),
        (b"/b", b"br", b""), (b"/b", b"gzip", b""), (b"/b", b"", b"")])
    assert value(m, "logwarden_refresh_fanouts_total") == 2
    assert count(m, peer.url, "ok") == 2 and count(m, own.url, "ok") == 2  # per fan-out
    assert {c: value(m, "logwarden_refresh_requests_total", variant=c)
            for c in ("br", "gzip", "none")} == {"br": 4, "gzip": 3, "none": 4}
    assert mode.methods == ("HEAD", "HEAD", "HEAD")


@pytest.mark.parametrize(("text", "error"), [
    ("Accept-Encoding", "must be 'Header: value'"), ("Accept Encoding: br", "must be"),
    ("Accept-Encoding:", "must be"),
])
def test_a_bad_variant_is_named(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_variant(text)
