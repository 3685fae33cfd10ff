"""Verified refreshes on real NGINX: a peer that ignores the refresh (wired "deaf" each way
an operator gets it wrong, lab.cluster.DEAF) answers it from its cache; the agent never counts
it ``ok``, names it once in a warning, leaves its breaker closed and keeps refreshing the
correctly wired peer; ``logwarden warm`` fails naming that node."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import Cluster, Origin, wait_until
from lab.cluster import DEAF
from tests.agents import StartAgent, body_version, urls
from tests.test_warm import node_args, warm

pytestmark = pytest.mark.nginx

HOST = "www.example.com"


@pytest.mark.parametrize("cluster", [{2: edit} for edit in DEAF.values()], ids=list(DEAF),
                         indirect=True)
def test_a_deaf_peer_is_never_ok_is_named_and_fails_warm(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, tmp_path: Path,
) -> None:
    a, good, deaf = cluster.nodes
    targets = [f"/deaf/{i}?ma=60" for i in range(3)]
    for target in targets:  # both peers hold version 1, fresh for a minute
        for node in (good, deaf):
            assert body_version(node, target, HOST) == ("MISS", 1)
    agent = start_agent(a, urls(cluster))

    for target in targets:
        origin.bump(target.split("?")[0])
        assert a.get(target).headers["X-Version"] == "2"  # A logs MISS: its agent refreshes
    wait_until(lambda: all(agent.total("logwarden_refreshes_total", peer=peer) == 3
                           for peer in (good.url, deaf.url)), what="both peers' outcomes")
    assert agent.value("logwarden_refreshes_total", peer=good.url, outcome="ok") == 3
    assert agent.value("logwarden_refreshes_total", peer=deaf.url, outcome="not_refreshed") == 3
    assert agent.value("logwarden_peer_up", peer=deaf.url) == 1  # up, only wired wrong
    for target in targets:
        assert body_version(good, target, HOST) == ("HIT", 2)
        assert body_version(deaf, target, HOST) == ("HIT", 1)  # it kept the old copy
    assert agent.stderr_path is not None
    told = [line for line in agent.stderr_path.read_text().splitlines()
            if "answers refreshes from its cache" in line]
    assert len(told) == 1, told
    assert " WARNING " in told[0] and f"peer {deaf.url} " in told[0]
    for fix in ("geo $logwarden_peer", '"$logwarden_peer:$http_x_refresh" $logwarden_refresh',
                "proxy_cache_bypass $logwarden_refresh;"):
        assert fix in told[0]

    (tmp_path / "urls.txt").write_text("".join(f"{target}\n" for target in targets))
    out = warm(str(tmp_path / "urls.txt"), "--default-host", HOST, *node_args(urls(cluster)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{deaf.url}: 0 warmed, 3 failed (not_refreshed 3)" in out.stdout
    assert f"peer {deaf.url} answers refreshes from its cache" in out.stderr
    for node in (a, good):
        assert f"{node.url}: 3 warmed, 0 failed" in out.stdout
    assert body_version(deaf, targets[0], HOST) == ("HIT", 1)
