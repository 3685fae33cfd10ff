"""Origin failures behind a stale cache are counted by host, with bounded labels (issue 10)."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import pytest
import yaml

from lab import EXAMPLE_CONFIG, Cluster, Origin, find_nginx, wait_until
from lab.accounting import by_label, samples_of
from lab.agent import Agent, log_format_from_conf
from lab.origin import CLOSE
from logwarden.config import load_config
from logwarden.decide.origin import OTHER, HostLabels, OriginWatch, http_date, stale_reason
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat
from tests.agents import LOG_FORMAT, start_daemon
from tests.lines import example_line

EXTRA_FIELDS = "\\t$upstream_header_time\\t$upstream_http_date"
"""What the README tells operators to append to the example format."""


line = functools.partial(example_line, cache="STALE", upstream="500", msec=1795438605.5)
"""A stale copy served for an origin 500, unless the keywords say otherwise."""


@pytest.mark.parametrize(("final", "header_time", "reason"), [
    ("500", None, "http_500"), ("502", None, "http_502"), ("504", None, "http_504"),
    ("502", b"-", "error"), ("502", b"-, -", "error"), ("504", b"-", "timeout"),
    ("500", b"0.001", "http_500"), ("502", b"0.000, 0.002", "http_502"),
    ("404", None, "http_404"), ("599", None, "http_other"),
])
def test_stale_reason_names_the_use_stale_condition(final: str, header_time: bytes | None,
                                                    reason: str) -> None:
    assert stale_reason(final, header_time) == reason


def test_http_date() -> None:
    assert http_date(b"Mon, 23 Nov 2026 12:56:43 GMT") == 1795438603.0
    assert http_date(b"yesterday") is None


def watch_of(fmt: str, host_labels: int = 20) -> tuple[OriginWatch, Metrics]:
    metrics = Metrics()
    return OriginWatch(metrics, LogFormat.compile(fmt), default_host=None,
                       host_labels=host_labels), metrics


def note_all(watch: OriginWatch, fmt: str, lines: list[bytes]) -> None:
    parse = LogFormat.compile(fmt).parse
    for raw in lines:
        record = parse(raw)
        assert record is not None, raw
        watch.note(record)
    watch.flush()


def test_example_format_counts_failures_by_host_and_reason() -> None:
    watch, metrics = watch_of(LOG_FORMAT)
    note_all(watch, LOG_FORMAT, [
        line(), line(upstream="502, 502"), line(cache="MISS", upstream="502"),
        line(host="static.example.com", cache="BYPASS", upstream="503"),
        line(cache="STALE", upstream="-"),  # a background update, not a failure
        line(cache="STALE", upstream="200"),  # not a use_stale condition: not counted
        line(cache="EXPIRED", upstream="502, 200"),  # the retry worked
        line(cache="STALE", upstream="404"),  # use_stale http_404: stale, not an origin 5xx
    ])
    value = metrics.registry.get_sample_value
    assert value("logwarden_stale_served_total",
                 {"host": "www.example.com", "reason": "http_500"}) == 1
    assert value("logwarden_stale_served_total",
                 {"host": "www.example.com", "reason": "http_502"}) == 1
    assert value("logwarden_stale_served_total",
                 {"host": "www.example.com", "reason": "http_404"}) == 1
    assert value("logwarden_origin_errors_total", {"host": "www.example.com"}) == 3
    assert value("logwarden_origin_errors_total", {"host": "static.example.com"}) == 1
    assert value("logwarden_stale_age_seconds_count") is None or \
        value("logwarden_stale_age_seconds_count") == 0  # no $upstream_http_date


def test_header_time_and_date_give_error_timeout_and_age() -> None:
    last = "$upstream_http_last_modified"
    fmt = LOG_FORMAT.replace(f"{last}'", f"{last}{EXTRA_FIELDS}'")
    date = "\tMon, 23 Nov 2026 12:56:43 GMT"
    watch, metrics = watch_of(fmt)
    note_all(watch, fmt, [
        line(upstream="502", extra="\t-" + date),  # nobody answered: refused, reset
        line(upstream="504", extra="\t-" + date, msec=1795438663.5),  # a timeout, 60 s later
        line(upstream="500", extra="\t0.001" + date),
        line(upstream="500", extra="\t0.001\t-"),  # no Date stored: no age
    ])
    value = metrics.registry.get_sample_value
    for reason, n in (("error", 1), ("timeout", 1), ("http_500", 2)):
        assert value("logwarden_stale_served_total",
                     {"host": "www.example.com", "reason": reason}) == n
    assert value("logwarden_stale_age_seconds_count") == 3
    assert value("logwarden_stale_age_seconds_sum") == pytest.approx(2.5 + 60.5 + 2.5)
    assert value("logwarden_stale_age_seconds_bucket", {"le": "10.0"}) == 2


def test_host_labels_stay_bounded_and_follow_volume() -> None:
    evicted: list[str] = []
    now = [0.0]
    labels = HostLabels(3, evicted.append, track=100, half_life=60, clock=lambda: now[0])
    assert [labels.label(h) for h in ("a", "b", "c", "d")] == ["a", "b", "c", OTHER]
    assert labels.label("b", 10) == "b"
    assert [labels.label(f"h{i}.example") for i in range(10_000)] == [OTHER] * 10_000
    assert len(labels._tracked) <= 100  # a flood costs bounded memory
    assert labels.label("busy", 2) == OTHER  # 2 is not more than twice a's 1
    assert labels.label("busy", 1) == "busy"  # 3 is: it takes the weakest label
    assert evicted in (["a"], ["c"])
    assert len(labels.labelled) == 3
    assert labels.label("bad host\n") == OTHER  # not a valid Host: never a label
    now[0] = 61.0  # halved: old volume fades
    labels.label("b")
    assert labels.labelled["b"] == pytest.approx(5.5 + 1)


async def test_cardinality_stays_bounded_with_10000_distinct_hosts(tmp_path: Path) -> None:
    """The processor end to end: every STALE-with-500 line counted, under at most N+1 labels."""
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    hosts = [f"h{i}.example.com" for i in range(10_000)]
    lines = [line(host=h) for h in hosts] + [line(host="busy.example.com")] * 50
    config = load_config({
        "access_log": (str(log),), "log_format": LOG_FORMAT, "dry_run": True,
        "self": "http://127.0.0.1:1", "peer": ("http://127.0.0.1:1", "http://127.0.0.1:2"),
        "metrics_listen": "127.0.0.1:0", "poll_interval": 0.05, "positions": "off",
        "origin_host_labels": 5,
    }, None, {})
    daemon, task = await start_daemon(config)
    log.write_bytes(b"".join(lines))
    value = daemon.metrics.registry.get_sample_value
    async with asyncio.timeout(10):
        while value("logwarden_records_ignored_total", {"reason": "origin_error"}) != len(lines):
            await asyncio.sleep(0.02)
    daemon.stopping.set()
    assert await task == 0
    samples = samples_of(daemon.metrics.registry)
    for family in ("logwarden_stale_served_total", "logwarden_origin_errors_total"):
        labels = set(by_label(samples, family, "host"))
        assert len(labels) <= 6 and OTHER in labels and "busy.example.com" in labels, labels
    assert value("logwarden_origin_errors_total", {"host": "busy.example.com"}) == 50
    assert value("logwarden_origin_errors_total", {"host": OTHER}) >= 10_000 - 5


# ---------------------------------------------------------------------------------------------
# real NGINX: the example config, the format with the optional fields


@pytest.mark.nginx
def test_stale_pages_served_while_the_origin_fails_are_counted(
    origin: Origin, tmp_path: Path,
) -> None:
    if find_nginx() is None:
        pytest.skip("nginx not found")
    template = EXAMPLE_CONFIG.read_text()
    assert template.count("$upstream_http_last_modified';") == 1
    last = "$upstream_http_last_modified"
    template = template.replace(f"{last}';", f"{last}{EXTRA_FIELDS}';")
    (tmp_path / "nginx.conf").write_text(template)
    with Cluster(tmp_path / "c", nodes=1, origin=origin,
                 template_path=tmp_path / "nginx.conf") as cluster:
        node = cluster[0]
        targets = {"http_500": "/of/a?ma=1", "error": "/of/b?ma=1", "close": "/of/c?ma=1"}
        for target in targets.values():
            assert node.get(target).headers["X-Cache-Status"] == "MISS"
        agent = Agent(node.access_log, log_format_from_conf(template), node.url,
                      [node.url, "http://127.0.0.1:9"], extra=["--dry-run"],
                      stderr=tmp_path / "agent.log").start()
        try:
            time.sleep(2.1)  # validity is whole seconds: surely expired after 2 s (nginx-facts)

            def served(reason: str) -> float:
                return agent.value("logwarden_stale_served_total", host="www.example.com",
                                   reason=reason)

            # The client has its stale copy at once; the background fetch fails after it.
            for fail, target, reason, count in (
                    (lambda: origin.fail(500), targets["http_500"], "http_500", 1),
                    (lambda: origin.fail(CLOSE), targets["close"], "error", 1),  # reset
                    (origin.stop, targets["error"], "error", 2)):  # a closed port: refused
                fail()
                response = node.get(target)
                assert response.status == 200  # users see nothing wrong
                assert response.headers["X-Cache-Status"] == "STALE"
                assert response.body.startswith(b"version=1 ")
                wait_until(lambda reason=reason, count=count: served(reason) == count,
                           timeout=5, what=f"stale_served{{reason={reason}}} at {count}")
            assert agent.value("logwarden_origin_errors_total", host="www.example.com") == 3
            # Each client line (STALE, no upstream status) follows its failed fetch's line:
            # neither fans out, else every peer's refresh would only meet the failing origin.
            wait_until(lambda: agent.value("logwarden_records_ignored_total",
                                           reason="origin_error") == 6, timeout=5,
                       what="both lines of each failed update ignored")
            assert agent.total("logwarden_triggers_total") == 0
            assert agent.value("logwarden_stale_age_seconds_count") == 3
            assert 3 * 2.0 <= agent.value("logwarden_stale_age_seconds_sum") <= 3 * 6.0
        finally:
            assert agent.stop() == 0


def test_example_alert_rule_watches_these_metrics() -> None:
    """promtool and the metric names: tests/test_dashboards.py."""
    rules_file = Path(__file__).parent.parent / "examples" / "prometheus-rules.yml"
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load(rules_file.read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    expr = rules["LogwardenOriginFailingBehindStaleCache"]
    assert "logwarden_stale_served_total" in expr and "logwarden_origin_errors_total" in expr
    assert "by (host)" in expr
