"""Seeded, deterministic NGINX access-log lines in examples/nginx.conf's ``logwarden`` format.

Two mixes; the same seed gives the same bytes.

``busy`` (:func:`lines`, benchmark 1): a busy cache node, 84 % HIT, 8 % MISS, 3 % EXPIRED,
2 % UPDATING, 1 % STALE, 1 % BYPASS (the peers' own refreshes), 1 % ``-`` (requests NGINX
answered without the cache); ~50,000 URIs with Zipf popularity, query strings, user agents
whose quotes NGINX wrote as ``\\x22``; GET/HEAD/POST; statuses 200/304/404/500 at random.
Its caching-header fields are ``-`` on lines served from the cache (a simplification, kept so
benchmark 1's figures stay comparable across commits; see :data:`NO_HEADERS`).

``realistic`` (:func:`realistic_lines`, benchmark 1b): a site whose origin also serves pages
NGINX must not store, each line built the way NGINX 1.22 logs it (the HIT and uncacheable MISS
fields checked on 1.22.1 behind a proxy_cache; UPDATING assumed to log like STALE):

- 70 % HIT of the cacheable URIs (Zipf), 6 % of them 304; the stored copy's caching headers
  (``$upstream_http_*`` of a HIT are the cached response's, though ``$upstream_status`` is
  ``-``), such as ``public, max-age=300\\t-\\t-\\tAccept-Encoding\\t0``;
- 15 % uncacheable MISS: 300 URIs (cart, login, session, search...; Zipf, so they repeat) whose
  origin answer NGINX does not store, each with its own fields: ``private, no-cache`` with a
  Set-Cookie (``...\\tAccept-Encoding\\t1``), ``no-store``, ``max-age=0``, a cookie on a
  ``public, max-age=60`` answer, ``X-Accel-Expires: 0``, ``Vary: *``;
- 5 % changes of cacheable URIs: 2 % MISS (any URI alike, not by popularity: see
  :meth:`Pool.cold`), 1.5 % EXPIRED (the origin's answer), 1 % UPDATING, 0.5 % STALE (served
  from the copy: no upstream status, or 504 for a fifth of the STALE);
- 10 % other: 2 % BYPASS (logwarden's HEAD refreshes, its user agent), 4 % ``-`` (NGINX
  answered itself: http-to-https redirects, 421 for unknown hosts, health probes), 2 % MISS 404
  for URIs that do not exist, 2 % POST to the uncacheable URIs (``-``: POST is not cached);
- five hosts, each URI on one of them; realistic browser and crawler user agents, weighted.

    python -m bench.gen --lines 1000000 [--mix realistic] > access.log
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Callable, Iterator
from typing import NamedTuple

FORMAT = ("$msec\t$scheme\t$host\t$server_port\t$request_method\t$request_uri\t$status\t"
          "$upstream_cache_status\t$upstream_status\t$request_time\t$logwarden_refresh\t"
          "$http_user_agent\t$upstream_http_cache_control\t$upstream_http_expires\t"
          "$upstream_http_x_accel_expires\t$upstream_http_vary\t$logwarden_set_cookie\t"
          "$upstream_http_etag\t$upstream_http_last_modified")
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
NO_VERSION = b"\t-\t-"
"""The ETag and Last-Modified fields of an answer without them."""
NO_HEADERS = b"-\t-\t-\t-\t0" + NO_VERSION
"""The caching-header fields of a line without any: NGINX answered it itself (``-``), or the
origin sent none. Benchmark 1 logs it on its HIT lines too, where NGINX logs the copy's."""
CACHEABLE = b'public, max-age=300\t-\t-\tAccept-Encoding\t0\t"5f3a-2c1"\t-'
"""The caching-header fields of an answer NGINX stores."""
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SECTIONS = (b"img", b"css", b"js", b"api/v1/items", b"news", b"static/fonts", b"p")
HTTPS_SHARE = 0.2

REALISTIC_MIX = (("HIT", 70.0), ("uncacheable", 15.0), ("MISS", 2.0), ("EXPIRED", 1.5),
                 ("UPDATING", 1.0), ("STALE", 0.5), ("BYPASS", 2.0), ("-", 4.0), ("404", 2.0),
                 ("POST", 2.0))
"""Line kinds of the realistic mix and their shares in percent (module docstring)."""
SITE_HOSTS = (b"www.example.com", b"static.example.com", b"shop.example.com",
              b"api.example.com", b"m.example.com")
PRIVATE_HOSTS = (b"shop.example.com", b"api.example.com", b"www.example.com")
PRIVATE_SECTIONS = (b"api/v2/cart", b"account/login", b"account/orders", b"api/v2/session",
                    b"checkout", b"search", b"graphql", b"api/v2/recommendations")
STORED = (
    CACHEABLE,
    b"public, max-age=31536000, immutable\t-\t-\t-\t0" + NO_VERSION,
    b"max-age=3600\tThu, 01 Jan 2026 01:00:00 GMT\t-\tAccept-Encoding\t0" + NO_VERSION,
    b"-\t-\t600\t-\t0" + NO_VERSION,
    b"public, s-maxage=600, max-age=60\t-\t-\tAccept-Encoding, Origin\t0" + NO_VERSION,
)
"""Caching-header fields of answers NGINX stores: logged on their MISS and on every HIT."""
NOT_STORED = (
    b"private, no-cache\t-\t-\tAccept-Encoding\t1" + NO_VERSION,
    b"no-store\t-\t-\t-\t0" + NO_VERSION,
    b"no-cache, no-store, must-revalidate\tThu, 01 Jan 1970 00:00:00 GMT\t-\tAccept-Encoding\t0"
    + NO_VERSION,
    b"max-age=0\t-\t-\tAccept-Encoding, Cookie\t0" + NO_VERSION,
    b"public, max-age=60\t-\t-\tAccept-Encoding\t1" + NO_VERSION,
    b"private, max-age=0\t-\t-\tCookie\t1" + NO_VERSION,
    b"-\t-\t0\t-\t0" + NO_VERSION,
    b"public, max-age=300\t-\t-\t*\t0" + NO_VERSION,
)
"""Caching-header fields of answers NGINX does not store (so every request is a MISS):
no-cache/no-store/private, max-age=0, a Set-Cookie, ``X-Accel-Expires: 0``, ``Vary: *``."""
BROWSERS = (
    (b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     b"Chrome/131.0.0.0 Safari/537.36", 30.0),
    (b"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
     b"like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", 20.0),
    (b"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
     b"Chrome/131.0.0.0 Mobile Safari/537.36", 18.0),
    (b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
     b"Gecko) Version/18.1 Safari/605.1.15", 10.0),
    (b"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", 7.0),
    (b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     b"Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", 6.0),
    (b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 4.0),
    (b"Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 2.0),
    (b"Mozilla/5.0 (compatible; \\x22quoted\\x22 bot/2.1; +http://example.com/bot)", 1.0),
    (b"curl/8.5.0", 1.0),
    (b"okhttp/4.12.0", 1.0),
)
"""User agents of the realistic mix, weighted (NGINX writes a ``"`` as ``\\x22``)."""


def uris(count: int, rng: random.Random, sections: tuple[bytes, ...] = SECTIONS) -> list[bytes]:
    """``count`` distinct request URIs, a third with a query string, a few with escapes."""
    out = []
    for i in range(count):
        path = b"/%s/%d-%x" % (rng.choice(sections), i, rng.getrandbits(24))
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
    https = rng.random() < HTTPS_SHARE
    return _join(t, https, rng.choice(HOSTS), method.encode(), uri, code, cache.encode(),
                 upstream, b"0.000" if hit else _origin_time(rng),
                 b"1" if cache == "BYPASS" else b"0", agent, NO_HEADERS if hit else CACHEABLE)


def _join(t: float, https: bool, host: bytes, method: bytes, uri: bytes, code: bytes,
          cache: bytes, upstream: bytes, request_time: bytes, refresh: bytes, agent: bytes,
          headers: bytes) -> bytes:
    """One line of :data:`FORMAT`, newline included; ``headers`` are its last five fields."""
    return b"\t".join((
        b"%.3f" % t, b"https" if https else b"http", host, b"443" if https else b"80", method,
        uri, code, cache, upstream, request_time, refresh, agent, headers)) + b"\n"


def _origin_time(rng: random.Random) -> bytes:
    """``$request_time`` of an answer fetched from the origin (1-199 ms)."""
    return b"0.%03d" % rng.randrange(1, 200)


class Pool(NamedTuple):
    """URIs with Zipf popularity, each on its host with the caching-header fields its origin
    answer logs (the same on every line of it: one origin, one answer per URI)."""

    urls: list[tuple[bytes, bytes, bytes]]
    cum: list[float]

    @classmethod
    def of(cls, rng: random.Random, count: int, sections: tuple[bytes, ...],
           hosts: tuple[bytes, ...], headers: tuple[bytes, ...]) -> Pool:
        return cls([(rng.choice(hosts), uri, rng.choice(headers))
                    for uri in uris(count, rng, sections)], _zipf_weights(count))

    def pick(self, rng: random.Random) -> tuple[bytes, bytes, bytes]:
        return rng.choices(self.urls, cum_weights=self.cum)[0]

    def cold(self, rng: random.Random) -> tuple[bytes, bytes, bytes]:
        """Any URI alike: a stored URI MISSes when it is new or was evicted, mostly one from
        the long tail, and rarely twice (a Zipf pick would MISS the popular ones again and
        again, which NGINX does only for answers it does not store)."""
        return rng.choice(self.urls)


class Site(NamedTuple):
    """What the realistic lines are drawn from: the URIs NGINX stores and those it cannot."""

    stored: Pool
    private: Pool
    agents: list[bytes]
    agents_cum: list[float]

    @classmethod
    def of(cls, rng: random.Random, n_uris: int, n_private: int) -> Site:
        return cls(Pool.of(rng, n_uris, SECTIONS, SITE_HOSTS, STORED),
                   Pool.of(rng, n_private, PRIVATE_SECTIONS, PRIVATE_HOSTS, NOT_STORED),
                   [a for a, _ in BROWSERS],
                   list(itertools.accumulate(w for _, w in BROWSERS)))

    def agent(self, rng: random.Random) -> bytes:
        return rng.choices(self.agents, cum_weights=self.agents_cum)[0]


Build = Callable[[Site, random.Random, float], bytes]
"""Makes one line of a kind of the realistic mix at log time ``t``."""


def realistic_lines(count: int, *, seed: int = 1, n_uris: int = 50_000, n_private: int = 300,
                    start: float = START, rate: float = 100_000.0) -> Iterator[bytes]:
    """``count`` lines of the realistic mix (module docstring), as :func:`lines` gives them."""
    rng = random.Random(seed)
    site = Site.of(rng, n_uris, n_private)
    builds = [_BUILDS[kind] for kind, _ in REALISTIC_MIX]
    cum = list(itertools.accumulate(w for _, w in REALISTIC_MIX))
    chunk = 10_000
    for base in range(0, count, chunk):
        n = min(chunk, count - base)
        for i, build in enumerate(rng.choices(builds, cum_weights=cum, k=n)):
            yield build(site, rng, start + (base + i) / rate)


def _browsing(site: Site, rng: random.Random, t: float, url: tuple[bytes, bytes, bytes],
              method: bytes, code: bytes, cache: bytes, upstream: bytes) -> bytes:
    """A visitor's line for ``url``: from the cache (no upstream status: 0 ms) or the origin."""
    host, uri, headers = url
    request_time = b"0.000" if upstream == b"-" else _origin_time(rng)
    return _join(t, rng.random() < HTTPS_SHARE, host, method, uri, code, cache, upstream,
                 request_time, b"0", site.agent(rng), headers)


def _hit(site: Site, rng: random.Random, t: float) -> bytes:
    code = b"304" if rng.random() < 0.06 else b"200"
    return _browsing(site, rng, t, site.stored.pick(rng), b"GET", code, b"HIT", b"-")


def _uncacheable(site: Site, rng: random.Random, t: float) -> bytes:
    return _browsing(site, rng, t, site.private.pick(rng), b"GET", b"200", b"MISS", b"200")


def _post(site: Site, rng: random.Random, t: float) -> bytes:
    return _browsing(site, rng, t, site.private.pick(rng), b"POST", b"200", b"-", b"200")


def _change(cache: bytes) -> Build:
    """A change of a stored URI: MISS and EXPIRED fetched it, UPDATING and STALE served the
    copy (a STALE with 504: the origin failed and ``proxy_cache_use_stale`` covered it)."""
    def build(site: Site, rng: random.Random, t: float) -> bytes:
        upstream = b"200" if cache in (b"MISS", b"EXPIRED") else b"-"
        if cache == b"STALE" and rng.random() < 0.2:
            upstream = b"504"
        url = site.stored.cold(rng) if cache == b"MISS" else site.stored.pick(rng)
        return _browsing(site, rng, t, url, b"GET", b"200", cache, upstream)
    return build


def _bypass(site: Site, rng: random.Random, t: float) -> bytes:
    """A peer's refresh: logwarden's HEAD with ``X-Refresh``, fetched from the origin."""
    host, uri, headers = site.stored.pick(rng)
    return _join(t, rng.random() < HTTPS_SHARE, host, b"HEAD", uri, b"200", b"BYPASS", b"200",
                 _origin_time(rng), b"1", OWN_AGENT, headers)


def _not_found(site: Site, rng: random.Random, t: float) -> bytes:
    """A URI that does not exist: the origin's 404 has no caching headers, so none is stored."""
    uri = b"/%s/%d-gone" % (rng.choice(SECTIONS), rng.randrange(1_000_000))
    return _browsing(site, rng, t, (rng.choice(SITE_HOSTS), uri, NO_HEADERS), b"GET", b"404",
                     b"MISS", b"404")


def _no_cache(site: Site, rng: random.Random, t: float) -> bytes:
    """NGINX answered without cache or origin: a redirect to https, a 421 for a host it does
    not serve (the default server), a health probe."""
    roll, (host, uri, _) = rng.random(), site.stored.pick(rng)
    if roll < 0.5:
        return _join(t, False, host, b"GET", uri, b"301", b"-", b"-", b"0.000", b"0",
                     site.agent(rng), NO_HEADERS)
    if roll < 0.7:
        return _join(t, False, b"203.0.113.7", b"GET", b"/", b"421", b"-", b"-", b"0.000",
                     b"0", b"Mozilla/5.0 zgrab/0.x", NO_HEADERS)
    return _join(t, False, rng.choice(SITE_HOSTS), b"GET", b"/healthz", b"200", b"-", b"-",
                 b"0.000", b"0", b"kube-probe/1.31", NO_HEADERS)


_BUILDS: dict[str, Build] = {
    "HIT": _hit, "uncacheable": _uncacheable, "MISS": _change(b"MISS"),
    "EXPIRED": _change(b"EXPIRED"), "UPDATING": _change(b"UPDATING"),
    "STALE": _change(b"STALE"), "BYPASS": _bypass, "-": _no_cache, "404": _not_found,
    "POST": _post,
}
MIXES: dict[str, Callable[..., Iterator[bytes]]] = {"busy": lines, "realistic": realistic_lines}
"""The generators by mix name; each takes ``count`` and the keywords ``seed`` and ``start``."""


def triggering_lines(count: int, *, distinct: int, start: float = START) -> Iterator[bytes]:
    """``count`` MISS lines cycling over ``distinct`` URIs: every line asks for a refresh."""
    for i in range(count):
        yield (b"%.3f\thttp\twww.example.com\t80\tGET\t/m/%d?v=1\t200\tMISS\t200\t0.010\t0\t"
               b"curl/8.5.0\t%s\n" % (start + i / 100_000, i % distinct, CACHEABLE))


def blocks(lines_: Iterator[bytes], block: int = 1 << 20) -> Iterator[tuple[bytes, int]]:
    """``lines_`` joined into blocks of about ``block`` bytes: (the bytes, the lines in them)."""
    buf: list[bytes] = []
    size = 0
    for line in lines_:
        buf.append(line)
        size += len(line)
        if size >= block:
            yield b"".join(buf), len(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf), len(buf)


def write(path: str, lines_: Iterator[bytes], block: int = 1 << 20) -> int:
    """Append ``lines_`` to ``path`` in blocks of about ``block`` bytes; returns lines written."""
    written = 0
    with open(path, "ab") as fh:
        for data, count in blocks(lines_, block):
            fh.write(data)
            written += count
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--uris", type=int, default=50_000)
    parser.add_argument("--mix", choices=sorted(MIXES), default="busy")
    args = parser.parse_args()
    out = sys.stdout.buffer
    for line in MIXES[args.mix](args.lines, seed=args.seed, n_uris=args.uris):
        out.write(line)


if __name__ == "__main__":
    main()
