"""Rotating the shared secret on real NGINX nodes and their agents without a restart (README
"Rotating the secret"): every node accepts both secrets (reload), every agent reads its new
header file (SIGHUP), every node drops the old secret (reload); changes keep coming all along
and every one reaches both other nodes. No access log, no agent log holds either secret."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from lab import Cluster, NginxNode, Origin, wait_until
from lab.agent import Agent
from tests.agents import StartAgent, refreshes_seen, urls

pytestmark = pytest.mark.nginx

OLD, NEW = "old-7d1e0f5a-secret", "new-93ab61c2-secret"
PHASE = 1.5
"""Seconds of changes between two steps of the rotation."""


class Changes:
    """A thread fetching a new URL (a MISS) every 20 ms, on each node in turn, until the block
    ends; ``made``: (node index, target) of each."""

    def __init__(self, nodes: list[NginxNode]) -> None:
        self.nodes = nodes
        self.made: list[tuple[int, str]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="changes")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            i, target = len(self.made) % len(self.nodes), f"/rotate/{len(self.made)}?ma=60"
            try:
                assert self.nodes[i].get(target).headers["X-Cache-Status"] == "MISS"
            except BaseException as exc:  # reported by __exit__
                self.errors.append(exc)
                return
            self.made.append((i, target))

    def __enter__(self) -> Changes:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if self.errors and exc is None:
            raise self.errors[0]


def hang_up(agent: Agent) -> None:
    """SIGHUP, then wait until the agent says it took the new header."""
    assert agent.proc is not None and agent.stderr_path is not None
    log = agent.stderr_path
    before = log.read_text().count("SIGHUP: refreshes not yet sent now carry")
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: log.read_text().count("SIGHUP: refreshes not yet sent now carry")
               > before, what="the agent to read its header file again")


def test_the_secret_rotates_on_every_node_and_agent_without_a_restart(
    origin: Origin, tmp_path: Path, start_agent: StartAgent,
) -> None:
    with Cluster(tmp_path / "cluster", nodes=3, origin=origin, secrets=(OLD,)) as cluster:
        nodes = list(cluster)
        headers = [tmp_path / f"refresh-header-{node.name}" for node in nodes]
        for header in headers:
            header.write_text(f"X-Refresh: {OLD}\n")
        agents = [start_agent(node, urls(cluster), "--refresh-header-file", str(header))
                  for node, header in zip(nodes, headers, strict=True)]
        with Changes(nodes) as changes:
            time.sleep(PHASE)
            for node in nodes:  # 1. every node accepts both
                node.secrets = (OLD, NEW)
                node.reload()
            time.sleep(PHASE)
            for agent, header in zip(agents, headers, strict=True):  # 2. every agent: the new
                header.write_text(f"X-Refresh: {NEW}\n")
                hang_up(agent)
            time.sleep(PHASE)
            for node in nodes:  # 3. the old one goes
                node.secrets = (NEW,)
                node.reload()
            time.sleep(PHASE)
        made = changes.made
        assert len(made) > 100

        def refreshed_everywhere() -> bool:  # (a retry after a reload may add a line)
            return all(len(refreshes_seen(node, target)) >= 1
                       for i, target in made for node in nodes if node is not nodes[i])

        # 20 s: a CI run under load once took longer than 10 s to catch up
        wait_until(refreshed_everywhere, timeout=20, what="every change on both other nodes")
        for i, agent in enumerate(agents):
            own = sum(1 for j, _ in made if j == i)
            wait_until(lambda a=agent, n=own: a.total("logwarden_refreshes_total") == 2 * n,
                       what="each refresh's outcome")
            assert agent.total("logwarden_refreshes_total", outcome="ok") == 2 * own
        for node in nodes:
            assert all(line.cache_status == "BYPASS" for _, target in made
                       for line in refreshes_seen(node, target))
        # The old secret is refused now, the new one works.
        probe = "/rotate/after?ma=60"
        assert nodes[0].get(probe).headers["X-Cache-Status"] == "MISS"
        assert nodes[0].get(probe, headers={"X-Refresh": OLD}).headers["X-Cache-Status"] == "HIT"
        assert nodes[0].get(probe, headers={"X-Refresh": NEW}).headers["X-Cache-Status"] == \
            "BYPASS"
        logs = [node.access_log for node in nodes] + [a.stderr_path for a in agents]
    for path in logs:
        assert path is not None
        data = path.read_bytes()
        assert OLD.encode() not in data and NEW.encode() not in data, path
