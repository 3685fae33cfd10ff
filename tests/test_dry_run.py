"""``--dry-run``: every line is read, decided and counted as usual, and no request is sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from logwarden.config import load_config
from tests.agents import start_daemon
from tests.lines import FMT, line
from tests.peers import RecordingPeer


async def test_dry_run_decides_and_sends_nothing(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    peer = await RecordingPeer().start()
    config = load_config({
        "access_log": (str(log),), "log_format": FMT, "peer": (peer.url,),
        "dry_run": True, "metrics_listen": "off", "poll_interval": 0.05,
        "positions": "off",
    }, None, {})
    daemon, task = await start_daemon(config)
    with open(log, "ab") as fh:
        fh.write(line("/a", "MISS") + line("/b", "EXPIRED") + line("/c", "HIT"))
    value = daemon.metrics.registry.get_sample_value
    async with asyncio.timeout(5):
        while (value("logwarden_triggers_total", {"cache_status": "EXPIRED"}) or 0) < 1:
            await asyncio.sleep(0.01)
    daemon.stopping.set()
    assert await task == 0
    await peer.close()
    daemon, peer = daemon, peer
    value = daemon.metrics.registry.get_sample_value
    assert value("logwarden_triggers_total", {"cache_status": "MISS"}) == 1
    assert value("logwarden_records_ignored_total", {"reason": "cache_status"}) == 1
    assert peer.heads == []
