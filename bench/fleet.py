"""``python -m bench.fleet``: what one change costs a fleet, per way of spreading it (issue 9).

For N real NGINX nodes on loopback (3 and 10 by default) and each mode — direct fan-out,
origin offload (``--refresh-from-self``), the Redis bus, bus + offload — a client fetches new
URLs from node A; once every other node has logged its refresh, the run counts the requests
the agents sent (refreshes and bus publishes), the origin's fetches of the URL and the fetches
the other nodes made from A's cache, and the propagation time (A's line to the last refresh
line, from NGINX's ``$msec``). Counts are exact; times drift with the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab import EXAMPLE_CONFIG, Cluster, LogLine, NginxNode, find_nginx, wait_until
from lab.agent import Agent, log_format_from_conf
from lab.redisserver import RedisServer, find_redis, secret_file

MODES: dict[str, tuple[bool, bool]] = {  # name: (bus, offload)
    "direct fan-out": (False, False),
    "origin offload": (False, True),
    "bus": (True, False),
    "bus + offload": (True, True),
}
LOG_FORMAT = log_format_from_conf(EXAMPLE_CONFIG.read_text())


@dataclass(frozen=True)
class Result:
    nodes: int
    mode: str
    changes: int
    agent_requests: float
    published: float
    origin_fetches: float
    from_source: float
    propagation_ms: float


def _agent(node: NginxNode, cluster: Cluster, mode: str, redis_url: str, logs: Path) -> Agent:
    bus, offload = MODES[mode]
    peers = [] if bus else [n.url for n in cluster]
    extra = ["--bus", redis_url, "--bus-secret-file", str(secret_file(logs)), "--local",
             node.url] if bus else []
    extra += ["--refresh-from-self"] if offload else []
    return Agent(node.access_log, LOG_FORMAT, node.url, peers, extra=extra,
                 stderr=logs / f"{mode.replace(' ', '')}-{node.name}.log").start()


def _refreshes(node: NginxNode, target: str) -> list[LogLine]:
    return [ln for ln in node.log_lines()
            if ln.target == target and ln.user_agent.startswith("logwarden/")]


def _change(cluster: Cluster, target: str) -> tuple[int, int, float]:
    """(origin fetches, fetches from A's cache, propagation s) of one new URL fetched on A."""
    a, others = cluster[0], cluster.nodes[1:]
    a.get(target)
    [first] = a.wait_log(lambda ln: ln.target == target and ln.cache_status == "MISS")
    wait_until(lambda: all(_refreshes(n, target) for n in others), timeout=10,
               what=f"{target} on every node")
    last = max(float(_refreshes(n, target)[0].msec) for n in others)
    path = target.split("?")[0]
    return (len(cluster.origin.requests_for(path)), len(_refreshes(a, target)),
            last - float(first.msec))


def measure(cluster: Cluster, mode: str, redis_url: str, changes: int, logs: Path) -> Result:
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        agents = list(pool.map(lambda n: _agent(n, cluster, mode, redis_url, logs), cluster))
    try:
        if MODES[mode][0]:
            wait_until(lambda: all(ag.value("logwarden_bus_connected") == 1 for ag in agents),
                       timeout=10, what="every agent on the bus")
        slug = mode.replace(" ", "").replace("+", "-")
        runs = [_change(cluster, f"/fleet/{len(agents)}/{slug}/{i}?ma=300")
                for i in range(changes)]
        sent = sum(ag.total("logwarden_refreshes_total") for ag in agents)
        published = sum(ag.value("logwarden_bus_published_total", outcome="ok") for ag in agents)
    finally:
        for agent in agents:
            agent.stop()
    return Result(len(agents), mode, changes, (sent + published) / changes, published / changes,
                  statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs),
                  1000 * statistics.median(r[2] for r in runs))


def table(results: list[Result]) -> str:
    head = ("N", "mode", "agent requests / change", "of them bus publishes",
            "origin fetches / change", "fetches from the source node", "propagation p50")
    rows = [head] + [(str(r.nodes), r.mode, f"{r.agent_requests:.1f}", f"{r.published:.1f}",
                      f"{r.origin_fetches:.1f}", f"{r.from_source:.1f}",
                      f"{r.propagation_ms:.0f} ms") for r in results]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(head))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--changes", type=int, default=5, help="new URLs per mode and N")
    args = parser.parse_args()
    if find_nginx() is None or find_redis() is None:
        print("needs nginx and redis-server: make system-deps (as root)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="logwarden-bench-fleet-"))
    results = []
    with RedisServer(workdir / "redis") as redis:
        for n in args.nodes:
            with Cluster(workdir / f"cluster{n}", nodes=n) as cluster:
                for mode in MODES:
                    results.append(measure(cluster, mode, redis.url, args.changes, workdir))
                    print(table(results[-1:]).splitlines()[-1], flush=True)
    print(f"\n{args.changes} changes per row; logs in {workdir}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
