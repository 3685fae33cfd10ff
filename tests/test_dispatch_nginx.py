"""The dispatcher against real NGINX on loopback: purge mode end to end without a loop, exact
targets in the peer's access log, https peers (SNI, a CA made in the test), the shared secret
of examples/nginx.conf, and a flood held to the token bucket."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.request import urlopen

import pytest

from lab import EXAMPLE_CONFIG, OUTSIDER_ADDRESS, Cluster, NginxNode, Origin, free_port, wait_until
from lab.agent import Agent
from lab.cluster import CLIENT_ADDRESS, current_user
from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
from logwarden.model import Refresh
from logwarden.ops.metrics import Metrics
from tests.agents import StartAgent, body_version, refreshes_seen, urls
from tests.certs import Certs, make_certs
from tests.lines import example_line
from tests.peers import dead_url, silent_url

pytestmark = pytest.mark.nginx

HOST = "www.example.com"


def lines_seen(agent: Agent, node: NginxNode, before: int) -> bool:
    """The agent, started when the node's log had ``before`` lines, has read all lines since."""
    return agent.value("logwarden_lines_total") >= len(node.log_lines()) - before


# --- purge mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("then_refresh", [False, True], ids=["purge", "purge-then-refresh"])
def test_purge_mode_spreads_a_change_without_a_loop(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, then_refresh: bool,
) -> None:
    a, b, c = cluster.nodes
    target = f"/purge/{then_refresh}?ma=60"
    path = target.split("?")[0]
    for node in (b, c):
        assert body_version(node, target, HOST) == ("MISS", 1)
    extra = ["--mode", "purge", *(["--purge-then-refresh"] if then_refresh else [])]
    agent_a, agent_b, agent_c = (start_agent(node, urls(cluster), *extra) for node in cluster)
    logged = {node: len(node.log_lines()) for node in (b, c)}
    origin.bump(path)
    before = len(origin.requests_for(path))

    assert a.get(target).headers["X-Version"] == "2"  # A logs MISS; its agent purges B and C
    requests = 2 if then_refresh else 1
    for node in (b, c):
        wait_until(lambda node=node: len(refreshes_seen(node, target)) == requests, timeout=3,
                   what=f"logwarden's requests on {node.address}")
        seen = [(ln.method, ln.status, ln.cache_status) for ln in refreshes_seen(node, target)]
        assert seen == [("PURGE", "200", "-"), ("HEAD", "200", "BYPASS")][:requests]
        # Purged: the next client takes a MISS; purged and refreshed: a HIT. Both get v2.
        assert body_version(node, target, HOST) == ("HIT" if then_refresh else "MISS", 2)

    for agent, node in ((agent_b, b), (agent_c, c)):
        wait_until(lambda agent=agent, node=node: lines_seen(agent, node, logged[node]),
                   what=f"the agent of {node.address} to read its log")
        refills = agent.value("logwarden_records_ignored_total", reason="refill")
        assert refills == (0 if then_refresh else 1)
        assert agent.total("logwarden_refreshes_total") == 0  # no loop: nothing fanned out
        assert agent.value("logwarden_refresh_fanouts_total") == 0
    assert not refreshes_seen(a, target)
    for peer in (b.url, c.url):
        assert agent_a.value("logwarden_refreshes_total", peer=peer, outcome="ok") == 1
    assert len(origin.requests_for(path)) - before == 3  # A's MISS, then one fetch per peer


# --- retries and the breaker, as operators see them ---------------------------------------------


def test_agent_retries_then_skips_dead_and_silent_peers(
    cluster: Cluster, start_agent: StartAgent,
) -> None:
    a, b, _ = cluster.nodes
    dead = dead_url()
    with silent_url() as silent:
        agent = start_agent(a, [a.url, dead, silent, b.url], "--timeout", "0.5",
                            "--retries", "1", "--retry-backoff", "0.05",
                            "--breaker-failures", "3", "--breaker-cooldown", "60")
        targets = [f"/breaker/{i}?ma=60" for i in range(4)]
        for target in targets:
            a.get(target)
        wait_until(lambda: all(refreshes_seen(b, t) for t in targets), what="B refreshed")
        # refresh 1: two failed attempts; refresh 2: the third opens the breaker; 3, 4: skipped
        for peer, failure in ((dead, "connect_error"), (silent, "timeout")):
            wait_until(lambda peer=peer: agent.value(
                "logwarden_refreshes_total", peer=peer, outcome="skipped") == 2, timeout=5,
                what=f"{peer} to be skipped")
            assert agent.value("logwarden_refreshes_total", peer=peer, outcome=failure) == 2
            assert agent.value("logwarden_refresh_retries_total", peer=peer) == 1
            assert agent.value("logwarden_peer_up", peer=peer) == 0
        assert agent.value("logwarden_refreshes_total", peer=b.url, outcome="ok") == 4
        assert agent.value("logwarden_peer_up", peer=b.url) == 1


# --- peers file and SIGHUP ----------------------------------------------------------------------


def health_peers(agent: Agent) -> list[str]:
    with urlopen(agent.base + "/healthz", timeout=5) as resp:
        peers: list[str] = json.load(resp)["peers"]
        return peers


def test_sighup_reloads_the_peers_file(
    cluster: Cluster, start_agent: StartAgent, tmp_path: Path,
) -> None:
    """--poll-interval 60: the change is noticed because of SIGHUP, not by polling."""
    a, b, c = cluster.nodes
    peers_file = tmp_path / "peers"
    peers_file.write_text(f"{a.url}\n{b.url}\n")
    agent = start_agent(a, [a.url], "--peers-file", str(peers_file), "--poll-interval", "60")
    assert health_peers(agent) == [b.url]
    a.get("/hup/1?ma=60")
    wait_until(lambda: bool(refreshes_seen(b, "/hup/1?ma=60")), what="B to be refreshed")

    peers_file.write_text(f"# B is gone, C is new\n{a.url}\n{c.url}\n{c.url}\n")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: health_peers(agent) == [c.url], what="the new peer list")
    a.get("/hup/2?ma=60")
    wait_until(lambda: bool(refreshes_seen(c, "/hup/2?ma=60")), what="C to be refreshed")
    assert not refreshes_seen(b, "/hup/2?ma=60")
    assert agent.value("logwarden_refreshes_total", peer=c.url, outcome="ok") == 1
    assert agent.value("logwarden_refreshes_total", peer=b.url, outcome="ok") == 1


# --- exact targets ------------------------------------------------------------------------------

#: nginx-facts §3: five spellings, five cache entries; and percent-encoded CR LF, plain text.
SPELLINGS = ("/basic/enc1?a=1&b=2", "/basic/enc1?b=2&a=1", "/basic/enc%31?a=1",
             "/basic/./enc1?a=1", "/basic//enc1?a=1", "/x/%0d%0a?q=%22x%22")


def test_exact_spellings_arrive_unchanged_in_the_peer_log(
    cluster: Cluster, start_agent: StartAgent,
) -> None:
    a, b, _ = cluster.nodes
    agent = start_agent(a, [a.url, b.url])
    for target in SPELLINGS:
        assert a.get(target).headers["X-Cache-Status"] == "MISS"  # five different entries
    lines = b.wait_log(lambda ln: ln.user_agent.startswith("logwarden/"), count=len(SPELLINGS))
    assert sorted(ln.target for ln in lines) == sorted(SPELLINGS)
    assert {(ln.method, ln.cache_status) for ln in lines} == {("HEAD", "BYPASS")}
    # The format has $msec: each fan-out's time from A's line to B's answer is observed.
    wait_until(lambda: agent.value("logwarden_propagation_seconds_count") == len(SPELLINGS),
               what="propagation times")
    assert agent.value("logwarden_propagation_seconds_sum") < len(SPELLINGS) * 2.0


# --- https peers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throw-away CA and a certificate for the lab's two host names, signed by it."""
    return make_certs(tmp_path_factory.mktemp("certs"), f"DNS:{HOST},DNS:static.example.com")


class TlsNode(NginxNode):
    """A minimal NGINX with a plain and a TLS listener that logs the SNI it was given (and
    says BYPASS, so its answers are verified refreshes)."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__("tls", "127.0.0.21", EXAMPLE_CONFIG, "http://127.0.0.1:9", (), workdir)
        self.certs = certs
        self.tls_port = free_port(self.address)
        self.tls_url = f"https://{self.address}:{self.tls_port}"

    def render(self) -> str:
        p = self.prefix
        temp = "".join(f"{kind}_temp_path {p}/tmp/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""
user {current_user()};
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    {temp}
    log_format tls '$scheme $ssl_server_name $host $request_uri $http_user_agent';
    access_log {p}/logs/access.log tls;
    server {{
        listen {self.address}:{self.port};
        listen {self.address}:{self.tls_port} ssl;
        server_name {HOST} static.example.com;
        ssl_certificate {self.certs.cert};
        ssl_certificate_key {self.certs.key};
        add_header X-Cache-Status BYPASS always;  # answers as a refreshed peer would
        return 204;
    }}
}}
"""

    def tls_log(self) -> list[tuple[str, ...]]:
        return [tuple(ln.split()[:4]) for ln in self.access_log.read_text().splitlines()]


@pytest.fixture
def tls_node(tmp_path: Path, certs: Certs) -> Iterator[TlsNode]:
    with TlsNode(tmp_path, certs) as node:
        yield node


async def dispatch(peers: Sequence[str], refreshes: Sequence[Refresh],
                   **settings: object) -> Metrics:
    """Send ``refreshes`` to ``peers`` with a fresh dispatcher; its metrics once all are done."""
    m = Metrics()
    d = Dispatcher(tuple(peers), DispatchSettings(retries=0, **settings), m)  # type: ignore[arg-type]
    d.start()
    for refresh in refreshes:
        d.submit(refresh)
    assert await d.close(5) == 0
    return m


def outcomes(m: Metrics, peer: str) -> dict[str, int]:
    """The outcomes of the refreshes sent to ``peer`` that happened at all."""
    return dict(m.outcomes().get(peer, {}))


async def test_https_peer_gets_the_original_host_as_sni_and_is_verified(
    tls_node: TlsNode, certs: Certs,
) -> None:
    """The URL's scheme picks the listener; each host gets its own verified TLS connection."""
    node = tls_node
    refreshes = [Refresh("https", HOST, b"/s?a=1", "MISS"),
                 Refresh("https", "static.example.com", b"/t", "MISS"),
                 Refresh("http", HOST, b"/plain", "MISS")]
    m = await dispatch((node.url, node.tls_url), refreshes, peer_ca=str(certs.ca))
    assert outcomes(m, node.tls_url) == {"ok": 2} and outcomes(m, node.url) == {"ok": 1}
    assert sorted(node.tls_log()) == sorted([
        ("https", HOST, HOST, "/s?a=1"),
        ("https", "static.example.com", "static.example.com", "/t"),
        ("http", "-", HOST, "/plain")])

    unknown_ca = await dispatch((node.tls_url,), refreshes[:1])  # the system CAs do not know ours
    assert outcomes(unknown_ca, node.tls_url) == {"tls_error": 1}
    insecure = await dispatch((node.tls_url,), refreshes[:1], insecure_tls=True)
    assert outcomes(insecure, node.tls_url) == {"ok": 1}
    assert len(node.tls_log()) == 4


def test_https_peers_on_uvloop(tls_node: TlsNode, certs: Certs) -> None:
    """The same on uvloop's own TLS (the daemon's loop when the uvloop extra is installed)."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test_https_peer_gets_the_original_host_as_sni_and_is_verified(tls_node, certs))


# --- the shared secret --------------------------------------------------------------------------

SECRET = "7f3c9a-very-long-shared-secret"


@pytest.fixture
def secret_nodes(origin: Origin, tmp_path: Path) -> Iterator[tuple[NginxNode, NginxNode]]:
    """Two nodes from examples/nginx.conf with a secret of their own instead of the lab's."""
    peers = (CLIENT_ADDRESS, "127.0.0.31", "127.0.0.32")
    a, b = (NginxNode(name, address, EXAMPLE_CONFIG, origin.url, peers, tmp_path,
                      secrets=(SECRET,))
            for name, address in (("a", "127.0.0.31"), ("b", "127.0.0.32")))
    with a, b:
        yield a, b


def test_example_bypasses_and_purges_only_with_the_exact_secret(
    secret_nodes: tuple[NginxNode, NginxNode], origin: Origin,
) -> None:
    node = secret_nodes[0]
    target = "/secret/page?ma=60"
    assert body_version(node, target, HOST) == ("MISS", 1)
    origin.bump("/secret/page")
    for value in ("1", SECRET[:-1], SECRET + "x", "", "0"):  # not the secret: a normal lookup
        assert node.get(target, headers={"X-Refresh": value}).headers["X-Cache-Status"] == "HIT"
    outsider = node.get(target, headers={"X-Refresh": SECRET}, source=OUTSIDER_ADDRESS)
    assert outsider.headers["X-Cache-Status"] == "HIT"
    refreshed = node.get(target, headers={"X-Refresh": SECRET})
    assert (refreshed.headers["X-Cache-Status"], refreshed.headers["X-Version"]) == ("BYPASS", "2")

    assert node.get(target, method="PURGE", headers={"X-Refresh": "1"}).status == 403
    assert node.get(target, method="PURGE", headers={"X-Refresh": SECRET},
                    source=OUTSIDER_ADDRESS).status == 403
    assert node.get(target, method="PURGE", headers={"X-Refresh": SECRET}).status == 200
    assert node.get(target, method="PURGE", headers={"X-Refresh": SECRET}).status == 404
    assert body_version(node, target, HOST) == ("MISS", 2)


def test_secret_from_a_file_refreshes_and_is_never_printed(
    secret_nodes: tuple[NginxNode, NginxNode], start_agent: StartAgent, tmp_path: Path,
) -> None:
    a, b = secret_nodes
    header_file = tmp_path / "refresh-header"
    header_file.write_text(f"X-Refresh: {SECRET}\n")
    args = ("--refresh-header-file", str(header_file))
    agent = start_agent(a, [a.url, b.url], *args)  # --log-level debug
    target = "/secret/file?ma=60"
    a.get(target)
    [line] = b.wait_log(lambda ln: ln.target == target and ln.user_agent.startswith("logw"))
    assert (line.cache_status, line.refresh) == ("BYPASS", "1")  # the map's flag
    for node in (a, b):
        assert SECRET.encode() not in node.access_log.read_bytes()
    check = subprocess.run([*agent.args[:3], "check", *agent.args[4:]],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert str(header_file) in check.stdout
    assert agent.stop() == 0
    assert agent.stderr_path is not None
    for text in (check.stdout, check.stderr, agent.stderr_path.read_text()):
        assert SECRET not in text


# --- storm control ------------------------------------------------------------------------------

FLOOD_LINES = 20_000
RATE = 100
BURST = 100
RSS_GROWTH_BOUND = 32 << 20  # measured: about 6 MiB (dedup window, metrics, buffers)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_flood_of_distinct_misses_is_held_to_the_token_bucket(
    cluster: Cluster, start_agent: StartAgent,
) -> None:
    a, b, c = cluster.nodes
    started = time.monotonic()  # before the agent's bucket exists: the bound only grows
    agent = start_agent(a, urls(cluster), "--max-refresh-rate", str(RATE),
                        "--max-refresh-burst", str(BURST), "--log-level", "info")
    assert agent.proc is not None
    rss_before = _rss(agent.proc.pid)
    with a.access_log.open("ab") as log:
        for chunk in range(4):  # 20,000 lines over about 1.5 s
            log.write(b"".join(example_line(f"/flood/{i}?ma=60")
                               for i in range(chunk * 5000, (chunk + 1) * 5000)))
            log.flush()
            time.sleep(0.5)
    wait_until(lambda: agent.value("logwarden_lines_total") >= FLOOD_LINES, timeout=20,
               what="the agent to read the flood")
    elapsed = time.monotonic() - started
    rss_growth = _rss(agent.proc.pid) - rss_before

    fanouts = agent.value("logwarden_refresh_fanouts_total")
    dropped = agent.value("logwarden_storm_dropped_total", reason="rate")
    assert fanouts + dropped == FLOOD_LINES  # every line accounted for
    assert BURST <= fanouts <= RATE * elapsed + BURST, (fanouts, elapsed)
    for node in (b, c):
        wait_until(lambda node=node: agent.value(
            "logwarden_refreshes_total", peer=node.url, outcome="ok") == fanouts, timeout=20,
            what=f"the admitted refreshes to reach {node.address}")
        received = [ln for ln in node.log_lines() if ln.user_agent.startswith("logwarden/")]
        assert len(received) == fanouts
    assert rss_growth < RSS_GROWTH_BOUND, rss_growth
    print(f"flood: {fanouts:.0f} fan-outs in {elapsed:.2f} s (bound "
          f"{RATE * elapsed + BURST:.0f}), {dropped:.0f} dropped, RSS +{rss_growth >> 10} KiB")
