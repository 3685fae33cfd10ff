"""Variant classes on real NGINX: every copy a client can be served is refreshed.

The origin answers ``Vary: Accept-Encoding`` and names in the body the encoding it got
(``?vary=ae``). Nodes with the example's recipe (``render_config(variants=True)``) key a
normalised class; agents with three ``--variant``s refresh each class on every node, the
triggering node's other classes included. Nodes without the recipe honour Vary: a copy per
Accept-Encoding string, which no refresh can replace, and the agent says so.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from lab import Cluster, NginxNode, Origin, find_nginx, wait_until
from tests.agents import StartAgent

CLASSES = ["--variant", "Accept-Encoding: br", "--variant", "Accept-Encoding: gzip",
           "--variant", ""]
CLIENTS = {  # the Accept-Encoding each sends, and the class the recipe's map gives it
    "chrome": ("gzip, deflate, br, zstd", "br"),
    "safari": ("gzip, deflate, br", "br"),
    "python-requests": ("gzip, deflate", "gzip"),
    "curl": (None, ""),
}
MAX_AGE = 3


def ask(node: NginxNode, target: str, client: str) -> tuple[str | None, int, str]:
    """(X-Cache-Status, version, encoding the origin got) of ``client``'s GET on ``node``."""
    encoding = CLIENTS[client][0]
    resp = node.get(target, headers={"Accept-Encoding": encoding} if encoding else {})
    assert resp.status == 200, resp
    m = re.match(rb"version=(\d+) .* encoding=(\S*)", resp.body)
    assert m is not None, resp.body
    return resp.headers.get("X-Cache-Status"), int(m.group(1)), m.group(2).decode()


@pytest.fixture
def variant_cluster(origin: Origin, tmp_path: Path) -> Cluster:
    if find_nginx() is None:
        pytest.skip("nginx not found on PATH or in /usr/sbin (Debian: make system-deps)")
    with Cluster(tmp_path / "variants", nodes=3, origin=origin, variants=True) as cluster:
        yield cluster  # type: ignore[misc]


def test_every_class_on_every_node_gets_the_new_version(
        variant_cluster: Cluster, origin: Origin, start_agent: StartAgent) -> None:
    cluster, target, path = variant_cluster, f"/v/1?vary=ae&ma={MAX_AGE}", "/v/1"
    urls = [node.url for node in cluster]
    agents = [start_agent(node, urls, *CLASSES) for node in cluster]
    old = origin.version(path)
    for node in cluster:  # every (node, client) pair holds the old version
        for client in CLIENTS:
            ask(node, target, client)
    wait_until(lambda: all(ask(n, target, c)[:2] == ("HIT", old) for n in cluster
                           for c in CLIENTS), timeout=MAX_AGE - 0.5,
               what="every copy cached at the old version")
    assert all(ask(n, target, c)[2] == CLIENTS[c][1] for n in cluster for c in CLIENTS), \
        "the origin got the class, not the client's string"
    time.sleep(MAX_AGE + 1.0)  # every copy expired: only a refresh makes one fresh again
    a = cluster[0]
    new = origin.bump(path)
    sent = agents[0].total("logwarden_refresh_requests_total")
    assert ask(a, target, "chrome")[:2] == ("STALE", old)  # the background update stores new
    # Two peers x three classes, and A's own classes: all three, as the example's format does
    # not log the class (so A cannot tell which one its line stored).
    wait_until(lambda: agents[0].total("logwarden_refresh_requests_total") >= sent + 9,
               timeout=2, what="A's refresh requests for every class")
    # One look at each pair: an answer from a node whose copy was old would be STALE (and
    # start an update that a second look would find), so none is asked twice.
    seen = {(n.name, c): ask(n, target, c)[:2] for n in cluster for c in CLIENTS}
    assert seen == dict.fromkeys(seen, ("HIT", new))
    requests = {c: agents[0].total("logwarden_refresh_requests_total", variant=c)
                for c in ("br", "gzip", "none")}
    assert all(n > 0 for n in requests.values()), requests
    assert agents[0].total("logwarden_vary_uncovered_total") == 0


def test_vary_that_no_variant_covers_is_said(cluster: Cluster, start_agent: StartAgent,
                                             tmp_path: Path) -> None:
    """Nodes as shipped honour Vary: the refresh answer shows it and the agent warns."""
    a, *others = cluster
    agent = start_agent(a, [node.url for node in cluster])
    a.get("/v/2?vary=ae", headers={"Accept-Encoding": "gzip"})
    wait_until(lambda: agent.total("logwarden_vary_uncovered_total",
                                   host="www.example.com") >= len(others),
               timeout=10, what="the refresh answers' Vary to be counted")
    log = (tmp_path / f"logwarden-{a.address}.log").read_text()
    assert "www.example.com answers vary on accept-encoding" in log
    assert log.count("answers vary on") == 1  # once per host
