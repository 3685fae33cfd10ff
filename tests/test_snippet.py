"""``logwarden nginx-snippet`` (issue 17, scope 6): the lines it prints, pasted into a plain
cache config of this module's own (no logwarden line in it), give real NGINX nodes on which
``doctor`` is green and a change fetched on one node reaches every class on the others."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Cluster, NginxNode, find_nginx, wait_until
from lab.cluster import current_user
from lab.process import group_alive
from tests.agents import StartAgent
from tests.test_doctor import HOST, rows
from tests.test_variants import CLASSES, CLIENTS, ask

SECRET = "s3cr\"et\\x'{;#"
"""Quotes, a backslash and NGINX's own syntax: the map must carry it exactly."""
PLAIN = """\
user @USER@;
worker_processes 1;
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/logs/error.log;
load_module /usr/lib/nginx/modules/ngx_http_cache_purge_module.so;
events { worker_connections 256; }
http {
    client_body_temp_path @PREFIX@/tmp/client_body;
    proxy_temp_path @PREFIX@/tmp/proxy;
    fastcgi_temp_path @PREFIX@/tmp/fastcgi;
    uwsgi_temp_path @PREFIX@/tmp/uwsgi;
    scgi_temp_path @PREFIX@/tmp/scgi;
    proxy_cache_path @PREFIX@/cache keys_zone=pages:1m;
    proxy_cache_key $scheme$host$request_uri;
    upstream backend { server @ORIGIN@; }
    # logwarden: http
    server {
        listen @LISTEN@;
        server_name www.example.com;
        # logwarden: server
        location / {
            proxy_pass http://backend;
            proxy_set_header Host $host;
            proxy_cache pages;
            # logwarden: location
        }
    }
}
"""


def logwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logwarden", *args], capture_output=True,
                          text=True, timeout=60)


def sections_of(text: str) -> dict[str, str]:
    """Each section of the snippet by its name (the word its heading line starts with)."""
    parts = re.split(r"^# ==== (\w+): .*====\n", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def node_args(node: NginxNode) -> list[str]:
    return ["--self", node.url, *(a for s in node.sources for a in ("--peer", f"http://{s}"))]


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "refresh-header"
    path.write_text(f"X-Refresh: {SECRET}\n")
    return path


@pytest.fixture(scope="module")
def pasted(tmp_path_factory: pytest.TempPathFactory, secret_file: Path) -> Iterator[Cluster]:
    """Three nodes, each the plain config with its snippet pasted in (purge mode and three
    variant classes: every part of the recipe), read from that plain config."""
    if find_nginx() is None:
        pytest.skip("nginx not found on PATH or in /usr/sbin (Debian: make system-deps)")

    def config(node: NginxNode) -> str:
        plain = PLAIN
        for mark, value in (("@USER@", current_user()), ("@PREFIX@", str(node.prefix)),
                            ("@ORIGIN@", node.origin), ("@LISTEN@", f"{node.address}:{node.port}")):
            plain = plain.replace(mark, value)
        (node.prefix / "plain.conf").write_text(plain)
        out = logwarden("nginx-snippet", "--nginx-conf", str(node.prefix / "plain.conf"),
                        *node_args(node), "--access-log", str(node.access_log),
                        "--refresh-header-file", str(secret_file), "--mode", "purge", *CLASSES)
        assert out.returncode == 0, out.stderr
        for name, lines in sections_of(out.stdout).items():
            plain = plain.replace(f"# logwarden: {name}\n", lines)
        return plain

    with Cluster(tmp_path_factory.mktemp("snippet"), nodes=3, config=config) as started:
        masters = [node.pid for node in started]
        yield started
    left = [pid for pid in masters if pid is not None and group_alive(pid)]
    assert not left, f"NGINX process groups still alive after stop(): {left}"


def cluster_args(cluster: Cluster, secret_file: Path) -> list[str]:
    """The agents' settings, as node A's."""
    return [*node_args(cluster[0]), "--refresh-header-file", str(secret_file), *CLASSES]


@pytest.mark.nginx
def test_doctor_is_green_on_the_pasted_nodes(pasted: Cluster, secret_file: Path) -> None:
    cluster = cluster_args(pasted, secret_file)
    for mode, proved in (("refresh", "refreshed (BYPASS), then stored (HIT)"),
                         ("purge", "cached (HIT), purged (200), refilled (MISS)")):
        out = logwarden("doctor", *cluster, "--doctor-url", f"/snippet/{mode}?ma=60",
                        "--default-host", HOST, "--mode", mode)
        assert out.returncode == 0, out.stdout + out.stderr
        assert set(rows(out).values()) == {("ok", f"3 classes: {proved}")}
    assert "geo $logwarden_peer" in pasted[0].conf_path.read_text()  # pasted, not the example
    # check reads the same config and agrees: its verdict on the cached location is ok.
    out = logwarden("check", "--nginx-conf", str(pasted[0].conf_path), *cluster,
                    "--mode", "purge")
    assert out.returncode == 0, out.stderr
    assert "# nginx ok: " in out.stderr and "# nginx error" not in out.stderr


@pytest.mark.nginx
def test_a_change_reaches_every_class_on_the_pasted_nodes(
        pasted: Cluster, secret_file: Path, start_agent: StartAgent) -> None:
    a, b, c = pasted.nodes
    target, path = "/snippet/e2e?vary=ae&ma=60", "/snippet/e2e"
    old = pasted.origin.version(path)
    for node in (b, c):  # every class cached (chrome and safari share br)
        assert [ask(node, target, client)[:2] for client in CLIENTS] == [
            ("MISS", old), ("HIT", old), ("MISS", old), ("MISS", old)]
    for client in ("python-requests", "curl"):  # A holds two classes; chrome's br is new
        ask(a, target, client)
    urls = [node.url for node in pasted]
    for node in pasted:
        start_agent(node, urls, "--refresh-header-file", str(secret_file), *CLASSES)
    new = pasted.origin.bump(path)

    assert ask(a, target, "chrome") == ("MISS", new, "br")  # A's agent fans out

    wait_until(lambda: all(ask(node, target, client)[:2] == ("HIT", new)
                           for node in pasted for client in CLIENTS),
               timeout=3, what="every (node, client) pair at the new version")
    assert all(ask(n, target, client)[2] == CLIENTS[client][1] for n in pasted
               for client in CLIENTS), "the origin got the class, not the client's string"
    for node in (b, c):  # refreshed by logwarden, not by a client
        refreshes = [line for line in node.log_lines() if line.target == target
                     and line.cache_status == "BYPASS" and line.user_agent.startswith("logwarden/")]
        assert len(refreshes) == 3


# ---------------------------------------------------------------------------------------------
# the text


def test_refresh_mode_prints_the_allow_list_secret_bypass_and_header(
        tmp_path: Path, secret_file: Path) -> None:
    out = logwarden("nginx-snippet", "--peer", "http://127.0.0.11:8080",
                    "--peer", "http://127.0.0.12:8080", "--refresh-header-file", str(secret_file))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    text = sections_of(out.stdout)
    assert list(text) == ["http", "server", "location"]
    assert ("geo $logwarden_peer {\n    default  0;\n"
            "    127.0.0.11  1;  # http://127.0.0.11:8080\n"
            "    127.0.0.12  1;  # http://127.0.0.12:8080\n"
            "    127.0.0.1  1;  # this machine") in text["http"]
    assert '    "1:s3cr\\"et\\\\x\'{;#"  1;\n' in text["http"]
    assert "access_log /var/log/nginx/logwarden.log logwarden;" in text["http"]
    assert "add_header X-Cache-Status $upstream_cache_status always;" in text["server"]
    assert "proxy_cache_bypass $logwarden_refresh;" in text["location"]
    assert 'proxy_set_header X-Refresh "";' in text["location"]
    for purge_or_variant in ("@purge", "proxy_cache_purge", "proxy_cache_key", "$logwarden_class"):
        assert purge_or_variant not in out.stdout


def test_purge_route_keys_on_the_cache_key_with_get_for_request_method() -> None:
    out = logwarden("nginx-snippet", "--peer", "http://127.0.0.11:80", "--mode", "purge",
                    "--cache-zone", "z", "--cache-key", "$request_method$host$request_uri")
    assert out.returncode == 0, out.stderr
    assert "'X-Refresh: 1' is no secret" in out.stderr
    text = sections_of(out.stdout)
    assert "    proxy_cache_purge z GET$host$request_uri;\n" in text["server"]
    assert "if ($request_method = PURGE) { return 418; }" in text["location"]
    assert "proxy_cache_key" not in text["location"]  # the config's own key is unchanged


def test_the_zone_and_key_are_read_from_nginx_conf(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n  proxy_cache_path /c1 keys_zone=one:1m;\n"
        "  proxy_cache_path /c2 levels=1:2 keys_zone=two:1m;\n  include sites/*.conf;\n}\n")
    (tmp_path / "sites" / "a.conf").write_text(
        "server { location / { proxy_cache two; proxy_cache_key $host$uri; } }\n")
    args = ["nginx-snippet", "--peer", "http://127.0.0.11:80", "--nginx-conf",
            str(tmp_path / "nginx.conf")]
    out = logwarden(*args, "--mode", "purge", "--variant", "Accept-Encoding: gzip",
                    "--variant", "")
    assert out.returncode == 0, out.stderr
    text = sections_of(out.stdout)
    assert "proxy_cache_purge two $host$uri$logwarden_class;" in text["server"]
    assert "proxy_cache_key $host$uri$logwarden_class;" in text["location"]
    assert '    "~\\*gzip"  "gzip";\n' not in text["http"]  # NGINX's quoting, not Python's
    assert '    "~*gzip"  "gzip";\n' in text["http"]

    (tmp_path / "sites" / "a.conf").write_text("server { location / { proxy_cache two; } }\n")
    out = logwarden(*args, "--mode", "purge")
    assert out.returncode == 0, out.stderr
    location = sections_of(out.stdout)["location"]
    assert "replaces NGINX's default\n# $scheme$proxy_host$request_uri" in location
    assert "proxy_cache_key $scheme$host$request_uri;" in location

    (tmp_path / "sites" / "b.conf").write_text("server { proxy_cache_key $uri; }\n")
    (tmp_path / "sites" / "a.conf").write_text("server { proxy_cache_key $host$uri; }\n")
    out = logwarden(*args, "--mode", "purge")
    assert out.returncode == 2
    assert "has several proxy_cache_key values ($host$uri, $uri): give the cached location's " \
           "with --cache-key" in out.stderr
    (tmp_path / "sites" / "a.conf").write_text("server {\n")
    out = logwarden(*args)
    assert out.returncode == 2 and out.stderr.startswith("logwarden: error: nginx_conf: ")
    assert len(out.stderr.splitlines()) == 1
