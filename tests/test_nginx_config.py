"""examples/nginx.conf does what its comments claim, on real NGINX (lab cluster on loopback).

Node addresses 127.0.0.11-13; the default client source 127.0.0.1 is a peer (it is where
logwarden connects from), a client bound to 127.0.0.99 is "the internet".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lab import (
    EXAMPLE_CONFIG,
    LOG_FIELDS,
    OUTSIDER_ADDRESS,
    Cluster,
    LogLine,
    NginxNode,
    Origin,
    Response,
    render_config,
    wait_until,
)

REFRESH = {"X-Refresh": "1"}


def version(resp: Response) -> int:
    """The origin version a response carries (header, and the body when there is one)."""
    assert resp.status == 200, resp
    header = int(resp.headers["X-Version"])
    if resp.body:
        assert resp.body.startswith(b"version=%d " % header), resp.body
    return header


def cache_status(resp: Response) -> str:
    return str(resp.headers["X-Cache-Status"])


def log_for(node: NginxNode, target: str, count: int = 1) -> list[LogLine]:
    return node.wait_log(lambda line: line.target == target, count=count)


def fetch(node: NginxNode, target: str, **kwargs: Any) -> Response:
    """``node.get()``, then wait for its access-log line.

    The client can have the whole answer a moment before NGINX renames the new entry into
    the cache; the log line is written after that (facts §7), so once it is there the next
    request sees the new entry. logwarden relies on the same order.
    """
    before = len(node.log_lines())
    resp = node.get(target, **kwargs)
    node.wait_log(lambda line: True, count=before + 1)
    return resp


def _code(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


# --- the example file itself (no NGINX needed) ------------------------------------------------

LOG_FORMAT = """\
    log_format logwarden '$msec\\t$scheme\\t$host\\t$server_port\\t$request_method\\t'
                         '$request_uri\\t$status\\t$upstream_cache_status\\t'
                         '$upstream_status\\t$request_time\\t$logwarden_refresh\\t'
                         '$http_user_agent\\t$upstream_http_cache_control\\t'
                         '$upstream_http_expires\\t$upstream_http_x_accel_expires\\t'
                         '$upstream_http_vary\\t$logwarden_set_cookie\\t'
                         '$upstream_http_etag\\t$upstream_http_last_modified';
"""


def test_example_carries_the_documented_log_format_and_directives() -> None:
    text = EXAMPLE_CONFIG.read_text()
    assert LOG_FORMAT in text  # logwarden's docs quote it verbatim
    code = _code(text)
    for directive in (
        "access_log /var/log/nginx/access.log logwarden;",
        "proxy_cache_key $scheme$host$request_uri$logwarden_class;",
        "proxy_cache_purge logwarden $scheme$host$request_uri$logwarden_class;",
        "proxy_cache_use_stale updating error timeout http_500 http_502 http_503 http_504;",
        "proxy_cache_background_update on;",
        "proxy_cache_lock on;",
        "proxy_cache_revalidate on;",
        "proxy_cache_bypass $logwarden_refresh;",
        'proxy_set_header X-Refresh "";',
        "proxy_set_header Host $host;",
        "add_header X-Cache-Status $upstream_cache_status always;",
    ):
        assert directive in code, directive
    # the variant recipe ships off: the class is always "", the key the plain one
    assert re.search(r'map \$http_accept_encoding \$logwarden_class \{\s*default\s+"";\s*\}', code)
    assert "buffer=" not in code  # unbuffered: lines visible at once, none lost on a crash
    assert "proxy_no_cache" not in code  # the refreshed copy must be stored
    # the same-location PURGE syntax segfaults Debian 12's module; only the @purge route
    assert not re.search(r"^\s*#?\s*proxy_cache_purge\s+PURGE", text, re.MULTILINE)
    assert "# access_log syslog:server=127.0.0.1:5514,tag=nginx,severity=info logwarden;" in text


@pytest.mark.parametrize(("old", "new"), [
    ("user www-data;", "user nginx;"),
    ("pid /run/nginx.pid;", "pid /run/nginx/nginx.pid;"),
    ("/var/log/nginx/access.log", "/var/log/nginx/cache.log"),
    ("/var/cache/nginx/logwarden ", "/srv/cache "),
    ("server 10.0.1.10:8080;", "server 10.0.1.11:8080;"),
    ("10.0.0.2  1;", "10.0.0.4  1;"),
    ("listen 80;", "listen 8080;"),
])
def test_render_fails_loudly_when_the_example_drifts(old: str, new: str) -> None:
    template = EXAMPLE_CONFIG.read_text()
    assert old in template
    with pytest.raises(ValueError, match="template"):
        render_config(template.replace(old, new, 1), listen="127.0.0.11", port=8080,
                      prefix=Path("/tmp/lab-node"), origin="127.0.0.1:9000",
                      peers=["127.0.0.1"], user="root")


def test_render_keeps_everything_on_loopback_and_in_the_prefix(tmp_path: Path) -> None:
    text = render_config(EXAMPLE_CONFIG.read_text(), listen="127.0.0.11", port=8080,
                         prefix=tmp_path, origin="127.0.0.1:9000",
                         peers=["127.0.0.1", "127.0.0.11"], user="root")
    code = _code(text)
    assert "10.0." not in code and "/var/" not in code and "/run/" not in code
    assert "listen 127.0.0.11:8080 default_server;" in code
    assert f"proxy_temp_path {tmp_path.resolve()}/tmp/proxy;" in code
    assert re.search(r"^\s*127\.0\.0\.1 1;\n\s*127\.0\.0\.11 1;\n", code, re.MULTILINE)


# --- real NGINX ---------------------------------------------------------------------------------


@pytest.mark.nginx
def test_first_request_is_a_miss_and_is_stored(cluster: Cluster, origin: Origin) -> None:
    a, b = cluster[0], cluster[1]
    first = fetch(a, "/t/first?ma=60")
    assert cache_status(first) == "MISS" and version(first) == 1
    second = a.get("/t/first?ma=60")
    assert cache_status(second) == "HIT" and second.body == first.body
    assert len(origin.requests_for("/t/first")) == 1
    assert [line.cache_status for line in log_for(a, "/t/first?ma=60", 2)] == ["MISS", "HIT"]
    assert cache_status(b.get("/t/first?ma=60")) == "MISS"  # every node has its own cache


@pytest.mark.nginx
def test_peer_refresh_replaces_a_fresh_entry(cluster: Cluster, origin: Origin) -> None:
    a, b = cluster[0], cluster[1]
    target = "/t/refresh?ma=60"
    assert version(fetch(a, target)) == 1 and version(fetch(b, target)) == 1
    assert origin.bump("/t/refresh") == 2

    stale = a.get(target)
    assert cache_status(stale) == "HIT" and version(stale) == 1  # still fresh: no origin trip

    refreshed = fetch(a, target, headers=REFRESH)  # from 127.0.0.1, a peer
    assert cache_status(refreshed) == "BYPASS" and version(refreshed) == 2
    # The line can trail the response by a moment (lab NginxNode.wait_log): wait for it.
    [line] = a.wait_log(lambda line: line.cache_status == "BYPASS")
    assert (line.target, line.refresh, line.upstream_status) == (target, "1", "200")

    after = a.get(target)
    assert cache_status(after) == "HIT" and version(after) == 2  # the bypass answer was stored
    assert version(b.get(target)) == 1  # a refresh is per node
    assert len(origin.requests_for("/t/refresh")) == 3  # a, b, a's refresh
    for request in origin.requests:
        assert "x-refresh" not in {name.lower() for name in request.headers}, request


@pytest.mark.nginx
def test_node_address_is_a_peer_too(cluster: Cluster, origin: Origin) -> None:
    a, b = cluster[0], cluster[1]
    fetch(a, "/t/fromnode")
    origin.bump("/t/fromnode")
    refreshed = fetch(a, "/t/fromnode", headers=REFRESH, source=b.address)
    assert cache_status(refreshed) == "BYPASS" and version(refreshed) == 2
    assert version(a.get("/t/fromnode")) == 2


@pytest.mark.nginx
def test_internet_client_cannot_force_a_refresh(cluster: Cluster, origin: Origin) -> None:
    a = cluster[0]
    target = "/t/outsider?ma=60"
    fetch(a, target)
    origin.bump("/t/outsider")
    resp = a.get(target, headers=REFRESH, source=OUTSIDER_ADDRESS)
    assert cache_status(resp) == "HIT" and version(resp) == 1
    # Logged as no refresh (the flag, never the header: the log must not hold the secret).
    line = a.wait_log(lambda ln: ln.target == target, count=2)[-1]
    assert (line.cache_status, line.upstream_status, line.refresh) == ("HIT", "-", "0")
    assert len(origin.requests_for("/t/outsider")) == 1


@pytest.mark.nginx
@pytest.mark.parametrize("value", ["0", ""])
def test_peer_refresh_header_zero_or_empty_is_a_normal_lookup(
    cluster: Cluster, origin: Origin, value: str,
) -> None:
    a = cluster[0]
    fetch(a, "/t/zero")
    origin.bump("/t/zero")
    resp = a.get("/t/zero", headers={"X-Refresh": value})
    assert cache_status(resp) == "HIT" and version(resp) == 1


@pytest.mark.nginx
def test_head_refresh_stores_the_full_object(cluster: Cluster, origin: Origin) -> None:
    a = cluster[0]
    target = "/t/head?ma=60"
    fetch(a, target)
    origin.bump("/t/head")
    # The client has its headers before NGINX has read (and stored) the body: wait for the line.
    head = fetch(a, target, method="HEAD", headers=REFRESH)
    assert cache_status(head) == "BYPASS" and version(head) == 2 and head.body == b""
    assert origin.requests_for("/t/head")[-1].method == "GET"  # proxy_cache_convert_head
    after = a.get(target)
    assert cache_status(after) == "HIT" and version(after) == 2
    assert after.body == b"version=2 path=/t/head?ma=60\n"
    methods = [ln.method for ln in log_for(a, target, 3)]
    assert methods == ["GET", "HEAD", "GET"]


@pytest.mark.nginx
def test_unknown_host_gets_421(cluster: Cluster, origin: Origin) -> None:
    a = cluster[0]
    for host in ("unknown.example.net", a.address, f"{a.address}:{a.port}"):
        assert a.get("/t/unknown", host=host).status == 421
    lines = log_for(a, "/t/unknown", 3)
    assert {(ln.status, ln.cache_status) for ln in lines} == {("421", "-")}
    assert origin.requests_for("/t/unknown") == []


@pytest.mark.nginx
def test_second_server_name_and_host_normalisation(cluster: Cluster) -> None:
    a = cluster[0]
    assert cache_status(fetch(a, "/t/host", host="static.example.com")) == "MISS"
    assert cache_status(fetch(a, "/t/host", host="www.example.com")) == "MISS"  # own entry
    # $host is lower-cased, port and trailing dot stripped: same entry as real clients
    for host in ("STATIC.Example.COM", f"static.example.com:{a.port}", "static.example.com."):
        assert cache_status(a.get("/t/host", host=host)) == "HIT", host
    assert {ln.host for ln in log_for(a, "/t/host", 5)} == {
        "static.example.com", "www.example.com"}


@pytest.mark.nginx
def test_access_log_line_is_the_tab_format(cluster: Cluster, origin: Origin) -> None:
    a = cluster[0]
    target = "/t/enc%31?b=2&a=1"  # raw: neither decoded nor reordered
    a.get(target, headers={"User-Agent": 'lab "q" 1.0'})
    a.get("/t/enc1?a=1&b=2")
    # unbuffered: the line is there at once (a buffered log would take ~1 s)
    line = a.wait_log(lambda ln: ln.target == target, timeout=0.5)[0]
    raw = a.access_log.read_text().splitlines()[0]
    assert raw.count("\t") == len(LOG_FIELDS) - 1
    assert float(line.msec) > 1.6e9 and float(line.request_time) >= 0
    assert line._replace(msec="", request_time="") == LogLine(
        msec="", scheme="http", host="www.example.com", port=str(a.port), method="GET",
        target=target, status="200", cache_status="MISS", upstream_status="200",
        request_time="", refresh="0", user_agent="lab \\x22q\\x22 1.0",
        cache_control="max-age=60", expires="-", x_accel_expires="-", vary="-", set_cookie="0",
        etag="-", last_modified="-")
    assert log_for(a, "/t/enc1?a=1&b=2")[0].cache_status == "MISS"  # a different key
    assert origin.requests_for("/t/enc%31")[0].target == target  # origin got it raw too


@pytest.mark.nginx
def test_reopen_writes_a_fresh_file_at_the_same_path(cluster: Cluster) -> None:
    a = cluster[0]
    a.get("/t/before")
    log_for(a, "/t/before")
    rotated = a.access_log.with_name("access.log.1")
    a.access_log.rename(rotated)
    a.reopen()

    # Workers reopen just after the master: poll with new requests until one lands.
    sent: list[str] = []

    def landed() -> bool:
        sent.append(f"/t/after{len(sent)}")
        a.get(sent[-1])
        return any(ln.target.startswith("/t/after") for ln in a.log_lines())

    wait_until(landed, timeout=5, interval=0.02, what="a line in the reopened access log")
    fresh = [ln.target for ln in a.log_lines()]
    assert "/t/before" not in fresh and set(fresh) <= set(sent)
    old = rotated.read_text()
    assert "\t/t/before\t" in old
