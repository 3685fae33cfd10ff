"""End to end: real NGINX nodes from examples/nginx.conf, a real origin, one real logwarden
process per node tailing that node's access log. A change fetched on one node must reach the
others without any client asking them, exactly once, and without ping-pong."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lab import (
    CLIENT_ADDRESS,
    EXAMPLE_CONFIG,
    Cluster,
    NginxNode,
    Origin,
    find_nginx,
    free_port,
    wait_until,
)
from tests.agents import StartAgent, body_version, refreshes_seen, urls
from tests.peers import dead_url, silent_url

pytestmark = pytest.mark.nginx

CASES = [
    pytest.param("/e2e/page?ma=60", "www.example.com", id="plain"),
    pytest.param("/e2e/caf%C3%A9/x%31?b=2&a=1&ma=60", "www.example.com", id="query-escapes"),
    pytest.param("/e2e/logo.svg?ma=60", "static.example.com", id="other-host"),
]


@pytest.mark.parametrize(("target", "host"), CASES)
def test_change_fetched_on_one_node_reaches_the_others(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, target: str, host: str,
) -> None:
    a, b, c = cluster.nodes
    path = target.split("?")[0]
    for node in (b, c):  # B and C hold version 1, fresh for a minute
        assert body_version(node, target, host) == ("MISS", 1)
    agents = [start_agent(node, urls(cluster)) for node in cluster.nodes]

    assert origin.bump(path) == 2
    assert body_version(b, target, host) == ("HIT", 1)  # stale content, as users would see it
    before = len(origin.requests_for(path))

    assert a.get(target, host=host).headers["X-Version"] == "2"  # A logs MISS, stores v2

    for node in (b, c):  # refreshed by A's agent, within 2 s, without any client asking
        wait_until(lambda node=node: bool(refreshes_seen(node, target)), timeout=2,
                   what=f"a refresh of {target} on {node.address}")
    for node in (b, c):
        assert body_version(node, target, host) == ("HIT", 2)
        [line] = refreshes_seen(node, target)
        assert (line.cache_status, line.method, line.host) == ("BYPASS", "HEAD", host)

    # One origin fetch per node: A's MISS and one refresh each for B and C.
    assert len(origin.requests_for(path)) - before == 3
    # A sent exactly one request to each peer; B and C saw only BYPASS lines: no ping-pong.
    agent_a, agent_b, agent_c = agents
    assert agent_a.value("logwarden_triggers_total", cache_status="MISS") == 1
    for peer in (b.url, c.url):
        assert agent_a.total("logwarden_refreshes_total", peer=peer) == 1
        assert agent_a.value("logwarden_refreshes_total", peer=peer, outcome="ok") == 1
    for agent in (agent_b, agent_c):
        assert agent.total("logwarden_refreshes_total") == 0
        assert agent.value("logwarden_records_ignored_total", reason="cache_status") >= 1
        assert agent.total("logwarden_triggers_total") == 0


def test_raw_utf8_target_is_refreshed_on_the_peers(
    cluster: Cluster, origin: Origin, start_agent: StartAgent,
) -> None:
    """A client that sends ``/café`` as raw UTF-8: NGINX accepts it, keys its cache on those
    bytes and logs them as ``\\xC3\\xA9``; the agent unescapes them and refreshes the very
    same bytes on B and C, whose next answer is a HIT of the new version."""
    a, b, c = cluster.nodes
    target = "/caf\xc3\xa9?x=1"  # one character per byte: the lab client sends it as latin-1
    logged, path, host = r"/caf\xC3\xA9?x=1", target.split("?")[0], "www.example.com"
    for node in (b, c):
        assert body_version(node, target, host) == ("MISS", 1)
    agent_a, *_ = (start_agent(node, urls(cluster)) for node in cluster.nodes)
    origin.bump(path)
    assert body_version(b, target, host) == ("HIT", 1)

    assert a.get(target, host=host).headers["X-Version"] == "2"
    for node in (b, c):
        wait_until(lambda node=node: bool(refreshes_seen(node, logged)), timeout=2,
                   what=f"a refresh of {logged} on {node.address}")
    for node in (b, c):
        assert body_version(node, target, host) == ("HIT", 2)
        assert agent_a.value("logwarden_refreshes_total", peer=node.url, outcome="ok") == 1
    # Every request the origin saw carried the raw bytes: none was re-encoded on the way.
    assert {r.target for r in origin.requests_for(path)} == {target}
    assert agent_a.value("logwarden_refreshes_total", peer=b.url, outcome="refused") == 0


def test_background_update_stale_line_triggers(
    cluster: Cluster, origin: Origin, start_agent: StartAgent,
) -> None:
    """The headline setup: expired entry + proxy_cache_background_update logs STALE."""
    a, b, c = cluster.nodes
    target = "/e2e/bg?ma=1"
    for node in cluster.nodes:
        assert body_version(node, target, "www.example.com") == ("MISS", 1)
    start_agent(a, urls(cluster))
    origin.bump("/e2e/bg")
    wait_until(lambda: a.get(target).headers["X-Cache-Status"] == "STALE", timeout=5,
               interval=0.25, what="the entry on A to expire")
    a.wait_log(lambda line: line.target == target and line.cache_status == "STALE")
    for node in (b, c):
        wait_until(lambda node=node: bool(refreshes_seen(node, target)), timeout=2,
                   what=f"a refresh of {target} on {node.address}")
        # Refreshed entries are fresh for max-age=1 again, so a HIT with version 2 now.
        assert body_version(node, target, "www.example.com") == ("HIT", 2)


def test_dead_and_silent_peers_are_isolated(
    cluster: Cluster, start_agent: StartAgent,
) -> None:
    a, b, _ = cluster.nodes
    dead = dead_url()
    with silent_url() as silent:
        agent = start_agent(a, [a.url, dead, silent, b.url], "--timeout", "1",
                            "--retries", "0")  # retries and the breaker: test_dispatcher.py
        for i in range(2):
            target = f"/e2e/iso{i}?ma=60"
            a.get(target)
            wait_until(lambda target=target: bool(refreshes_seen(b, target)), timeout=2,
                       what=f"the live peer to be refreshed for {target}")
        wait_until(lambda: agent.value("logwarden_refreshes_total", peer=silent,
                                       outcome="timeout") == 2, timeout=5, what="2 timeouts")
        assert agent.value("logwarden_refreshes_total", peer=dead, outcome="connect_error") == 2
        assert agent.value("logwarden_refreshes_total", peer=b.url, outcome="ok") == 2
        assert agent.value("logwarden_lines_total") >= 2
        assert agent.value("logwarden_refresh_duration_seconds_count", peer=b.url) == 2


def test_rotation_under_a_running_agent(cluster: Cluster, start_agent: StartAgent) -> None:
    a, b, _ = cluster.nodes
    agent = start_agent(a, urls(cluster))
    a.get("/e2e/rot1?ma=60")
    a.access_log.rename(a.access_log.with_name("access.log.1"))
    a.get("/e2e/rot2?ma=60")  # written into the renamed file
    a.reopen()
    a.get("/e2e/rot3?ma=60")  # written into the new file
    for i in (1, 2, 3):
        wait_until(lambda i=i: bool(refreshes_seen(b, f"/e2e/rot{i}?ma=60")), timeout=3,
                   what=f"rot{i} to reach B")
    assert agent.value("logwarden_file_rotations_total") == 1
    assert agent.value("logwarden_lines_malformed_total") == 0


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_access_log_over_syslog(
    origin: Origin, tmp_path: Path, start_agent: StartAgent, transport: str,
) -> None:
    """The same change as above, read from NGINX's ``access_log syslog:`` instead of a file."""
    if find_nginx() is None:
        pytest.skip("nginx not found on PATH or in /usr/sbin (Debian: make system-deps)")
    path, port = tmp_path / "lw.sock", free_port("127.0.0.1", socket.SOCK_DGRAM)
    url, server = ((f"udp://127.0.0.1:{port}", f"127.0.0.1:{port}") if transport == "udp"
                   else (f"unix://{path}", f"unix:{path}"))
    peers = (CLIENT_ADDRESS, "127.0.0.11", "127.0.0.12")
    a = NginxNode("a", "127.0.0.11", EXAMPLE_CONFIG, origin.url, peers, tmp_path, syslog=server)
    b = NginxNode("b", "127.0.0.12", EXAMPLE_CONFIG, origin.url, peers, tmp_path)
    target = f"/e2e/syslog-{transport}?ma=60"
    with a, b:
        agent = start_agent(a, [a.url, b.url], "--syslog", url, access_log=False)
        assert body_version(b, target, "www.example.com") == ("MISS", 1)
        origin.bump(target.split("?")[0])
        assert a.get(target).headers["X-Version"] == "2"  # A sends its MISS line over syslog

        wait_until(lambda: bool(refreshes_seen(b, target)), timeout=2,
                   what=f"a refresh of {target} on B")
        assert body_version(b, target, "www.example.com") == ("HIT", 2)
        assert agent.value("logwarden_syslog_datagrams_total", listener=url) >= 1
        assert agent.value("logwarden_triggers_total", cache_status="MISS") == 1
        assert agent.value("logwarden_refreshes_total", peer=b.url, outcome="ok") == 1
        assert agent.total("logwarden_syslog_ignored_total") == 0
        assert agent.value("logwarden_lines_malformed_total") == 0
        assert agent.stop() == 0
    assert not path.exists()  # the unix socket file is removed at exit
