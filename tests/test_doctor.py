"""``logwarden doctor`` on real NGINX (issue 17, scope 5): nodes from examples/nginx.conf, three
wired right and one for each way of wiring a node wrong (lab.cluster.MISWIRED, and a purge route
keyed differently), one cluster for the module. Each run checks three nodes: green when all are
wired right, else a red row naming the cause, and exit 1."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab import Cluster, find_nginx
from lab.cluster import MISWIRED, _replace
from lab.process import group_alive
from tests.peers import dead_url

HOST = "www.example.com"
_PURGE_KEY = "proxy_cache_purge logwarden $scheme$host$request_uri$logwarden_class;"


def _purge_key_differs(text: str) -> str:
    """$request_method in the purge key: PURGE there, GET in the entries' keys."""
    return _replace(text, _PURGE_KEY, _PURGE_KEY.replace("$scheme", "$request_method$scheme"))


WIRED_WRONG = {**MISWIRED, "purge_key_differs": _purge_key_differs}
DEAF_CAUSES = ("refresh not bypassed (X-Cache-Status: MISS)",
               "its geo $logwarden_peer lacks this node's address (add '127.0.0.1 1;'",
               '"$logwarden_peer:$http_x_refresh" $logwarden_refresh has another secret',
               "lacks 'proxy_cache_bypass $logwarden_refresh;'")
CAUSES = {
    "no_bypass": DEAF_CAUSES,
    "not_in_geo": DEAF_CAUSES,
    "other_secret": DEAF_CAUSES,
    "bypass_not_stored": ("refresh bypassed but not stored (the plain request after it: "
                          "X-Cache-Status: MISS): the bypass variable is also in proxy_no_cache",),
    "no_cache_status": ("refresh: no X-Cache-Status header: add 'add_header X-Cache-Status "
                        "$upstream_cache_status always;'",),
}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Nodes 0-2 wired right, then one per entry of :data:`WIRED_WRONG`, in its order."""
    if find_nginx() is None:
        pytest.skip("nginx not found on PATH or in /usr/sbin (Debian: make system-deps)")
    edits = {3 + i: edit for i, edit in enumerate(WIRED_WRONG.values())}
    with Cluster(tmp_path_factory.mktemp("doctor"), nodes=3 + len(edits),
                 edits=edits) as started:
        masters = [node.pid for node in started]
        yield started
    assert not started.origin.running
    left = [pid for pid in masters if pid is not None and group_alive(pid)]
    assert not left, f"NGINX process groups still alive after stop(): {left}"


def wrong(nodes: Cluster, name: str) -> str:
    return nodes[3 + list(WIRED_WRONG).index(name)].url


def doctor(canary: str, urls: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    peers = [a for url in urls for a in ("--peer", url)]
    return subprocess.run(
        [sys.executable, "-m", "logwarden", "doctor", "--self", urls[0], *peers,
         "--doctor-url", canary, "--default-host", HOST, *args],
        capture_output=True, text=True, timeout=60)


def rows(out: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """node URL → (verdict, text) of each table row."""
    found = {}
    for line in out.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("ok", "FAIL"):
            node, _, text = rest.strip().partition(" ")
            found[node] = (verdict, text.strip())
    return found


@pytest.mark.nginx
def test_all_green_when_wired_right_and_only_the_canary_changes(nodes: Cluster) -> None:
    good = [node.url for node in nodes.nodes[:3]]
    before = len(nodes.origin.requests)

    out = doctor("/doctor/green?ma=60", good)

    assert out.returncode == 0, out.stdout + out.stderr
    assert rows(out) == dict.fromkeys(good, ("ok", "refreshed (BYPASS), then stored (HIT)"))
    assert out.stdout.splitlines()[-1] == "all 3 node(s) ready"
    # One origin fetch per node (the refresh's), all of the canary; every node logged only
    # logwarden's requests for it, so the agents beside them would ignore them all.
    assert [r.target for r in nodes.origin.requests[before:]] == ["/doctor/green?ma=60"] * 3
    for node in nodes.nodes[:3]:
        lines = [line for line in node.log_lines() if line.target == "/doctor/green?ma=60"]
        assert [(line.cache_status, line.user_agent.split("/")[0]) for line in lines] == [
            ("BYPASS", "logwarden"), ("HIT", "logwarden")]


@pytest.mark.nginx
@pytest.mark.parametrize("name", list(CAUSES))
def test_each_wiring_mistake_is_a_red_row_naming_its_cause(nodes: Cluster, name: str) -> None:
    good = [node.url for node in nodes.nodes[:2]]
    bad = wrong(nodes, name)

    out = doctor(f"/doctor/{name}?ma=60", [*good, bad])

    assert out.returncode == 1, out.stdout + out.stderr
    found = rows(out)
    assert [found[url][0] for url in good] == ["ok", "ok"]
    verdict, text = found[bad]
    assert verdict == "FAIL"
    for cause in CAUSES[name]:
        assert cause in text
    assert out.stdout.splitlines()[-1].startswith("1 of 3 node(s) NOT ready")


@pytest.mark.nginx
def test_purge_mode_purges_and_refills_and_names_a_refusal_and_another_key(
        nodes: Cluster) -> None:
    good = [node.url for node in nodes.nodes[:3]]
    refused, other_key = wrong(nodes, "not_in_geo"), wrong(nodes, "purge_key_differs")

    out = doctor("/doctor/purge?ma=60", [*good, refused, other_key], "--mode", "purge")

    assert out.returncode == 1, out.stdout + out.stderr
    found = rows(out)
    for url in good:
        assert found[url] == ("ok", "cached (HIT), purged (200), refilled (MISS)")
    assert found[refused][0] == "FAIL"
    assert found[refused][1].startswith("purge: refuses PURGE (403): list this node's address "
                                        "in the peer's geo $logwarden_peer")
    assert found[refused][1].endswith("this node connects from 127.0.0.1")
    assert found[other_key] == ("FAIL", "purge: 404 (nothing purged) though the canary is "
                                "cached: the purge location's key differs from proxy_cache_key "
                                "(the same variables in both; $request_method is PURGE there)")

    out = doctor("/doctor/purge-refresh?ma=60", good, "--mode", "purge",
                 "--purge-then-refresh")
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(rows(out).values()) == {
        ("ok", "cached (HIT), purged (200), refreshed (BYPASS), then stored (HIT)")}


def test_a_node_that_cannot_be_reached_is_a_red_row() -> None:
    down = dead_url()
    out = doctor("/", [down])
    assert out.returncode == 1, out.stderr
    assert rows(out)[down][0] == "FAIL"
    assert "refresh: cannot connect (" in rows(out)[down][1]


@pytest.mark.parametrize(("args", "message"), [
    (["--doctor-url", "/a"], "doctor_url: '/a' is a path: give --default-host for its Host"),
    (["--doctor-url", "ftp://h/x"], "doctor_url: 'ftp://h/x' is neither a path"),
    (["--doctor-url", "/a b"], "doctor_url: '/a b' must be printable ASCII without spaces"),
    (["--default-host", HOST, "--cache-status-header", ""],
     "cache_status_header: '' turns verification off, and doctor reads it"),
    ([], "peer: '' is required"),
])
def test_a_config_doctor_cannot_check_with_exits_2(args: list[str], message: str) -> None:
    nodes = [] if not args else ["--peer", dead_url()]
    out = subprocess.run([sys.executable, "-m", "logwarden", "doctor", *nodes, *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith("logwarden: error: ") and message in out.stderr
    assert len(out.stderr.splitlines()) == 1
