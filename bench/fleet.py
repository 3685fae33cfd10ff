"""``python -m bench.fleet``: what one change costs a fleet, per way of spreading it (issues 9
and 19).

Counts: for N real NGINX nodes on loopback (3 and 10 by default) and each mode — direct
fan-out, origin offload (``--refresh-from-self``), the Redis bus, bus + offload — a client
fetches new URLs from node A; once every other node has logged its refresh, the run counts
the requests the agents sent (refreshes and bus publishes), the origin's fetches of the URL
and the fetches the other nodes made from A's cache, and the propagation time (A's line to
the last refresh line, from NGINX's ``$msec``). Counts are exact; times drift with the
machine's load.

Scale (``--fleet``, 50 by default): that many NGINX nodes (one worker, a 1 MiB key zone and
a 64 MiB cache each) with an agent beside each, through the bus and then by direct fan-out
from A (every agent then holds the full peer list). Per mode: propagation of one change to
every node (A's line to the last node's refresh line) p50 and p99 over ``--fleet-changes``
changes, one after the other, after a first one (each agent's first refresh: timed apart),
and to one node (p50 over every node of every change); each
agent's RSS after the changes; the Redis server's CPU (share of one core) while the fleet
idles and while the changes spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
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


def _agent(node: NginxNode, cluster: Cluster, mode: str, redis_url: str, logs: Path,
           timeout: float = 10.0) -> Agent:
    bus, offload = MODES[mode]
    peers = [] if bus else [n.url for n in cluster]
    stream = f"fleet-{len(cluster.nodes)}-{mode.replace(' ', '')}"  # a run's own backlog
    extra = ["--bus", redis_url, "--bus-channel", stream, "--bus-secret-file",
             str(logs / "bus-secret"), "--local", node.url] if bus else []
    extra += ["--refresh-from-self"] if offload else []
    return Agent(node.access_log, LOG_FORMAT, node.url, peers, extra=extra,
                 stderr=logs / f"{mode.replace(' ', '')}-{node.name}.log").start(timeout)


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


# --- scale -------------------------------------------------------------------------------------


def _small(text: str) -> str:
    """A fleet node: one worker, a small cache."""
    for old, new in (("worker_processes 2;", "worker_processes 1;"),
                     ("keys_zone=logwarden:10m", "keys_zone=logwarden:1m"),
                     ("max_size=1g", "max_size=64m")):
        if old not in text:
            raise ValueError(f"fleet node config: {old!r} not found")
        text = text.replace(old, new)
    return text


class Tail:
    """A node's access log, read on from where the last call stopped (49 logs polled while a
    change spreads: reading each whole would cost the agents their CPU)."""

    def __init__(self, node: NginxNode) -> None:
        self.path = node.access_log
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def lines(self) -> list[LogLine]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [LogLine.parse(line) for line in data[:end].decode("latin-1").splitlines(True)]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


@dataclass(frozen=True)
class Scale:
    mode: str
    nodes: int
    changes: int
    to_all: list[float]
    """Seconds from A's line to the last node's refresh line, per change."""
    to_one: list[float]
    """Seconds from A's line to each node's refresh line, every node of every change."""
    first: float
    """The first change's to every node: each agent's first refresh (not in the others)."""
    rss: list[float]
    redis_idle: float | None
    """Redis CPU share while the fleet idles (None: no bus)."""
    redis_busy: float | None
    """Redis CPU share while the changes spread."""


def _spread_once(a: NginxNode, tails: list[Tail], target: str) -> tuple[float, list[float]]:
    a.get(target)
    [first] = a.wait_log(lambda ln: ln.target == target and ln.cache_status == "MISS")
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(tails):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target}: {len(tails) - len(seen)} nodes not refreshed")
        time.sleep(0.02)
        for i, tail in enumerate(tails):
            for ln in tail.lines():
                if ln.target == target and ln.user_agent.startswith("logwarden/"):
                    seen.setdefault(i, float(ln.msec))
    start = float(first.msec)
    return max(seen.values()) - start, [t - start for t in seen.values()]


def scale(cluster: Cluster, mode: str, redis: RedisServer, changes: int, logs: Path) -> Scale:
    bus = MODES[mode][0]
    starter = ThreadPoolExecutor(4)  # 50 Python starts at once on 2 cores would time out
    agents = list(starter.map(lambda n: _agent(n, cluster, mode, redis.url, logs, timeout=120),
                              cluster))
    starter.shutdown()
    try:
        if bus:
            wait_until(lambda: all(ag.value("logwarden_bus_connected") == 1 for ag in agents),
                       timeout=60, what="every agent on the bus")
        time.sleep(5)  # let the start-up settle
        assert redis.pid is not None
        idle_from, idle_at = _cpu_seconds(redis.pid), time.monotonic()
        time.sleep(10)
        idle = (_cpu_seconds(redis.pid) - idle_from) / (time.monotonic() - idle_at)
        a, tails = cluster[0], [Tail(n) for n in cluster.nodes[1:]]
        busy_from, busy_at = _cpu_seconds(redis.pid), time.monotonic()
        slug = mode.replace(" ", "")
        first, _ = _spread_once(a, tails, f"/scale/{slug}/first?ma=300")
        runs = [_spread_once(a, tails, f"/scale/{slug}/{i}?ma=300") for i in range(changes)]
        busy = (_cpu_seconds(redis.pid) - busy_from) / (time.monotonic() - busy_at)
        rss = [_rss_mib(ag.proc.pid) for ag in agents if ag.proc is not None]
    finally:
        with ThreadPoolExecutor(8) as stopper:
            list(stopper.map(lambda ag: ag.stop(), agents))
    return Scale(mode, len(agents), changes, [r[0] for r in runs],
                 [t for r in runs for t in r[1]], first, rss, idle if bus else None,
                 busy if bus else None)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def scale_table(results: list[Scale]) -> str:
    head = ("mode", "nodes, an agent each", "changes", "to every node p50", "p99",
            "to one node p50", "first change to every node", "agent RSS mean / max",
            "Redis CPU idle", "Redis CPU spreading")
    rows = [head] + [(
        r.mode, str(r.nodes), str(r.changes), f"{1000 * _p(r.to_all, 0.5):.0f} ms",
        f"{1000 * _p(r.to_all, 0.99):.0f} ms", f"{1000 * _p(r.to_one, 0.5):.0f} ms",
        f"{1000 * r.first:.0f} ms",
        f"{statistics.mean(r.rss):.1f} / {max(r.rss):.1f} MiB",
        "—" if r.redis_idle is None else f"{100 * r.redis_idle:.1f} %",
        "—" if r.redis_busy is None else f"{100 * r.redis_busy:.1f} %",
    ) for r in results]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(head))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[3, 10],
                        help="N of the counts table (none: skip it)")
    parser.add_argument("--changes", type=int, default=5, help="new URLs per mode and N")
    parser.add_argument("--fleet", type=int, default=50, help="nodes of the scale table "
                        "(0: skip it)")
    parser.add_argument("--fleet-changes", type=int, default=100, help="changes per mode "
                        "at scale")
    args = parser.parse_args()
    if find_nginx() is None or find_redis() is None:
        print("needs nginx and redis-server: make system-deps (as root)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="logwarden-bench-fleet-"))
    secret_file(workdir)  # every agent's --bus-secret-file
    results, scaled = [], []
    with RedisServer(workdir / "redis") as redis:
        for n in args.nodes:
            with Cluster(workdir / f"cluster{n}", nodes=n) as cluster:
                for mode in MODES:
                    results.append(measure(cluster, mode, redis.url, args.changes, workdir))
                    print(table(results[-1:]).splitlines()[-1], flush=True)
        if args.fleet:
            with Cluster(workdir / f"fleet{args.fleet}", nodes=args.fleet,
                         edits=dict.fromkeys(range(args.fleet), _small)) as cluster:
                for mode in ("bus", "direct fan-out"):
                    scaled.append(scale(cluster, mode, redis, args.fleet_changes, workdir))
                    print(scale_table(scaled[-1:]).splitlines()[-1], flush=True)
    if results:
        print(f"\n{args.changes} changes per row; logs in {workdir}\n")
        print(table(results))
    if scaled:
        print(f"\n{args.fleet} nodes on loopback, {os.cpu_count()} CPUs; logs in {workdir}\n")
        print(scale_table(scaled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
