"""Trigger rules as pure functions over Records, and the bounded time window behind the
triggers' and the router's memory."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logwarden.decide.triggers import UNCACHEABLE_SECONDS, Triggers
from logwarden.decide.window import Window
from logwarden.model import USER_AGENT, Record

DEFAULT = ("MISS", "EXPIRED", "UPDATING", "STALE")


def rec(**kw: object) -> Record:
    base: dict[str, object] = dict(method="GET", target=b"/a?b=1", cache_status="MISS",
                                   host="www.example.com", scheme="http", status=200,
                                   upstream_status="200", user_agent=b"curl/7.88.1")
    base.update(kw)
    return Record(**base)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("status", DEFAULT)
def test_default_statuses_trigger(status: str) -> None:
    t = Triggers(DEFAULT)
    r = rec(cache_status=status, upstream_status="-" if status in ("STALE", "UPDATING") else "200")
    assert t.skip_reason(r) is None


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (rec(cache_status="HIT"), "cache_status"),
        (rec(cache_status="BYPASS"), "cache_status"),
        (rec(cache_status="REVALIDATED"), "cache_status"),
        (rec(cache_status=""), "cache_status"),
        (rec(method="POST"), "method"),
        (rec(method="PURGE"), "method"),
        (rec(status=404), "status"),
        (rec(status=500, cache_status="EXPIRED", upstream_status="500"), "status"),
        (rec(cache_status="STALE", upstream_status="500"), "origin_error"),
        (rec(cache_status="EXPIRED", upstream_status="200, 502"), "origin_error"),
        (rec(cache_status="STALE", upstream_status="502 : 504"), "origin_error"),
        (rec(user_agent=USER_AGENT.encode()), "own_refresh"),
        (rec(target=b""), "bad_target"),
        (rec(target=b"http://x/"), "bad_target"),
        (rec(host=None), "no_host"),
    ],
)
def test_skip_reasons(record: Record, reason: str) -> None:
    assert Triggers(DEFAULT).skip_reason(record) == reason


def test_failover_to_a_good_upstream_still_triggers() -> None:
    t = Triggers(DEFAULT)
    assert t.skip_reason(rec(cache_status="MISS", upstream_status="502, 200")) is None


def test_missing_fields_do_not_block() -> None:
    t = Triggers(DEFAULT)
    assert t.skip_reason(rec(status=None, upstream_status=None, user_agent=None)) is None


def test_default_host_and_scheme() -> None:
    t = Triggers(DEFAULT, default_host="static.example.com")
    r = rec(host=None, scheme=None)
    assert t.skip_reason(r) is None
    refresh = t.refresh_for(r)
    assert (refresh.scheme, refresh.host) == ("http", "static.example.com")
    assert refresh.target == b"/a?b=1"


@pytest.mark.parametrize(("age", "reason"), [(301.0, "too_old"), (299.0, None), (None, None)])
def test_a_backlog_older_than_max_age_does_not_trigger(age: float | None,
                                                       reason: str | None) -> None:
    """Lines read late (catching up after downtime) are stale news; a format without a time
    cannot tell, so its lines always count."""
    t = Triggers(DEFAULT, max_age=300, wall_clock=lambda: 10_000.0)
    r = rec(time=None if age is None else 10_000.0 - age)
    assert t.skip_reason(r) == reason


def test_a_failed_background_update_does_not_fan_out() -> None:
    """log_subrequest on: the failed fetch's STALE 500 line marks its client's STALE '-' line,
    which would otherwise read as a good background update (nginx-facts, issue 10)."""
    clock = Clock()
    t = Triggers(DEFAULT, clock=clock)

    def decide(r: Record) -> str | None:
        return t.after_purges(r, t.skip_reason(r))

    failed, client = rec(cache_status="STALE", upstream_status="500"), \
        rec(cache_status="STALE", upstream_status=None)
    assert [decide(failed), decide(client)] == ["origin_error", "origin_error"]
    assert decide(client) is None  # the next good update fans out again
    assert decide(rec(cache_status="STALE", upstream_status="502", target=b"/other")) \
        == "origin_error"
    clock.now += 10  # a mark is for the line written right after, not for later updates
    assert decide(rec(cache_status="STALE", upstream_status=None, target=b"/other")) is None


class _ReferenceWindow:
    """The dedup window as first written: looks at its front on every call."""

    def __init__(self, window: float, max_keys: int, clock: object) -> None:
        self.window, self.max_keys, self.clock = window, max_keys, clock
        self.seen: OrderedDict[object, float] = OrderedDict()

    def admit(self, key: object) -> bool:
        now = self.clock()  # type: ignore[operator]
        self._expire(now)
        if key in self.seen:
            return False
        self.seen[key] = now
        if len(self.seen) > self.max_keys:
            self.seen.popitem(last=False)
        return True

    def discard(self, key: object) -> bool:
        self._expire(self.clock())  # type: ignore[operator]
        return self.seen.pop(key, None) is not None

    def _expire(self, now: float) -> None:
        while self.seen:
            key, t = next(iter(self.seen.items()))
            if now - t < self.window:
                break
            del self.seen[key]


@settings(max_examples=300, deadline=None)
@given(window=st.sampled_from([0.0, 0.5, 1.0, 3.0]), max_keys=st.integers(0, 4),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 5),
                              st.sampled_from([0.0, 0.0, 0.2, 0.5, 1.0, 2.5, -0.7])),
                    max_size=60))
def test_window_decides_as_the_reference(window: float, max_keys: int,
                                         ops: list[tuple[bool, int, float]]) -> None:
    """Same answers and same keys after every admit/discard, also when the clock steps back
    (replay's line clock)."""
    now = [100.0]
    ours, ref = Window(window, max_keys, lambda: now[0]), \
        _ReferenceWindow(window, max_keys, lambda: now[0])
    for admit, key, step in ops:
        now[0] += step
        if admit:
            assert ours.admit(key) == ref.admit(key)
        else:
            assert ours.discard(key) == ref.discard(key)
        assert list(ours._seen.items()) == list(ref.seen.items())
        assert len(ours) == len(ref.seen)


def test_a_url_missed_again_is_uncacheable_until_a_stored_copy_shows() -> None:
    """NGINX logs MISS on every request for an answer it does not store (no-store, private,
    max-age=0, Set-Cookie); a stored copy answers HIT/EXPIRED/STALE/UPDATING instead."""
    clock = Clock()
    t = Triggers(DEFAULT, clock=clock)
    miss, other = rec(), rec(target=b"/other")
    assert [t.decide(miss) for _ in range(3)] == [None, "repeated_miss", "repeated_miss"]
    assert t.decide(other) is None  # its first MISS: nothing known yet
    clock.now += UNCACHEABLE_SECONDS - 1  # each MISS extends the mark
    assert t.decide(miss) == "repeated_miss"
    assert t.decide(rec(cache_status="EXPIRED")) is None  # a stored copy: cacheable now
    assert t.decide(miss) is None  # (evicted and fetched again: a change worth spreading)


def test_the_marks_are_forgotten_so_a_url_that_turns_cacheable_propagates_again() -> None:
    clock = Clock()
    t = Triggers(DEFAULT, clock=clock)
    assert [t.decide(rec()) for _ in range(2)] == [None, "repeated_miss"]
    clock.now += UNCACHEABLE_SECONDS + 1  # no MISS since: the mark and the MISS are gone
    assert t.decide(rec()) is None
    clock.now += UNCACHEABLE_SECONDS + 1
    assert t.decide(rec()) is None  # MISSes further apart than the memory: each one counts


def test_only_triggering_misses_are_remembered() -> None:
    t = Triggers(DEFAULT, clock=Clock())
    assert t.decide(rec(method="POST")) == "method"
    assert t.decide(rec(status=404)) == "status"
    assert t.decide(rec()) is None  # the POST and the 404 did not count as a MISS of it
