"""One version everywhere: changes told apart from expiries, split rounds healed (real NGINX).

The example format logs the origin answer's ETag and Last-Modified; each peer's refresh answer
shows the copy it stores now. A peer whose refresh fetched a newer copy than the triggering
node's own fetch (the origin changed in between) would leave that node a version behind for a
whole TTL: the agent refreshes the nodes not on the newest copy once more, from a node that
holds it where nginx.conf has origin offload's map (the lab's nodes do).
"""

from __future__ import annotations

import time

from lab import Cluster, Origin, free_port, wait_until
from tests.agents import StartAgent


def serving(cluster: Cluster, target: str) -> list[tuple[str | None, str]]:
    """(X-Cache-Status, X-Version) of each node for ``target``."""
    out = []
    for node in cluster:
        answer = node.get(target)
        out.append((answer.headers.get("X-Cache-Status"), answer.headers["X-Version"]))
    return out


def test_a_split_round_is_healed_and_a_flapping_origin_gets_one_extra_round(
        cluster: Cluster, origin: Origin, start_agent: StartAgent) -> None:
    urls = [node.url for node in cluster]
    agents = [start_agent(node, urls) for node in cluster]
    a = cluster[0]
    # The origin moves to version 2 on the first refresh fetch after A's own: B and C store
    # 2 while A's line shows 1.
    started = time.monotonic()
    assert a.get("/s/1?split=1&etag=1").headers.get("X-Cache-Status") == "MISS"
    # two refreshes, then A's own (the heal); asking a node earlier would fetch it there
    wait_until(lambda: agents[0].total("logwarden_refreshes_total", outcome="ok") == 3,
               timeout=2, what="the fan-out and the heal")
    assert serving(cluster, "/s/1?split=1&etag=1") == [("HIT", "2")] * 3
    assert time.monotonic() - started < 2
    assert agents[0].total("logwarden_heals_total") == 1
    # A, B and C; A's heal copies B's (X-Logwarden-Source: the offload map of nginx.conf)
    assert len(origin.requests_for("/s/1")) == 3

    # An origin that changes on every fetch: one extra round for the change, never more.
    assert a.get("/s/2?flap=1&etag=1").headers.get("X-Cache-Status") == "MISS"
    wait_until(lambda: agents[0].total("logwarden_heals_total") == 2, timeout=2,
               what="the second heal")
    time.sleep(1)
    assert agents[0].total("logwarden_heals_total") == 2
    # A, B and C fetched three versions; the two not on the newest copied it from its node
    assert len(origin.requests_for("/s/2")) == 3
    assert len({version for _, version in serving(cluster, "/s/2?flap=1&etag=1")}) == 1


def test_changes_are_counted_apart_from_expiries_that_fetched_the_same_copy(
        cluster: Cluster, origin: Origin, start_agent: StartAgent) -> None:
    """An origin whose pages alternate changed and unchanged between expiries: only the
    changes count, told by the ETag on one URL and by Last-Modified on the other."""
    node = cluster[0]
    closed = f"http://127.0.0.12:{free_port('127.0.0.12')}"  # the peer is not the subject
    agent = start_agent(node, [node.url, closed], "--retries", "0")
    targets = {"/v/e": "/v/e?etag=1&ma=1", "/v/m": "/v/m?lm=1&ma=1"}
    for target in targets.values():
        assert node.get(target).headers.get("X-Cache-Status") == "MISS"  # first: neither
    for i in range(4):
        if i % 2 == 0:
            for path in targets:
                origin.bump(path)
        time.sleep(2.1)  # expired (NGINX counts max-age from a whole second)
        for target in targets.values():
            assert node.get(target).headers.get("X-Cache-Status") in ("STALE", "EXPIRED")
    wait_until(lambda: agent.total("logwarden_changes_total")
               + agent.total("logwarden_unchanged_total") >= 8, timeout=3,
               what="every expiry decided")
    assert (agent.total("logwarden_changes_total"),
            agent.total("logwarden_unchanged_total")) == (4, 4)
