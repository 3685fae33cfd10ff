"""The one admission path: every rule in its order, origin offload, and what each target is
told; the same Router that ``run``, the bus, ``replay`` and ``warm`` use."""

from __future__ import annotations

import logging

import pytest

from logwarden.config import REPLAY, load_config
from logwarden.decide.window import Window
from logwarden.model import Refresh
from logwarden.ops.metrics import Metrics
from logwarden.route.router import Recorder, RefusalLog, Router
from logwarden.route.storm import StormControl


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refresh(target: bytes = b"/a?b=1", scheme: str = "http",
            host: str = "www.example.com") -> Refresh:
    return Refresh(scheme, host, target, "MISS")


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_dedup_window_folds_repeats_of_one_url_within_it() -> None:
    clock, m = Clock(), Metrics()
    route = Router(Recorder(), m, dedup=Window(1.0, 100, clock)).route
    assert route(refresh()) is None
    assert route(refresh()) == "deduplicated"
    assert route(refresh(b"/a?b=2")) is None
    assert route(refresh(scheme="https")) is None  # NGINX keys the schemes apart
    clock.now += 0.999
    assert route(refresh()) == "deduplicated"
    clock.now += 0.002
    assert route(refresh()) is None
    assert value(m, "logwarden_triggers_deduplicated_total") == 2


def test_dedup_memory_is_bounded_and_a_zero_window_never_folds() -> None:
    clock = Clock()
    router = Router(Recorder(), Metrics(), dedup=Window(60, 100, clock))
    for i in range(1000):
        assert router.route(refresh(b"/%d" % i)) is None
    assert router.dedup is not None and len(router.dedup) == 100
    assert router.route(refresh(b"/999")) == "deduplicated"
    assert router.route(refresh(b"/0")) is None  # evicted, so admitted again
    zero = Router(Recorder(), Metrics(), dedup=Window(0, 100, clock))
    assert zero.route(refresh()) is None and zero.route(refresh()) is None


def test_rules_apply_in_order_and_each_refusal_is_counted_once() -> None:
    """dedup < no_listener < refused < too_long < filtered < rate: a refresh that breaks
    several rules is refused by the first, and spends no token."""
    clock, m = Clock(), Metrics()
    recorder = Recorder(["http://10.0.0.2:80"])
    router = Router(recorder, m, dedup=Window(3600, 100, clock),
                    storm=StormControl(rate=0.001, burst=1, max_target_bytes=12,
                                       skip=[r"^/skip"], clock=clock))
    long_raw = b"/caf\xc3\xa9/" + b"x" * 20
    assert [router.route(r) for r in (
        refresh(b"/ok"), refresh(b"/ok"),            # second: deduplicated
        refresh(long_raw, scheme="https"),           # no https peer: before refused
        refresh(long_raw + b" "),                    # a space: refused before too_long
        refresh(long_raw),                           # raw UTF-8 is sent, but too long
        refresh(b"/skip/1"),                         # filtered
        refresh(b"/other"),                          # the only token is spent: rate
    )] == [None, "deduplicated", "no_listener", "refused", "too_long", "filtered", "rate"]
    assert recorder.submitted == {"http://10.0.0.2:80": 1} and recorder.refused == 1
    assert {r: value(m, "logwarden_storm_dropped_total", reason=r)
            for r in ("no_listener", "too_long", "filtered", "rate")} == dict.fromkeys(
        ("no_listener", "too_long", "filtered", "rate"), 1.0)


def test_offload_names_this_node_only_for_its_scheme() -> None:
    sent: list[Refresh] = []
    router = Router(Recorder(on_submit=sent.append), Metrics(),
                    holder=("http", "10.0.0.1:80"))
    router.route(refresh(b"/h"))
    router.route(refresh(b"/s", scheme="https"))
    assert [(r.target, r.holder) for r in sent] == [(b"/h", "10.0.0.1:80"), (b"/s", None)]


@pytest.mark.parametrize(("peers", "dynamic", "https_ok"), [
    ((), False, True),                      # replay without peers: the log is the subject
    (("http://a:80",), False, False),
    (("http://a:80",), True, True),         # a peers file or DNS may bring an https peer
    (("http://a:80", "https://a:443"), False, True),
])
def test_recorder_listeners(peers: tuple[str, ...], dynamic: bool, https_ok: bool) -> None:
    assert Recorder(peers, dynamic=dynamic).has_listener("https") is https_ok


def test_from_config_builds_the_configured_admission() -> None:
    config = load_config({"log_format": "$host $request $upstream_cache_status",
                          "max_refresh_rate": 1, "max_refresh_burst": 2,
                          "max_target_bytes": 10, "only": ("^/a",), "dedup_window": 5.0},
                         needs=REPLAY)
    clock = Clock()
    route = Router.from_config(config, Recorder(), Metrics(), clock=clock).route
    assert [route(refresh(t)) for t in (b"/a1", b"/a1", b"/b", b"/a" + b"x" * 10, b"/a2",
                                        b"/a3")] == [
        None, "deduplicated", "filtered", "too_long", None, "rate"]
    clock.now += 1  # a token per second of the clock given; the dedup window spans it too
    assert [route(refresh(t)) for t in (b"/a3", b"/a4")] == ["deduplicated", None]


def test_refusals_are_logged_at_a_bounded_rate_with_reason_and_escaped_url(
        caplog: pytest.LogCaptureFixture) -> None:
    """One warning at once, then at most one per interval saying how many were refused
    since; the URL escaped as NGINX logs it, never a raw control byte."""
    clock, recorder = Clock(), Recorder()
    router = Router(recorder, Metrics(), refusal_log=RefusalLog(60, clock))
    caplog.set_level(logging.WARNING, "logwarden.route.router")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    assert router.route(refresh(b"/a\r\nX-Evil: 1")) == "refused"
    assert warnings() == [r"refused to refresh http://www.example.com/a\x0D\x0AX-Evil: 1: "
                          "control byte 0x0D in the target"]
    for i in range(5):
        clock.now += 10
        assert router.route(refresh(b"/b %d" % i)) == "refused"
        assert router.route(refresh(b"/caf\xc3\xa9")) is None  # admitted, never said
    assert len(warnings()) == 1 and recorder.refused == 6
    clock.now += 10.5
    router.route(refresh(b"/ok", host="evil\x1b[0m"))
    assert warnings()[1:] == [
        r"refused to refresh http://evil\x1B[0m/ok: the host is not printable ASCII without "
        r"spaces, / or \; 5 more refused in the last 60 s"]
    assert not any(c < " " and c != "\t" for c in caplog.text.replace("\n", ""))


def test_a_flood_of_first_copies_does_not_delay_a_change_of_a_stored_copy() -> None:
    """Unique MISS fan-outs at 5x the rate (new or uncacheable URLs) leave the bucket's reserve
    to the changes of stored copies: each goes out at once, not after the flood."""
    clock, m = Clock(), Metrics()
    storm = StormControl(rate=10, burst=20, max_target_bytes=100, clock=clock)
    route = Router(Recorder(), m, storm=storm).route
    flood = (Refresh("http", "h", b"/new/%d" % i, "MISS") for i in range(10_000))
    delays = []
    for second in range(20):  # 50 first copies a second, a change every second
        for _ in range(50):
            route(next(flood))
            clock.now += 1 / 50
        changed = Refresh("http", "h", b"/page/%d" % second, "STALE")
        asked = clock.now
        while route(changed) == "rate":
            clock.now += 0.01
        delays.append(clock.now - asked)
    assert max(delays) == 0  # the reserve was there every time
    first_copies = value(m, "logwarden_storm_dropped_total", reason="rate")
    assert first_copies > 0  # the flood itself was bounded
    # The reserve is whole tokens: a bucket of 3 keeps none, so a MISS may still go out.
    small = StormControl(rate=1, burst=3, max_target_bytes=100, clock=clock)
    assert [small.refusal(refresh(b"/m%d" % i)) for i in range(4)] == [None] * 3 + ["rate"]
