"""``make demo``: an origin, three NGINX nodes from examples/nginx.conf, logwarden beside each.

Shows the stale-copy problem being solved: a change that one node fetches becomes visible on
the other two without any client asking them. Then keeps the cluster up for you to try until
Ctrl-C (``--once`` exits after the walk-through). Everything it starts, it stops.
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

PATH = "/demo/page"
TARGET = PATH + "?ma=2"  # the lab origin answers Cache-Control: max-age=2 for this URL
HOST = "www.example.com"


def ask(node: NginxNode, name: str) -> str:
    response = node.get(TARGET, host=HOST)
    status, version = response.headers["X-Cache-Status"], response.headers["X-Version"]
    return f"client → {name}: {status:<7} version {version}"


def refreshed(node: NginxNode, since: int) -> bool:
    return any(line.user_agent.startswith("logwarden/") and line.target == TARGET
               for line in node.log_lines()[since:])


def walk_through(cluster: Cluster, names: list[str]) -> None:
    a, b, c = cluster.nodes
    print(f"\n1. A client asks node A for {TARGET} (Host: {HOST})")
    marks = [len(n.log_lines()) for n in (b, c)]
    print("   " + ask(a, "A"))
    wait_until(lambda: all(refreshed(n, m) for n, m in zip((b, c), marks, strict=True)), 5)
    print("   logwarden on A saw the MISS and refreshed B and C:")
    print("   " + ask(b, "B") + "     " + ask(c, "C"))

    print(f"\n2. The origin publishes version {cluster.origin.bump(PATH)}; every node still "
          "holds version 1")
    print("   waiting for the cached copies to expire (max-age=2)…")
    time.sleep(3)

    print("\n3. A client asks node A again: NGINX serves the stale copy and updates it in the "
          "background")
    marks = [len(n.log_lines()) for n in (b, c)]
    print("   " + ask(a, "A"))
    wait_until(lambda: all(refreshed(n, m) for n, m in zip((b, c), marks, strict=True)), 5)
    print("   logwarden on A saw the STALE line and refreshed B and C:")
    print("   " + ask(b, "B") + "     " + ask(c, "C"))
    print("\n   Without logwarden, B and C would answer STALE version 1 to their next client.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the walk-through")
    args = parser.parse_args()
    if find_nginx() is None:
        print("nginx is not installed: run 'make system-deps' as root "
              "(or: sudo apt-get install nginx)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly under `kill` too
    log_format = log_format_from_conf(Path(EXAMPLE_CONFIG).read_text())
    workdir = Path(tempfile.mkdtemp(prefix="logwarden-demo-"))
    names = ["A", "B", "C"]
    agents: list[Agent] = []
    with Cluster(workdir / "cluster", nodes=3) as cluster:
        try:
            urls = [node.url for node in cluster.nodes]
            print(f"origin           {cluster.origin.url}")
            for name, node in zip(names, cluster.nodes, strict=True):
                agent = Agent(node.access_log, log_format, node.url, urls,
                              stderr=workdir / f"logwarden-{name}.log").start()
                agents.append(agent)
                print(f"node {name}  NGINX   {node.url}   logwarden metrics {agent.base}/metrics")
            walk_through(cluster, names)
            if not args.once:
                print(f"\nThe cluster keeps running. Try:\n"
                      f"   curl -si -H 'Host: {HOST}' {urls[1]}{TARGET}\n"
                      f"   curl -s {agents[0].base}/metrics | grep ^logwarden_refreshes\n"
                      f"Logs are in {workdir}. Ctrl-C stops everything.")
                signal.pause()
        except KeyboardInterrupt:
            print()
        finally:
            stop_agents(agents, cluster)
    return 0


def stop_agents(agents: list[Agent], cluster: Cluster, also: str = "") -> None:
    """Stop the agents first (they read the nodes' logs), and say what was stopped."""
    codes = [agent.stop() for agent in agents]
    print(f"stopped: {len(agents)} logwarden agents (exit codes {codes}), "
          f"{len(cluster.nodes)} NGINX nodes, the origin{also}")


if __name__ == "__main__":
    sys.exit(main())
