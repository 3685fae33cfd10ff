"""Benchmark 4, the headline: how stale is a round-robin cluster, without and with logwarden.

Three real NGINX nodes from examples/nginx.conf (``proxy_cache_use_stale updating``,
``proxy_cache_background_update on``) behind a round-robin client (the load balancer of the
original problem), ``max-age=10`` from an origin whose every URL gets a new version each second.
The client asks for a fixed set of URLs in turn. A response is *stale* when some node had
already served a newer version of that URL; *spread* is the time from the first node serving a
version to the last node serving it (or a newer one). The same run goes once without agents and
once with one logwarden agent per node.

Fast changes: the same, with every URL changing every :data:`FAST_CHANGE` seconds (faster than
a refresh round: the peers' refreshes fetch a newer version than the triggering node's own
fetch, every round splits) and an ETag per version, so the agents see the split and heal it.
*Left behind*: pairs of nodes that served different versions of a URL for over
:data:`LEFT_BEHIND` second on end, counted once per episode; without agents, with agents, and
with agents and origin offload (``--refresh-from-self``: the peers copy the triggering node's).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from bench.common import Row
from bench.propagation import LOG_FORMAT
from lab import Cluster, Origin
from lab.agent import Agent

URLS = 4  # each node sees each URL every 3 x 4 requests: a few ms between samples
MAX_AGE = 10
FAST_CHANGE = 0.002
"""Seconds between two versions of a URL in the fast-change run: a refresh round (line written,
tailed, decided, sent, fetched by the peer) takes longer (benchmark 3: 2 ms p50 beyond the
origin fetch, the tailing before it)."""
LEFT_BEHIND = 1.0
STALE_CUT_TARGET = 20.0
SPREAD_TARGET_MS = 100.0


class Served(NamedTuple):
    at: float
    node: int
    path: str
    version: int


class Outcome(NamedTuple):
    stale_share: float
    spread_p99_ms: float
    responses: int
    left_behind: int


def run(seconds: float) -> list[Row]:
    without, with_ = (_round(seconds, agents) for agents in (False, True))
    # None stale with logwarden: the cut is at least what one stale response would give.
    floor = with_.stale_share or 1 / with_.responses
    cut = without.stale_share / floor
    return [
        Row(f"4. stale responses, round-robin over 3 nodes, {seconds:g} s each",
            f"{with_.stale_share:.2%} of {with_.responses}",
            f"{without.stale_share:.2%} without",
            f"{'' if with_.stale_share else '>= '}{cut:.0f}x cut", ">= 20x cut",
            cut >= STALE_CUT_TARGET),
        Row("4. every node serving a version, after the first (p99)",
            f"{with_.spread_p99_ms:.0f} ms", f"{without.spread_p99_ms:.0f} ms without",
            f"{with_.spread_p99_ms / SPREAD_TARGET_MS:.2f}x", "<= 100 ms",
            with_.spread_p99_ms <= SPREAD_TARGET_MS),
    ]


def run_fast(seconds: float) -> list[Row]:
    """The fast-change run: nodes left behind without agents, with them, with offload."""
    without, with_, offload = (
        _round(seconds, agents, FAST_CHANGE, "&etag=1", extra)
        for agents, extra in ((False, ()), (True, ()), (True, ("--refresh-from-self",))))
    head = (f"4. nodes left behind (pairs > {LEFT_BEHIND:g} s), a change every "
            f"{FAST_CHANGE * 1000:g} ms, {seconds:g} s each")
    return [Row(f"{head}, origin offload", str(offload.left_behind),
                f"{without.left_behind} without", "-", "0", offload.left_behind == 0),
            Row(f"{head}, refreshes from the origin", str(with_.left_behind),
                f"{without.left_behind} without", "-", "0", with_.left_behind == 0)]


def _round(seconds: float, agents: bool, change: float = 1.0, query: str = "",
           extra: tuple[str, ...] = ()) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp, \
            Cluster(Path(tmp)) as cluster, _agents(cluster, agents, extra), \
            _versions(cluster.origin, change):
        paths = [f"/conv/{i}" for i in range(URLS)]
        for path in paths:  # every node starts with a copy, fetched at different times
            for node in cluster.nodes:
                node.get(f"{path}?ma={MAX_AGE}{query}")
                time.sleep(MAX_AGE / URLS / 3)
        served = list(_client(cluster, paths, seconds, query))
    return Outcome(_stale_share(served), _spread_p99_ms(served), len(served),
                   _left_behind(served))


@contextmanager
def _agents(cluster: Cluster, start: bool, extra: tuple[str, ...] = ()) -> Iterator[None]:
    urls = [node.url for node in cluster.nodes]
    agents = [Agent(node.access_log, LOG_FORMAT, node.url, urls,
                    extra=["--log-level", "warning", *extra]).start()
              for node in cluster.nodes] if start else []
    try:
        yield
    finally:
        for agent in agents:
            agent.stop()


@contextmanager
def _versions(origin: Origin, every: float) -> Iterator[None]:
    """Every URL gets a new version each ``every`` seconds."""
    stop = threading.Event()

    def bump() -> None:
        while not stop.wait(every):
            for i in range(URLS):
                origin.bump(f"/conv/{i}")

    thread = threading.Thread(target=bump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _client(cluster: Cluster, paths: list[str], seconds: float,
            query: str = "") -> Iterator[Served]:
    """Round robin over the nodes, the URLs in turn, for ``seconds``."""
    deadline, i = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        node, path = i % len(cluster.nodes), paths[i // len(cluster.nodes) % len(paths)]
        response = cluster.nodes[node].get(f"{path}?ma={MAX_AGE}{query}")
        yield Served(time.monotonic(), node, path, int(response.headers["X-Version"]))
        i += 1


def _stale_share(served: list[Served]) -> float:
    newest: dict[str, int] = {}
    stale = 0
    for s in served:
        stale += s.version < newest.get(s.path, 0)
        newest[s.path] = max(newest.get(s.path, 0), s.version)
    return stale / len(served)


def _spread_p99_ms(served: list[Served]) -> float:
    """For each (URL, version) every node served: first node to last node, 99th percentile."""
    nodes = {s.node for s in served}
    first: dict[tuple[str, int], float] = {}
    reached: dict[tuple[str, int], dict[int, float]] = {}
    for s in served:
        first.setdefault((s.path, s.version), s.at)
        for key in [k for k in first if k[0] == s.path and k[1] <= s.version]:
            reached.setdefault(key, {}).setdefault(s.node, s.at)
    spreads = sorted(max(by_node.values()) - first[key] for key, by_node in reached.items()
                     if set(by_node) == nodes)
    return 1000 * spreads[int(0.99 * (len(spreads) - 1))] if spreads else float("inf")



def _left_behind(served: list[Served]) -> int:
    """Episodes of two nodes serving different versions of a URL for over :data:`LEFT_BEHIND`
    seconds on end: from the first response that shows them apart to the first that shows
    them together again (or the end of the run)."""
    last: dict[tuple[str, int], int] = {}
    apart: dict[tuple[str, int, int], float] = {}  # since when each pair differs
    episodes = 0
    for s in served:
        last[s.path, s.node] = s.version
        for (path, other), version in list(last.items()):
            if path != s.path or other == s.node:
                continue
            pair = (path, *sorted((s.node, other)))
            if version != s.version:
                apart.setdefault(pair, s.at)
            elif pair in apart:
                episodes += s.at - apart.pop(pair) > LEFT_BEHIND
    end = served[-1].at if served else 0.0
    return episodes + sum(end - since > LEFT_BEHIND for since in apart.values())
