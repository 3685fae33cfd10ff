"""The cheap cache-status test decides exactly as the full parse does, on every line.

Decision = what the processor does with a line: malformed, ignored (and why), or which refresh
it asks for. A skipped line must be one the full parse would not let trigger.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import gen
from lab.agent import log_format_from_conf
from lab.cluster import EXAMPLE_CONFIG
from logwarden.decide.triggers import Triggers
from logwarden.model import OWN_AGENT_MARK
from logwarden.parse.logformat import LogFormat
from logwarden.parse.prefilter import Prefilter

STATUSES = ("MISS", "EXPIRED", "UPDATING", "STALE")
SPACED = '$host "$request" $status $upstream_cache_status "$http_user_agent"'
JSON_FMT = ('{"ucs":"$upstream_cache_status","request":"$request","ua":"$http_user_agent",'
            '"host":"$host","us":"$upstream_status"}')
EDGE_FIRST = "$upstream_cache_status $host $request"
EDGE_LAST = "$host $request $upstream_cache_status"


def _triggers(statuses: tuple[str, ...] = STATUSES) -> Triggers:
    return Triggers(statuses, max_age=0, default_host="default.example")


def full_decisions(fmt: LogFormat, lines: Iterable[bytes],
                   statuses: tuple[str, ...] = STATUSES) -> list[object]:
    """What the processor decides for each line in turn with a full parse of every line."""
    triggers = _triggers(statuses)
    return [_decide(fmt, triggers, line) for line in lines]


def fast_decisions(fmt: LogFormat, lines: Iterable[bytes],
                   statuses: tuple[str, ...] = STATUSES) -> list[object]:
    """The same, skipping the lines the prefilter rules out (own triggers: the memory differs)."""
    triggers = _triggers(statuses)
    skip = Prefilter(fmt, triggers.statuses, keep_agent=OWN_AGENT_MARK).skip
    return ["cache_status" if skip(line) else _decide(fmt, triggers, line) for line in lines]


def _decide(fmt: LogFormat, triggers: Triggers, line: bytes) -> object:
    record = fmt.parse(line)
    if record is None:
        return "malformed"
    reason = triggers.skip_reason(record)
    return reason if reason is not None else triggers.refresh_for(record)


def agree(fmt: LogFormat, lines: list[bytes]) -> bool:
    """Equal decisions, except that a skipped line the parse calls malformed is 'ignored'."""
    pairs = zip(fast_decisions(fmt, lines), full_decisions(fmt, lines), strict=True)
    return all(fast == full or (fast, full) == ("cache_status", "malformed")
               for fast, full in pairs)


def test_generator_uses_the_example_format() -> None:
    example = LogFormat.compile(log_format_from_conf(Path(EXAMPLE_CONFIG).read_text()))
    assert LogFormat.compile(gen.FORMAT).pattern == example.pattern


def test_generated_lines_decide_the_same() -> None:
    fmt, lines = LogFormat.compile(gen.FORMAT), list(gen.lines(20_000, seed=7))
    fast = fast_decisions(fmt, lines)
    assert fast == full_decisions(fmt, lines)
    assert 0.8 < fast.count("cache_status") / len(lines) < 0.9  # HIT, BYPASS and "-" lines


def test_realistic_lines_decide_the_same() -> None:
    fmt, lines = LogFormat.compile(gen.FORMAT), list(gen.realistic_lines(20_000, seed=7))
    fast = fast_decisions(fmt, lines)
    assert fast == full_decisions(fmt, lines)
    assert 0.74 < fast.count("cache_status") / len(lines) < 0.82  # HIT, BYPASS, "-", POST
    stripped = [line.rstrip(b"\n") for line in lines]
    skip = Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK).skip
    assert _block_sift(fmt, stripped) == [line for line in stripped if not skip(line)]


@pytest.mark.parametrize("statuses", [("MISS",), ("HIT", "BYPASS"), STATUSES])
def test_every_status_set(statuses: tuple[str, ...]) -> None:
    fmt, lines = LogFormat.compile(gen.FORMAT), list(gen.lines(3000, seed=3))
    assert fast_decisions(fmt, lines, statuses) == full_decisions(fmt, lines, statuses)


def test_garbage_is_parsed_and_malformed() -> None:
    lines = [b"garbage", b"", b"\t\t", b"1.0\thttp\tmissing\t"]
    assert fast_decisions(LogFormat.compile(gen.FORMAT), lines) == ["malformed"] * 4


def test_status_in_another_field_does_not_hide_the_real_one() -> None:
    fmt = LogFormat.compile(gen.FORMAT)
    # Another field ($logwarden_refresh's) says HIT, the cache status is MISS; and the reverse.
    lines = [b"1.0\thttp\th\t80\tGET\t/a\t200\tMISS\t200\t0.001\tHIT\tcurl\t-\t-\t-\t-\t0\t-\t-\n",
             b"1.0\thttp\th\t80\tGET\t/b\t200\tHIT\t-\t0.001\tMISS\tcurl\t-\t-\t-\t-\t0\t-\t-\n"]
    fast = fast_decisions(fmt, lines)
    assert fast == full_decisions(fmt, lines)
    assert fast[0] != "malformed" and fast[1] == "cache_status"


def test_own_requests_reach_the_triggers() -> None:
    fmt = LogFormat.compile(gen.FORMAT)
    own = b"1.0\thttp\th\t80\tHEAD\t/a\t200\tBYPASS\t200\t0.001\t1\tlogwarden/0.1.0"
    assert not Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK).skip(own)
    assert Prefilter(fmt, STATUSES).skip(own)


def test_sift_keeps_what_skip_keeps() -> None:
    fmt, lines = LogFormat.compile(gen.FORMAT), list(gen.lines(5000, seed=5))
    prefilter = Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK)
    assert prefilter.sift(lines) == [line for line in lines if not prefilter.skip(line)]
    with_garbage = [*lines[:100], b"garbage", *lines[100:200]]  # goes line by line
    assert prefilter.sift(with_garbage) == [
        line for line in with_garbage if not prefilter.skip(line)]


def _block_sift(fmt: LogFormat, lines: list[bytes]) -> list[bytes]:
    """What sift_block keeps of ``lines`` read as one block, as the sources hand them on."""
    prefilter = Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK)
    return prefilter.sift_block(b"".join(line + b"\n" for line in lines), len(lines))


def test_sift_block_keeps_what_skip_keeps() -> None:
    fmt, lines = LogFormat.compile(gen.FORMAT), list(gen.lines(5000, seed=5))
    lines = [line.rstrip(b"\n") for line in lines]
    skip = Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK).skip
    assert _block_sift(fmt, lines) == [line for line in lines if not skip(line)]
    with_garbage = [*lines[:100], b"garbage", b"", *lines[100:200]]  # goes line by line
    assert _block_sift(fmt, with_garbage) == [line for line in with_garbage if not skip(line)]
    assert _block_sift(fmt, []) == []


@pytest.mark.parametrize("format_", ["$host $status$upstream_cache_status $request",
                                     "$host\n$upstream_cache_status $request"])
def test_sift_block_splits_without_literals_or_with_a_newline_in_one(format_: str) -> None:
    fmt = LogFormat.compile(format_)
    lines = [b"h 200MISS GET / HTTP/1.1", b"h 200HIT GET / HTTP/1.1", b"h", b"HIT GET / HTTP/1.1"]
    skip = Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK).skip
    assert _block_sift(fmt, lines) == [line for line in lines if not skip(line)]


def test_no_literal_next_to_the_field_skips_nothing() -> None:
    fmt = LogFormat.compile("$host $status$upstream_cache_status $request")
    prefilter = Prefilter(fmt, STATUSES)
    assert not prefilter.skip(b"h 200HIT GET / HTTP/1.1")
    lines = [b"h 200HIT GET / HTTP/1.1", b"garbage"]
    assert prefilter.sift(lines) == lines
    assert _block_sift(fmt, lines) == lines


# Lines assembled from the pieces that matter: delimiters, status words, look-alikes.
_PIECES = st.sampled_from([
    "\t", " ", '"', "\\x22", "-", "MISS", "HIT", "EXPIRED", "STALE", "BYPASS", "MISSING",
    "GET", "HEAD", "POST", "/a?x=1", "/b", "200", "404", "502", "1.000", "HTTP/1.1", "h.example",
    "logwarden/0.1", "PURGE", "curl/8", ":", ",", "{", "}", "ucs", "\r", "\n"])
_LINES = st.lists(_PIECES, max_size=30).map(lambda parts: "".join(parts).encode())


def _example_shaped() -> st.SearchStrategy[bytes]:
    field = st.lists(_PIECES.filter(lambda p: p not in "\t\n"), max_size=3).map("".join)
    return st.lists(field, min_size=10, max_size=13).map(lambda f: "\t".join(f).encode())


@pytest.mark.parametrize("format_", [gen.FORMAT, SPACED, JSON_FMT, EDGE_FIRST, EDGE_LAST])
@settings(max_examples=400, deadline=None)
@given(lines=st.lists(st.one_of(_LINES, _example_shaped()), max_size=5))
def test_any_lines_decide_the_same(format_: str, lines: list[bytes]) -> None:
    fmt = LogFormat.compile(format_, "json" if format_ == JSON_FMT else "default")
    assert agree(fmt, lines)
    prefilter = Prefilter(fmt, STATUSES, keep_agent=OWN_AGENT_MARK)
    skip = prefilter.skip
    assert prefilter.sift(lines) == [line for line in lines if not skip(line)]
    in_block = [piece for line in lines for piece in line.split(b"\n")]  # as the file splits
    assert _block_sift(fmt, in_block) == [line for line in in_block if not skip(line)]
