"""The bus through Redis Sentinel: one master, one replica, one sentinel (real
``redis-server`` processes, the sentinel run as ``redis-server --sentinel``). The master is
killed, the sentinel promotes the replica, and the next change reaches every node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lab import Cluster, Origin, wait_until
from lab.redisserver import Monitor, RedisServer
from tests.agents import StartAgent
from tests.buslab import bus_flags, change, connected, need_redis, prime, secret_file, spread

MASTER = "lwmaster"


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, RedisServer]]:
    need_redis()
    with RedisServer(tmp_path / "master", args=("--repl-diskless-sync-delay", "0")) as master, \
            RedisServer(tmp_path / "replica",
                        args=("--replicaof", master.host, str(master.port))) as replica:
        wait_until(lambda: _role(replica) == b"slave" and _linked(replica), timeout=10,
                   what="the replica in sync")
        with RedisServer(tmp_path / "sentinel",
                         monitor=Monitor(MASTER, master.host, master.port)) as sentinel:
            yield master, replica, sentinel


def _role(server: RedisServer) -> bytes:
    with redis.Redis(host=server.host, port=server.port) as client:
        return bytes(client.execute_command("ROLE")[0])


def _linked(replica: RedisServer) -> bool:
    with redis.Redis(host=replica.host, port=replica.port) as client:
        return client.info("replication").get("master_link_status") == "up"


def master_port(sentinel: RedisServer) -> int:
    with redis.Redis(host=sentinel.host, port=sentinel.port) as client:
        _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)


@pytest.mark.nginx
def test_a_failover_keeps_propagation_going(
        cluster: Cluster, origin: Origin, start_agent: StartAgent,
        sentinel_set: tuple[RedisServer, RedisServer, RedisServer], tmp_path: Path) -> None:
    master, replica, sentinel = sentinel_set
    url = f"redis+sentinel://{sentinel.host}:{sentinel.port}/{MASTER}"
    secret = secret_file(tmp_path)
    prime(cluster, "/ha/before?ma=60", "/ha/after?ma=60")
    agents = [start_agent(node, [], *bus_flags(url, "lw-ha", secret, node))
              for node in cluster.nodes]
    connected(*agents)
    change(cluster, origin, "/ha/before?ma=60")
    spread(cluster, "/ha/before?ma=60")

    master.kill()
    wait_until(lambda: master_port(sentinel) == replica.port, timeout=20, interval=0.1,
               what="the sentinel to promote the replica")
    connected(*agents, timeout=15)
    change(cluster, origin, "/ha/after?ma=60")
    spread(cluster, "/ha/after?ma=60")
    assert agents[0].value("logwarden_bus_published_total", outcome="ok") == 2
    for agent in agents[1:]:
        assert agent.value("logwarden_bus_received_total", outcome="ok") == 2
