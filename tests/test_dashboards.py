"""examples/grafana-dashboard.json and examples/prometheus-rules.yml use only metrics a running
logwarden exports (a live scrape), and promtool accepts the rules, the dashboard's queries and
the scrape itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import wait_until
from lab.agent import Agent
from logwarden.ops.metrics import REFRESH_OUTCOMES
from tests.agents import LOG_FORMAT
from tests.lines import example_line

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = EXAMPLES / "prometheus-rules.yml"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (Debian: apt-get install prometheus)")
_SAMPLES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"), "untyped": ("",)}
# Made by Prometheus itself, not by logwarden: the scrape's own health.
_PROMETHEUS_SERIES = {"up"}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """/metrics of a running logwarden that has read a few lines, as Prometheus fetches it."""
    tmp = tmp_path_factory.mktemp("scrape")
    log = tmp / "access.log"
    log.write_bytes(b"".join(example_line(f"/{i}", status)
                             for i, status in enumerate(["MISS", "HIT", "EXPIRED"])) + b"junk\n")
    agent = Agent(log, LOG_FORMAT, "http://127.0.0.11:80", ["http://127.0.0.12:80"],
                  extra=["--from-start", "--dry-run"], stderr=tmp / "agent.log").start()
    try:
        wait_until(lambda: agent.value("logwarden_lines_total") == 4, what="the lines read")
        with urllib.request.urlopen(agent.base + "/metrics", timeout=5) as resp:
            return bytes(resp.read())
    finally:
        assert agent.stop() == 0


def exported(scrape: bytes) -> set[str]:
    """Every series name the scrape can have: by each family's TYPE, so a labelled metric
    with no series yet still counts."""
    names = set()
    for name, kind in re.findall(rb"^# TYPE (\S+) (\S+)$", scrape, re.M):
        names.update(name.decode() + suffix for suffix in _SAMPLES[kind.decode()])
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\blogwarden_[a-z0-9_]+\b", text))


def rule_texts() -> Iterator[str]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]
            yield from rule.get("annotations", {}).values()


def dashboard_queries() -> list[str]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]
    queries += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    return queries


def test_rules_and_dashboard_name_only_exported_metrics(scrape: bytes) -> None:
    names = exported(scrape)
    assert "logwarden_refreshes_total" in names and "logwarden_propagation_seconds_bucket" in names
    assert b'logwarden_triggers_total{cache_status="MISS"} 1.0' in scrape
    rules = referenced("\n".join(rule_texts()))
    dashboard = referenced("\n".join(dashboard_queries()))
    assert rules and dashboard
    assert rules - names == set()
    assert dashboard - names == set()
    # Outcomes named in a selector are outcomes logwarden counts.
    for text in [*rule_texts(), *dashboard_queries()]:
        for values in re.findall(r'outcome=~?"([^"]+)"', text):
            assert set(values.split("|")) <= set(REFRESH_OUTCOMES), values
    # Other series are Prometheus's own.
    exprs = "\n".join(r for r in rule_texts() if "{{" not in r)
    others = set(re.findall(r"\b([a-z_]+)\{", exprs)) - names
    assert others <= _PROMETHEUS_SERIES


def test_dashboard_covers_the_issue_list() -> None:
    """Triggers by status, refreshes by peer and outcome, propagation latency, lag, drops; the
    age of the last line, the process's memory, CPU and fds, and the versions running."""
    queries = "\n".join(dashboard_queries())
    for needle in ("by (cache_status) (rate(logwarden_triggers_total",
                   "by (peer, outcome) (rate(logwarden_refreshes_total",
                   "logwarden_propagation_seconds_bucket", "logwarden_file_lag_bytes",
                   'outcome="dropped"', "logwarden_syslog_kernel_drops_total",
                   "time() - max by (instance, source) (logwarden_last_line_timestamp_seconds",
                   "process_resident_memory_bytes", "rate(process_cpu_seconds_total",
                   "process_open_fds", "by (version, python) (logwarden_build_info"):
        assert needle in queries
    assert any("logwarden_last_line_timestamp_seconds" in text for text in rule_texts())
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


def test_scrape_has_build_info_and_process_metrics_and_no_created_series(scrape: bytes) -> None:
    text = scrape.decode()
    assert re.search(r'^logwarden_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total",
                 "process_start_time_seconds", "python_info"):
        assert re.search(rf"^{name}[ {{]", text, re.M), name
    assert "_created" not in text
    last = re.search(r'^logwarden_last_line_timestamp_seconds\{source="([^"]+)"\} (\S+)$', text,
                     re.M)
    assert last is not None and last.group(1).endswith("access.log")
    assert float(last.group(2)) > 1.6e9


@needs_promtool
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_accepts_the_dashboard_queries(tmp_path: Path) -> None:
    """Each panel query as a recording rule, Grafana's variables filled in: promtool parses
    the PromQL."""
    assert PROMTOOL is not None
    exprs = [q.replace("$__rate_interval", "5m").replace("$instance", ".*")
             for q in dashboard_queries() if not q.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_accepts_a_live_scrape(scrape: bytes) -> None:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout + out.stderr == b"", out.stdout + out.stderr


def _annotations(alert: str, labels: dict[str, str], value: str | None) -> dict[str, str]:
    """The alert's annotations with ``{{ $labels.x }}`` filled in, and ``{{ $value | … }}``
    with ``value`` as it renders (the cases below use no other template)."""
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == alert)
    filled = {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
              for k, v in rule["annotations"].items()}
    if value is None:
        return filled
    return {k: re.sub(r"\{\{ \$value \| \w+ \}\}", value, v) for k, v in filled.items()}


def _case(alert: str, at: str, firing: list[dict[str, str]]) -> dict[str, object]:
    """``firing``: each alert's labels, and as ``$value`` its value as the summary shows it."""
    alerts = [({k: v for k, v in f.items() if k != "$value"}, f.get("$value")) for f in firing]
    return {"eval_time": at, "alertname": alert, "exp_alerts": [
        {"exp_labels": labels, "exp_annotations": _annotations(alert, labels, value)}
        for labels, value in alerts]}


@needs_promtool
def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool test rules: a peer whose breaker opens, refreshes dropped on one node only,
    the origin answering 5xx; each fires after its `for:`, and not before."""
    assert PROMTOOL is not None
    peer = {"instance": "a", "peer": "http://10.0.0.2:80"}
    down = {**peer, "severity": "warning"}
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": 'logwarden_peer_up{instance="a", peer="http://10.0.0.2:80"}',
             "values": "1 1 0 0 0 0 0 0 0 0 0 0"},
            {"series": 'logwarden_refreshes_total{instance="a", peer="p", outcome="dropped"}',
             "values": "0+10x11"},
            {"series": 'logwarden_refreshes_total{instance="b", peer="p", outcome="dropped"}',
             "values": "0x11"},
            {"series": 'logwarden_stale_served_total{instance="b", host="www.example.com", '
                       'reason="http_500"}', "values": "0+5x11"},
            {"series": 'logwarden_origin_errors_total{instance="b", host="www.example.com"}',
             "values": "0+5x11"},
            # c reads lines until 2m, then none; d has read none since its start at 0; e reads
            # all along.
            {"series": 'logwarden_last_line_timestamp_seconds{instance="c", source="/l"}',
             "values": "0 60 120x18"},
            {"series": 'logwarden_last_line_timestamp_seconds{instance="d", source="/l"}',
             "values": "0x20"},
            {"series": 'logwarden_last_line_timestamp_seconds{instance="e", source="/l"}',
             "values": "0+60x20"},
            *({"series": f'process_start_time_seconds{{instance="{i}"}}', "values": "0x20"}
              for i in "cde"),
        ],
        "alert_rule_test": [
            _case("LogwardenPeerDown", "3m", []),
            _case("LogwardenPeerDown", "5m", [down]),
            _case("LogwardenRefreshesDropped", "3m", []),
            _case("LogwardenRefreshesDropped", "8m", [{"instance": "a", "severity": "warning"}]),
            _case("LogwardenOriginFailingBehindStaleCache", "3m", []),
            _case("LogwardenOriginFailingBehindStaleCache", "8m",
                  [{"host": "www.example.com", "severity": "warning"}]),
            _case("LogwardenRefreshErrors", "8m", []),
            # d: quiet over 10 minutes from 10m, for 5 minutes at 15m; c: from 12m, at 17m.
            _case("LogwardenNoLines", "14m", []),
            _case("LogwardenNoLines", "16m", [{"instance": "d", "severity": "warning",
                                               "$value": "16m 0s"}]),
            _case("LogwardenNoLines", "18m", [
                {"instance": "c", "severity": "warning", "$value": "16m 0s"},
                {"instance": "d", "severity": "warning", "$value": "18m 0s"}]),
        ],
    }]}
    path = tmp_path / "alerts-test.yml"
    path.write_text(yaml.safe_dump(tests))
    out = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
