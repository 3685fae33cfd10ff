"""What NGINX does not store is not multiplied: uncacheable answers on real NGINX.

Answers with ``no-store``, ``private``, ``max-age=0`` or a ``Set-Cookie`` log MISS on every
request. With the example's format the line carries the origin's caching headers and says so
itself; with a plain format (no caching headers logged) the agents learn it: a URL MISSed again
does not fan out. Either way, in the steady state the origin sees what the clients ask, and no
more, while real changes still reach every node.
"""

from __future__ import annotations

import itertools
import time

import pytest

from lab import Cluster, Origin, wait_until
from lab.agent import Agent
from tests.agents import LOG_FORMAT, StartAgent

KINDS = ("cc=no-store", "cc=private", "ma=0", "cookie=1")
URLS = [f"/u/{kind.split('=')[0]}{i}?{kind}" for kind in KINDS for i in range(5)]
PLAIN_FORMAT = LOG_FORMAT[:LOG_FORMAT.index("$http_user_agent") + len("$http_user_agent")] + "'"
"""The example's format without the caching-header fields (the lines still have them: they
end up in the user agent's field, which only has to start with logwarden's own)."""
RULES = {"no_store": 5, "private": 5, "max_age": 5, "set_cookie": 5}
"""The rule each of :data:`KINDS` is judged by, times its URLs, per round."""


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


@pytest.mark.parametrize("headers", [True, False], ids=["caching-headers", "learning"])
def test_uncacheable_answers_are_not_multiplied_and_changes_still_propagate(
        cluster: Cluster, origin: Origin, start_agent: StartAgent, headers: bool) -> None:
    before = fetches(origin)
    asked = round_robin(cluster, 6)
    without = fetches(origin) - before
    assert without == asked  # every request a MISS: what the clients cost the origin

    urls = [node.url for node in cluster]
    agents = [start_agent(node, urls, *([] if headers else ["--log-format", PLAIN_FORMAT]))
              for node in cluster]
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
    by_rule = {rule: sum(a.total("logwarden_uncacheable_total", rule=rule) for a in agents)
               for rule in (*RULES, "repeated_miss")}
    if headers:  # every line judged by its own headers, from the first request on
        assert by_rule == {**{rule: 2 * 6 * n for rule, n in RULES.items()}, "repeated_miss": 0}
    else:
        assert set(by_rule.values()) - {0} and by_rule["repeated_miss"] == sum(by_rule.values())

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


def test_a_flood_of_new_uncacheable_urls_does_not_delay_a_known_urls_change(
        cluster: Cluster, origin: Origin, start_agent: StartAgent) -> None:
    """Unique uncacheable URLs (each a first MISS: nothing to learn from, in a plain format)
    at 5x --max-refresh-rate through A; meanwhile five pages the nodes serve from cache change.
    Their fan-outs (STALE) take the bucket's reserve that first copies cannot: B and C serve
    every new version within 2 s. (Without the reserve each change would find a token about
    one time in five: the flood takes each one as it drips in.)"""
    a, *others = cluster
    known = [f"/k/{i}?ma=1" for i in range(5)]
    for node in cluster:
        for target in known:
            assert node.get(target).status == 200
    rate = 10
    agents = [start_agent(node, [n.url for n in cluster], "--log-format", PLAIN_FORMAT,
                          "--max-refresh-rate", str(rate), "--max-refresh-burst", str(2 * rate))
              for node in cluster]
    new = {target: origin.bump(target.split("?")[0]) for target in known}
    flood = itertools.count()

    def flood_for(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert a.get(f"/f/{next(flood)}?cc=no-store").status == 200
            time.sleep(1 / (5 * rate))

    flood_for(2.5)  # the known pages expire everywhere; the flood drains the bucket
    for target in known:
        assert a.get(target).headers.get("X-Cache-Status") == "STALE"
        flood_for(0.3)
    flood_for(2)
    assert agents[0].total("logwarden_storm_dropped_total", reason="rate") > 0
    assert agents[0].total("logwarden_triggers_total", cache_status="STALE") == len(known)
    # B and C were not asked since their first copies: a new version is what A's agent
    # refreshed there (its max-age of 1 s may have run out since: STALE serves that copy).
    stale_at = {ln.target: float(ln.msec) for ln in a.log_lines() if ln.cache_status == "STALE"}
    for node in others:
        refreshed = {ln.target: float(ln.msec) for ln in node.log_lines()
                     if ln.user_agent.startswith("logwarden/") and ln.cache_status == "BYPASS"}
        assert all(refreshed[t] - stale_at[t] <= 2 for t in known), (refreshed, stale_at)
    for target in known:
        answers = [n.get(target) for n in others]
        assert [(r.headers.get("X-Cache-Status") in ("HIT", "STALE"),
                 f"version={new[target]} ".encode() in r.body) for r in answers] \
            == [(True, True)] * 2, target
