"""The wired pipeline on a real file and real loopback peers, and shutdown as operators see it."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lab import free_port
from logwarden.config import load_config
from tests.agents import start_daemon
from tests.lines import FMT, line
from tests.peers import RecordingPeer


async def test_pipeline_counts_every_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")

    peer = await RecordingPeer().start()
    config = load_config({
        "access_log": (str(log),), "log_format": FMT, "self": "http://127.0.0.1:1",
        "peer": ("http://127.0.0.1:1", peer.url), "metrics_listen": "127.0.0.1:0",
        "poll_interval": 0.05, "positions": str(tmp_path / "positions.json"),
    }, None, {})
    daemon, task = await start_daemon(config)
    with open(log, "ab") as fh:
        fh.write(line("/a?x=1") + line("/a?x=1", "EXPIRED")  # second one: deduplicated
                 + line("/hit", "HIT") + b"garbage\n"
                 + line("/own", "BYPASS", ua="logwarden/0.1.0")
                 + line("/err", "EXPIRED", code=502) + line("/b%31", "STALE")
                 + b"x" * (1 << 20) + b"\n"  # over --max-line-bytes: skipped, counted
                 + line("/u").replace(b"curl/8", b"curl/\xff\xfe")  # not UTF-8: fine
                 + b"\xff\x80\xc3(\n")  # not UTF-8 and not the format: malformed
    async with asyncio.timeout(5):
        while len(peer.heads) < 3:
            await asyncio.sleep(0.01)
    assert daemon.metrics_address is not None
    health = await asyncio.to_thread(_get_json, daemon.metrics_address, "/healthz")
    daemon.stopping.set()  # what SIGTERM does
    assert await task == 0
    await peer.close()
    daemon, peer, health = daemon, peer, health
    assert sorted(peer.request_lines()) == [
        b"HEAD /a?x=1 HTTP/1.1", b"HEAD /b%31 HTTP/1.1", b"HEAD /u HTTP/1.1"]
    value = daemon.metrics.registry.get_sample_value
    assert value("logwarden_lines_total") == 9
    assert value("logwarden_lines_too_long_total") == 1
    assert value("logwarden_lines_malformed_total") == 2
    assert value("logwarden_triggers_total", {"cache_status": "MISS"}) == 2
    assert value("logwarden_triggers_total", {"cache_status": "EXPIRED"}) == 1
    assert value("logwarden_triggers_deduplicated_total") == 1
    assert value("logwarden_refresh_fanouts_total") == 3
    assert value("logwarden_records_ignored_total", {"reason": "cache_status"}) == 2  # HIT, BYPASS
    assert value("logwarden_records_ignored_total", {"reason": "status"}) == 1
    assert value("logwarden_refreshes_total", {"peer": peer.url, "outcome": "ok"}) == 3
    assert health["status"] == "ok"
    assert health["sources"] == {str(log): "tailing"}
    [saved] = json.loads((tmp_path / "positions.json").read_text())["files"]
    assert (saved["path"], saved["offset"]) == (str(log), log.stat().st_size)


def _get_json(address: tuple[str, int], path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def test_sigterm_cuts_stuck_refreshes_at_the_deadline_and_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        peer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        metrics = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "logwarden", "run", "--access-log", str(log),
             "--log-format", FMT, "--peer", peer, "--timeout", "30",
             "--shutdown-timeout", "1", "--metrics-listen", metrics, "--peer-concurrency", "2",
             "--positions", str(tmp_path / "positions.json")],
            stderr=subprocess.PIPE, text=True)
        try:
            _wait_healthy(metrics, proc)
            with open(log, "ab") as fh:
                fh.writelines(line(f"/slow{i}") for i in range(10))
            time.sleep(0.5)  # two requests hang at the silent peer, eight wait in its queue
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            took = time.monotonic() - started
        finally:
            proc.kill()
            stderr = proc.communicate()[1]
    assert code == 0, stderr
    assert took < 1 + 1.5, took
    assert "10 refresh requests cut off" in stderr


def _wait_healthy(metrics: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "logwarden exited early"
        try:
            with urllib.request.urlopen(f"http://{metrics}/healthz", timeout=1) as resp:
                if json.loads(resp.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("logwarden did not become healthy")


async def test_sighup_reads_the_refresh_header_file_again(tmp_path: Path) -> None:
    """A good new file: refreshes carry its header from then on. A broken one: an error, and
    the header in use stays."""
    log, header = tmp_path / "access.log", tmp_path / "refresh-header"
    log.write_bytes(b"")
    header.write_text("X-Refresh: first-secret\n")
    peer = await RecordingPeer().start()
    config = load_config({
        "access_log": (str(log),), "log_format": FMT, "peer": (peer.url,),
        "refresh_header_file": str(header), "metrics_listen": "off", "poll_interval": 0.05,
        "positions": "off"}, None, {})
    daemon, task = await start_daemon(config)

    async def refresh(target: str) -> bytes:
        with open(log, "ab") as fh:
            fh.write(line(target))
        async with asyncio.timeout(5):
            while not any(h.startswith(f"HEAD {target} ".encode()) for h in peer.heads):
                await asyncio.sleep(0.01)
        return peer.headers(len(peer.heads) - 1)[b"x-refresh"]

    try:
        assert await refresh("/1") == b"first-secret"
        header.write_text("X-Refresh second-secret-without-colon\n")
        daemon._on_hangup()  # what SIGHUP calls
        assert await refresh("/2") == b"first-secret"
        header.write_text("X-Refresh: second-secret\n")
        daemon._on_hangup()
        assert await refresh("/3") == b"second-secret"
        assert daemon.config.refresh_header == "X-Refresh: second-secret"
    finally:
        daemon.stopping.set()
        assert await task == 0
        await peer.close()
