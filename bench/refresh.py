"""Benchmark 2: refresh requests per second against a local NGINX answering 204.

NGINX (one worker) runs on one core, each sender alone on the other, one after the other in the
same run (bench/clients.py): logwarden's Dispatcher, a minimal aiohttp loop, the bare-Protocol
floor (bench/transport_proto.py), each Python sender on asyncio's own event loop and, when
installed, on uvloop's, and ``wrk`` (C, the ceiling) at the same concurrency. Four loads: one
peer at c = 8, 64 and 256 (logwarden's ``peer_concurrency`` and ``concurrency`` both c), and
49 peers (49 ports of the one NGINX) with 3 variant classes at the dispatcher's defaults (8
lanes per peer, a pool of 64: 113 requests in flight at most, which the others get too). Then
refresh latency at a steady rate below every sender's capacity: 2,000 refreshes/s to one peer
at c = 8, and 100 fan-outs/s to the 49 peers x 3 classes (14,700 requests/s: the issue's
50-node fleet), from each refresh's submission to its last answer. NGINX's access log tells
which senders sent the exactness probes byte for byte.

    python -m bench.refresh [--quick] [--before OTHER_CHECKOUT]

``--before``: also run logwarden from another work tree (its ``logwarden`` package, this
tree's bench/clients.py), e.g. the commit before a change, side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from bench.clients import CLASSES, PROBES, Load
from bench.common import PYTHON, ROOT, Row, core, fmt_rate, wait_for
from lab import free_port
from lab.process import running

SINGLE = (8, 64, 256)
TARGET_CONCURRENCY = 64
FLEET_PEERS = 49
FLEET = "49 peers x 3 classes"
PACES = ((f"c={8}", 2000.0), (FLEET, 100.0))
"""Latency runs: the load, refreshes (fan-outs) submitted per second."""
NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
    log_format request '$request';
    map $request_uri $probe {{ ~^/[^/]+/r/ 0; default 1; }}
    access_log {tmp}/access.log request if=$probe;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
{listens}
        add_header X-Cache-Status BYPASS always;  # answers as a refreshed peer would
        location / {{ return 204; }}
    }}
}}
"""


class Sender(NamedTuple):
    label: str
    kind: str
    loop: str = "asyncio"
    tree: Path | None = None  # another checkout's logwarden (--before)


def senders(before: Path | None = None) -> list[Sender]:
    uvloop = importlib.util.find_spec("uvloop") is not None
    found = [Sender("logwarden", "logwarden")]
    found += [Sender("logwarden before", "logwarden", tree=before)] if before else []
    found += [Sender("logwarden+uvloop", "logwarden", "uvloop")] if uvloop else []
    found += [Sender("aiohttp", "aiohttp")]
    found += [Sender("aiohttp+uvloop", "aiohttp", "uvloop")] if uvloop else []
    return [*found, Sender("prototype", "prototype")]


def loads(urls: list[str]) -> dict[str, Load]:
    single = {f"c={c}": Load((urls[0],), c, c) for c in SINGLE}
    return {**single, FLEET: Load(tuple(urls), 8, 64, CLASSES)}


class Results(NamedTuple):
    rates: dict[str, dict[str, tuple[float, float]]]
    """load -> sender (and wrk) -> (requests/s, refreshes/s)"""
    latency: dict[str, dict[str, tuple[float, float, float]]]
    """load -> sender -> p50, p99, max in ms"""
    exact: dict[str, bool]
    """sender -> NGINX logged every probe it sent byte for byte"""


def run(count: int, rounds: int, before: Path | None = None) -> tuple[list[Row], Results]:
    """The table rows, and every figure for the write-up (:func:`report`)."""
    results = measure(count, before, rounds)
    rates, latency = results.rates, results.latency
    rows = []
    for c in SINGLE:
        ours, theirs = rates[f"c={c}"]["logwarden"][0], rates[f"c={c}"]["aiohttp"][0]
        ratio = ours / theirs
        target, met = "(context)", None
        if c == TARGET_CONCURRENCY:
            target, met = ">= 20,000/s and >= 2x", ours >= 20_000 and ratio >= 2
        elif c == 8:
            target, met = ">= 5,000/s and >= 0.7x", ours >= 5000 and ratio >= 0.7
        if met is not None:
            met = met and results.exact["logwarden"]
        rows.append(Row(f"2. refreshes/s, one core, c={c}, vs aiohttp loop", fmt_rate(ours),
                        fmt_rate(theirs), f"{ratio:.2f}x", target, met))
    fleet = rates[FLEET]
    ours, theirs = fleet["logwarden"], fleet["aiohttp"]
    rows.append(Row(f"2. {FLEET}: requests/s (fan-outs/s) vs aiohttp", f"{fmt_rate(ours[0])} "
                    f"({fmt_rate(ours[1])})", fmt_rate(theirs[0]), f"{ours[0] / theirs[0]:.2f}x",
                    "(context: 100 fan-outs/s)", None))
    ceiling = rates[f"c={TARGET_CONCURRENCY}"]
    rows.append(Row(f"2. refreshes/s vs wrk (C, c={TARGET_CONCURRENCY}, the ceiling)",
                    fmt_rate(ceiling["logwarden"][0]), fmt_rate(ceiling["wrk"][0]),
                    f"{ceiling['logwarden'][0] / ceiling['wrk'][0]:.2f}x", "(context)", None))
    for name, rate in PACES:
        ours_ms, theirs_ms = latency[name]["logwarden"], latency[name]["aiohttp"]
        rows.append(Row(f"2. refresh latency p50/p99, {rate:,.0f}/s, {name}, vs aiohttp",
                        f"{ours_ms[0]:.1f} / {ours_ms[1]:.1f} ms",
                        f"{theirs_ms[0]:.1f} / {theirs_ms[1]:.1f} ms",
                        f"{ours_ms[1] / theirs_ms[1]:.2f}x p99", "(context)", None))
    return rows, results


def measure(count: int, before: Path | None = None, rounds: int = 3) -> Results:
    """Each load ``rounds`` times, every sender once a round (in a rotated order); each
    figure is the median of its rounds (this machine's speed drifts from run to run)."""
    contestants = senders(before)
    paced = [s for s in contestants if s.kind != "prototype"]
    with tempfile.TemporaryDirectory(prefix="logwarden-bench-") as tmp, \
            nginx(Path(tmp), FLEET_PEERS) as urls:
        rates: dict[str, dict[str, tuple[float, float]]] = {}
        latency: dict[str, dict[str, tuple[float, float, float]]] = {}
        work = loads(urls)
        for name, load in work.items():
            n = count if load.classes == () else max(count // 100, 20)
            rates[name] = _rounds(contestants, rounds, lambda s, load=load, n=n, name=name:
                                  _client(s, load, n, _prefix(s, name)))
            rates[name]["wrk"] = (_wrk(load.peers[0], load.in_flight), 0.0)
        for name, rate in PACES:
            n = int(rate * (3.0 if count >= 10_000 else 1.5))
            latency[name] = _rounds(paced, rounds, lambda s, name=name, rate=rate, n=n:
                                    _client(s, work[name], n, _prefix(s, name, "p"), rate),
                                    figure=1)
        logged = set((Path(tmp) / "access.log").read_bytes().splitlines())
    exact = {s.label: all(_exact(logged, _prefix(s, name)) for name in work)
             for s in contestants}
    return Results(rates, latency, exact)


def _rounds(contestants: list[Sender], rounds: int, one: Callable[[Sender], tuple[float, ...]],
            figure: int = 0) -> dict[str, Any]:
    """Each contestant's run with the median ``figure`` over ``rounds`` rounds."""
    runs: dict[str, list[tuple[float, ...]]] = {s.label: [] for s in contestants}
    for round_ in range(rounds):
        shift = round_ % len(contestants)
        for sender in contestants[shift:] + contestants[:shift]:
            runs[sender.label].append(one(sender))
    return {label: sorted(values, key=lambda v: v[figure])[len(values) // 2]
            for label, values in runs.items()}


def report(results: Results) -> list[str]:
    """Every sender's figures, one line per load."""
    labels = [*next(iter(results.rates.values()))]
    out = ["requests/s per load, each sender alone on one core, median of the rounds "
           "(wrk: C, the ceiling, one port):",
           "  " + f"{'load':22}" + "".join(f"{label:>18}" for label in labels)]
    for name, by in results.rates.items():
        out.append("  " + f"{name:22}" + "".join(f"{by[label][0]:18,.0f}" for label in labels))
    out.append("refresh latency, submission to last answer, p50 / p99 / max ms (median p99):")
    for name, rate in PACES:
        for label, (p50, p99, top) in results.latency[name].items():
            out.append(f"  {rate:,.0f}/s, {name}, {label}: {p50:.1f} / {p99:.1f} / {top:.1f}")
    out.append("request targets exact at NGINX: " + ", ".join(
        f"{label} {'yes' if ok else 'NO'}" for label, ok in results.exact.items()))
    return out


@contextmanager
def nginx(tmp: Path, ports: int) -> Iterator[list[str]]:
    """NGINX with one worker on the first core, answering 204 on ``ports`` ports; their URLs."""
    chosen: list[int] = []
    while len(chosen) < ports:
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    conf = tmp / "nginx.conf"
    listens = "\n".join(f"        listen 127.0.0.1:{port};" for port in chosen)
    conf.write_text(NGINX_CONF.format(tmp=tmp, listens=listens))
    with running(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(tmp)]):
        wait_for(lambda: all(_answers(port) for port in chosen), timeout=10)
        yield [f"http://127.0.0.1:{port}" for port in chosen]


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _client(sender: Sender, load: Load, count: int, prefix: str,
            pace: float | None = None) -> tuple[float, ...]:
    args = [*core(), PYTHON, "-m", "bench.clients", sender.kind, ",".join(load.peers),
            str(count), prefix, "--lanes", str(load.lanes), "--pool", str(load.pool),
            "--loop", sender.loop, *(["--classes"] if load.classes else []),
            *(["--pace", str(pace)] if pace else [])]
    with tempfile.TemporaryDirectory(prefix="logwarden-before-") as other:
        cwd, env = ROOT, None
        if sender.tree is not None:
            # ``bench`` from here (a link in a directory of its own), ``logwarden`` from there
            cwd = Path(other)
            (cwd / "bench").symlink_to(ROOT / "bench")
            env = {**os.environ, "PYTHONPATH": str(sender.tree.resolve())}
        out = subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True,
                             text=True, timeout=600)
    return tuple(float(f) for f in out.stdout.split())


def _wrk(url: str, concurrency: int) -> float:
    args = [*core(), "wrk", "-t1", f"-c{concurrency}", "-d3s", url + "/wrk"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output: {out}")
    return float(match.group(1))


def _prefix(sender: Sender, load: str, kind: str = "t") -> str:
    return "-".join((kind, re.sub(r"\W+", "", sender.label), re.sub(r"\W+", "", load)))


def _exact(logged: set[bytes], prefix: str) -> bool:
    """True when NGINX logged every probe under ``prefix`` byte for byte."""
    return all(b"HEAD /%s%s HTTP/1.1" % (prefix.encode(), probe) in logged for probe in PROBES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", type=Path, help="another checkout's logwarden, side by side")
    args = parser.parse_args()
    rows, results = run(*((6_000, 2) if args.quick else (20_000, 3)), args.before)
    from bench.__main__ import table

    print(table(rows))
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()
