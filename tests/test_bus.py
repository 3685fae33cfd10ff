"""Bus mode (``--bus``): the message format, and three real NGINX nodes whose agents talk over
a real Redis server on loopback, through a Redis crash and restart."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lab import Cluster, Origin, wait_until
from lab.agent import Agent
from lab.redisserver import RedisServer, find_redis
from logwarden.config import ConfigError, load_config
from logwarden.model import Refresh
from logwarden.route.bus import VERSION, UnknownVersion, decode, encode, parse_bus_url
from tests.agents import StartAgent, body_version, refreshes_seen

HOST = "www.example.com"


# --- the message ------------------------------------------------------------------------------


def test_message_round_trip_keeps_the_exact_target() -> None:
    refresh = Refresh("https", "www.example.com", b"/a/caf%C3%A9?b=2&a=1", "MISS", 1.5e9,
                      "10.0.0.1:80", "gzip")
    data = encode(refresh, "node-1", "HEAD")
    assert json.loads(data)["v"] == VERSION and len(data) < 250
    node, back = decode(data)
    assert node == "node-1"
    assert (back.scheme, back.host, back.target, back.logged_at, back.holder, back.variant) == (
        "https", "www.example.com", b"/a/caf%C3%A9?b=2&a=1", 1.5e9, "10.0.0.1:80", "gzip")
    older = json.loads(data)
    del older["variant"]  # an agent from before variant classes: the class is not known
    assert decode(json.dumps(older).encode())[1].variant is None


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b"{}", b'{"v": 1}', b'{"v": 1, "node": "n", "scheme": "ftp", '
    b'"host": "h", "target": "/"}', b'{"v": 1, "node": "n", "scheme": "http", "host": "h", '
    b'"target": "/\\u20ac"}', b"x" * 20000,
    b'{"v": 1, "node": "n", "scheme": "http", "host": "h", "target": "/", "variant": 1}',
])
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_an_unknown_version_is_told_apart() -> None:
    with pytest.raises(UnknownVersion):
        decode(b'{"v": 2, "anything": "new"}')


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379", "redis://", "redis://h:99999", "redis://h/x",
    "redis://user:secret@h:6379/0", "redis://h/0?timeout=1",
])
def test_bad_bus_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_bus_url(url)


def test_good_bus_urls() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis://redis.internal", "rediss://h:6380/2"):
        parse_bus_url(url)


def test_bus_mode_needs_no_peer_and_checks_its_settings() -> None:
    base = {"access_log": ("/var/log/nginx/access.log",), "log_format": "$host \"$request\" "
            "$status $upstream_cache_status", "self": "http://10.0.0.1:80"}
    config = load_config({**base, "bus": "redis://10.0.0.9:6379/0"}, None, {})
    assert (config.bus_channel, config.local, config.targets) == (
        "logwarden", "http://127.0.0.1:80", ())
    with pytest.raises(ConfigError, match="peer"):
        load_config(base, None, {})
    for key, value in (("bus", "redis://u:pw@h/0"), ("bus_channel", "a b"),
                       ("local", "http://127.0.0.1/x")):
        with pytest.raises(ConfigError, match=key) as err:
            load_config({**base, "bus": "redis://h", key: value}, None, {})
        assert "pw" not in str(err.value)  # a password is never printed


# --- real Redis, real NGINX -------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if find_redis() is None:
        pytest.skip("redis-server not found (Debian: apt-get install redis-server)")
    with RedisServer(tmp_path / "redis") as server:
        yield server


def connected(*agents: Agent, up: int = 1) -> None:
    wait_until(lambda: all(a.value("logwarden_bus_connected") == up for a in agents),
               timeout=5, interval=0.05, what=f"logwarden_bus_connected == {up}")


def health(agent: Agent) -> dict[str, Any]:
    with urllib.request.urlopen(agent.base + "/healthz", timeout=5) as resp:
        state: dict[str, Any] = json.load(resp)
    return state


def prime(cluster: Cluster, *targets: str) -> None:
    """B and C hold version 1, fetched before any agent runs (their MISS would be news)."""
    for target in targets:
        for node in cluster.nodes[1:]:
            assert body_version(node, target, HOST) == ("MISS", 1)


def change(cluster: Cluster, origin: Origin, target: str) -> None:
    """The origin moves to version 2; A fetches it (MISS)."""
    origin.bump(target.split("?")[0])
    assert cluster[0].get(target).headers["X-Version"] == "2"


def spread(cluster: Cluster, target: str) -> None:
    """B and C were refreshed, answer version 2 as HITs; nobody refreshed A."""
    a, b, c = cluster.nodes
    for node in (b, c):
        wait_until(lambda node=node: bool(refreshes_seen(node, target)), timeout=3,
                   what=f"a refresh of {target} on {node.address}")
        assert body_version(node, target, HOST) == ("HIT", 2)
    assert refreshes_seen(a, target) == []


@pytest.mark.nginx
def test_bus_spreads_changes_and_survives_a_redis_crash(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, redis_server: RedisServer,
) -> None:
    a, b, c = cluster.nodes
    bus = ("--bus", redis_server.url, "--bus-channel", "lw-test")
    prime(cluster, "/bus/one?ma=60", "/bus/gap?ma=60", "/bus/after?ma=60")
    # A keeps its peers as the fallback; B and C know no peer at all.
    agent_a = start_agent(a, [b.url, c.url], *bus, "--local", a.url)
    agent_b, agent_c = (start_agent(n, [], *bus, "--local", n.url) for n in (b, c))
    connected(agent_a, agent_b, agent_c)
    assert health(agent_b)["bus"] == "connected"

    change(cluster, origin, "/bus/one?ma=60")
    spread(cluster, "/bus/one?ma=60")
    assert agent_a.value("logwarden_bus_published_total", outcome="ok") == 1
    assert agent_a.value("logwarden_bus_received_total", outcome="own") == 1
    assert agent_a.value("logwarden_bus_receivers") == 3  # A, B and C got it
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 0  # no direct fan-out
    for agent, node in ((agent_b, b), (agent_c, c)):
        assert agent.value("logwarden_bus_received_total", outcome="ok") == 1
        assert agent.value("logwarden_refreshes_total", peer=node.url, outcome="ok") == 1

    redis_server.kill()
    connected(agent_a, agent_b, agent_c, up=0)
    assert health(agent_b)["status"] == "ok" and health(agent_b)["bus"] == "disconnected"
    change(cluster, origin, "/bus/gap?ma=60")  # the bus is down: A falls back to its peers
    spread(cluster, "/bus/gap?ma=60")
    assert agent_a.value("logwarden_bus_published_total", outcome="bus_unavailable") == 1
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 2

    redis_server.start()
    connected(agent_a, agent_b, agent_c)
    change(cluster, origin, "/bus/after?ma=60")
    spread(cluster, "/bus/after?ma=60")
    assert agent_a.value("logwarden_bus_published_total", outcome="ok") == 2
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 2  # bus again
    for agent in (agent_b, agent_c):
        assert agent.value("logwarden_bus_received_total", outcome="ok") == 2

    # Messages from a newer logwarden, or not from logwarden, are counted and skipped.
    with redis.Redis.from_url(redis_server.url) as client:
        client.publish("lw-test", json.dumps({"v": VERSION + 1, "node": "future"}))
        client.publish("lw-test", b"\xff garbage")
        client.publish("lw-test", b"[" * 10000)  # json.loads: RecursionError
    wait_until(lambda: agent_b.value("logwarden_bus_received_total", outcome="malformed") == 2,
               timeout=3, what="the garbage to be counted")
    assert agent_b.value("logwarden_bus_received_total", outcome="unknown_version") == 1
