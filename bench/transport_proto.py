"""Benchmark 2's floor: refresh requests over a bare ``asyncio.Protocol`` and nothing else.

The prototype that logwarden's client (logwarden/deliver/peerhttp.py) grew out of, kept as
the reference for what the event loop alone costs per request: it writes a prepared request
and parses only the status line and ``Content-Length`` (anything else fails), reconnecting
after ``Connection: close``. No dispatcher (queues, breaker, retries, timeouts, metrics), no
checks, no chunked bodies: what logwarden costs beyond it is the price of those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

_HEAD_END = b"\r\n\r\n"


class _Exchange(asyncio.Protocol):
    """One kept-alive connection; ``request()`` sends and resolves with the status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.no_body = False
        self.closing = False
        """The peer said ``Connection: close`` (NGINX does after keepalive_requests)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def request(self, data: bytes, no_body: bool) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.no_body = no_body
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(_HEAD_END)
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).split(b"\r\n")
        status = int(head[0].split(b" ", 2)[1])
        length = 0 if self.no_body or status in (204, 304) else _content_length(head)
        if length is None or len(self.buffer) < end + 4 + length:
            if length is None:
                self._fail(ConnectionError("no Content-Length: not handled by the prototype"))
            return
        del self.buffer[:end + 4 + length]
        self.closing = any(line.lower() == b"connection: close" for line in head)
        waiter, self.waiter = self.waiter, None
        waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("peer closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


def _content_length(head: list[bytes]) -> int | None:
    for line in head[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
        if name.strip().lower() == b"transfer-encoding":
            return None
    return 0


async def worker(host: str, port: int, requests: Iterator[bytes], no_body: bool) -> None:
    """Send each of ``requests`` (whole requests, as bytes) over one kept-alive connection."""
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(_Exchange, host, port)
    try:
        for request in requests:
            if conn.closing:
                transport.close()
                transport, conn = await loop.create_connection(_Exchange, host, port)
            if await conn.request(request, no_body) != 204:
                raise SystemExit("the prototype got an answer other than 204")
    finally:
        transport.close()
