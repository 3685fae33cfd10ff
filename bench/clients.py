"""Refresh senders compared in benchmark 2; run one per process, pinned to one core:

    python -m bench.clients KIND URL COUNT CONCURRENCY PREFIX

KIND: ``logwarden`` (the real Dispatcher, storm control off: it measures sending capacity),
``aiohttp`` (a minimal loop, the reference), ``httpx`` (AsyncClient, what logwarden used before)
``httpx-aiohttp`` (httpx's API over an aiohttp transport) and ``protocol-proto``
(bench/transport_proto.py, a bare asyncio.Protocol prototype). Each sends the exactness probes
(``PROBES``, under ``/PREFIX``) first, then COUNT distinct HEAD requests, and prints requests/s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

PROBES = (b"/a/./b/../c//d?q=%2f&x=1;y=2&&z", b"/e%41%2e%2F?a=b=c&a=%7e~", b"/f//?x=1#")
"""Request targets that URL libraries like to normalise; the peer must log them unchanged."""
HOST = "www.example.com"
HEADERS = {"X-Refresh": "1", "User-Agent": "logwarden-bench"}

Sender = Callable[[str, list[bytes], int], Awaitable[None]]


CLASSES = ("Accept-Encoding: br", "Accept-Encoding: gzip", "")
"""``logwarden-3-classes``: the README's three variant classes, one request each per refresh."""


async def via_logwarden(url: str, targets: list[bytes], concurrency: int,
                        classes: tuple[str, ...] = ()) -> None:
    from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings
    from logwarden.deliver.modes import Bypass, Mode, Variants, parse_variant
    from logwarden.model import Refresh
    from logwarden.ops.metrics import Metrics

    variants = [parse_variant(c) for c in classes]
    mode: Mode = Variants([(v, Bypass(variant=v)) for v in variants]) if classes else Bypass()
    settings = DispatchSettings(mode=mode, peer_concurrency=concurrency,
                                queue_size=len(targets) + 1)
    dispatcher = Dispatcher((url,), settings, Metrics())
    dispatcher.start()
    for target in targets:
        dispatcher.submit(Refresh("http", HOST, target, "MISS"))
    await asyncio.gather(*(peer.queue.join() for peer in dispatcher.peers))
    await dispatcher.close(5)


async def via_aiohttp(url: str, targets: list[bytes], concurrency: int) -> None:
    import aiohttp
    import yarl

    headers = {"Host": HOST, **HEADERS}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(target: bytes) -> None:
            exact = yarl.URL(url + target.decode(), encoded=True)
            async with session.head(exact, headers=headers) as response:
                await response.read()

        await _workers(send, targets, concurrency)


async def via_httpx(url: str, targets: list[bytes], concurrency: int,
                    transport: object = None) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, transport=transport,  # type: ignore[arg-type]
                                 headers={"Host": HOST, **HEADERS}) as client:

        async def send(target: bytes) -> None:
            await client.head(url + target.decode())

        await _workers(send, targets, concurrency)


async def via_httpx_aiohttp(url: str, targets: list[bytes], concurrency: int) -> None:
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    transport = AiohttpTransport(client=lambda: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency)))
    await via_httpx(url, targets, concurrency, transport)


async def via_protocol(url: str, targets: list[bytes], concurrency: int) -> None:
    from bench.transport_proto import send_all

    await send_all(url, targets, concurrency, HOST)


async def _workers(send: Callable[[bytes], Awaitable[None]], targets: list[bytes],
                   concurrency: int) -> None:
    todo = iter(targets)

    async def worker() -> None:
        for target in todo:
            await send(target)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def via_logwarden_classes(url: str, targets: list[bytes], concurrency: int) -> None:
    await via_logwarden(url, targets, concurrency, CLASSES)


SENDERS: dict[str, Sender] = {"logwarden": via_logwarden,
                              "logwarden-3-classes": via_logwarden_classes, "aiohttp": via_aiohttp,
                              "httpx": via_httpx, "httpx-aiohttp": via_httpx_aiohttp,
                              "protocol-proto": via_protocol}


async def measure(kind: str, url: str, count: int, concurrency: int, prefix: str) -> float:
    send = SENDERS[kind]
    await send(url, [b"/" + prefix.encode() + p for p in PROBES], 1)
    targets = [b"/%s/r/%d?v=1" % (prefix.encode(), i) for i in range(count)]
    started = time.perf_counter()
    await send(url, targets, concurrency)
    return count / (time.perf_counter() - started)  # refreshes (fan-outs to one peer) per s


def main() -> None:
    kind, url, count, concurrency, prefix = sys.argv[1:6]
    rate = asyncio.run(measure(kind, url, int(count), int(concurrency), prefix))
    print(f"{rate:.1f}")


if __name__ == "__main__":
    main()
