"""What NGINX does not store is not multiplied: uncacheable answers on real NGINX.

Answers with ``no-store``, ``private``, ``max-age=0`` or a ``Set-Cookie`` log MISS on every
request. With a plain format (no caching headers logged) the agents learn it: a URL MISSed again
does not fan out, so in the steady state the origin sees what the clients ask, and no more.
"""

from __future__ import annotations

import itertools
import time

from lab import Cluster, Origin, wait_until
from lab.agent import Agent
from tests.agents import StartAgent

KINDS = ("cc=no-store", "cc=private", "ma=0", "cookie=1")
URLS = [f"/u/{kind.split('=')[0]}{i}?{kind}" for kind in KINDS for i in range(5)]


def fetches(origin: Origin) -> int:
    return sum(1 for r in origin.requests if r.path.startswith("/u/"))


def decided(agent: Agent) -> float:
    """Lines the agent has decided (read is not enough: they may wait in its queue)."""
    return sum(agent.total(name) for name in ("logwarden_records_ignored_total",
                                              "logwarden_lines_malformed_total",
                                              "logwarden_triggers_total"))


def settled(cluster: Cluster, agents: list[Agent], origin: Origin, start: list[int]) -> None:
    """NGINX has written every line (it writes after answering), every agent has decided them
    all, and the refreshes that followed have reached the origin: what is counted next belongs
    to what comes next (a loaded machine lets an agent lag behind its log). ``start``: each
    log's lines when its agent started (it starts at the end)."""
    last: tuple[object, ...] = ()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logged = [len(node.log_lines()) - skipped for node, skipped in zip(cluster, start,
                                                                          strict=True)]
        read = [decided(agent) for agent in agents]
        sent = all(agent.total("logwarden_refreshes_total")
                   == 2 * agent.total("logwarden_refresh_fanouts_total") for agent in agents)
        now = (*logged, fetches(origin))
        if now == last and read == logged and sent:
            return
        last = now
        time.sleep(0.3)
    raise TimeoutError(f"not settled: logged {last}, read {read}")


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
    start = [len(node.log_lines()) for node in cluster]  # agents start at the end of the log
    round_robin(cluster, 6)  # each node sees each URL twice: it learns
    settled(cluster, agents, origin, start)
    before = fetches(origin)
    asked = round_robin(cluster, 6)
    settled(cluster, agents, origin, start)  # refreshes that would follow the last requests
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
