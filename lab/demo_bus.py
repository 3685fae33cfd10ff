"""``make demo-bus``: the demo's cluster, its agents talking over a Redis bus, with origin offload.

No agent knows a peer: each publishes its triggers on Redis and refreshes only the NGINX beside
it. With ``--refresh-from-self`` the other nodes fetch a change from the node that has it, so
the origin sees one fetch per change. Then Redis is killed and restarted: the change made
meanwhile is counted (``bus_unavailable``) and propagation resumes. ``--once`` exits after the
walk-through; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from lab import EXAMPLE_CONFIG, Cluster, NginxNode, find_nginx, wait_until
from lab.agent import Agent, log_format_from_conf
from lab.demo import HOST, PATH, TARGET, ask, refreshed, stop_agents
from lab.redisserver import RedisServer, find_redis, secret_file


def change(cluster: Cluster, agents: list[Agent], what: str) -> None:
    """A client asks A; B and C get A's message and refresh from A's cache."""
    a, b, c = cluster.nodes
    origin = cluster.origin
    before = len(origin.requests_for(PATH))
    marks = [len(n.log_lines()) for n in (b, c)]
    print("   " + ask(a, "A"))
    wait_until(lambda: all(refreshed(n, m) for n, m in zip((b, c), marks, strict=True)), 5)
    print(f"   A published one message; B and C refreshed from A's cache ({what}):")
    print("   " + ask(b, "B") + "     " + ask(c, "C"))
    print(f"   origin fetches for this change: {len(origin.requests_for(PATH)) - before}")


def walk_through(cluster: Cluster, agents: list[Agent], redis: RedisServer) -> None:
    a = cluster.nodes[0]
    print(f"\n1. A client asks node A for {TARGET} (Host: {HOST})")
    change(cluster, agents, "origin offload")

    print(f"\n2. The origin publishes version {cluster.origin.bump(PATH)}; waiting for the "
          "cached copies to expire (max-age=2)…")
    time.sleep(3)
    print("   A client asks node A again: STALE now, updated in the background")
    change(cluster, agents, "origin offload")

    print("\n3. Redis crashes (SIGKILL)")
    redis.kill()
    wait_until(lambda: agents[0].value("logwarden_bus_connected") == 0, 5)
    cluster.origin.bump(PATH)
    time.sleep(3)
    print("   " + ask(a, "A") + "   (no peers configured: the change reaches no other node)")
    wait_until(lambda: agents[0].value("logwarden_bus_published_total",
                                       outcome="bus_unavailable") >= 1, 5)
    print("   logwarden on A: logwarden_bus_published_total{outcome=\"bus_unavailable\"} "
          f"{agents[0].value('logwarden_bus_published_total', outcome='bus_unavailable'):.0f}")
    redis.start()
    wait_until(lambda: all(ag.value("logwarden_bus_connected") == 1 for ag in agents), 5)
    print("   Redis is back; every agent reads the stream again. The next change spreads again:")
    cluster.origin.bump(PATH)
    time.sleep(3)
    change(cluster, agents, "origin offload")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the walk-through")
    args = parser.parse_args()
    missing = [name for name, found in (("nginx", find_nginx()), ("redis-server", find_redis()))
               if found is None]
    if missing:
        print(f"not installed: {', '.join(missing)}: run 'make system-deps' as root",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log_format = log_format_from_conf(Path(EXAMPLE_CONFIG).read_text())
    workdir = Path(tempfile.mkdtemp(prefix="logwarden-demo-bus-"))
    agents: list[Agent] = []
    secret = secret_file(workdir)
    with RedisServer(workdir / "redis") as redis, Cluster(workdir / "cluster", nodes=3) as cluster:
        try:
            print(f"origin           {cluster.origin.url}\nredis            {redis.url}")
            for name, node in zip("ABC", cluster.nodes, strict=True):
                agents.append(start(node, name, log_format, redis.url, secret, workdir))
            wait_until(lambda: all(ag.value("logwarden_bus_connected") == 1 for ag in agents), 5)
            walk_through(cluster, agents, redis)
            if not args.once:
                print(f"\nThe cluster keeps running. Logs are in {workdir}. Ctrl-C stops "
                      "everything.")
                signal.pause()
        except KeyboardInterrupt:
            print()
        finally:
            stop_agents(agents, cluster, ", Redis")
    return 0


def start(node: NginxNode, name: str, log_format: str, bus: str, secret: Path,
          workdir: Path) -> Agent:
    agent = Agent(node.access_log, log_format, node.url, [],
                  extra=["--bus", bus, "--bus-secret-file", str(secret), "--local", node.url,
                         "--refresh-from-self"],
                  stderr=workdir / f"logwarden-{name}.log").start()
    print(f"node {name}  NGINX   {node.url}   logwarden metrics {agent.base}/metrics")
    return agent


if __name__ == "__main__":
    sys.exit(main())
