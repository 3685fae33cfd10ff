"""The tailer against a real NGINX under continuous load: rotations by rename + reopen and by
copytruncate, and a logwarden killed with SIGKILL and restarted on its positions file.

Lines are told apart by NGINX's own ``$request_id``; what NGINX wrote is read back from every
file it wrote to (the live log, the rotated ones, the copies)."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Cluster, find_nginx, free_port, wait_until
from lab.agent import Agent
from lab.cluster import current_user
from logwarden.ops.metrics import Metrics
from logwarden.sources import LineQueue
from logwarden.sources.file import FileSource
from tests.agents import LOG_FORMAT

pytestmark = pytest.mark.nginx

RENAMES = 20
COPYTRUNCATES = 5


class Client(threading.Thread):
    """GETs ``/r/<n>`` in a loop on one keep-alive connection; ``done`` counts answers."""

    def __init__(self, address: str, port: int, prefix: str = "/r/") -> None:
        super().__init__(daemon=True)
        self.address, self.port, self.prefix = address, port, prefix
        self.done = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=5)
        try:
            while not self.halt.is_set():
                conn.request("GET", f"{self.prefix}{self.done}?ma=60",
                             headers={"Host": "www.example.com"})
                conn.getresponse().read()
                self.done += 1
        finally:
            conn.close()

    def __enter__(self) -> Client:
        self.start()
        wait_until(lambda: self.done > 0, 5, what="the client's first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(10)


class PlainNginx:
    """NGINX answering 204 to everything, logging ``$request_id $request_uri``."""

    def __init__(self, prefix: Path) -> None:
        nginx = find_nginx()
        if nginx is None:
            pytest.skip("nginx not found (Debian: make system-deps)")
        self.prefix, self.port = prefix, free_port("127.0.0.1")
        self.log = prefix / "logs" / "access.log"
        (prefix / "logs").mkdir(parents=True)
        temp = "".join(f"  {k}_temp_path {prefix}/{k};\n"
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(
            f"user {current_user()};\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/logs/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n{temp}  log_format rid '$request_id $request_uri';\n"
            f"  access_log {self.log} rid;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; location / {{ return 204; }} }}\n}}\n")
        self.proc = subprocess.Popen(
            [nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def reopen(self) -> None:
        os.kill(self.proc.pid, signal.SIGUSR1)
        wait_until(self.log.exists, 5, what="NGINX to reopen its log")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def plain_nginx(tmp_path: Path) -> Iterator[PlainNginx]:
    server = PlainNginx(tmp_path / "nginx")
    try:
        wait_until(lambda: server.log.exists() and _accepts(server.port), 10,
                   what="NGINX to start")
        yield server
    finally:
        server.stop()


def _accepts(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.connect()
    except OSError:
        return False
    finally:
        conn.close()
    return True


async def _answers(client: Client, n: int) -> None:
    """Until the client has had ``n`` more answers."""
    target = client.done + n
    async with asyncio.timeout(30):
        while client.done < target:
            await asyncio.sleep(0.005)


def _ids(lines: list[bytes]) -> list[bytes]:
    return [line.split(b" ", 1)[0] for line in lines]


def _file_ids(path: Path) -> list[bytes]:
    return _ids(path.read_bytes().splitlines())


def test_rename_and_copytruncate_under_load(plain_nginx: PlainNginx) -> None:
    """20 rename + reopen rotations lose and repeat nothing. Each of 5 copytruncates loses at
    most the lines not yet read when the copy started plus those written until the truncate
    finished: the copy is not tailed and the cut removes them from the live file."""
    log = plain_nginx.log
    metrics, emitted = Metrics(), []
    bounds: list[int] = []  # per copytruncate
    rotated: list[Path] = []
    copies: list[Path] = []

    async def rotate(client: Client, source: FileSource) -> None:
        for i in range(RENAMES):
            await _answers(client, 20)  # every rotation happens under load
            rotated.append(log.with_name(f"access.log.{i}"))
            os.rename(log, rotated[-1])
            plain_nginx.reopen()
        for i in range(COPYTRUNCATES):
            await _answers(client, 50)
            copies.append(log.with_name(f"copy.{i}"))
            before = client.done
            with open(log, "rb") as fh:
                fh.seek(source.current[str(log)].offset)
                unread = fh.read().count(b"\n")
            shutil.copyfile(log, copies[-1])
            os.truncate(log, 0)
            bounds.append(unread + client.done - before + 1)  # +1: logged after its answer

    async def main() -> None:
        queue: LineQueue = asyncio.Queue(8)
        source = FileSource(log, queue, metrics, from_start=True, poll_interval=0.05,
                            rotate_wait=0.3)
        task = asyncio.create_task(source.run())

        async def collect() -> None:
            while (batch := await queue.get()) is not None:
                emitted.extend(_ids(batch))

        collector = asyncio.create_task(collect())
        with Client("127.0.0.1", plain_nginx.port) as client:
            await rotate(client, source)
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.6)  # every rotated file quiet past rotate_wait
        source.stop()
        await task
        await queue.put(None)
        await collector
        nonlocal answered
        answered = client.done

    answered = 0
    asyncio.run(main())

    assert len(emitted) == len(set(emitted)), "a line was emitted twice"
    renamed = [i for path in rotated for i in _file_ids(path)]
    assert set(renamed) <= set(emitted), f"{len(set(renamed) - set(emitted))} lines lost"
    assert metrics.file_rotations._value.get() == RENAMES
    assert metrics.file_truncations._value.get() == COPYTRUNCATES

    # One line per answered request: what is not emitted was lost to a copytruncate.
    lost = answered - len(emitted)
    assert 0 <= lost <= sum(bounds), (lost, bounds)
    print(f"\n{answered} lines; {RENAMES} renames: 0 lost, 0 repeated; {COPYTRUNCATES} "
          f"copytruncates: {lost} lost, bound {sum(bounds)} ({bounds})")


ROUTE = re.compile(r" DEBUG logwarden\.route\.router: MISS http://www\.example\.com(/kill/\S+)"
                   r"(?: \(not sent: \w+\))?$")


@pytest.mark.parametrize("interval", ["0.2", "30"])  # 30: killed before any periodic save
def test_sigkill_and_restart_loses_nothing(cluster: Cluster, tmp_path: Path,
                                           interval: str) -> None:
    """After SIGKILL mid-stream, a restart on the same positions file handles every line; the
    lines handled twice all lie after the last saved checkpoint."""
    node = cluster.nodes[0]
    stderr = tmp_path / "agent.log"
    args = ["--dry-run", "--log-level", "debug", "--positions-interval", interval,
            "--dedup-window", "0"]

    def start() -> Agent:
        return Agent(node.access_log, LOG_FORMAT, node.url, [cluster.nodes[1].url],
                     extra=args, stderr=stderr).start()

    agent = start()
    try:
        with Client(node.address, node.port, prefix="/kill/") as client:
            wait_until(lambda: client.done > 300, 30, what="300 requests")
            os.kill(agent.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            agent.proc.wait()  # type: ignore[union-attr]
            killed_at = stderr.stat().st_size
            [saved] = _saved_offsets(stderr.with_suffix(".positions.json"), node.access_log)
            more = client.done + 300
            wait_until(lambda: client.done > more, 30, what="300 more requests")
            agent = start()
            more = client.done + 300
            wait_until(lambda: client.done > more, 30, what="300 more requests")
        targets = _logged_targets(node.access_log)
        wait_until(lambda: set(_decided(stderr.read_bytes())) >= set(targets), 30,
                   what="the restarted agent to catch up")
    finally:
        code = agent.stop()
    assert code == 0
    log = stderr.read_bytes()
    first, second = _decided(log[:killed_at]), _decided(log[killed_at:])
    assert len(first) == len(set(first)) and len(second) == len(set(second))
    twice = set(first) & set(second)
    after_checkpoint = {t for t, at in targets.items() if at >= saved}
    assert twice <= after_checkpoint, sorted(twice - after_checkpoint)[:5]
    print(f"\n{len(targets)} lines; killed after {len(first)}; checkpoint left "
          f"{len(after_checkpoint & set(first))} handled lines to redo, {len(twice)} redone")


def _saved_offsets(positions: Path, access_log: Path) -> list[int]:
    import json

    doc = json.loads(positions.read_text())
    return [e["offset"] for e in doc["files"] if e["path"] == str(access_log)]


def _logged_targets(access_log: Path) -> dict[str, int]:
    """``/kill/...`` targets in the access log, with the offset where each line starts."""
    found, offset = {}, 0
    for line in access_log.read_bytes().splitlines(keepends=True):
        fields = line.split(b"\t")
        if len(fields) > 5 and fields[5].startswith(b"/kill/"):
            found[fields[5].decode()] = offset
        offset += len(line)
    return found


def _decided(log: bytes) -> list[str]:
    return [m.group(1) for line in log.decode(errors="replace").splitlines()
            if (m := ROUTE.search(line))]
