"""Whether NGINX stored an answer, from the caching headers on its line: NGINX's rules in
NGINX's order, ``proxy_ignore_headers`` and ``proxy_cache_valid`` from the config."""

from __future__ import annotations

import random
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest

from logwarden.config import REPLAY, load_config
from logwarden.decide.cacheable import CachePolicy, parse_time, uncacheable_rule
from logwarden.decide.process import Processor, Tally, triggers_for
from logwarden.model import Caching
from logwarden.parse.logformat import LogFormat
from logwarden.parse.nginxconf import read
from logwarden.sources import Batch
from tests.agents import LOG_FORMAT
from tests.lines import example_line

NOW = 1_795_000_000.0


def rule(cache_control: str | None = None, expires: str | None = None,
         x_accel: str | None = None, vary: str | None = None, cookie: str | None = None,
         status: int = 200, policy: CachePolicy | None = None) -> str | None:
    caching = Caching(*(None if v is None else v.encode()
                        for v in (cache_control, expires, x_accel, vary, cookie)))
    return uncacheable_rule(caching, status, NOW, policy)


def http_date(offset: float) -> str:
    return formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"cache_control": "no-store"}, "no_store"),
    ({"cache_control": "private, max-age=60"}, "private"),
    ({"cache_control": "No-Cache"}, "no_cache"),            # NGINX compares without case
    ({"cache_control": 'no-cache="Set-Cookie", max-age=60'}, "no_cache"),  # a substring
    ({"cache_control": "max-age=0"}, "max_age"),
    ({"cache_control": "public, s-maxage=0, max-age=60"}, "max_age"),  # s-maxage first
    ({"cache_control": "max-age=abc"}, "max_age"),
    ({"cache_control": "max-age=60"}, None),
    ({"cache_control": "public, s-maxage=60, max-age=0"}, None),
    ({"cookie": "1", "cache_control": "max-age=60"}, "set_cookie"),
    ({"cookie": "0", "cache_control": "max-age=60"}, None),  # the map's "no cookie"
    ({"cookie": "sid=1; Path=/"}, "set_cookie"),            # $upstream_http_set_cookie itself
    ({"vary": "*", "cache_control": "max-age=60"}, "vary"),
    ({"vary": "X-" + "a" * 130}, "vary"),                   # longer than NGINX keeps
    ({"vary": "Accept-Encoding"}, None),
    ({"x_accel": "0", "cache_control": "max-age=60"}, "x_accel_expires"),
    ({"x_accel": "60", "cache_control": "no-store"}, None),  # X-Accel-Expires first
    ({"x_accel": "@1900000000", "expires": http_date(-10)}, None),
    ({"x_accel": "soon", "cache_control": "no-store"}, "no_store"),  # not a number: ignored
    ({"x_accel": "60", "cookie": "1"}, "set_cookie"),       # but never over a cookie
    ({"expires": http_date(-10)}, "expires"),
    ({"expires": "0"}, "expires"),                          # a date NGINX cannot read
    ({"expires": http_date(3600)}, None),
    ({"expires": http_date(-10), "cache_control": "max-age=60"}, None),  # Cache-Control wins
    ({}, None),  # no header: proxy_cache_valid decides, not known here
])
def test_nginx_rules_in_nginx_order(headers: dict[str, str], expected: str | None) -> None:
    assert rule(**headers) == expected


def test_ignored_headers_and_proxy_cache_valid() -> None:
    policy = CachePolicy.of(["Set-Cookie", "Cache-Control"], [["10m"], ["404", "1m"]])
    assert rule(cookie="1", policy=policy) is None
    assert rule(cache_control="no-store", policy=policy) is None
    assert rule(vary="*", policy=policy) == "vary"
    assert rule(status=200, policy=policy) is None        # proxy_cache_valid 10m: 200 301 302
    assert rule(status=203, policy=policy) == "no_valid"  # nothing gives it a time
    assert rule(status=203, cache_control="max-age=5", policy=policy) == "no_valid"  # ignored
    assert rule(status=203, expires=http_date(60), policy=policy) is None
    anything = CachePolicy.of([], [["any", "1h30m"]])
    assert rule(status=203, policy=anything) is None
    assert rule(policy=CachePolicy.of([], [["0"]])) == "no_valid"  # a time of 0 stores nothing
    union = CachePolicy.union([policy, CachePolicy.of(["Vary"], [])])
    assert rule(vary="*", policy=union) is None  # one location of the log ignores it


def test_nginx_times() -> None:
    assert [parse_time(t) for t in ("10m", "1h30m", "30", "2d", "500ms", "", "1x", "m")] == \
        [600, 5400, 30, 172800, 0.5, -1, -1, -1]


def test_lines_of_the_example_format_carry_the_headers_and_count_by_rule() -> None:
    config = load_config({"log_format": LOG_FORMAT, "dedup_window": 0.0}, needs=REPLAY)
    processor = Processor(config.log_format_parser(), triggers_for(config))
    lines = [example_line("/a", caching="no-store\t-\t-\t-\t0"),
             example_line("/b", caching="max-age=60\t-\t-\t-\t1"),
             example_line("/c", caching="max-age=60\t-\t-\tAccept-Encoding\t0"),
             example_line("/d", cache="EXPIRED", caching="max-age=0\t-\t-\t-\t0"),
             example_line("/e", cache="STALE", caching="-\t-\t-\t-\t0")]
    record = LogFormat.compile(LOG_FORMAT).parse(lines[2])
    assert record is not None and record.caching == Caching(b"max-age=60", None, None,
                                                            b"Accept-Encoding", b"0")
    refreshes, tally = processor.batch(Batch.of(lines))
    assert [r.target for r in refreshes] == [b"/c", b"/e"]
    assert tally.ignored == {"uncacheable": 3}
    assert tally.uncacheable == {"no_store": 1, "set_cookie": 1, "max_age": 1}


CONF = """
events {}
http {
    log_format lw '$host "$request" $status $upstream_cache_status';
    access_log %(dir)s/all.log lw;
    proxy_cache_path %(dir)s/c keys_zone=z:1m;
    proxy_cache z;
    proxy_cache_valid 10m;
    proxy_ignore_headers Set-Cookie;
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://127.0.0.1:9; }
        location /api/ {
            proxy_pass http://127.0.0.1:9;
            include %(dir)s/api.conf;
        }
        location /static/ { proxy_cache off; proxy_pass http://127.0.0.1:9; }
        location /quiet/ { access_log off; proxy_pass http://127.0.0.1:9; }
    }
    server {
        listen 127.0.0.1:8081;
        access_log %(dir)s/other.log lw;
        proxy_cache_key $host$request_uri;
    }
}
"""


def test_the_config_gives_each_log_its_caching_locations(tmp_path: Path) -> None:
    """Inherited from http to server to location unless set there (includes read in place);
    ``proxy_cache off`` and ``access_log off`` take a location out."""
    (tmp_path / "api.conf").write_text("proxy_cache_valid 200 1m;\n"
                                       "proxy_ignore_headers Cache-Control Expires;\n")
    (tmp_path / "nginx.conf").write_text(CONF % {"dir": tmp_path})
    logs = {Path(a.target).name: a for a in read(str(tmp_path / "nginx.conf"))}
    scopes = {s.where.rsplit(":", 1)[1]: s for s in logs["all.log"].cache}
    assert sorted(scopes) == ["12", "13"]  # location / and /api/ (not /static/, /quiet/)
    assert (scopes["12"].zone, scopes["12"].key, scopes["12"].cache_valid,
            scopes["12"].ignore_headers) == ("z", None, (("10m",),), ("Set-Cookie",))
    assert (scopes["13"].cache_valid, scopes["13"].ignore_headers) == (
        (("200", "1m"),), ("Cache-Control", "Expires"))
    [other] = logs["other.log"].cache
    assert (other.key, other.where.endswith(":20")) == ("$host$request_uri", True)

    config = load_config({"nginx_conf": str(tmp_path / "nginx.conf"),
                          "access_log": (str(tmp_path / "all.log"),)}, needs=REPLAY)
    assert config.cache_policy == CachePolicy(
        frozenset({"set-cookie", "cache-control", "expires"}), frozenset({200, 301, 302}))
    checked = subprocess.run(
        [sys.executable, "-m", "logwarden", "check", "--nginx-conf", str(tmp_path / "nginx.conf"),
         "--access-log", str(tmp_path / "all.log"), "--peer", "http://127.0.0.1:1"],
        capture_output=True, text=True, timeout=30)
    assert checked.returncode == 1, checked.stderr  # no bypass in this config: an error
    assert "# uncacheable answers: learned (a URL MISSed again); log the caching headers" \
        in checked.stderr
    assert "proxy_ignore_headers: cache-control, expires, set-cookie; statuses " \
        "proxy_cache_valid stores: 200, 301, 302\n" in checked.stderr


def test_lines_decided_from_their_headers_alone_are_decided_as_from_their_record() -> None:
    """The processor's shortcut (a MISS/EXPIRED whose caching headers say uncacheable is not
    parsed further) gives what the full path gives, line for line: same refreshes, same tally,
    same memory afterwards (own lines, purges, 5xx and escapes mixed in)."""
    rnd = random.Random(11)
    headers = ["no-store\t-\t-\t-\t0", "max-age=60\t-\t-\t-\t0", "max-age=60\t-\t-\t-\t1",
               "private\t-\t60\t-\t0", "no-cache=\\x22x\\x22\t-\t-\t-\t0", "-\t-\t-\t*\t0",
               "-\t" + http_date(60) + "\t-\t-\t0", "-\t-\t-\t-\t-", "max-age=0\t-\t0\t-\t0"]
    lines = []
    for i in range(3000):
        line = example_line(f"/p/{rnd.randrange(60)}", rnd.choice(
            ["MISS"] * 4 + ["EXPIRED", "STALE", "HIT", "BYPASS"]), msec=NOW + i / 100,
            upstream=rnd.choice(["200"] * 5 + ["502", "-"]), caching=rnd.choice(headers))
        if rnd.random() < 0.1:
            line = line.replace(b"\tcurl/8\t", b"\tlogwarden/0.1\t")
        if rnd.random() < 0.05:
            line = line.replace(b"\tGET\t", b"\tPURGE\t")
        lines.append(line)
    config = load_config({"log_format": LOG_FORMAT, "dedup_window": 0.0, "mode": "purge"},
                         needs=REPLAY)
    listed: list[str] = []
    quick = Processor(config.log_format_parser(), triggers_for(config))
    full = Processor(config.log_format_parser(), triggers_for(config),
                     on_uncacheable=lambda record, rule: listed.append(rule))
    assert quick.caching is not None and full.caching is None
    totals = Tally(skipped=0), Tally(skipped=0)
    for start in range(0, len(lines), 256):
        batch = lines[start:start + 256]
        (ours, t1), (theirs, t2) = (p.batch(Batch.of(x.rstrip(b"\n") for x in batch))
                                    for p in (quick, full))
        assert ours == theirs
        assert (t1.skipped, t1.malformed, t1.ignored, t1.uncacheable, t1.triggers) == \
            (t2.skipped, t2.malformed, t2.ignored, t2.uncacheable, t2.triggers)
        totals[0].add(t1)
        totals[1].add(t2)
    # "private" with X-Accel-Expires: 60 is stored: no rule
    assert set(totals[0].uncacheable) == {"no_store", "set_cookie", "no_cache", "vary",
                                          "x_accel_expires"}
    assert len(listed) == sum(totals[1].uncacheable.values()) > 300
    assert list(quick.triggers._purged._seen) == list(full.triggers._purged._seen) != []
