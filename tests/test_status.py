"""What an operator sees of a running agent: gauges read at scrape time."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from logwarden.config import load_config
from logwarden.daemon import Daemon
from tests.agents import start_daemon
from tests.lines import FMT, line
from tests.peers import RecordingPeer


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


async def wait_for(condition: Any, what: str, timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


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
