"""The tier in front, real processes on loopback: Varnish (examples/varnish.vcl) in front of
HAProxy round-robin over three NGINX nodes (examples/nginx.conf), an agent beside each node
purging the edge and a local server standing in for a CDN's purge API (template mode).

The edge keeps its copies an hour (the VCL's edge TTL line): only a purge can bring it a new
version. A change reaches the cluster when a node's expired copy is asked for directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import CLIENT_ADDRESS, Cluster, Origin, wait_until
from lab.agent import Agent
from lab.edge import INSTALL_HINT, HAProxy, Varnish, find
from tests.agents import StartAgent
from tests.cdnapi import RecordingAPI

TOKEN = "lab-purge-token"
SECRET = "Bearer cdn-s3cr3t"



@pytest.fixture
def edge(cluster: Cluster, tmp_path: Path) -> Iterator[Varnish]:
    """HAProxy on 127.0.0.20 over the cluster, Varnish on 127.0.0.21 in front of it."""
    if find("varnishd") is None or find("haproxy") is None:
        pytest.skip(f"varnishd or haproxy not found ({INSTALL_HINT})")
    servers = [f"{node.address}:{node.port}" for node in cluster]
    with HAProxy(tmp_path / "haproxy", "127.0.0.20", servers) as balancer, \
            Varnish(tmp_path / "varnish", "127.0.0.21", f"{balancer.address}:{balancer.port}",
                    agents=[CLIENT_ADDRESS], token=TOKEN, ttl=3600) as varnish:
        yield varnish


@pytest.fixture
def api() -> Iterator[RecordingAPI]:
    with RecordingAPI() as started:
        yield started


def cdn_template(tmp_path: Path, api: RecordingAPI) -> Path:
    (tmp_path / "cdn-auth").write_text(f"Authorization: {SECRET}\n")
    path = tmp_path / "cdn.json"
    path.write_text(json.dumps({
        "name": "cdn", "url": f"{api.url}/client/v4/zones/lab/purge_cache",
        "auth_header_file": "cdn-auth", "body": {"files": ["{scheme}://{host}{target}"]}}))
    return path


def purged(agent: Agent, downstream: str) -> float:
    return agent.total("logwarden_downstream_purges_total", downstream=downstream)


def test_the_edge_gets_a_change_within_2_s_and_no_purge_for_an_unchanged_expiry(
        cluster: Cluster, origin: Origin, start_agent: StartAgent, edge: Varnish,
        api: RecordingAPI, tmp_path: Path) -> None:
    urls = [node.url for node in cluster]
    template = cdn_template(tmp_path, api)
    agents = [start_agent(node, urls, "--downstream", edge.url, "--downstream-header",
                          f"X-Purge-Token: {TOKEN}", "--downstream", f"template:{template}")
              for node in cluster]
    a, target = cluster[0], "/edge/1?etag=1&ma=1"
    assert a.get(target).headers["X-Version"] == "1"  # A's agent knows version 1
    wait_until(lambda: agents[0].total("logwarden_refreshes_total", outcome="ok") == 2,
               what="the first fan-out")  # B and C hold it too
    answer = edge.get(target)
    assert (answer.headers["X-Edge-Cache"], answer.headers["X-Version"]) == ("MISS", "1")

    origin.bump("/edge/1")
    time.sleep(2.1)  # the nodes' copies expired (NGINX counts max-age from a whole second)
    reached = time.monotonic()
    assert a.get(target).headers.get("X-Cache-Status") in ("STALE", "EXPIRED")
    wait_until(lambda: edge.get(target).headers["X-Version"] == "2", timeout=2,
               interval=0.02, what="the edge to serve version 2")
    assert time.monotonic() - reached < 2
    assert [node.get(target).headers["X-Version"] for node in cluster] == ["2"] * 3
    wait_until(lambda: len(api.received()) == 1, timeout=2, what="the CDN API's purge")
    [call] = api.received()
    assert (call.method, call.path) == ("POST", "/client/v4/zones/lab/purge_cache")
    assert call.headers["authorization"] == SECRET
    assert call.json() == {"files": [f"http://www.example.com{target}"]}
    assert (purged(agents[0], edge.url), purged(agents[0], "cdn")) == (1, 1)
    assert agents[0].total("logwarden_downstream_purges_total", outcome="ok") == 2

    # An expiry that fetches the same copy: no purge anywhere, the edge keeps its copy.
    time.sleep(2.1)
    assert a.get(target).headers.get("X-Cache-Status") in ("STALE", "EXPIRED")
    wait_until(lambda: agents[0].total("logwarden_unchanged_total") >= 1,
               what="the unchanged expiry decided")
    wait_until(lambda: agents[0].total("logwarden_refreshes_total", outcome="ok") == 6,
               what="its fan-out answered")  # 2 (first) + 2 (change) + 2 (this one)
    time.sleep(0.5)
    assert sum(purged(agent, edge.url) + purged(agent, "cdn") for agent in agents) == 2
    assert len(api.received()) == 1
    answer = edge.get(target)
    assert (answer.headers["X-Edge-Cache"], answer.headers["X-Version"]) == ("HIT", "2")
    for agent in agents:  # the API's token is in no agent's log
        assert agent.stderr_path is not None
        assert "s3cr3t" not in agent.stderr_path.read_text()
