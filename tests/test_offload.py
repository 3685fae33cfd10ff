"""Origin offload (``--refresh-from-self``) on real NGINX nodes from examples/nginx.conf: the
peers fetch a change from the node that has it, so the origin sees one fetch per change; a
header naming anything but a listed node never makes NGINX connect there."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import (
    EXAMPLE_CONFIG,
    OUTSIDER_ADDRESS,
    Cluster,
    Origin,
    free_port,
    render_config,
    wait_until,
)
from logwarden.config import ConfigError, load_config
from tests.agents import StartAgent, body_version, refreshes_seen, urls

OFFLOAD = "--refresh-from-self"


def source_of(node_url: str) -> str:
    return node_url.removeprefix("http://")


@contextlib.contextmanager
def bait(address: str = "127.0.0.77") -> Iterator[tuple[str, socket.socket]]:
    """A listener NGINX must never connect to: the kernel queues any connection in its
    backlog, so a non-blocking accept() that finds none proves nothing arrived."""
    with socket.socket() as sock:
        sock.bind((address, free_port(address)))
        sock.listen(16)
        sock.setblocking(False)
        yield f"{address}:{sock.getsockname()[1]}", sock


def nothing_arrived(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.nginx
@pytest.mark.parametrize("target", ["/off/page?ma=60", "/off/caf%C3%A9/x%31?b=2&a=1&ma=60"])
def test_one_origin_fetch_per_change_and_hits_everywhere(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, target: str,
) -> None:
    a, b, c = cluster.nodes
    path = target.split("?")[0]
    for node in (b, c):
        assert body_version(node, target, "www.example.com") == ("MISS", 1)
    agents = [start_agent(node, urls(cluster), OFFLOAD) for node in cluster.nodes]
    origin.bump(path)
    before = len(origin.requests_for(path))

    assert a.get(target).headers["X-Version"] == "2"  # A: MISS, the one origin fetch
    for node in (b, c):
        wait_until(lambda node=node: bool(refreshes_seen(node, target)), timeout=2,
                   what=f"a refresh of {target} on {node.address}")
    for node in (a, b, c):
        assert body_version(node, target, "www.example.com") == ("HIT", 2), node
    # proxy_hide_header: A's own X-Cache-Status was not stored with B's copy
    assert b.get(target).headers.get_all("X-Cache-Status") == ["HIT"]

    assert len(origin.requests_for(path)) - before == 1
    for node in (b, c):
        [line] = refreshes_seen(node, target)
        assert (line.cache_status, line.upstream_status) == ("BYPASS", "200")
    # B and C fetched from A's cache: two HITs there, with logwarden's agent, not fanned out
    offloaded = [ln for ln in refreshes_seen(a, target)]
    assert [(ln.cache_status, ln.method) for ln in offloaded] == [("HIT", "GET")] * 2
    agent_a, agent_b, agent_c = agents
    assert agent_a.value("logwarden_triggers_total", cache_status="MISS") == 1
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 2
    for agent in (agent_b, agent_c):
        assert agent.total("logwarden_refreshes_total") == 0
    for request in origin.requests:
        assert "x-logwarden-source" not in {name.lower() for name in request.headers}


@pytest.mark.nginx
def test_a_source_that_is_not_a_listed_node_is_never_contacted(
    cluster: Cluster, origin: Origin,
) -> None:
    a, b = cluster[0], cluster[1]
    target = "/off/ssrf?ma=60"
    assert body_version(a, target, "www.example.com") == ("MISS", 1)
    origin.bump("/off/ssrf")
    with bait() as (address, sock):
        # a peer with the secret naming an unlisted address: refreshed from the origin
        resp = a.get(target, headers={"X-Refresh": "1", "X-Logwarden-Source": address})
        assert (resp.headers["X-Cache-Status"], resp.headers["X-Version"]) == ("BYPASS", "2")
        # the internet naming a listed node, with the secret: no refresh, no offload
        resp = a.get(target, headers={"X-Refresh": "1", "X-Logwarden-Source": source_of(b.url)},
                     source=OUTSIDER_ADDRESS)
        assert resp.headers["X-Cache-Status"] == "HIT"
        # a peer naming a listed node without the secret: a normal lookup
        resp = a.get(target, headers={"X-Logwarden-Source": source_of(b.url)})
        assert resp.headers["X-Cache-Status"] == "HIT"
        assert nothing_arrived(sock)
    assert not [ln for ln in b.log_lines() if ln.target == target]  # B was never asked
    assert len(origin.requests_for("/off/ssrf")) == 2


@pytest.mark.nginx
def test_an_offloaded_refresh_falls_back_to_the_origin_when_the_source_is_down(
    cluster: Cluster, origin: Origin, start_agent: StartAgent,
) -> None:
    """The agent beside B names C as the source; C is down: NGINX answers 502, the retry
    goes without the source header, to the origin."""
    a, b, c = cluster.nodes
    target = "/off/down?ma=60"
    assert body_version(a, target, "www.example.com") == ("MISS", 1)
    c.stop()
    agent = start_agent(b, [a.url, b.url, c.url], OFFLOAD, "--self", c.url,
                        "--retry-backoff", "0.05")
    origin.bump("/off/down")
    assert b.get(target).headers["X-Version"] == "2"
    wait_until(lambda: agent.value("logwarden_refreshes_total", peer=a.url, outcome="ok") == 1,
               timeout=3, what="the refresh of A to succeed")
    assert agent.value("logwarden_refresh_retries_total", peer=a.url) == 1
    assert body_version(a, target, "www.example.com") == ("HIT", 2)
    assert [ln.upstream_status for ln in refreshes_seen(a, target)] == ["502", "200"]


# --- configuration ----------------------------------------------------------------------------

BASE = {"access_log": ("/var/log/nginx/access.log",), "log_format": "$host \"$request\" "
        "$status $upstream_cache_status", "peer": ("http://10.0.0.2",)}


@pytest.mark.parametrize(("own", "source"), [
    ("http://10.0.0.1", ("http", "10.0.0.1:80")),
    ("https://10.0.0.1", ("https", "10.0.0.1:443")),
    ("http://[fd00::1]:8080", ("http", "[fd00::1]:8080")),
])
def test_the_source_is_self_with_its_port_spelled_out(own: str, source: tuple[str, str]) -> None:
    """As the peers' nginx.conf map lists it: "1:10.0.0.1:80"."""
    flags = {**BASE, "self": own, "peer": (*BASE["peer"], own)}
    assert load_config({**flags, "refresh_from_self": True}, None, {}).holder == source
    assert load_config(flags, None, {}).holder is None


def test_refresh_from_self_needs_self() -> None:
    with pytest.raises(ConfigError, match=r"refresh_from_self.*needs self"):
        load_config({**BASE, "refresh_from_self": True}, None, {})


def test_render_lists_the_lab_nodes_in_the_offload_map(tmp_path: Path) -> None:
    text = render_config(EXAMPLE_CONFIG.read_text(), listen="127.0.0.11", port=8080,
                         prefix=tmp_path, origin="127.0.0.1:9000", peers=["127.0.0.1"],
                         user="root", sources=["127.0.0.11:8080", "127.0.0.12:8081"])
    assert re.search(r'^\s*"1:127\.0\.0\.11:8080" 127\.0\.0\.11:8080;\n'
                     r'\s*"1:127\.0\.0\.12:8081" 127\.0\.0\.12:8081;\n', text, re.MULTILINE)
    drifted = EXAMPLE_CONFIG.read_text().replace('"1:10.0.0.2:80"          10.0.0.2:80;',
                                                 '"1:10.0.0.2:80"          10.0.0.9:80;')
    with pytest.raises(ValueError, match="template: offload map"):
        render_config(drifted, listen="127.0.0.11", port=8080, prefix=tmp_path,
                      origin="127.0.0.1:9000", peers=["127.0.0.1"], user="root")
