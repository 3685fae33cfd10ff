"""Every line and every trigger ends in exactly one counted place, checked on a real mix: a
daemon tailing a real file, one fast peer and one that never answers, every way out taken."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from lab.accounting import equations, samples_of, violations
from logwarden.config import load_config
from tests.agents import start_daemon
from tests.peers import RecordingPeer, silent_url

FMT = '$msec $host "$request" $status $upstream_cache_status "$http_user_agent"'


def line(target: str, status: str = "MISS", ua: str = "curl/8", age: float = 0.0) -> bytes:
    return f'{time.time() - age:.3f} www.example.com "GET {target} HTTP/1.1" 200 {status} ' \
           f'"{ua}"\n'.encode()


MIX = b"".join([
    *(line(f"/unique/{i}") for i in range(40)),  # 5 pass (burst 6, 1 kept), 35 rate-dropped
    line("/unique/0", "EXPIRED"),  # deduplicated
    line("/nostore"), line("/nostore"),  # rate-dropped; then MISSed again: uncacheable
    line("/skipme/1"),  # filtered by --skip
    line("/cr\\x0D\\x0Aevil"),  # unescapes to CR LF: refused on every peer
    line("/hit", "HIT"), line("/own", ua="logwarden/0.1.0"),  # ignored
    line("/old", age=3600),  # too old
    b"garbage\n", b"\xff\xfe not a line\n",  # malformed
    b"x" * 5000 + b"\n",  # too long (not in lines_total)
])


async def test_accounting_equations_hold_on_a_mix(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    peer = await RecordingPeer().start()
    with silent_url() as silent:
        config = load_config({
            "access_log": (str(log),), "log_format": FMT, "self": "http://127.0.0.1:1",
            "peer": ("http://127.0.0.1:1", peer.url, silent), "metrics_listen": "off",
            "poll_interval": 0.05, "positions": "off", "max_line_bytes": 1000,
            "max_refresh_rate": 0.001, "max_refresh_burst": 6, "skip": ("^/skipme/",),
            "timeout": 0.2, "retries": 0, "breaker_failures": 2, "queue_size": 3,
            "shutdown_timeout": 0.5,
        }, None, {})
        daemon, task = await start_daemon(config)
        with open(log, "ab") as fh:
            fh.write(MIX)
        value = daemon.metrics.registry.get_sample_value
        async with asyncio.timeout(5):
            while (value("logwarden_lines_total") or 0) < 50 or len(peer.heads) < 3:
                await asyncio.sleep(0.01)
        daemon.stopping.set()  # SIGTERM: the silent peer's queue is cut at the deadline
        assert await task == 0
    await peer.close()
    daemon = daemon
    samples = samples_of(daemon.metrics.registry)
    assert violations(samples) == [], equations(samples)
    value = daemon.metrics.registry.get_sample_value
    # Every way out was taken, so the equations above were not met by zeros.
    assert value("logwarden_lines_too_long_total") == 1
    assert value("logwarden_lines_malformed_total") == 2
    for reason in ("cache_status", "own_refresh", "too_old", "uncacheable"):
        assert value("logwarden_records_ignored_total", {"reason": reason}) >= 1, reason
    assert value("logwarden_triggers_deduplicated_total") == 1
    assert value("logwarden_storm_dropped_total", {"reason": "rate"}) == 36
    assert value("logwarden_storm_dropped_total", {"reason": "filtered"}) == 1
    assert value("logwarden_refresh_fanouts_total") == 6  # 5 admitted + 1 refused
    outcomes = {o: sum(value("logwarden_refreshes_total", {"peer": p, "outcome": o}) or 0
                       for p in daemon.config.targets)
                for o in ("ok", "refused", "timeout", "skipped", "dropped")}
    # 5 admitted in one batch meet queues of 3: 2 dropped per peer; the silent peer's 3 time
    # out, open its breaker (skipped) or are cut off at shutdown (dropped).
    assert (outcomes["ok"], outcomes["refused"]) == (3, 2), outcomes
    assert outcomes["timeout"] >= 1 and outcomes["dropped"] >= 4, outcomes
