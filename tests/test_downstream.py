"""The caches in front (``--downstream``) against real HTTP servers on loopback: an edge's purge
byte for byte, a CDN API's template (a local server records method, path, headers and body),
batches, retries, the token bucket, the bounded queue, the breaker, bus mode's delay, drain;
then bus mode with real NGINX nodes and Redis (the edge tier itself: tests/test_edge.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Cluster, Origin, wait_until
from lab.redisserver import RedisServer, find_redis
from logwarden.config import REPLAY, ConfigError, load_config
from logwarden.deliver.downstream import (
    AfterPublish,
    Downstreams,
    PurgeSettings,
    Template,
    edge,
    read_template,
)
from logwarden.model import USER_AGENT, Refresh
from logwarden.ops.metrics import DOWNSTREAM_OUTCOMES, Metrics
from logwarden.route.router import Recorder
from tests.agents import StartAgent
from tests.cdnapi import RecordingAPI
from tests.peers import RecordingPeer, dead_url, silent_url

SECRET = "Bearer s3cr3t-t0ken"
CLOUDFLARE = {  # README "A CDN in front", with the API's host made a local server
    "name": "cloudflare",
    "method": "POST",
    "url": "API/client/v4/zones/ZONE/purge_cache",
    "auth_header_file": "cloudflare-auth",
    "body": {"files": ["{scheme}://{host}{target}"]},
}


def changed(target: bytes = b"/a?b=1", host: str = "www.example.com",
            scheme: str = "https") -> Refresh:
    return Refresh(scheme, host, target, "EXPIRED", version='e:"v2"', changed=True)


def purges(m: Metrics, name: str, outcome: str) -> float:
    return m.registry.get_sample_value(
        "logwarden_downstream_purges_total", {"downstream": name, "outcome": outcome}) or 0.0


def done(m: Metrics, name: str) -> float:
    return sum(purges(m, name, o) for o in DOWNSTREAM_OUTCOMES)


async def settle(m: Metrics, name: str, expected: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while done(m, name) < expected:
            await asyncio.sleep(0.01)


@pytest.fixture
def api() -> Iterator[RecordingAPI]:
    with RecordingAPI() as started:
        yield started


def template_file(tmp_path: Path, api: RecordingAPI, **changes: Any) -> Path:
    (tmp_path / "cloudflare-auth").write_text(f"Authorization: {SECRET}\n")
    doc = {**CLOUDFLARE, "url": CLOUDFLARE["url"].replace("API", api.url), **changes}
    path = tmp_path / "cdn.json"
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    return path


async def test_an_edge_is_purged_with_the_original_host_and_the_exact_target() -> None:
    peer = await RecordingPeer().start()
    m = Metrics()
    d = Downstreams([edge(peer.url, "BAN", ["X-Purge-Token: t0"])], PurgeSettings(), m)
    d.start()
    try:
        d.submit(changed(b"/caf\xc3\xa9?x=%2F&y=\"1\""))
        await settle(m, peer.url, 1)
    finally:
        await d.close(1)
        await peer.close()
    assert peer.request_lines() == [b'BAN /caf\xc3\xa9?x=%2F&y="1" HTTP/1.1']
    headers = peer.headers(0)
    assert headers[b"host"] == b"www.example.com"
    assert headers[b"x-purge-token"] == b"t0"
    assert headers[b"user-agent"] == USER_AGENT.encode()
    assert purges(m, peer.url, "ok") == 1


async def test_a_template_sends_method_path_headers_and_json_body_and_never_logs_the_secret(
        tmp_path: Path, api: RecordingAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    template = read_template(str(template_file(tmp_path, api)))
    assert SECRET not in repr(template)
    m = Metrics()
    d = Downstreams([template], PurgeSettings(), m)
    d.start()
    try:
        d.submit(changed(b"/caf\xc3\xa9?x=1"))
        await settle(m, "cloudflare", 1)
    finally:
        await d.close(1)
    [call] = api.received()
    assert (call.method, call.path) == ("POST", "/client/v4/zones/ZONE/purge_cache")
    assert call.headers["authorization"] == SECRET
    assert call.headers["content-type"] == "application/json"
    assert call.headers["host"] == "127.0.0.1"
    assert call.json() == {"files": ["https://www.example.com/caf%C3%A9?x=1"]}
    assert purges(m, "cloudflare", "ok") == 1
    assert "s3cr3t" not in caplog.text


async def test_placeholders_in_the_url_path_and_an_encoded_target(
        tmp_path: Path, api: RecordingAPI) -> None:
    """Fastly's form: the host and target in the API's path; {target_encoded} as one value."""
    path = template_file(tmp_path, api, url=f"{api.url}/purge/{{host}}{{target}}",
                         body={"url": "{target_encoded}"}, auth_header_file=None,
                         headers={"Fastly-Soft-Purge": "1"}, name=None)
    m = Metrics()
    d = Downstreams([read_template(str(path))], PurgeSettings(), m)
    d.start()
    try:
        d.submit(changed(b"/p/q?a=1&b=2"))
        await settle(m, f"template:{path}", 1)
    finally:
        await d.close(1)
    [call] = api.received()
    assert call.path == "/purge/www.example.com/p/q?a=1&b=2"
    assert call.headers["fastly-soft-purge"] == "1"
    assert call.json() == {"url": "%2Fp%2Fq%3Fa%3D1%26b%3D2"}


async def test_a_batch_template_purges_the_waiting_urls_in_one_request(
        tmp_path: Path, api: RecordingAPI) -> None:
    template = read_template(str(template_file(tmp_path, api, batch=30)))
    m = Metrics()
    d = Downstreams([template], PurgeSettings(), m)
    for i in range(5):  # waiting before the lanes start: one lane takes them all
        d.submit(changed(f"/b/{i}".encode()))
    d.start()
    try:
        await settle(m, "cloudflare", 5)
    finally:
        await d.close(1)
    [call] = api.received()
    assert call.json() == {"files": [f"https://www.example.com/b/{i}" for i in range(5)]}
    assert purges(m, "cloudflare", "ok") == 5


async def test_429_and_503_are_retried_with_backoff_other_answers_are_final(
        tmp_path: Path, api: RecordingAPI) -> None:
    api.statuses[:] = [429, 503, 200, 400]
    m = Metrics()
    d = Downstreams([read_template(str(template_file(tmp_path, api)))],
                    PurgeSettings(retries=2, retry_backoff=0.01), m)
    d.start()
    try:
        d.submit(changed(b"/r/1"))
        await settle(m, "cloudflare", 1)
        d.submit(changed(b"/r/2"))
        await settle(m, "cloudflare", 2)
    finally:
        await d.close(1)
    assert len(api.received()) == 4  # three attempts for /r/1, one for /r/2
    assert (purges(m, "cloudflare", "ok"), purges(m, "cloudflare", "http_error")) == (1, 1)


async def test_the_token_bucket_paces_each_downstream() -> None:
    peer = await RecordingPeer().start()
    m = Metrics()
    d = Downstreams([edge(peer.url, "PURGE", [])], PurgeSettings(rate=20, burst=1), m)
    d.start()
    started = time.monotonic()
    try:
        for i in range(6):
            d.submit(changed(f"/t/{i}".encode()))
        await settle(m, peer.url, 6)
    finally:
        await d.close(1)
        await peer.close()
    assert time.monotonic() - started >= 5 / 20 * 0.9  # the first at once, then 20/s
    assert purges(m, peer.url, "ok") == 6


async def test_a_full_queue_drops_a_waiting_url_coalesces_and_shutdown_cuts_off() -> None:
    m = Metrics()
    with silent_url() as url:  # accepts, never answers
        d = Downstreams([edge(url, "PURGE", [])], PurgeSettings(queue_size=2, timeout=30), m)
        d.start()
        d.submit(changed(b"/q/0"))  # taken by a lane, then stuck
        await asyncio.sleep(0.05)
        for target in (b"/q/1", b"/q/2", b"/q/2", b"/q/3"):
            d.submit(changed(target))
        started = time.monotonic()
        cut = await d.close(0.3)
    assert time.monotonic() - started < 1.5
    assert cut == 3  # /q/0 in flight, /q/1 and /q/2 waiting
    assert (purges(m, url, "coalesced"), purges(m, url, "dropped")) == (1, 1 + 3)


async def test_the_breaker_skips_a_dead_downstream() -> None:
    m = Metrics()
    url = dead_url()
    d = Downstreams([edge(url, "PURGE", [])],
                    PurgeSettings(retries=0, breaker_failures=1, breaker_cooldown=30), m)
    d.start()
    try:
        d.submit(changed(b"/d/1"))
        await settle(m, url, 1)
        d.submit(changed(b"/d/2"))
    finally:
        await d.close(1)
    assert (purges(m, url, "connect_error"), purges(m, url, "skipped")) == (1, 1)


async def test_bus_mode_purges_a_changed_copy_after_the_delay_and_never_an_unchanged_one(
        ) -> None:
    peer = await RecordingPeer().start()
    m = Metrics()
    d = Downstreams([edge(peer.url, "PURGE", [])], PurgeSettings(), m)
    published: list[Refresh] = []
    bus = Recorder(on_submit=published.append)  # stands in for the bus
    target = AfterPublish(bus, d, 0.3)
    d.start()
    try:
        target.submit(changed(b"/bus/1"))
        target.submit(changed(b"/bus/2")._replace(changed=False))  # an unchanged expiry
        target.submit(changed(b"/bus/3")._replace(changed=None))  # a first copy
        d.submit(changed(b"/bus/1"))  # the fallback's fan-out converged meanwhile
        await asyncio.sleep(0.15)
        assert peer.request_lines() == []
        await settle(m, peer.url, 2)
        target.submit(changed(b"/bus/4"))
    finally:
        await d.close(1)  # what is due later is sent at shutdown
        await peer.close()
    assert len(published) == 4  # every refresh is published; only the changed ones purged
    assert peer.request_lines() == [b"PURGE /bus/1 HTTP/1.1", b"PURGE /bus/4 HTTP/1.1"]
    assert (purges(m, peer.url, "ok"), purges(m, peer.url, "coalesced")) == (2, 1)


@pytest.mark.parametrize(("doc", "message"), [
    ("[]", "must hold a JSON object"),
    ("{", "is not JSON"),
    ('{"url": "http://x/{target}", "ttl": 1}', "unknown key 'ttl'"),
    ('{"url": "ftp://x/{target}"}', "does not give an http(s) request"),
    ('{"url": "http://x/{path}"}', "unknown placeholder {path}"),
    ('{"url": "http://x/", "batch": 10, "body": {"files": "{target}"}}', "with \"batch\""),
    ('{"url": "http://x/", "method": "PO ST"}', "is not an HTTP method token"),
    ('{"url": "http://x/", "headers": {"X-A": "b\\nc"}}', "header 'X-A' must be"),
    ('{"url": "http://x/", "auth_header_file": "missing"}', "cannot be read"),
    ('{"url": "http://x/", "rate": -1}', "'rate' must be a number >= 0"),
])
def test_a_bad_template_is_a_one_line_error_naming_it(tmp_path: Path, doc: str,
                                                     message: str) -> None:
    path = tmp_path / "cdn.json"
    path.write_text(doc)
    with pytest.raises(ConfigError) as info:
        load_config({"downstream": (f"template:{path}",)}, needs=REPLAY)
    assert info.value.key == "downstream"
    assert str(info.value).startswith(f"downstream: 'template:{path}' ")
    assert message in str(info.value)


def test_an_auth_file_that_is_not_a_header_is_named_never_shown(tmp_path: Path) -> None:
    (tmp_path / "auth").write_text("s3cr3t-without-a-name\n")
    path = tmp_path / "cdn.json"
    path.write_text('{"url": "https://api.example.net/purge", "auth_header_file": "auth"}')
    with pytest.raises(ConfigError) as info:
        load_config({"downstream": (f"template:{path}",)}, needs=REPLAY)
    assert str(tmp_path / "auth") in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(("flags", "message"), [
    ({"downstream": ("varnish:6081",)}, "give an edge as http(s)://HOST[:PORT], a CDN's API "
                                       "as template:FILE"),
    ({"downstream": ("http://127.0.0.1:6081/purge",)}, "must not carry a path"),
    ({"downstream_method": "PUR GE"}, "is not an HTTP method token"),
    ({"downstream_header": ("X-Purge-Token",)}, "must look like 'Name: value'"),
    ({"downstream_rate": -1.0}, "must not be negative"),
])
def test_downstream_settings_are_checked(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(flags, needs=REPLAY)


def test_an_edge_and_a_template_are_parsed_once_and_printed_without_the_secret(
        tmp_path: Path, api: RecordingAPI) -> None:
    path = template_file(tmp_path, api)
    cfg = load_config({"downstream": ("http://127.0.0.1:6081", f"template:{path}"),
                       "downstream_method": "BAN", "downstream_header": ("X-Purge-Token: t0k",),
                       "log_format": "$host $request $upstream_cache_status"}, needs=REPLAY)
    assert cfg.downstreams[0] == "http://127.0.0.1:6081"
    assert isinstance(cfg.downstreams[1], Template) and cfg.downstreams[1].name == "cloudflare"
    assert f'downstream = ["http://127.0.0.1:6081", "template:{path}"]' in cfg.to_toml()
    assert "s3cr3t" not in cfg.to_toml() + repr(cfg)
    assert '# downstream_header = ["X-Purge-Token: ***"]' in cfg.to_toml()
    assert "t0k" not in cfg.to_toml()
    assert set(cfg.secrets) == {"t0k", SECRET}  # the log masks them too
    [first, _] = Downstreams.from_config(cfg, Metrics()).all
    assert first.template.method == "BAN"


def test_bus_mode_purges_after_publishing_a_change_and_not_for_an_unchanged_expiry(
        cluster: Cluster, origin: Origin, start_agent: StartAgent, api: RecordingAPI,
        tmp_path: Path) -> None:
    """Real NGINX nodes whose agents talk over a real Redis: the agent that saw the change
    purges the CDN API ``--downstream-delay`` after publishing it; B and C purge nothing."""
    if find_redis() is None:
        pytest.skip("redis-server not found (Debian: apt-get install redis-server)")
    a, b, c = cluster.nodes
    template = template_file(tmp_path, api)
    with RedisServer(tmp_path / "redis") as redis_server:
        secret = tmp_path / "bus-secret"
        secret.write_text("downstream-test-bus-secret\n")
        bus = ("--bus", redis_server.url, "--bus-channel", "lw-downstream",
               "--bus-secret-file", str(secret))
        agent_a = start_agent(a, [b.url, c.url], *bus, "--local", a.url, "--downstream",
                              f"template:{template}", "--downstream-delay", "0.3")
        others = [start_agent(n, [], *bus, "--local", n.url, "--downstream",
                              f"template:{template}") for n in (b, c)]
        wait_until(lambda: all(x.value("logwarden_bus_connected") == 1
                               for x in (agent_a, *others)), what="every agent on the bus")
        target = "/bd/1?etag=1&ma=1"
        assert a.get(target).headers["X-Version"] == "1"  # A's agent knows version 1
        wait_until(lambda: all(x.total("logwarden_refreshes_total", outcome="ok") == 1
                               for x in others), what="B and C refreshed over the bus")
        origin.bump("/bd/1")
        time.sleep(2.1)  # A's copy expired
        reached = time.monotonic()
        assert a.get(target).headers.get("X-Cache-Status") in ("STALE", "EXPIRED")
        wait_until(lambda: len(api.received()) == 1, timeout=2, what="the purge")
        assert 0.3 <= time.monotonic() - reached < 2
        assert api.received()[0].json() == {"files": [f"http://www.example.com{target}"]}
        assert [n.get(target).headers["X-Version"] for n in cluster] == ["2"] * 3

        time.sleep(2.1)  # an expiry that fetches the same copy
        assert a.get(target).headers.get("X-Cache-Status") in ("STALE", "EXPIRED")
        wait_until(lambda: agent_a.total("logwarden_unchanged_total") >= 1,
                   what="the unchanged expiry decided")
        time.sleep(0.8)
        assert len(api.received()) == 1
        assert agent_a.total("logwarden_downstream_purges_total", outcome="ok") == 1
        assert sum(x.total("logwarden_downstream_purges_total") for x in others) == 0


def test_a_format_without_versions_warns_that_nothing_is_purged() -> None:
    flags = {"downstream": ("http://127.0.0.1:6081",), "refresh_header": "X-Refresh: s3cret"}
    plain = load_config({**flags, "log_format": "$host $request $upstream_cache_status"},
                        needs=REPLAY)
    assert [w for w in plain.warnings if w.startswith("downstream:")] == [
        "downstream: the log_format has neither $upstream_http_etag nor "
        "$upstream_http_last_modified, so no change can be told from an expiry and nothing is "
        "ever purged: add them as the example format does"]
    versioned = load_config({**flags, "log_format": "$host $request $upstream_cache_status "
                             "$upstream_http_etag"}, needs=REPLAY)
    assert versioned.warnings == ()
