"""Refresh senders compared in benchmark 2; run one per process, pinned to one core:

    python -m bench.clients KIND PEERS COUNT PREFIX [--lanes L] [--pool P] [--classes]
                            [--pace RATE] [--loop asyncio|uvloop]

KIND: ``logwarden`` (the real Dispatcher, storm control off: it measures sending capacity),
``aiohttp`` (a minimal loop, the reference) and ``prototype`` (bench/transport_proto.py, a bare
asyncio.Protocol: the floor). PEERS: comma-separated base URLs. Each refresh goes to every
peer, once per variant class with ``--classes`` (:data:`CLASSES`). logwarden runs with
``--lanes`` workers per peer and a pool of ``--pool`` (``peer_concurrency``, ``concurrency``);
the others with as many requests in flight as that allows it (:attr:`Load.in_flight`), spread
over the peers. Each sends the exactness probes (:data:`PROBES`, under ``/PREFIX``) to the
first peer first, then COUNT distinct refreshes (HEAD), and prints ``requests/s refreshes/s``.
With ``--pace RATE`` the refreshes are submitted at RATE per second instead of all at once, and
it prints the p50, p99 and max of each refresh's latency in ms: from its submission to the
answer of its last request (logwarden and aiohttp only).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

PROBES = (b"/a/./b/../c//d?q=%2f&x=1;y=2&&z", b"/e%41%2e%2F?a=b=c&a=%7e~", b"/f//?x=1#")
"""Request targets that URL libraries like to normalise; the peer must log them unchanged."""
HOST = "www.example.com"
HEADERS = {"X-Refresh": "1", "User-Agent": "logwarden-bench"}
CLASSES = ("Accept-Encoding: br", "Accept-Encoding: gzip", "")
"""``--classes``: the README's three variant classes, one request each per refresh."""


class Load(NamedTuple):
    peers: tuple[str, ...]
    lanes: int
    pool: int
    classes: tuple[str, ...] = ()

    @property
    def in_flight(self) -> int:
        """What the dispatcher can have in flight: each peer's own lane, plus the other lanes
        as far as the pool has slots."""
        return min(len(self.peers) * self.lanes, len(self.peers) + self.pool)

    def workers(self) -> list[int]:
        """:attr:`in_flight` spread over the peers, for the references."""
        share, extra = divmod(self.in_flight, len(self.peers))
        return [share + (i < extra) for i in range(len(self.peers))]

    def headers(self) -> list[dict[str, str]]:
        """Each request's fields besides Host: one set per class."""
        sets = []
        for line in self.classes or ("",):
            name, _, value = line.partition(":")
            sets.append({**HEADERS, **({name.strip(): value.strip()} if name else {})})
        return sets


class Fanout:
    """One refresh's requests still to answer, and when it was submitted."""

    __slots__ = ("left", "submitted")

    def __init__(self, left: int) -> None:
        self.left = left
        self.submitted = time.time()


class Latencies(list[float]):
    """Stands in for logwarden's propagation histogram: keeps every fan-out's time."""

    def observe(self, seconds: float) -> None:
        self.append(seconds)


async def submitted(targets: Sequence[bytes], rate: float | None) -> AsyncIterator[bytes]:
    """``targets``, all at once or ``rate`` per second."""
    if rate is None:
        for target in targets:
            yield target
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, target in enumerate(targets):
        if i >= (loop.time() - start) * rate:
            await asyncio.sleep(i / rate - (loop.time() - start))
        yield target


async def via_logwarden(load: Load, targets: Sequence[bytes], rate: float | None) -> list[float]:
    from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
    from logwarden.deliver.modes import Bypass, Mode, Variants, parse_variant
    from logwarden.model import Refresh
    from logwarden.ops.metrics import Metrics

    variants = [parse_variant(c) for c in load.classes]
    mode: Mode = Variants([(v, Bypass(variant=v)) for v in variants]) if variants else Bypass()
    settings = DispatchSettings(mode=mode, peer_concurrency=load.lanes, concurrency=load.pool,
                                queue_size=len(targets) + 1)
    metrics = Metrics()
    metrics.propagation = latencies = Latencies()  # type: ignore[assignment]
    dispatcher = Dispatcher(load.peers, settings, metrics, propagation=True)
    dispatcher.start()
    async for target in submitted(targets, rate):
        dispatcher.submit(Refresh("http", HOST, target, "MISS", logged_at=time.time()))
    await asyncio.gather(*(peer.queue.join() for peer in dispatcher.peers))
    await dispatcher.close(5)
    outcomes = {peer: dict(counts) for peer, counts in metrics.outcomes().items()}
    if any(counts != {"ok": len(targets)} for counts in outcomes.values()):
        raise SystemExit(f"not every refresh was ok: {outcomes}")
    return latencies


Send = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


async def _references(load: Load, targets: Sequence[bytes], rate: float | None,
                      send: Send) -> list[float]:
    """Per peer a queue and its share of the workers, as the dispatcher has; each refresh's
    requests (one per class) go into every peer's queue."""
    headers = load.headers()
    queues: list[asyncio.Queue[tuple[bytes, dict[str, str], Fanout]]] = [
        asyncio.Queue() for _ in load.peers]
    latencies: list[float] = []

    async def work(peer: str, queue: asyncio.Queue[tuple[bytes, dict[str, str], Fanout]]) -> None:
        while True:
            target, fields, fanout = await queue.get()
            await send(peer, target, fields)
            fanout.left -= 1
            if not fanout.left:
                latencies.append(time.time() - fanout.submitted)
            queue.task_done()

    workers = [asyncio.create_task(work(peer, queue))
               for peer, queue, n in zip(load.peers, queues, load.workers(), strict=True)
               for _ in range(n)]
    async for target in submitted(targets, rate):
        fanout = Fanout(len(load.peers) * len(headers))
        for queue in queues:
            for fields in headers:
                queue.put_nowait((target, fields, fanout))
    await asyncio.gather(*(queue.join() for queue in queues))
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return latencies


async def via_aiohttp(load: Load, targets: Sequence[bytes], rate: float | None) -> list[float]:
    import aiohttp
    import yarl

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send(peer: str, target: bytes, fields: dict[str, str]) -> None:
            exact = yarl.URL(peer + target.decode(), encoded=True)
            async with session.head(exact, headers={"Host": HOST, **fields}) as response:
                await response.read()
                if response.status != 204:
                    raise SystemExit(f"aiohttp got {response.status}")

        return await _references(load, targets, rate, send)


async def via_prototype(load: Load, targets: Sequence[bytes], rate: float | None) -> list[float]:
    from bench.transport_proto import worker

    if rate is not None:
        raise SystemExit("the prototype measures throughput only")
    requests = [b"".join((b"HEAD %s HTTP/1.1\r\nHost: ", HOST.encode(), b"\r\n",
                          *(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in f.items()),
                          b"\r\n")) for f in load.headers()]
    runs: list[Coroutine[Any, Any, None]] = []
    for peer, n in zip(load.peers, load.workers(), strict=True):
        parts = urlsplit(peer)
        todo = (r % t for t in targets for r in requests)
        runs += [worker(parts.hostname or "", parts.port or 80, todo, True) for _ in range(n)]
    await asyncio.gather(*runs)
    return []


SENDERS = {"logwarden": via_logwarden, "aiohttp": via_aiohttp, "prototype": via_prototype}


async def measure(kind: str, load: Load, count: int, prefix: str,
                  rate: float | None) -> tuple[float, ...]:
    send = SENDERS[kind]
    probes = Load(load.peers[:1], 1, 1)
    await send(probes, [b"/" + prefix.encode() + p for p in PROBES], None)
    targets = [b"/%s/r/%d?v=1" % (prefix.encode(), i) for i in range(count)]
    started = time.perf_counter()
    latencies = await send(load, targets, rate)
    elapsed = time.perf_counter() - started
    if rate is not None:
        cuts = statistics.quantiles(latencies, n=100)
        return cuts[49] * 1000, cuts[98] * 1000, max(latencies) * 1000
    requests = count * len(load.peers) * len(load.headers())
    return requests / elapsed, count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SENDERS))
    parser.add_argument("peers")
    parser.add_argument("count", type=int)
    parser.add_argument("prefix")
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--classes", action="store_true")
    parser.add_argument("--pace", type=float)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    load = Load(tuple(args.peers.split(",")), args.lanes, args.pool,
                CLASSES if args.classes else ())
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        figures = runner.run(measure(args.kind, load, args.count, args.prefix, args.pace))
    print(" ".join(f"{f:.3f}" for f in figures))


if __name__ == "__main__":
    main()
