"""Benchmark 4, the headline: how stale is a round-robin cluster, without and with logwarden.

Three real NGINX nodes from examples/nginx.conf (``proxy_cache_use_stale updating``,
``proxy_cache_background_update on``) behind a round-robin client (the load balancer of the
original problem), ``max-age=10`` from an origin whose every URL gets a new version each second.
The client asks for a fixed set of URLs in turn. A response is *stale* when some node had
already served a newer version of that URL; *spread* is the time from the first node serving a
version to the last node serving it (or a newer one). The same run goes once without agents and
once with one logwarden agent per node.
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


def _round(seconds: float, agents: bool) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp, \
            Cluster(Path(tmp)) as cluster, _agents(cluster, agents), _versions(cluster.origin):
        paths = [f"/conv/{i}" for i in range(URLS)]
        for path in paths:  # every node starts with a copy, fetched at different times
            for node in cluster.nodes:
                node.get(f"{path}?ma={MAX_AGE}")
                time.sleep(MAX_AGE / URLS / 3)
        served = list(_client(cluster, paths, seconds))
    return Outcome(_stale_share(served), _spread_p99_ms(served), len(served))


@contextmanager
def _agents(cluster: Cluster, start: bool) -> Iterator[None]:
    urls = [node.url for node in cluster.nodes]
    agents = [Agent(node.access_log, LOG_FORMAT, node.url, urls,
                    extra=["--log-level", "warning"]).start()
              for node in cluster.nodes] if start else []
    try:
        yield
    finally:
        for agent in agents:
            agent.stop()


@contextmanager
def _versions(origin: Origin) -> Iterator[None]:
    """Every URL gets a new version each second."""
    stop = threading.Event()

    def bump() -> None:
        while not stop.wait(1.0):
            for i in range(URLS):
                origin.bump(f"/conv/{i}")

    thread = threading.Thread(target=bump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _client(cluster: Cluster, paths: list[str], seconds: float) -> Iterator[Served]:
    """Round robin over the nodes, the URLs in turn, for ``seconds``."""
    deadline, i = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        node, path = i % len(cluster.nodes), paths[i // len(cluster.nodes) % len(paths)]
        response = cluster.nodes[node].get(f"{path}?ma={MAX_AGE}")
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

