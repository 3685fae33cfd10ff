"""What NGINX does not store is not multiplied: uncacheable answers on real NGINX.

Answers with ``no-store``, ``private``, ``max-age=0`` or a ``Set-Cookie`` log MISS on every
request. With a plain format (no caching headers logged) the agents learn it: a URL MISSed again
does not fan out, so in the steady state the origin sees what the clients ask, and no more.
"""

from __future__ import annotations

import itertools
import time

from lab import Cluster, Origin, wait_until
from tests.agents import StartAgent

KINDS = ("cc=no-store", "cc=private", "ma=0", "cookie=1")
URLS = [f"/u/{kind.split('=')[0]}{i}?{kind}" for kind in KINDS for i in range(5)]


def fetches(origin: Origin) -> int:
    return sum(1 for r in origin.requests if r.path.startswith("/u/"))


def round_robin(cluster: Cluster, rounds: int) -> int:
    """Each URL asked ``rounds`` times, the nodes in turn (a load balancer); requests made."""
    nodes = itertools.cycle(cluster.nodes)
    for _ in range(rounds):
        for url in URLS:
            assert next(nodes).get(url).status == 200
    return rounds * len(URLS)


def test_uncacheable_answers_are_not_multiplied_and_changes_still_propagate(
        cluster: Cluster, origin: Origin, start_agent: StartAgent) -> None:
    before = fetches(origin)
    asked = round_robin(cluster, 6)
    without = fetches(origin) - before
    assert without == asked  # every request a MISS: what the clients cost the origin

    urls = [node.url for node in cluster]
    agents = [start_agent(node, urls) for node in cluster]
    round_robin(cluster, 6)  # each node sees each URL twice: it learns
    time.sleep(0.5)
    before = fetches(origin)
    asked = round_robin(cluster, 6)
    time.sleep(0.5)  # refreshes that would follow the last requests
    with_agents = fetches(origin) - before
    assert with_agents <= without * 1.05, (with_agents, without)
    assert sum(a.total("logwarden_records_ignored_total", reason="uncacheable")
               for a in agents) >= asked * 0.9

    # Meanwhile a cacheable URL's change and a new cacheable URL still reach B and C. Asked
    # once each, after A's agent has sent its refreshes: asking earlier would fetch it there.
    a, *others = cluster

    def refreshed_by_a(count: int) -> None:
        wait_until(lambda: agents[0].total("logwarden_refreshes_total", outcome="ok") >= count,
                   timeout=2, what=f"{count} refreshes from A's agent")

    done = agents[0].total("logwarden_refreshes_total", outcome="ok")
    assert a.get("/c/1?ma=2").headers.get("X-Cache-Status") == "MISS"
    refreshed_by_a(done + len(others))
    assert [n.get("/c/1?ma=2").headers.get("X-Cache-Status") for n in others] == ["HIT"] * 2
    new = origin.bump("/c/1")
    time.sleep(3.5)  # expired everywhere (NGINX counts max-age from a whole second)
    assert a.get("/c/1?ma=2").headers.get("X-Cache-Status") == "STALE"
    refreshed_by_a(done + 2 * len(others))
    answers = [n.get("/c/1?ma=2") for n in others]
    assert [(r.headers.get("X-Cache-Status"), f"version={new} ".encode() in r.body)
            for r in answers] == [("HIT", True)] * 2
