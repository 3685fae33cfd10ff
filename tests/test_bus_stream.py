"""At least once, bounded: what a node misses while its connection is cut or its agent is
stopped, it reads on its return, unless it has grown older than ``--max-line-age``. Real
Redis (one per module, a stream per test), real NGINX, real agents."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lab import Cluster, wait_until
from lab.agent import Agent
from lab.redisserver import RedisServer
from tests.agents import StartAgent
from tests.buslab import bus_flags, connected, fetch_all, need_redis, refreshed, secret_file

URLS = 100


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def kill_reader(client: redis.Redis, agent: Agent) -> int:
    """``CLIENT KILL`` the connections the agent reads the stream on; how many there were."""
    assert agent.proc is not None
    mark = re.compile(rf"^logwarden-read-.+-{agent.proc.pid}-[0-9a-f]+$")
    killed = 0
    for conn in client.client_list():
        if mark.match(conn.get("name", "")):
            killed += int(client.client_kill_filter(_id=conn["id"]))
    return killed


@pytest.mark.nginx
def test_a_reader_cut_off_while_another_node_publishes_misses_nothing(
        cluster: Cluster, start_agent: StartAgent, redis_server: RedisServer,
        tmp_path: Path) -> None:
    a, _, c = cluster.nodes
    secret, stream = secret_file(tmp_path), "lw-kill"
    targets = [f"/kill/{i}?ma=60" for i in range(URLS)]
    # A publishes all 100 at once (no rate limit of its own); C paces them at its default.
    agent_a = start_agent(a, [], *bus_flags(redis_server.url, stream, secret, a,
                                            "--max-refresh-rate", "0"))
    agent_c = start_agent(c, [], *bus_flags(redis_server.url, stream, secret, c))
    connected(agent_a, agent_c)
    kills, done = [], threading.Event()

    def killer() -> None:
        with redis.Redis.from_url(redis_server.url) as client:
            while not done.is_set():
                kills.append(kill_reader(client, agent_c))
                time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        fetch_all(a, targets)
        wait_until(lambda: agent_a.value("logwarden_bus_published_total", outcome="ok") == URLS,
                   timeout=10, what="A's 100 entries on the stream")
        time.sleep(0.3)  # C is cut off again before it can read them all
    finally:
        done.set()
        thread.join()
    assert sum(kills) >= 3, kills
    wait_until(lambda: refreshed(c, targets) == set(targets), timeout=15,
               what="all 100 refreshed on C")
    assert agent_c.value("logwarden_bus_received_total", outcome="ok") == URLS
    assert agent_c.value("logwarden_bus_entries_behind") == 0
    assert agent_c.value("logwarden_bus_trimmed_entries_total") == 0


@pytest.mark.nginx
def test_a_stopped_agent_catches_up_within_max_line_age_and_not_after(
        cluster: Cluster, start_agent: StartAgent, redis_server: RedisServer,
        tmp_path: Path) -> None:
    a, _, c = cluster.nodes
    secret, stream, age = secret_file(tmp_path), "lw-restart", 3.0
    agent_a = start_agent(a, [], *bus_flags(redis_server.url, stream, secret, a,
                                            "--max-refresh-rate", "0"))
    agent_c = start_agent(c, [], *bus_flags(redis_server.url, stream, secret, c,
                                            "--max-line-age", str(age)))
    connected(agent_a, agent_c)

    def published_while_c_is_away(batch: str, away: float) -> list[str]:
        targets = [f"/restart/{batch}/{i}?ma=60" for i in range(URLS)]
        assert agent_c.stop() == 0
        before = agent_a.value("logwarden_bus_published_total", outcome="ok")
        fetch_all(a, targets)
        wait_until(lambda: agent_a.value("logwarden_bus_published_total", outcome="ok")
                   == before + URLS, timeout=10, what="A's 100 entries on the stream")
        time.sleep(away)
        agent_c.start()
        return targets

    soon = published_while_c_is_away("soon", 0)
    wait_until(lambda: refreshed(c, soon) == set(soon), timeout=15,
               what="all 100 refreshed on C after its restart")
    assert agent_c.value("logwarden_bus_received_total", outcome="ok") == URLS
    assert agent_c.value("logwarden_bus_catchup_entries_total") == URLS

    late = published_while_c_is_away("late", age + 0.5)
    wait_until(lambda: agent_c.value("logwarden_bus_received_total", outcome="too_old") == URLS,
               timeout=10, what="the 100 old entries counted")
    assert agent_c.value("logwarden_bus_received_total", outcome="ok") == 0
    assert agent_c.value("logwarden_bus_catchup_entries_total") == URLS
    assert refreshed(c, late) == set()


@pytest.mark.nginx
def test_entries_trimmed_before_a_node_read_them_are_counted(
        cluster: Cluster, start_agent: StartAgent, redis_server: RedisServer,
        tmp_path: Path) -> None:
    """A stream kept short (``--bus-maxlen 10``: Redis trims in whole nodes of 100 entries)
    while C is away: what C finds it refreshes, the rest it counts as trimmed, exactly."""
    a, _, c = cluster.nodes
    secret, stream, published = secret_file(tmp_path), "lw-trim", 250
    agent_a = start_agent(a, [], *bus_flags(redis_server.url, stream, secret, a,
                                            "--max-refresh-rate", "0", "--bus-maxlen", "10"))
    agent_c = start_agent(c, [], *bus_flags(redis_server.url, stream, secret, c,
                                            "--max-refresh-rate", "0"))
    connected(agent_a, agent_c)
    assert agent_c.stop() == 0
    targets = [f"/trim/{i}?ma=60" for i in range(published)]
    fetch_all(a, targets)
    wait_until(lambda: agent_a.value("logwarden_bus_published_total", outcome="ok")
               == published, timeout=10, what="A's entries on the stream")
    with redis.Redis.from_url(redis_server.url) as client:
        kept = client.xlen(stream)
    assert kept < published
    agent_c.start()
    wait_until(lambda: agent_c.value("logwarden_bus_received_total", outcome="ok") == kept,
               timeout=10, what="C to read what the stream kept")
    assert agent_c.value("logwarden_bus_trimmed_entries_total") == published - kept
    wait_until(lambda: refreshed(c, targets) == set(targets[published - kept:]), timeout=10,
               what="the kept entries refreshed on C, and only they")
    assert agent_c.value("logwarden_bus_entries_behind") == 0
