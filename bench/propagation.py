"""Benchmark 3: from the MISS line on node A to each peer's refresh having completed.

Three real NGINX nodes from examples/nginx.conf and the lab origin on loopback, one logwarden
agent per node. A client asks node A for a new URL every 20 ms (A logs MISS); A's agent
refreshes B and C, whose access logs then hold the refresh. While it runs, 5,000 HIT lines a
second are appended to A's log. Latency per (change, peer) = the peer's ``$msec`` for the refresh
minus A's ``$msec`` for the MISS; "beyond the origin" subtracts the peer's ``$request_time``
(its own fetch from the origin, which logwarden cannot shorten). ``$msec`` has 1 ms steps.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Row
from bench.gen import CACHEABLE
from lab import EXAMPLE_CONFIG, Cluster, LogLine, NginxNode
from lab.agent import Agent, log_format_from_conf

LOG_FORMAT = log_format_from_conf(Path(EXAMPLE_CONFIG).read_text())

HIT_LINES_PER_SECOND = 5000
CHANGES_PER_SECOND = 50
TARGET_MS = 25.0


def run(changes: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp, \
            Cluster(Path(tmp)) as cluster:
        urls = [node.url for node in cluster.nodes]
        agents = [Agent(node.access_log, LOG_FORMAT, node.url, urls,
                        extra=["--log-level", "warning"]).start() for node in cluster.nodes]
        try:
            beyond = _measure(cluster, changes)
        finally:
            for agent in agents:
                agent.stop()
    beyond.sort()
    p50, p99 = statistics.median(beyond), beyond[int(0.99 * (len(beyond) - 1))]
    lost = 2 * changes - len(beyond)
    return [Row(f"3. propagation beyond origin, {changes} changes x 2 peers, p50/p99/max"
                + (f" ({lost} never arrived)" if lost else ""),
                f"{p50:.0f} / {p99:.0f} / {beyond[-1]:.0f} ms", f"{TARGET_MS:.0f} ms (p99)",
                f"{p99 / TARGET_MS:.2f}x", "p99 <= 25 ms beyond origin",
                p99 <= TARGET_MS and not lost)]


def _measure(cluster: Cluster, changes: int) -> list[float]:
    a, peers = cluster.nodes[0], cluster.nodes[1:]
    prefix = f"/prop/{time.time_ns()}/"
    stop = threading.Event()
    load = threading.Thread(target=_hit_load, args=(a.access_log, stop), daemon=True)
    load.start()
    try:
        for i in range(changes):
            a.get(f"{prefix}{i}?ma=600")
            time.sleep(1 / CHANGES_PER_SECOND)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                len(_refreshes(node, prefix)) < changes for node in peers):
            time.sleep(0.1)
    finally:
        stop.set()
        load.join()
    misses = {line.target: float(line.msec) for line in a.log_lines()
              if line.target.startswith(prefix) and line.cache_status == "MISS"}
    return [1000 * (float(line.msec) - float(line.request_time) - misses[line.target])
            for node in peers for line in _refreshes(node, prefix).values()]


def _refreshes(node: NginxNode, prefix: str) -> dict[str, LogLine]:
    """The first logwarden refresh of each target under ``prefix`` on ``node``."""
    found: dict[str, LogLine] = {}
    for line in node.log_lines():
        if line.target.startswith(prefix) and line.user_agent.startswith("logwarden/"):
            found.setdefault(line.target, line)
    return found


def _hit_load(log: Path, stop: threading.Event) -> None:
    """Append HIT lines at HIT_LINES_PER_SECOND, 50 per write, as NGINX's workers would (in
    the example format: a HIT logs the stored copy's caching headers)."""
    per_write, n = HIT_LINES_PER_SECOND // 100, 0
    with open(log, "ab", buffering=0) as fh:
        while not stop.wait(0.01):
            now = time.time()
            fh.write(b"".join(
                b"%.3f\thttp\twww.example.com\t80\tGET\t/bg/%d\t200\tHIT\t-\t0.000\t0\t"
                b"curl/8.5.0\t%s\n" % (now, (n + i) % 5000, CACHEABLE) for i in range(per_write)))
            n += per_write
