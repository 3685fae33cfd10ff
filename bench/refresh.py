"""Benchmark 2: refresh requests per second against a local NGINX answering 204.

NGINX (one worker) runs on one core, each client alone on the other, one after the other in the
same run: logwarden's Dispatcher at its default per-peer concurrency, a minimal aiohttp loop and
``wrk`` (C, the ceiling) at the same concurrency, and, for the transport write-up, httpx's
AsyncClient and httpx over an aiohttp transport. NGINX's access log then tells which clients
sent the exactness probes byte for byte.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.clients import PROBES
from bench.common import PYTHON, ROOT, Row, core, fmt_rate, wait_for
from lab import free_port
from lab.process import running

CONCURRENCY = 8  # DispatchSettings.peer_concurrency: what one peer gets by default
NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format request '$request';
    access_log {tmp}/access.log request;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 204; }}
    }}
}}
"""




def run(count: int) -> tuple[list[Row], dict[str, tuple[float, bool]]]:
    """The table rows, and every client's (requests/s, targets exact) for the write-up."""
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp, nginx(Path(tmp)) as url:
        results = {kind: _client(kind, url, n) for kind, n in (
            ("logwarden", count), ("logwarden-3-classes", count), ("aiohttp", count),
            ("httpx", max(count // 10, 300)),
            ("httpx-aiohttp", count), ("protocol-proto", count))}
        ceiling = _wrk(url)
        logged = (Path(tmp) / "access.log").read_bytes()
    exact = {kind: _exact(logged, kind) for kind in results}
    ours, theirs = results["logwarden"], results["aiohttp"]
    ratio = ours / theirs
    rows = [
        Row(f"2. refreshes/s, one core, c={CONCURRENCY}, vs aiohttp loop", fmt_rate(ours),
            fmt_rate(theirs), f"{ratio:.2f}x", ">= 5,000/s and >= 0.7x",
            ours >= 5000 and ratio >= 0.7 and exact["logwarden"]),
        Row(f"2. refreshes/s vs wrk (C, c={CONCURRENCY}, the ceiling)", fmt_rate(ours),
            fmt_rate(ceiling), f"{ours / ceiling:.2f}x", "(context)", None),
        Row(f"2. three variant classes, c={CONCURRENCY}: fan-outs/s (requests/s)",
            f"{fmt_rate(results['logwarden-3-classes'])} "
            f"({fmt_rate(3 * results['logwarden-3-classes'])})", fmt_rate(ours),
            f"{3 * results['logwarden-3-classes'] / ours:.2f}x requests", "(context)", None),
    ]
    return rows, {kind: (rate, exact[kind]) for kind, rate in results.items()}


@contextmanager
def nginx(tmp: Path) -> Iterator[str]:
    """NGINX with one worker on the first core, answering 204 to everything; yields its URL."""
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
    with running(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(tmp)]):
        wait_for(lambda: _answers(port), timeout=10)
        yield f"http://127.0.0.1:{port}"


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _client(kind: str, url: str, count: int) -> float:
    args = [*core(), PYTHON, "-m", "bench.clients", kind, url, str(count), str(CONCURRENCY),
            _prefix(kind)]
    out = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def _wrk(url: str) -> float:
    args = [*core(), "wrk", "-t1", f"-c{CONCURRENCY}", "-d3s", url + "/wrk"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output: {out}")
    return float(match.group(1))


def _prefix(kind: str) -> str:
    return "c-" + kind


def _exact(logged: bytes, kind: str) -> bool:
    """True when NGINX logged every probe of this client byte for byte."""
    lines = set(logged.splitlines())
    prefix = b"/" + _prefix(kind).encode()
    return all(b"HEAD %s%s HTTP/1.1" % (prefix, probe) in lines for probe in PROBES)
