"""``make soak``: three real NGINX nodes with logwarden beside each, under load and faults.

For ``--seconds`` (600 by default; ``--quick``: 90 s with scaled intervals) the soak runs:

- an origin whose objects change: one of the ``/soak/change/*`` paths gets a new version
  every ``bump_every`` seconds (they are cached for 10 s, the static set for 300 s);
- continuous client load, round-robin over the live nodes;
- log rotation on every node every ``rotate_every`` seconds (rename + ``nginx -s reopen``);
- node B's NGINX killed (SIGKILL to its process group) every ``kill_every`` seconds and
  started again ``down_for`` seconds later;
- node C slow: A's and B's agents reach it through a TCP proxy that holds every chunk they
  send for ``slow_delay`` seconds, every ``stall_every``-th for longer than the agents'
  ``--timeout`` (C's own agent talks to A and B directly);
- twice a flood of unique URLs on node A (the token bucket engages), twice a burst of
  garbage lines (and two over-long lines) appended to a node's access log.

Every ``sample_every`` seconds each agent's RSS (``VmRSS``) and open file descriptors are read
from /proc and its metrics scraped. After the load stops and the agents are idle, it checks
and prints one screen: RSS stable over the second half, no fd growth, the accounting equations
on each agent's final metrics, injected garbage counted exactly, every change fetched on a live
node reached every live peer, agents alive throughout, exiting 0 and logging no error. Exit
code 1 when a check fails. Everything it starts it stops, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from lab import EXAMPLE_CONFIG, Cluster, NginxNode, accounting, find_nginx, free_port
from lab.agent import Agent, log_format_from_conf
from lab.process import kill_group

HOST = "www.example.com"
CHANGING = [f"/soak/change/{i}" for i in range(40)]
CHANGING_QUERY = "?ma=10"
STATIC = [f"/soak/static/{i}?ma=300" for i in range(300)]
LOAD_THREADS = 4
FLOOD_THREADS = 8
BREAKER_COOLDOWN = 5.0
AGENT_FLAGS = ("--max-refresh-rate", "25", "--max-refresh-burst", "25",
               "--breaker-cooldown", str(BREAKER_COOLDOWN))
"""Sized by the README's rule: the slow peer carries 8 lanes / 0.2 s = 40 refreshes/s, less
the lanes its stalls hold; at 50/s a flood queued refreshes to it for 15 s."""
STALL = 6.0
"""Seconds the slow proxy holds a stalled request: more than the agents' --timeout (5 s)."""
PROPAGATION_LIMIT = 10.0
"""Seconds from a change's first fetch within which every live peer must have been refreshed."""
FETCHES = frozenset({"MISS", "EXPIRED", "STALE"})
RSS_FACTOR, RSS_SLACK_MIB, FD_SLACK = 1.10, 4.0, 2
MiB = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    seconds: float
    sample_every: float = 5.0
    rotate_every: float = 60.0
    kill_every: float = 120.0
    down_for: float = 15.0
    bump_every: float = 2.0
    slow_delay: float = 0.2
    stall_every: int = 100
    """Every 100th request to C is held ``STALL`` seconds: a timeout, then a retry."""
    flood_urls: int = 10_000
    garbage_lines: int = 1000

    def schedule(self) -> list[tuple[float, str]]:
        """(second, action) for the faults: kills of B start in the middle of a rotation
        interval; floods on A at 20% and 60% (the same size twice: the second must not need
        more memory), moved past B's down time and breaker cool-down so that each fault is
        seen on its own; garbage at 30% (A) and 80% (C) of the run."""
        s = self.seconds
        events = [(t * self.rotate_every, "rotate")
                  for t in range(1, int(s // self.rotate_every) + 1) if t * self.rotate_every < s]
        kill, down = self.kill_every * 0.75, []
        while kill + self.down_for < s * 0.97:
            events += [(kill, "kill"), (kill + self.down_for, "restart")]
            down.append((kill - 2, kill + self.down_for + BREAKER_COOLDOWN + 2))
            kill += self.kill_every
        for at in (s * 0.2, s * 0.6):
            at = max([at, *(end for start, end in down if start <= at <= end)])
            events.append((at, "flood a"))
        events += [(s * 0.30, "garbage a"), (s * 0.80, "garbage c")]
        return sorted(events)


FULL = Profile(seconds=600)
QUICK = Profile(seconds=90, sample_every=2, rotate_every=15, kill_every=30, down_for=6,
                bump_every=1.0, flood_urls=1500, garbage_lines=300)


# ---------------------------------------------------------------------------------------------
# a slow peer


class SlowProxy:
    """A TCP proxy on ``127.0.0.1:<free port>`` to ``upstream`` that holds every chunk the
    client sends for ``delay`` seconds (each refresh request through it waits that long), and
    every ``stall_every``-th chunk for ``stall`` seconds (past the agents' ``--timeout``).
    Runs its own event loop on a thread; :meth:`stop` closes every connection and joins it."""

    def __init__(self, upstream: tuple[str, int], delay: float, *, stall_every: int = 0,
                 stall: float = 0.0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.stall_every = stall_every
        self.stall = stall
        self.chunks = self.stalls = 0
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._serve(),), name="soak-proxy", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> SlowProxy:
        self._thread.start()
        if not self._ready.wait(5) or self._error:
            raise RuntimeError(f"slow proxy did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(self._pipe(reader, up_writer, held=True),
                                 self._pipe(up_reader, writer, held=False))
        except OSError:
            pass  # the upstream refused: the agent sees the connection close
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    held: bool) -> None:
        try:
            while data := await reader.read(65536):
                if held:
                    self.chunks += 1
                    stall = self.stall_every and self.chunks % self.stall_every == 0
                    self.stalls += bool(stall)
                    await asyncio.sleep(self.stall if stall else self.delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()  # the other direction ends when its peer sees the close


# ---------------------------------------------------------------------------------------------
# what the soak does and records


@dataclass
class AgentSeries:
    """One agent's samples: (seconds since start, value)."""

    rss: list[tuple[float, float]] = field(default_factory=list)  # MiB
    fds: list[tuple[float, int]] = field(default_factory=list)
    rate_dropped: list[tuple[float, float]] = field(default_factory=list)  # wall time
    queued: list[tuple[float, float]] = field(default_factory=list)  # refreshes waiting
    peer_up: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))  # by peer URL, wall time
    died_at: float | None = None
    scrape_errors: int = 0


def proc_rss_fds(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def garbage(rng: random.Random, n: int) -> tuple[bytes, int]:
    """``n`` lines that cannot match the format (random text, raw and control bytes,
    real lines cut before the cache status), then two lines over 64 KiB; returns
    (bytes, how many are over-long)."""
    printable = bytes(range(0x20, 0x7F))
    raw = bytes([*range(0x01, 0x09), *range(0x0B, 0x20), *range(0x80, 0x100)])
    lines = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            lines.append(bytes(rng.choices(printable, k=rng.randint(1, 200))))
        elif kind == 1:
            lines.append(bytes(rng.choices(raw + printable, k=rng.randint(1, 200))))
        else:
            lines.append(f"{time.time():.3f}\thttp\t{HOST}\t80\tGET".encode())
    lines += [b"x" * 70_000, b"y" * 100_000]
    return b"\n".join(lines) + b"\n", 2


class Soak:
    def __init__(self, profile: Profile, workdir: Path, seed: int) -> None:
        self.p = profile
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.cluster = Cluster(workdir / "cluster", nodes=3)
        self.names = ["A", "B", "C"]
        self.agents: list[Agent] = []
        self.proxy: SlowProxy | None = None
        self.stop_load = threading.Event()
        self.threads: list[threading.Thread] = []
        self.down: set[str] = set()
        self.down_windows: list[tuple[float, float]] = []  # node B, wall time
        self.bumps: list[tuple[str, int, float]] = []  # path, version, wall time
        self.responses: Counter[str] = Counter()
        self.injected: dict[str, Counter[str]] = defaultdict(Counter)
        self.floods: list[tuple[str, int, float]] = []
        self.rotations = 0
        self.series = {name: AgentSeries() for name in self.names}
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.start()
        a, b, c = self.cluster.nodes
        self.proxy = SlowProxy((c.address, c.port), self.p.slow_delay,
                               stall_every=self.p.stall_every, stall=STALL).start()
        log_format = log_format_from_conf(EXAMPLE_CONFIG.read_text())
        peer_lists = {"A": [a.url, b.url, self.proxy.url], "B": [a.url, b.url, self.proxy.url],
                      "C": [a.url, b.url, c.url]}
        for name, node in zip(self.names, self.cluster.nodes, strict=True):
            agent = Agent(node.access_log, log_format, node.url, peer_lists[name],
                          extra=AGENT_FLAGS, stderr=self.workdir / f"agent-{name}.log")
            self.agents.append(agent.start())
        self.t0, self.wall0 = time.monotonic(), time.time()

    def stop(self) -> list[int | None]:
        """Stop everything; the agents' exit codes (None: not running)."""
        self.stop_load.set()
        for thread in self.threads:
            thread.join(30)
        codes: list[int | None] = []
        for agent in self.agents:
            try:
                codes.append(agent.stop())
            except Exception:
                codes.append(None)
        if self.proxy is not None:
            self.proxy.stop()
        self.cluster.stop()
        return codes

    def node(self, name: str) -> NginxNode:
        return self.cluster.nodes[self.names.index(name)]

    def peer_url(self, agent: str, peer: str) -> str:
        """The URL ``agent``'s logwarden has for ``peer`` (A and B reach C via the proxy)."""
        if peer == "C" and agent != "C" and self.proxy is not None:
            return self.proxy.url
        return self.node(peer).url

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # load ------------------------------------------------------------------------------------

    def _get(self, node: NginxNode, target: str) -> None:
        try:
            status = node.get(target, host=HOST, timeout=10).status
            self.responses["200" if status == 200 else f"http {status}"] += 1
        except (OSError, http.client.HTTPException):
            name = self.names[self.cluster.nodes.index(node)]
            self.responses["refused (node down)" if name in self.down else "error"] += 1

    def _load(self, worker: int) -> None:
        rng = random.Random(worker)
        i = worker
        while not self.stop_load.is_set():
            i += 1
            name = self.names[i % 3]
            if name in self.down:
                continue
            if rng.random() < 0.3:
                target = rng.choice(CHANGING) + CHANGING_QUERY
            else:
                target = rng.choice(STATIC)
            self._get(self.node(name), target)
            time.sleep(0.005)

    def _bumper(self, until: float) -> None:
        origin = self.cluster.origin
        while not self.stop_load.wait(self.p.bump_every) and self.elapsed() < until:
            path = self.rng.choice(CHANGING)
            version = origin.bump(path)
            self.bumps.append((path, version, time.time()))

    def start_load(self) -> None:
        tail = min(20.0, self.p.seconds * 0.25)
        self.threads = [threading.Thread(target=self._load, args=(i,), name=f"load-{i}",
                                         daemon=True) for i in range(LOAD_THREADS)]
        self.threads.append(threading.Thread(target=self._bumper, args=(self.p.seconds - tail,),
                                             name="bumper", daemon=True))
        for thread in self.threads:
            thread.start()

    # faults ----------------------------------------------------------------------------------

    def rotate(self) -> None:
        self.rotations += 1
        for name, node in zip(self.names, self.cluster.nodes, strict=True):
            node.access_log.rename(node.access_log.with_name(f"access.log.{self.rotations}"))
            if name not in self.down:  # a node down opens a new file when it starts
                node.reopen()

    def kill(self) -> None:
        node = self.node("B")
        pid = node.pid
        assert pid is not None
        self.down.add("B")
        self.down_windows.append((time.time(), float("inf")))
        kill_group(pid)
        node.stop()

    def restart(self) -> None:
        self.node("B").start()
        self.down.discard("B")
        start, _ = self.down_windows[-1]
        self.down_windows[-1] = (start, time.time())

    def flood(self, name: str) -> None:
        node, burst = self.node(name), len(self.floods)
        started = time.time()
        targets = [f"/soak/flood/{burst}/{i}?ma=600" for i in range(self.p.flood_urls)]
        with ThreadPoolExecutor(FLOOD_THREADS, thread_name_prefix="flood") as pool:
            for target in targets:
                if self.stop_load.is_set():
                    break
                pool.submit(self._get, node, target)
        self.floods.append((name, len(targets), time.time() - started))

    def inject_garbage(self, name: str) -> None:
        blob, too_long = garbage(self.rng, self.p.garbage_lines)
        fd = os.open(self.node(name).access_log, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, blob)  # one write: NGINX's own lines (O_APPEND too) cannot interleave
        finally:
            os.close(fd)
        self.injected[name]["malformed"] += self.p.garbage_lines
        self.injected[name]["too_long"] += too_long

    def act(self, action: str) -> None:
        verb, _, arg = action.partition(" ")
        if verb == "rotate":
            self.rotate()
        elif verb == "kill":
            self.kill()
        elif verb == "restart":
            self.restart()
        elif verb == "flood":
            thread = threading.Thread(target=self.flood, args=(arg.upper(),), name="flood",
                                      daemon=True)
            self.threads.append(thread)
            thread.start()
        elif verb == "garbage":
            self.inject_garbage(arg.upper())

    # sampling --------------------------------------------------------------------------------

    def sample(self) -> None:
        now = self.elapsed()
        for name, agent in zip(self.names, self.agents, strict=True):
            s = self.series[name]
            assert agent.proc is not None
            if agent.proc.poll() is not None:
                s.died_at = s.died_at or now
                continue
            rss, fds = proc_rss_fds(agent.proc.pid)
            s.rss.append((now, rss))
            s.fds.append((now, fds))
            try:
                scrape = agent.samples()
                s.rate_dropped.append((time.time(), scrape.get(
                    ("logwarden_storm_dropped_total", (("reason", "rate"),)), 0.0)))
                s.queued.append((now, scrape.get(
                    ("logwarden_queue_depth", (("queue", "refreshes"),)), 0.0)))
                for (metric, labels), value in scrape.items():
                    if metric == "logwarden_peer_up":
                        s.peer_up[dict(labels)["peer"]].append((time.time(), value))
            except OSError:
                s.scrape_errors += 1

    def run(self) -> None:
        events = self.p.schedule()
        self.start_load()
        next_sample = 0.0
        while (now := self.elapsed()) < self.p.seconds:
            if events and events[0][0] <= now:
                self.act(events.pop(0)[1])
                continue
            if now >= next_sample:
                self.sample()
                next_sample += self.p.sample_every
                continue
            time.sleep(max(0.0, min(next_sample, events[0][0] if events else next_sample) - now))
        self.sample()
        self.stop_load.set()
        for thread in self.threads:
            thread.join(60)
        if "B" in self.down:
            self.restart()

    def settle(self, timeout: float = 60.0) -> list[Totals]:
        """Final metrics, once every agent has processed what it read and answered its fan-outs
        (the equations hold and nothing moved for a second), or after ``timeout``."""
        deadline = time.monotonic() + timeout
        previous: list[float] = []
        while True:
            totals = [Totals.scrape(agent) for agent in self.agents]
            lines = [t.lines for t in totals]
            done = lines == previous and all(all(ok for _, ok, _ in t.equations()) for t in totals)
            if done or time.monotonic() > deadline:
                for name, agent in zip(self.names, self.agents, strict=True):
                    with urllib.request.urlopen(agent.base + "/metrics", timeout=5) as resp:
                        (self.workdir / f"agent-{name}.metrics").write_bytes(resp.read())
                return totals
            previous = lines
            time.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# metrics and the accounting equations


@dataclass
class Totals:
    """The counters the accounting equations use, from one scrape of an agent."""

    samples: dict[accounting.Key, float]

    @classmethod
    def scrape(cls, agent: Agent) -> Totals:
        return cls(agent.samples())

    def sum(self, name: str, **labels: str) -> float:
        return accounting.total(self.samples, name, **labels)

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        return accounting.by_label(self.samples, name, label, **labels)

    @property
    def lines(self) -> float:
        return self.sum("logwarden_lines_total")

    def peers(self) -> list[str]:
        return sorted(self.by("logwarden_refreshes_total", "peer"))

    def equations(self) -> list[tuple[str, bool, str]]:
        """The accounting equations of the README ("Accounting"), from lab/accounting.py."""
        return [(name, left == right, f"{left:.0f} vs {right:.0f}")
                for name, left, right in accounting.equations(self.samples)]


# ---------------------------------------------------------------------------------------------
# propagation: every change fetched on a live node reached every live peer


@dataclass(frozen=True)
class Line:
    node: str
    msec: float
    start: float  # msec - request_time: when NGINX got the request
    cache_status: str
    status: str
    upstream_status: str
    own: bool  # logwarden's refresh


def read_lines(name: str, node: NginxNode, prefix: str) -> dict[str, list[Line]]:
    """Lines of every access log of ``node`` (rotated ones too) whose target starts with
    ``prefix``, by target; lines of another shape (the injected garbage) are left out."""
    out: dict[str, list[Line]] = defaultdict(list)
    for path in sorted(node.access_log.parent.glob("access.log*")):
        for raw in path.read_bytes().decode("latin-1").splitlines():
            f = raw.split("\t")
            if len(f) != 12 or not f[5].startswith(prefix):
                continue
            try:
                msec, took = float(f[0]), float(f[9])
            except ValueError:
                continue
            out[f[5]].append(Line(name, msec, msec - took, f[7], f[6], f[8],
                                  f[11].startswith("logwarden/")))
    return out


@dataclass
class Propagation:
    changes: int = 0
    unfetched: int = 0
    checked: int = 0
    excluded_down: int = 0
    excluded_rate: int = 0
    missed: list[str] = field(default_factory=list)
    delays: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def check_propagation(soak: Soak) -> Propagation:
    lines: dict[str, list[Line]] = defaultdict(list)
    for name, node in zip(soak.names, soak.cluster.nodes, strict=True):
        for target, found in read_lines(name, node, "/soak/change/").items():
            lines[target].extend(found)
    for found in lines.values():
        found.sort(key=lambda line: line.msec)
    rate_windows = {name: _windows(s.rate_dropped) for name, s in soak.series.items()}
    down = [(start - PROPAGATION_LIMIT, end + BREAKER_COOLDOWN + 3)
            for start, end in soak.down_windows]
    result = Propagation()
    for path, version, bumped in soak.bumps:
        result.changes += 1
        target = path + CHANGING_QUERY
        fetch = next((line for line in lines[target] if not line.own
                      and line.cache_status in FETCHES and line.start >= bumped
                      and line.status.startswith(("2", "3"))
                      and not line.upstream_status.rsplit(" ", 1)[-1].startswith("5")), None)
        if fetch is None:
            result.unfetched += 1  # no client asked for it after the change; nothing to spread
            continue
        if _within(fetch.msec, rate_windows[fetch.node]):
            result.excluded_rate += 1  # the token bucket may have turned this fan-out away
            continue
        for peer in soak.names:
            if peer == fetch.node:
                continue
            if peer == "B" and _within(fetch.msec, down):
                result.excluded_down += 1
                continue
            result.checked += 1
            got = next((line for line in lines[target] if line.node == peer and line.own
                        and line.start >= bumped - 0.001), None)
            if got is None or got.msec > fetch.msec + PROPAGATION_LIMIT:
                when = "never" if got is None else f"after {got.msec - fetch.msec:.1f} s"
                result.missed.append(
                    f"{target} v{version} (bumped {bumped - soak.wall0:.1f} s, fetched on "
                    f"{fetch.node} {fetch.cache_status} at {fetch.msec - soak.wall0:.1f} s): "
                    f"{peer} refreshed {when}{_breaker_note(soak, fetch, peer)}")
            else:
                result.delays[peer].append(max(0.0, got.msec - fetch.msec))
    return result


def _breaker_note(soak: Soak, fetch: Line, peer: str) -> str:
    """Why a peer may have been left out: the fetching agent's breaker for it was open (the
    ``logwarden_peer_up`` samples around the fetch), and since when the peer was back."""
    samples = soak.series[fetch.node].peer_up.get(soak.peer_url(fetch.node, peer), [])
    before = [v for t, v in samples if t <= fetch.msec][-1:]
    after = [v for t, v in samples if t > fetch.msec][:1]
    if 0.0 not in before + after:
        return ""
    back = [end for _, end in soak.down_windows if end <= fetch.msec] if peer == "B" else []
    since = f", {peer} back for {fetch.msec - back[-1]:.1f} s" if back else ""
    return f" [{fetch.node}'s breaker for {peer} open{since}]"


def _windows(counter: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Wall-time spans (with a second's margin) in which a sampled counter went up."""
    return [(t0 - 1, t1 + 1) for (t0, v0), (t1, v1) in itertools.pairwise(counter)
            if v1 > v0]


def _within(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= t <= end for start, end in windows)


# ---------------------------------------------------------------------------------------------
# the report


def _mean(points: list[tuple[float, float]], lo: float, hi: float) -> float:
    values = [v for t, v in points if lo <= t <= hi]
    return statistics.fmean(values) if values else float("nan")


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope, per minute."""
    if len(points) < 3:
        return 0.0
    xs, ys = [t for t, _ in points], [v for _, v in points]
    return statistics.linear_regression(xs, ys).slope * 60


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def lines_written(node: NginxNode) -> int:
    """Complete lines in every access log of ``node``, rotated ones too, garbage included."""
    return sum(path.read_bytes().count(b"\n")
               for path in node.access_log.parent.glob("access.log*"))


def _errors_logged(path: Path) -> list[str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line for line in text.splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


def report(soak: Soak, totals: list[Totals], codes: list[int | None],
           prop: Propagation) -> tuple[list[str], bool]:
    p, out, checks = soak.p, [], []
    half, q2, q4 = p.seconds / 2, (p.seconds / 4, p.seconds / 2), (p.seconds * 3 / 4, p.seconds)
    responses = ", ".join(f"{n:,} {k}" for k, n in soak.responses.most_common())
    out.append(f"logwarden soak: {p.seconds:.0f} s, 3 NGINX nodes + 3 agents "
               f"({' '.join(AGENT_FLAGS)}), workdir {soak.workdir}")
    out.append(f"client requests: {responses}")
    flood = ", ".join(f"{n} URLs on {name} in {d:.1f} s" for name, n, d in soak.floods)
    stalls = soak.proxy.stalls if soak.proxy else 0
    garbage_ = ", ".join(f"{c['malformed']}+{c['too_long']} long on {n}"
                         for n, c in soak.injected.items())
    out.append(f"faults: {len(soak.bumps)} changes, {soak.rotations} rotations, "
               f"{len(soak.down_windows)} kills of B (down {p.down_for:.0f} s), C slowed "
               f"{p.slow_delay * 1000:.0f} ms/request, {stalls} held {STALL:.0f} s; "
               f"floods: {flood}; garbage: {garbage_}")
    out.append("")
    out.append(f"{'agent':5} {'lines':>8} {'malf':>5} {'long':>4} {'ignored':>8} {'trig':>6} "
               f"{'dedup':>5} {'fanout':>6} {'rate':>5}  refreshes by peer (outcome=n)")
    equations_ok = True
    for name, t in zip(soak.names, totals, strict=True):
        s = t.sum
        out.append(
            f"{name:5} {s('logwarden_lines_total'):8.0f} "
            f"{s('logwarden_lines_malformed_total'):5.0f} "
            f"{s('logwarden_lines_too_long_total'):4.0f} "
            f"{s('logwarden_records_ignored_total'):8.0f} {s('logwarden_triggers_total'):6.0f} "
            f"{s('logwarden_triggers_deduplicated_total'):5.0f} "
            f"{s('logwarden_refresh_fanouts_total'):6.0f} "
            f"{s('logwarden_storm_dropped_total', reason='rate'):5.0f}")
        for peer in t.peers():
            label = _peer_name(soak, peer)
            outcomes = " ".join(f"{o}={n:.0f}" for o, n in sorted(
                t.by("logwarden_refreshes_total", "outcome", peer=peer).items()) if n)
            retries = t.sum("logwarden_refresh_retries_total", peer=peer)
            out.append(f"{'':6}→ {label:9} {outcomes} retries={retries:.0f}")
        eq = t.equations()
        shown = [(what.split(" =")[0], detail) for what, _, detail in eq[:2]]
        shown += [(f"fan-outs → {_peer_name(soak, peer)}", detail)
                  for peer, (_, _, detail) in zip(t.peers(), eq[2:], strict=True)]
        out.append(f"{'':6}accounting: " + "; ".join(f"{w} {d}" for w, d in shown))
        for what, ok, detail in eq:
            equations_ok &= ok
            if not ok:
                checks.append((False, f"accounting on {name}: {what}: {detail}"))
        written, read = lines_written(soak.node(name)), s("logwarden_lines_total")
        too_long = s("logwarden_lines_too_long_total")
        checks.append((read + too_long == written,
                       f"{name}: every line written was read once: {read:.0f} lines + "
                       f"{too_long:.0f} too long = {written} in {name}'s access logs"))
        malformed, injected = s("logwarden_lines_malformed_total"), soak.injected[name]
        checks.append((malformed == injected["malformed"] and too_long == injected["too_long"],
                       f"{name}: injected garbage counted exactly: malformed {malformed:.0f} "
                       f"(injected {injected['malformed']}), too long {too_long:.0f} "
                       f"(injected {injected['too_long']})"))
    out.append("")
    out.append(f"{'agent':5} {'RSS MiB: Q1':>11} {'Q2':>6} {'Q4':>6} {'max':>6} "
               f"{'slope 2nd half':>15}   {'fds: max Q1-Q3':>14} {'max Q4':>6} {'queue max':>9}")
    for name in soak.names:
        sr = soak.series[name]
        rss = sr.rss
        m1, m2, m4 = _mean(rss, 0, p.seconds / 4), _mean(rss, *q2), _mean(rss, *q4)
        slope = _slope([(t, v) for t, v in rss if t >= half])
        fd1 = max((v for t, v in sr.fds if p.seconds * 0.05 <= t < q4[0]), default=0)
        fd2 = max((v for t, v in sr.fds if t >= q4[0]), default=0)
        out.append(f"{name:5} {m1:11.1f} {m2:6.1f} {m4:6.1f} "
                   f"{max((v for _, v in rss), default=0):6.1f} {slope:+11.2f}/min   "
                   f"{fd1:14d} {fd2:6d} {max((v for _, v in sr.queued), default=0):9.0f}")
        checks.append((m4 <= m2 * RSS_FACTOR + RSS_SLACK_MIB,
                       f"{name}: RSS stable: last-quarter mean {m4:.1f} ≤ second-quarter mean "
                       f"{m2:.1f} x {RSS_FACTOR} + {RSS_SLACK_MIB:.0f} MiB"))
        checks.append((fd2 <= fd1 + FD_SLACK,
                       f"{name}: no fd growth: last-quarter max {fd2} ≤ max before {fd1} "
                       f"+ {FD_SLACK}"))
        checks.append((sr.died_at is None and sr.scrape_errors == 0,
                       f"{name}: alive and scraped throughout"
                       + (f" (died at {sr.died_at:.0f} s)" if sr.died_at else "")
                       + (f" ({sr.scrape_errors} failed scrapes)" if sr.scrape_errors else "")))
    checks.append((equations_ok, "accounting equations hold on every agent "
                   "(lines; triggers; outcomes per peer)"))
    out.append("")
    delays = "; ".join(
        f"→{peer} n={len(d)} p50 {_q(d, 0.5) * 1000:.0f} ms p99 {_q(d, 0.99) * 1000:.0f} ms "
        f"max {max(d):.2f} s" for peer, d in sorted(prop.delays.items()) if d)
    out.append(f"propagation: {prop.changes} changes, {prop.unfetched} never fetched; "
               f"{prop.checked} peer refreshes checked, excluded: {prop.excluded_down} "
               f"(B down or its breaker cooling), {prop.excluded_rate} (rate limit engaged)")
    out.append(f"  first fetch → peer refreshed: {delays}")
    out.extend(f"  MISSED {m}" for m in prop.missed[:5])
    checks.append((not prop.missed and prop.checked > 0,
                   f"every change fetched on a live node reached every live peer within "
                   f"{PROPAGATION_LIMIT:.0f} s ({prop.checked - len(prop.missed)}/"
                   f"{prop.checked})"))
    errors = {n: _errors_logged(soak.workdir / f"agent-{n}.log") for n in soak.names}
    checks.append((codes == [0, 0, 0] and not any(errors.values()),
                   f"agents exited {codes}, errors logged: "
                   f"{ {n: len(e) for n, e in errors.items()} }"))
    for n, errs in errors.items():
        out.extend(f"  {n}: {e[:150]}" for e in errs[:3])
    out.append("")
    out.extend(f"[{'PASS' if ok else 'FAIL'}] {what}" for ok, what in checks)
    return out, all(ok for ok, _ in checks)


def _peer_name(soak: Soak, url: str) -> str:
    if soak.proxy is not None and url == soak.proxy.url:
        return "C (slow)"
    for name, node in zip(soak.names, soak.cluster.nodes, strict=True):
        if node.url == url:
            return name
    return url


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every process started gets stopped."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="how long the load runs (default 600; 90 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="~90 s with intervals scaled down (rotation every 15 s, ...)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir after a pass")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    if find_nginx() is None:
        print("nginx is not installed: run 'make system-deps' as root", file=sys.stderr)
        return 2
    profile = QUICK if args.quick else FULL
    if args.seconds is not None:
        profile = replace(profile, seconds=args.seconds)
    if profile.seconds < 30:
        parser.error("--seconds must be at least 30")
    workdir = Path(tempfile.mkdtemp(prefix="logwarden-soak-"))
    soak = Soak(profile, workdir, args.seed)
    codes: list[int | None] = [None, None, None]
    with _sigterm_exits():
        try:
            soak.start()
            print(f"soak: {profile.seconds:.0f} s, origin {soak.cluster.origin.url}, nodes "
                  f"{' '.join(n.url for n in soak.cluster.nodes)}, C slowed via "
                  f"{soak.proxy.url if soak.proxy else '-'}; workdir {workdir}", flush=True)
            soak.run()
            totals = soak.settle()
        except KeyboardInterrupt:
            print("interrupted: stopping everything", file=sys.stderr)
            soak.stop()
            return 130
        except BaseException:
            soak.stop()
            raise
        codes = soak.stop()
    prop = check_propagation(soak)
    lines, ok = report(soak, totals, codes, prop)
    print("\n".join(lines))
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
