"""bench/gen.py's realistic mix is what its docstring says: benchmark 1b measures that mix."""

from __future__ import annotations

from collections import Counter

from bench import gen
from logwarden.parse.logformat import LogFormat

LINES = 40_000


def _fields() -> list[list[bytes]]:
    return [line.rstrip(b"\n").split(b"\t") for line in gen.realistic_lines(LINES, seed=3)]


def _kind(fields: list[bytes]) -> str:
    """The mix's kind of a line, told from its fields as the docstring describes them."""
    method, code, cache, headers = fields[4], fields[6], fields[7], b"\t".join(fields[12:])
    if method == b"POST":
        return "POST"
    if code == b"404":
        return "404"
    if cache == b"MISS" and headers in gen.NOT_STORED:
        return "uncacheable"
    return cache.decode()


def test_shares_follow_the_mix() -> None:
    kinds = Counter(_kind(fields) for fields in _fields())
    for kind, percent in gen.REALISTIC_MIX:
        assert abs(kinds[kind] / LINES * 100 - percent) < max(0.15 * percent, 0.3), kind
    assert sum(kinds.values()) == LINES


def test_lines_are_as_nginx_logs_them() -> None:
    fmt, rows = LogFormat.compile(gen.FORMAT), _fields()
    assert all(fmt.parse(b"\t".join(fields)) is not None for fields in rows)
    assert all(len(fields) == 19 for fields in rows)
    for fields in rows:
        cache, upstream, headers = fields[7], fields[8], b"\t".join(fields[12:])
        if cache == b"HIT":  # the stored copy's headers; NGINX did not ask the origin
            assert upstream == b"-" and headers in gen.STORED
        if cache == b"BYPASS":
            assert fields[11] == gen.OWN_AGENT and fields[4] == b"HEAD"
    assert len({fields[2] for fields in rows if fields[6] != b"421"}) == len(gen.SITE_HOSTS)


def test_uncacheable_urls_repeat() -> None:
    """NGINX stores nothing for them, so the same few URLs MISS again and again."""
    urls = Counter((fields[2], fields[5]) for fields in _fields()
                   if _kind(fields) == "uncacheable")
    assert len(urls) <= 300 and urls.most_common(1)[0][1] > 100


def test_same_seed_same_bytes() -> None:
    assert list(gen.realistic_lines(500, seed=9)) == list(gen.realistic_lines(500, seed=9))
    assert list(gen.realistic_lines(500, seed=9)) != list(gen.realistic_lines(500, seed=8))
