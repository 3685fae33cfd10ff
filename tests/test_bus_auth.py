"""The bus on a Redis that production runs: a password, an ACL user, TLS only. Real
``redis-server`` processes (one with a password and an ACL user, one on a TLS port only,
with a CA made by openssl here) shared by this module's tests, and real agents."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lab import Cluster, NginxNode, Origin
from lab.agent import Agent
from lab.redisserver import RedisServer, Tls
from tests.agents import LOG_FORMAT, StartAgent
from tests.buslab import bus_flags, change, connected, need_redis, prime, secret_file, spread
from tests.certs import Certs, make_certs

PASSWORD = "requirepass-of-the-test-redis"
ACL_PASSWORD = "acl-password-of-user-lw"
ACL = ("lw", "on", f">{ACL_PASSWORD}", "resetkeys", "~lw-*", "resetchannels", "-@all",
       "+ping", "+client|setname", "+xadd", "+xread", "+xinfo|stream",
       "+multi", "+exec")
"""The ACL the README gives for the agents' user: its streams, and only the commands used."""


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    with RedisServer(tmp_path_factory.mktemp("redis"),
                     args=("--requirepass", PASSWORD, "--user", *ACL)) as server:
        yield server


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Certs]]:
    need_redis()
    certs = make_certs(tmp_path_factory.mktemp("certs"), "IP:127.0.0.1")
    with RedisServer(tmp_path_factory.mktemp("redis-tls"),
                     tls=Tls(certs.cert, certs.key, certs.ca)) as server:
        yield server, certs


def password_file(directory: Path, password: str, name: str) -> Path:
    path = directory / name
    path.write_text(password + "\n")
    return path


def start_fails(node: NginxNode, flags: Sequence[str], tmp_path: Path) -> str:
    """Run an agent that must refuse to start: exit 2, and what it said on stderr."""
    agent = Agent(node.access_log, LOG_FORMAT, node.url, [], extra=flags)
    done = subprocess.run(agent.args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    return done.stderr


@pytest.mark.nginx
def test_a_password_and_an_acl_user(cluster: Cluster, origin: Origin, start_agent: StartAgent,
                                    locked: RedisServer, tmp_path: Path) -> None:
    a, b, c = cluster.nodes
    secret, plain = secret_file(tmp_path), f"redis://127.0.0.1:{locked.port}/0"
    pw = password_file(tmp_path, PASSWORD, "pw")
    prime(cluster, "/auth/one?ma=60")
    # A: requirepass from a file; B: the ACL user and its password in the URL; C: the ACL
    # user in the URL, its password in a file.
    agent_a = start_agent(a, [], *bus_flags(plain, "lw-auth", secret, a,
                                            "--bus-password-file", str(pw)))
    agent_b = start_agent(b, [], *bus_flags(
        f"redis://lw:{ACL_PASSWORD}@127.0.0.1:{locked.port}/0", "lw-auth", secret, b))
    agent_c = start_agent(c, [], *bus_flags(
        f"redis://lw@127.0.0.1:{locked.port}/0", "lw-auth", secret, c,
        "--bus-password-file", str(password_file(tmp_path, ACL_PASSWORD, "acl-pw"))))
    connected(agent_a, agent_b, agent_c)
    change(cluster, origin, "/auth/one?ma=60")
    spread(cluster, "/auth/one?ma=60")
    for agent in (agent_b, agent_c):
        assert agent.value("logwarden_bus_received_total", outcome="ok") == 1
    said = "".join(p.read_text() for p in tmp_path.glob("logwarden-*.log"))
    assert PASSWORD not in said and ACL_PASSWORD not in said  # at debug level, too


@pytest.mark.nginx
@pytest.mark.parametrize("how", ["file", "url", "acl user"])
def test_a_wrong_password_is_a_one_line_start_up_error(
        cluster: Cluster, locked: RedisServer, tmp_path: Path, how: str) -> None:
    a, wrong = cluster[0], "not-the-password-123"
    where = f"127.0.0.1:{locked.port}/0"
    flags = {"file": (f"redis://{where}", "--bus-password-file",
                      str(password_file(tmp_path, wrong, "pw"))),
             "url": (f"redis://:{wrong}@{where}",),
             "acl user": (f"redis://lw:{wrong}@{where}",)}[how]
    said = start_fails(a, bus_flags(flags[0], "lw-auth", secret_file(tmp_path), a, *flags[1:]),
                       tmp_path)
    assert said.count("\n") == 1 and said.startswith("logwarden: error: bus redis://"), said
    assert "refused the login" in said and wrong not in said


@pytest.mark.nginx
def test_a_tls_only_redis(cluster: Cluster, origin: Origin, start_agent: StartAgent,
                          tls: tuple[RedisServer, Certs], tmp_path: Path) -> None:
    server, certs = tls
    a, b, c = cluster.nodes
    secret, ca = secret_file(tmp_path), str(certs.ca)
    assert server.url.startswith("rediss://")
    prime(cluster, "/tls/one?ma=60")
    agents = [start_agent(node, [], *bus_flags(server.url, "lw-tls", secret, node, "--bus-ca",
                                               ca)) for node in (a, b)]
    # C shows a client certificate the server's CA signed (the server checks one if shown).
    agents.append(start_agent(c, [], *bus_flags(server.url, "lw-tls", secret, c, "--bus-ca", ca,
                                                "--bus-cert", str(certs.cert),
                                                "--bus-key", str(certs.key))))
    connected(*agents)
    change(cluster, origin, "/tls/one?ma=60")
    spread(cluster, "/tls/one?ma=60")

    other = make_certs(tmp_path, "IP:127.0.0.1", "another CA")
    for flags, said in (
        (("--bus-ca", str(other.ca)), "presented a certificate that is not trusted"),
        (("--bus-ca", ca, "--bus-cert", str(other.cert), "--bus-key", str(other.key)),
         "failed the TLS handshake (TLSV1_ALERT_UNKNOWN_CA)"),
    ):
        told = start_fails(a, bus_flags(server.url, "lw-tls", secret, a, *flags), tmp_path)
        assert told.count("\n") == 1 and said in told, told
