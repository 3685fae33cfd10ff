"""``logwarden warm``: URL sources read exactly, and every real NGINX node warmed (issue 10)."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from lab import Cluster, Origin
from logwarden.commands.warm import (
    Report,
    UrlInputs,
    WarmError,
    sitemap_locs,
    unpacked,
    url_list,
    url_refresh,
)
from logwarden.config import WARM, ConfigError, load_config
from logwarden.deliver.modes import probed
from logwarden.deliver.peerhttp import Answer
from logwarden.model import Refresh
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat
from logwarden.route.router import Recorder, Router
from tests.agents import LOG_FORMAT
from tests.lines import example_line
from tests.peers import dead_url

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(urls: list[str]) -> bytes:
    entries = "".join(f"<url><loc>{u}</loc><lastmod>2026-11-01</lastmod></url>" for u in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {NS}>{entries}</urlset>\n'.encode()


def index(urls: list[str]) -> bytes:
    entries = "".join(f"<sitemap><loc>{u}</loc></sitemap>" for u in urls)
    return f'<?xml version="1.0"?><sitemapindex {NS}>{entries}</sitemapindex>'.encode()


def warm_refresh(scheme: str, host: str, target: bytes) -> Refresh:
    return Refresh(scheme, host, target, "WARM")


@pytest.mark.parametrize(("url", "expected"), [
    ("http://www.example.com/a/b?x=1&y=%20", ("http", "www.example.com", b"/a/b?x=1&y=%20")),
    ("https://WWW.Example.com:8443/p/./q//r#frag", ("https", "www.example.com", b"/p/./q//r")),
    ("http://www.example.com", ("http", "www.example.com", b"/")),
    ("http://www.example.com?q", ("http", "www.example.com", b"/?q")),
    ("http://www.example.com/x?", ("http", "www.example.com", b"/x?")),
    ("/only/a/path?v=2", ("http", "default.example", b"/only/a/path?v=2")),
    # non-ASCII: its UTF-8 bytes, as a client sending the URL raw does (not latin-1)
    ("http://www.example.com/caf\u00e9?x=1", ("http", "www.example.com", b"/caf\xc3\xa9?x=1")),
    ("/\u20ac/\U0001f600", ("http", "default.example", b"/\xe2\x82\xac/\xf0\x9f\x98\x80")),
    # a byte that was not UTF-8 (decoded with surrogateescape, as argv is): that byte
    ("http://www.example.com/caf\udce9", ("http", "www.example.com", b"/caf\xe9")),
])
def test_urls_keep_their_exact_target(url: str, expected: tuple[str, str, bytes]) -> None:
    assert url_refresh(url, "default.example") == warm_refresh(*expected)


def test_warm_and_replay_agree_on_a_raw_utf8_target() -> None:
    """A listed ``/café`` is the target a log line of a client that sent it raw unescapes to
    (NGINX logs it as ``\\xC3\\xA9``), and the router admits both: warm, replay and run
    refresh the same cache entry. A URL list's bytes that are not UTF-8 stay those bytes."""
    record = LogFormat.compile(LOG_FORMAT).parse(example_line(target="/caf\\xC3\\xA9?x=1"))
    listed = url_refresh("http://www.example.com/caf\u00e9?x=1", None)
    assert record is not None and record.target == listed.target == b"/caf\xc3\xa9?x=1"
    assert Router(Recorder(), Metrics()).route(listed) is None
    inputs = UrlInputs("h.example", fetch=_no_fetch, stdin=lambda: b"/caf\xc3\xa9\n/caf\xe9\n")
    assert [r.target for r in asyncio.run(inputs.urls(["-"]))] == [b"/caf\xc3\xa9", b"/caf\xe9"]


async def _no_fetch(refresh: Refresh) -> bytes:
    raise AssertionError(refresh)


def test_url_list_skips_comments_and_repeats_and_names_bad_lines() -> None:
    text = "# launch list\n\nhttp://a.example/1\n  /2  \nhttp://a.example/1\n"
    assert url_list(text, "b.example") == [warm_refresh("http", "a.example", b"/1"),
                                           warm_refresh("http", "b.example", b"/2")]
    with pytest.raises(WarmError, match="line 2: '/2' is a path: give --default-host"):
        url_list("http://a.example/1\n/2\n", None)
    with pytest.raises(WarmError, match="line 1: 'ftp://a/b' is neither"):
        url_list("ftp://a/b\n", None)


def test_sitemaps_give_only_their_own_locs() -> None:
    image = (b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
             b'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1"><url>'
             b'<loc> http://a.example/p?a=1&amp;b=2 </loc><image:image><image:loc>'
             b'http://a.example/i.png</image:loc></image:image></url></urlset>')
    assert sitemap_locs(image) == (["http://a.example/p?a=1&b=2"], [])
    assert sitemap_locs(index(["http://a.example/s1.xml"])) == ([], ["http://a.example/s1.xml"])
    assert sitemap_locs(b"<urlset><url><loc>http://a/x</loc></url></urlset>") == (
        ["http://a/x"], [])  # no namespace: still a sitemap
    with pytest.raises(WarmError, match="root element is <html>"):
        sitemap_locs(b"<html></html>")
    with pytest.raises(WarmError, match="not a sitemap"):
        sitemap_locs(b"<urlset><url>")
    assert unpacked(gzip.compress(b"<urlset/>")) == b"<urlset/>"


def test_a_sitemap_index_is_followed_one_level(tmp_path: Path) -> None:
    fetched: list[bytes] = []
    docs = {b"/s1.xml": urlset(["http://a.example/1", "http://a.example/2"]),
            b"/s2.xml.gz": gzip.compress(urlset(["http://a.example/2", "http://a.example/3"])),
            b"/nested.xml": index(["http://a.example/s1.xml"])}

    async def fetch(refresh: Refresh) -> bytes:
        fetched.append(refresh.target)
        return docs[refresh.target]

    path = tmp_path / "index.xml"
    path.write_bytes(index(["http://a.example/s1.xml", "http://a.example/s2.xml.gz"]))
    sources = UrlInputs(None, fetch)
    urls = asyncio.run(sources.urls([str(path)]))
    assert [u.target for u in urls] == [b"/1", b"/2", b"/3"]
    assert fetched == [b"/s1.xml", b"/s2.xml.gz"]
    path.write_bytes(index(["http://a.example/nested.xml"]))
    with pytest.raises(WarmError, match="sitemap index inside a sitemap index"):
        asyncio.run(sources.urls([str(path)]))
    with pytest.raises(WarmError, match=r"missing\.txt: cannot be read"):
        asyncio.run(sources.urls([str(tmp_path / "missing.txt")]))
    stdin = UrlInputs("h.example", fetch, stdin=lambda: b"/from/stdin\n")
    assert asyncio.run(stdin.urls(["-"])) == [warm_refresh("http", "h.example", b"/from/stdin")]


@pytest.mark.parametrize(("status", "cache", "outcome"), [
    (200, b"HIT", "hit"), (200, b"MISS", "ok"), (200, b"EXPIRED", "ok"),
    (200, b"REVALIDATED", "ok"), (200, b"STALE", "refresh"), (200, b"UPDATING", "refresh"),
    (200, None, "refresh"), (500, b"MISS", "refresh"),
])
def test_only_missing_probe(status: int, cache: bytes | None, outcome: str) -> None:
    headers = [(b"x-cache-status", cache)] if cache is not None else []
    assert probed(Answer(status, headers, b"")) == outcome


def test_report_names_each_node_and_fails_on_any_failure() -> None:
    from collections import Counter
    report = Report({"http://a:80": Counter(ok=3), "http://b:80": Counter(hit=2, ok=1)}, 3)
    assert not report.failed
    report.nodes["http://c:80"] = Counter(connect_error=2, skipped=1)
    assert report.failed
    assert report.lines() == ["http://a:80: 3 warmed, 0 failed",
                              "http://b:80: 1 warmed, 2 already cached, 0 failed",
                              "http://c:80: 0 warmed, 3 failed (connect_error 2, skipped 1)"]


def test_report_fails_a_node_that_did_not_refresh_and_shows_unverified_apart() -> None:
    from collections import Counter
    report = Report({"http://a:80": Counter(ok=1, unverified=2)}, 3)
    assert not report.failed  # the node's config decides whether it says; nothing failed
    assert report.lines() == ["http://a:80: 1 warmed, 2 unverified (no cache-status header), "
                              "0 failed"]
    report.nodes["http://b:80"] = Counter(not_refreshed=3)
    assert report.failed
    assert report.lines()[1] == "http://b:80: 0 warmed, 3 failed (not_refreshed 3)"


def test_warm_needs_nodes_but_no_log() -> None:
    config = load_config({"peer": ("http://127.0.0.11:80",)}, None, {}, needs=WARM)
    assert config.access_log == () and config.log_format is None
    with pytest.raises(ConfigError, match="peer: '' is required: the nodes to warm"):
        load_config({}, None, {}, needs=WARM)


# ---------------------------------------------------------------------------------------------
# real NGINX


def warm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logwarden", "warm", *args],
                          capture_output=True, text=True, timeout=60)


def node_args(nodes: list[str]) -> list[str]:
    return ["--self", nodes[0], *(a for n in nodes for a in ("--peer", n)), "--log-level",
            "warning"]


@pytest.mark.nginx
def test_every_node_answers_hit_without_having_seen_a_client(
    cluster: Cluster, origin: Origin, tmp_path: Path,
) -> None:
    listed = [f"http://www.example.com/warm/list/{i}?v={i}" for i in range(150)]
    paths = [f"/warm/path/{i}" for i in range(50)]  # on --default-host
    (tmp_path / "urls.txt").write_text("\n".join(listed + paths) + "\n")
    in_sitemaps = [f"http://www.example.com/warm/map/{i}" for i in range(40)]
    origin.put("/sitemap_index.xml", index(["http://www.example.com/sitemap-1.xml",
                                            "http://www.example.com/sitemap-2.xml.gz"]))
    origin.put("/sitemap-1.xml", urlset(in_sitemaps[:20]))
    origin.put("/sitemap-2.xml.gz", gzip.compress(urlset(in_sitemaps[20:])), "application/gzip")
    nodes = [node.url for node in cluster]

    out = warm(str(tmp_path / "urls.txt"), "http://www.example.com/sitemap_index.xml",
               "--default-host", "www.example.com", *node_args(nodes))

    assert out.returncode == 0, out.stdout + out.stderr
    for node in nodes:
        assert f"{node}: 240 warmed, 0 failed" in out.stdout
    targets = [u.split("www.example.com", 1)[1] for u in listed + in_sitemaps] + paths
    for target in targets:  # one origin fetch per node, each a refresh by logwarden
        seen = origin.requests_for(target.split("?")[0])
        assert len(seen) == 3, target
    for node in cluster:
        assert {line.user_agent.split("/")[0] for line in node.log_lines()} == {"logwarden"}
        for target in targets:
            assert node.get(target).headers["X-Cache-Status"] == "HIT", (node, target)

    # Again with two new URLs and --only-missing: the rest is not fetched again.
    (tmp_path / "more.txt").write_text("/warm/new/1\n/warm/new/2\n/warm/path/7\n")
    before = len(origin.requests)
    out = warm(str(tmp_path / "more.txt"), "--only-missing", "--default-host",
               "www.example.com", *node_args(nodes))
    assert out.returncode == 0, out.stdout + out.stderr
    for node in nodes:
        assert f"{node}: 2 warmed, 1 already cached, 0 failed" in out.stdout
    assert len(origin.requests) - before == 2 * 3  # the HEAD of a MISS stored it: no refresh
    assert cluster[1].get("/warm/new/2").headers["X-Cache-Status"] == "HIT"


@pytest.mark.nginx
def test_a_node_down_fails_the_run_and_is_named(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("".join(f"/warm/down/{i}\n" for i in range(20)))
    down = dead_url()
    nodes = [cluster[0].url, cluster[1].url, down]

    out = warm(str(tmp_path / "urls.txt"), "--default-host", "www.example.com",
               "--retry-backoff", "0.01", *node_args(nodes))

    assert out.returncode == 1
    assert f"{down}: 0 warmed, 20 failed (connect_error" in out.stdout
    for node in nodes[:2]:
        assert f"{node}: 20 warmed, 0 failed" in out.stdout
    assert "some URLs were NOT warmed" in out.stdout


def test_dry_run_reads_the_sources_and_sends_nothing(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("http://www.example.com/a\n/b\n")
    down = dead_url()  # nothing is sent, so nothing fails
    out = warm(str(tmp_path / "urls.txt"), "--default-host", "h.example", "--dry-run",
               "--peer", down)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{down}: 2 to warm (dry run: nothing sent)\n"
    # The router's admission, as a real warm would apply it: a URL no node can take, and
    # a target that cannot be sent byte for byte (a space; raw UTF-8 can be), are said, and
    # fail the run.
    (tmp_path / "urls.txt").write_text("http://www.example.com/a\nhttps://www.example.com/s\n"
                                       "http://www.example.com/caf\u00e9\n"
                                       "http://www.example.com/a b\n", encoding="utf-8")
    out = warm(str(tmp_path / "urls.txt"), "--dry-run", "--peer", down)
    assert out.returncode == 1, out.stderr
    assert "refused to refresh http://www.example.com/a b: a space in the target" in out.stderr
    assert out.stdout.splitlines() == [
        f"{down}: 2 to warm (dry run: nothing sent)",
        "1 URL(s) would not be sent: no_listener (https)",
        "1 URL(s) would not be sent: refused"]


def test_unreadable_source_exits_2(tmp_path: Path) -> None:
    out = warm(str(tmp_path / "none.txt"), "--peer", "http://127.0.0.11:80")
    assert out.returncode == 2
    assert "none.txt: cannot be read" in out.stderr
    out = warm("http://www.example.com/a b.xml", "--peer", dead_url())  # no request line
    assert out.returncode == 2
    assert "a b.xml: b'/a b.xml' cannot be sent byte for byte" in out.stderr
