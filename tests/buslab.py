"""Helpers for the bus tests: a signing secret, the agents' bus flags, waiting for them to
read the stream, and the refreshes a node saw (the redis-server fixtures live in each
module: one server per module, a stream per test)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from lab import Cluster, NginxNode, Origin, wait_until
from lab.agent import Agent
from lab.redisserver import find_redis
from lab.redisserver import secret_file as lab_secret_file
from logwarden.model import Refresh
from logwarden.route.busmessage import entry
from tests.agents import body_version, refreshes_seen

HOST = "www.example.com"
SECRET = "bus-secret-for-the-tests-0123456789"


def secret_file(directory: Path, *secrets: str, name: str = "bus-secret") -> Path:
    """The tests' secret (known, so a test can sign entries as a node would) by default."""
    return lab_secret_file(directory, *(secrets or (SECRET,)), name=name)


def need_redis() -> None:
    if find_redis() is None:
        pytest.skip("redis-server not found (Debian: apt-get install redis-server)")


def bus_flags(url: str, stream: str, secret: Path, node: NginxNode, *extra: str) -> list[str]:
    return ["--bus", url, "--bus-channel", stream, "--bus-secret-file", str(secret),
            "--local", node.url, *extra]


def connected(*agents: Agent, up: int = 1, timeout: float = 10) -> None:
    wait_until(lambda: all(a.value("logwarden_bus_connected") == up for a in agents),
               timeout=timeout, interval=0.05, what=f"logwarden_bus_connected == {up}")


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


def spread(cluster: Cluster, target: str, timeout: float = 5) -> None:
    """B and C were refreshed, answer version 2 as HITs; nobody refreshed A."""
    a, b, c = cluster.nodes
    for node in (b, c):
        wait_until(lambda node=node: bool(refreshes_seen(node, target)), timeout=timeout,
                   what=f"a refresh of {target} on {node.address}")
        assert body_version(node, target, HOST) == ("HIT", 2)
    assert refreshes_seen(a, target) == []


def refreshed(node: NginxNode, targets: Sequence[str]) -> set[str]:
    """Which of ``targets`` a logwarden request fetched on ``node``."""
    wanted = set(targets)
    return {line.target for line in node.log_lines()
            if line.target in wanted and line.user_agent.startswith("logwarden/")}


def fetch_all(node: NginxNode, targets: Sequence[str]) -> None:
    """Ask ``node`` for each target (a MISS each: 100 triggers from its agent)."""
    for target in targets:
        assert node.get(target).status == 200


def add_entry(client: redis.Redis, stream: str, target: str, *, secret: str = SECRET,
              sent: float | None = None, node: str = "elsewhere") -> None:
    """Put an entry on ``stream`` as another node would, signed with ``secret``."""
    refresh = Refresh("http", HOST, target.encode(), "MISS", None)
    fields = entry(refresh, node, "HEAD", time.time() if sent is None else sent,
                   secret.encode(), stream)
    client.xadd(stream, fields)  # type: ignore[arg-type]
