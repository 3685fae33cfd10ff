"""``logwarden replay``: what it prints is what the live agent decides on the same lines."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from lab import free_port, wait_until
from lab.agent import Agent
from logwarden.commands.replay import Replay
from logwarden.config import REPLAY, load_config
from tests.agents import LOG_FORMAT
from tests.lines import example_line

# Both decide with one Router. Its dedup window and token bucket run on arrival time live and
# on the lines' time in replay (equal for lines read live, not for a file read at once); so the
# window is longer than both runs, and the bucket holds 60 tokens and refills next to nothing
# in either: both admit the same first 60 fan-outs and drop the rest as ``rate``.
ADMISSION = ["--dedup-window", "3600", "--max-refresh-rate", "0.001",
             "--max-refresh-burst", "60", "--max-target-bytes", "200", "--skip", "^/p/3"]
STATUSES = ["HIT"] * 6 + ["MISS", "EXPIRED", "STALE", "UPDATING", "BYPASS", "REVALIDATED", "-"]


def generated_log(path: Path, lines: int, start: float, seed: int = 7) -> None:
    """Lines of the example format: repeated URLs, every status, own refreshes, POSTs, origin
    errors, https, raw UTF-8 targets and spaces (escaped as NGINX writes them), over-long
    targets, answers with no-store or a cookie, garbage; one line per millisecond from
    ``start``."""
    rnd = random.Random(seed)
    out = []
    for i in range(lines):
        if rnd.random() < 0.02:
            out.append(b"not a log line at all\n")
            continue
        status = rnd.choice(STATUSES)
        method = rnd.choice(["GET"] * 8 + ["HEAD", "POST"])
        upstream = rnd.choice(["200"] * 6 + ["-", "502", "304"])
        agent = rnd.choice(["curl/7.88.1"] * 9 + ["logwarden/0.1"])
        scheme, port = rnd.choice([("http", "80")] * 3 + [("https", "443")])
        target = rnd.choice([f"/p/{rnd.randrange(40)}?v={rnd.randrange(3)}"] * 18
                            + [f"/caf\\xC3\\xA9/{rnd.randrange(5)}", f"/a\\x20b/{rnd.randrange(5)}",
                               f"/long/{rnd.randrange(5)}/" + "x" * 300])
        caching = rnd.choice(["-\t-\t-\t-\t0"] * 6 + ["no-store\t-\t-\t-\t0",
                                                    "max-age=60\t-\t-\t-\t1"]) + "\t-\t-"
        out.append(("\t".join([f"{start + i / 1000:.3f}", scheme, "www.example.com", port,
                               method, target, "200", status, upstream, "0.001", "-", agent,
                               caching])
                    + "\n").encode())
    path.write_bytes(b"".join(out))


def test_replay_decides_and_admits_like_the_live_agent(tmp_path: Path) -> None:
    """One log through ``run`` and through ``replay``: the same refreshes in the same order,
    and the same refusals by every admission rule (dedup, no listener for https, a target
    with a space refused, too long, filtered, rate); raw UTF-8 targets are sent by both."""
    log = tmp_path / "access.log"
    generated_log(log, 3000, start=time.time())
    closed = f"http://127.0.0.12:{free_port('127.0.0.12')}"  # refreshes fail: not the subject
    agent = Agent(log, LOG_FORMAT, "http://127.0.0.11:80", [closed],
                  extra=["--from-start", "--log-level", "debug", "--retries", "0",
                         "--shutdown-timeout", "0", *ADMISSION],
                  stderr=tmp_path / "agent.log").start()
    try:
        wait_until(lambda: agent.value("logwarden_lines_total") == 3000, timeout=15,
                   what="the agent to read every line")
        samples = agent.samples()
    finally:
        assert agent.stop() == 0
    live = {
        "triggers": {dict(lbl)["cache_status"]: v for (name, lbl), v in samples.items()
                     if name == "logwarden_triggers_total" and v},
        "not_sent": {dict(lbl)["reason"]: v for (name, lbl), v in samples.items()
                     if name == "logwarden_storm_dropped_total" and v},
        "refused": samples[("logwarden_refreshes_total",
                            (("outcome", "refused"), ("peer", closed)))],
        "fanouts": samples[("logwarden_refresh_fanouts_total", ())],
        "uncacheable": {dict(lbl)["rule"]: v for (name, lbl), v in samples.items()
                        if name == "logwarden_uncacheable_total" and v},
    }
    decided = re.findall(r"DEBUG logwarden\.route\.router: (\w+ \S+)$",
                         (tmp_path / "agent.log").read_text(), re.M)

    out = subprocess.run(
        [sys.executable, "-m", "logwarden", "replay", str(log), "--json", "--log-format",
         LOG_FORMAT, "--peer", closed, *ADMISSION],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    *refreshes, last = [json.loads(line) for line in out.stdout.splitlines()]
    summary = last["summary"]
    assert [f"{r['cache_status']} {r['url']}" for r in refreshes] == decided
    assert len(decided) == 60  # the bucket's burst: the rest of the log is rate-limited
    assert any(r["url"].startswith("http://www.example.com/caf\\xC3\\xA9/") for r in refreshes)
    assert summary["triggers"] == live["triggers"]
    assert summary["deduplicated"] == samples[("logwarden_triggers_deduplicated_total", ())] \
        > 100
    assert summary["not_sent"] == {**live["not_sent"], "refused": live["refused"]}
    assert set(summary["not_sent"]) == {"no_listener", "refused", "too_long", "filtered",
                                        "rate"}
    assert summary["refreshes"] + live["refused"] == live["fanouts"]
    assert summary["malformed"] == samples[("logwarden_lines_malformed_total", ())] > 0
    assert summary["lines"] == 3000 and summary["refreshes"] == len(refreshes)
    assert summary["uncacheable"] == live["uncacheable"]
    assert set(live["uncacheable"]) == {"no_store", "set_cookie", "repeated_miss"}
    assert sum(t["fanouts"] for t in summary["top_urls"]) <= summary["refreshes"] \
        == sum(t["fanouts"] for t in summary["top_hosts"])  # one host
    assert summary["top_uncacheable"][0]["lines"] >= summary["top_uncacheable"][-1]["lines"]
    assert {t["rule"] for t in summary["top_uncacheable"]} <= set(live["uncacheable"])
    assert {r["methods"][0] for r in refreshes} == {"HEAD"}
    assert all(r["peers"] == [closed] for r in refreshes)


def test_dedup_and_rate_follow_the_logs_own_time(tmp_path: Path) -> None:
    """An hour of log read in milliseconds: the window and the bucket span log time."""
    log = tmp_path / "a.log"
    lines = []
    for i in range(10):  # the same URL EXPIRED every 0.5 s: a 1 s window keeps every 2nd
        lines.append(f"{1795334000 + i * 0.5:.3f}\thttp\th\t80\tGET\t/same\t200\tEXPIRED\t"
                     "200\t0.001\t-\tcurl\t-\t-\t-\t-\t0\t-\t-\n")
    log.write_text("".join(lines))
    config = load_config({"log_format": LOG_FORMAT}, needs=REPLAY)
    replay = Replay(config)
    with log.open("rb") as fh:
        assert len(list(replay.run(fh))) == 5
    assert replay.summary()["deduplicated"] == 5
    rated = load_config({"log_format": LOG_FORMAT, "dedup_window": 0.0, "max_refresh_rate": 1.0,
                         "max_refresh_burst": 1}, needs=REPLAY)
    replay = Replay(rated)
    with log.open("rb") as fh:
        assert len(list(replay.run(fh))) == 5  # one token per second of log
    assert replay.summary()["not_sent"] == {"rate": 5}


def test_replay_text_output_and_errors(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    at = 1795334000.0
    log.write_bytes(example_line("/x", msec=at) + example_line("/x", "HIT", msec=at)
                    + example_line("/api", msec=at, caching="private\t-\t-\t-\t0"))
    run = [sys.executable, "-m", "logwarden", "replay"]
    out = subprocess.run([*run, str(log), "--log-format", LOG_FORMAT, "--mode", "purge",
                          "--purge-then-refresh"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "MISS     PURGE+HEAD http://www.example.com/x -> the peers",
        "lines 3 (malformed 0, too long 0)",
        "ignored: cache_status 1, uncacheable 1",
        "triggers 1: MISS 1",
        "refreshes after dedup 1 (deduplicated 0; not sent: none)",
        "uncacheable (NGINX stored no copy; no refresh sent) by rule: private 1",
        "top URLs by fan-outs:",
        "         1  http://www.example.com/x",
        "top hosts by fan-outs:",
        "         1  www.example.com",
        "top uncacheable URLs (lines, rule):",
        "         1  http://www.example.com/api (private)"]
    missing = subprocess.run([*run, str(tmp_path / "nope.log"), "--log-format", LOG_FORMAT],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr == "logwarden: error: " + str(tmp_path / "nope.log") \
        + ": cannot be read: No such file or directory\n"
    no_format = subprocess.run([*run, str(log)], capture_output=True, text=True, timeout=30)
    assert no_format.returncode == 2 and "log_format" in no_format.stderr
