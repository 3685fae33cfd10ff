"""What an operator sees of a running agent: ``/status`` (JSON) and ``/`` (its page) per peer
and per source, ``degraded`` when no peer can be refreshed or no line came for too long, while
``/healthz`` stays a liveness probe; gauges read at scrape time."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from logwarden.config import load_config
from logwarden.daemon import Daemon
from tests.agents import start_daemon
from tests.lines import FMT, line
from tests.peers import RecordingPeer, dead_url


def config(tmp_path: Path, peers: list[str], **extra: Any) -> Any:
    log = tmp_path / "access.log"
    log.touch()
    return load_config({
        "access_log": (str(log),), "log_format": FMT, "peer": tuple(peers),
        "metrics_listen": "127.0.0.1:0", "poll_interval": 0.05, "positions": "off",
        "retries": 0, "breaker_failures": 1, "breaker_cooldown": 60.0, **extra}, None, {})


def get(daemon: Daemon, path: str) -> tuple[int, str, bytes]:
    assert daemon.metrics_address is not None
    host, port = daemon.metrics_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def status(daemon: Daemon) -> dict[str, Any]:
    code, ctype, body = await asyncio.to_thread(get, daemon, "/status")
    assert (code, ctype) == (200, "application/json")
    result: dict[str, Any] = json.loads(body)
    return result


async def wait_for(condition: Any, what: str, timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


async def test_status_shows_a_dead_and_a_live_peer_and_each_source(tmp_path: Path) -> None:
    live, dead = await RecordingPeer().start(), dead_url()
    cfg = config(tmp_path, [live.url, dead])
    daemon, task = await start_daemon(cfg)
    before = await status(daemon)
    assert [s["last_line"] for s in before["sources"]] == [None]
    with open(cfg.access_log[0], "ab") as fh:
        fh.write(line("/one") + line("/two", "HIT"))
    peers = {p.url: p for p in daemon.dispatcher.peers}
    await wait_for(lambda: peers[live.url].last_ok and peers[dead].breaker.is_open, "answers")
    doc = await status(daemon)
    code, _, health = await asyncio.to_thread(get, daemon, "/healthz")
    page = await asyncio.to_thread(get, daemon, "/")
    daemon.stopping.set()
    assert await task == 0
    await live.close()

    assert doc["status"] == "ok" and doc["degraded"] == []
    by_url = {p["url"]: p for p in doc["peers"]}
    assert by_url[live.url]["breaker"] == "closed"
    assert by_url[live.url]["last_outcome"] == "ok"
    assert 0 <= by_url[live.url]["last_ok_age_seconds"] < 5
    assert by_url[dead]["breaker"] == "open"
    assert by_url[dead]["last_outcome"] == "connect_error"
    assert by_url[dead]["last_ok"] is None
    assert all(p["queue"] == 0 and p["in_flight"] == 0 for p in doc["peers"])
    [source] = doc["sources"]
    size = Path(cfg.access_log[0]).stat().st_size
    assert (source["name"], source["kind"], source["state"]) == (cfg.access_log[0], "file",
                                                                 "tailing")
    assert source["files"] == [{"path": cfg.access_log[0], "offset": size, "lag_bytes": 0,
                                "rotated": False}]
    assert 0 <= source["last_line_age_seconds"] < 5
    assert doc["instance"] == cfg.agent_name and doc["bus"] is None
    assert doc["queues"] == {"lines": 0, "refreshes": 0}
    assert code == 200 and json.loads(health)["status"] == "ok"  # liveness only
    assert page[:2] == (200, "text/html; charset=utf-8")
    html = page[2].decode()
    for needle in ('href="/status"', 'href="/metrics"', live.url, dead, "connect_error",
                   "closed", "open", cfg.access_log[0]):
        assert needle in html


async def test_all_peers_dead_is_degraded_but_alive(tmp_path: Path) -> None:
    dead = [dead_url(), dead_url()]
    daemon, task = await start_daemon(config(tmp_path, dead))
    assert (await status(daemon))["status"] == "ok"  # nothing failed yet
    with open(daemon.config.access_log[0], "ab") as fh:
        fh.write(line("/x"))
    await wait_for(lambda: not daemon.dispatcher.refreshable, "every breaker open")
    doc = await status(daemon)
    code, _, health = await asyncio.to_thread(get, daemon, "/healthz")
    _, _, page = await asyncio.to_thread(get, daemon, "/")
    daemon.stopping.set()
    assert await task == 0
    assert doc["status"] == "degraded"
    assert doc["degraded"] == ["no peer can be refreshed: every peer's breaker is open"]
    assert [p["breaker"] for p in doc["peers"]] == ["open", "open"]
    assert code == 200 and json.loads(health)["status"] == "ok"
    assert b"degraded" in page and b"every peer&#x27;s breaker is open" in page


async def test_no_line_for_max_quiet_is_degraded(tmp_path: Path) -> None:
    peer = await RecordingPeer().start()
    daemon, task = await start_daemon(config(tmp_path, [peer.url], max_quiet=0.3))
    try:
        assert (await status(daemon))["status"] == "ok"
        await asyncio.sleep(0.4)
        quiet = await status(daemon)
        with open(daemon.config.access_log[0], "ab") as fh:
            fh.write(line("/wakes-it-up", "HIT"))
        await wait_for(lambda: daemon.sources[0].last_line_at, "the line read")
        woken = await status(daemon)
    finally:
        daemon.stopping.set()
        assert await task == 0
        await peer.close()
    assert quiet["status"] == "degraded"
    [reason] = quiet["degraded"]
    assert reason.startswith("no line read for ") and reason.endswith("(max_quiet 0.3 s)")
    assert woken["status"] == "ok"


async def test_gauges_are_read_at_scrape_time(tmp_path: Path) -> None:
    """The refresh queue after a burst reads 0 once it is drained, without another line; the
    last line's time follows the source."""
    peer = await RecordingPeer(delay=0.02).start()
    daemon, task = await start_daemon(config(tmp_path, [peer.url], peer_concurrency=1))
    value = daemon.metrics.registry.get_sample_value
    depth = {"queue": "refreshes"}
    source = {"source": daemon.config.access_log[0]}
    try:
        assert value("logwarden_last_line_timestamp_seconds", source) == 0
        with open(daemon.config.access_log[0], "ab") as fh:
            fh.write(b"".join(line(f"/burst/{i}") for i in range(40)))  # one batch
        await wait_for(lambda: (value("logwarden_queue_depth", depth) or 0) > 10, "a queue")
        written = time.time()
        await wait_for(lambda: len(peer.heads) == 40, "every refresh answered")
        await wait_for(lambda: daemon.dispatcher.peers[0]._busy == 0, "the last answer")
        idle = value("logwarden_queue_depth", depth)
        last_line = value("logwarden_last_line_timestamp_seconds", source)
        _, _, scrape = await asyncio.to_thread(get, daemon, "/metrics")
    finally:
        daemon.stopping.set()
        assert await task == 0
        await peer.close()
    assert idle == 0
    assert b'logwarden_queue_depth{queue="refreshes"} 0.0' in scrape
    assert last_line is not None and written - 5 < last_line <= written
