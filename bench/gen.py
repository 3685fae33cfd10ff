"""Seeded, deterministic NGINX access-log lines in examples/nginx.conf's ``logwarden`` format.

The mix follows a busy cache node: ~85 % HIT, 8 % MISS, 3 % EXPIRED, 2 % UPDATING, 1 % STALE,
1 % BYPASS (the peers' own refreshes) and some ``-`` (requests NGINX answered without the cache);
~50,000 URIs with Zipf popularity, query strings, user agents whose quotes NGINX wrote as
``\\x22``; GET/HEAD/POST; statuses 200/304/404/500. The same seed gives the same bytes.

    python -m bench.gen --lines 1000000 > access.log
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Iterator

FORMAT = ("$msec\t$scheme\t$host\t$server_port\t$request_method\t$request_uri\t$status\t"
          "$upstream_cache_status\t$upstream_status\t$request_time\t$logwarden_refresh\t"
          "$http_user_agent\t$upstream_http_cache_control\t$upstream_http_expires\t"
          "$upstream_http_x_accel_expires\t$upstream_http_vary\t$logwarden_set_cookie")
"""The ``logwarden`` log_format of examples/nginx.conf (tests check they stay the same)."""

CACHE_MIX = (("HIT", 84.0), ("MISS", 8.0), ("EXPIRED", 3.0), ("UPDATING", 2.0), ("STALE", 1.0),
             ("BYPASS", 1.0), ("-", 1.0))
METHODS = (("GET", 90.0), ("HEAD", 7.0), ("POST", 3.0))
STATUSES = ((b"200", 90.0), (b"304", 5.0), (b"404", 4.0), (b"500", 1.0))
HOSTS = (b"www.example.com", b"static.example.com")
AGENTS = (
    b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/126.0.0.0 Safari/537.36",
    b"curl/8.5.0",
    b"Go-http-client/1.1",
    b"Mozilla/5.0 (compatible; \\x22quoted\\x22 bot/2.1; +http://example.com/bot)",
    b"python-requests/2.32.3",
)
OWN_AGENT = b"logwarden/0.1.0"
NO_ANSWER = b"-\t-\t-\t-\t0"
"""The caching-header fields of a line NGINX answered without asking the origin (a HIT)."""
CACHEABLE = b"public, max-age=300\t-\t-\tAccept-Encoding\t0"
"""The caching-header fields of an answer NGINX stores."""
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SECTIONS = (b"img", b"css", b"js", b"api/v1/items", b"news", b"static/fonts", b"p")


def uris(count: int, rng: random.Random) -> list[bytes]:
    """``count`` distinct request URIs, a third with a query string, a few with escapes."""
    out = []
    for i in range(count):
        path = b"/%s/%d-%x" % (rng.choice(SECTIONS), i, rng.getrandbits(24))
        roll = rng.random()
        if roll < 0.33:
            path += b"?v=%d&lang=%s" % (rng.randrange(100), rng.choice((b"en", b"de", b"fr")))
        elif roll < 0.35:
            path += b"?q=a%20b&sort=-price&x=\\x22y\\x22"
        out.append(path)
    return out


def _zipf_weights(count: int, s: float = 1.0) -> list[float]:
    return list(itertools.accumulate(1.0 / (k ** s) for k in range(1, count + 1)))


def lines(count: int, *, seed: int = 1, n_uris: int = 50_000, start: float = START,
          rate: float = 100_000.0) -> Iterator[bytes]:
    """``count`` lines (newline included), ``rate`` lines per second of log time from ``start``."""
    rng = random.Random(seed)
    targets = uris(n_uris, rng)
    cum = _zipf_weights(n_uris)
    chunk = 10_000
    for base in range(0, count, chunk):
        n = min(chunk, count - base)
        picks = rng.choices(targets, cum_weights=cum, k=n)
        caches = rng.choices([c for c, _ in CACHE_MIX], [w for _, w in CACHE_MIX], k=n)
        methods = rng.choices([m for m, _ in METHODS], [w for _, w in METHODS], k=n)
        codes = rng.choices([c for c, _ in STATUSES], [w for _, w in STATUSES], k=n)
        for i in range(n):
            yield _line(rng, start + (base + i) / rate, picks[i], caches[i], methods[i], codes[i])


def _line(rng: random.Random, t: float, uri: bytes, cache: str, method: str,
          code: bytes) -> bytes:
    hit = cache in ("HIT", "-")
    upstream = b"-" if hit or cache == "UPDATING" else (b"502" if code == b"500" else code)
    agent = OWN_AGENT if cache == "BYPASS" else rng.choice(AGENTS)
    https = rng.random() < 0.2
    return b"\t".join((
        b"%.3f" % t, b"https" if https else b"http", rng.choice(HOSTS), b"443" if https else b"80",
        method.encode(), uri, code, cache.encode(), upstream,
        b"0.000" if hit else b"0.%03d" % rng.randrange(1, 200),
        b"1" if cache == "BYPASS" else b"0", agent, NO_ANSWER if hit else CACHEABLE,
    )) + b"\n"


def triggering_lines(count: int, *, distinct: int, start: float = START) -> Iterator[bytes]:
    """``count`` MISS lines cycling over ``distinct`` URIs: every line asks for a refresh."""
    for i in range(count):
        yield (b"%.3f\thttp\twww.example.com\t80\tGET\t/m/%d?v=1\t200\tMISS\t200\t0.010\t0\t"
               b"curl/8.5.0\t%s\n" % (start + i / 100_000, i % distinct, CACHEABLE))


def write(path: str, lines_: Iterator[bytes], block: int = 1 << 20) -> int:
    """Append ``lines_`` to ``path`` in blocks of about ``block`` bytes; returns lines written."""
    written, buf, size = 0, [], 0
    with open(path, "ab") as fh:
        for line in lines_:
            buf.append(line)
            size += len(line)
            if size >= block:
                fh.write(b"".join(buf))
                written, buf, size = written + len(buf), [], 0
        fh.write(b"".join(buf))
    return written + len(buf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--uris", type=int, default=50_000)
    args = parser.parse_args()
    out = sys.stdout.buffer
    for line in lines(args.lines, seed=args.seed, n_uris=args.uris):
        out.write(line)


if __name__ == "__main__":
    main()
