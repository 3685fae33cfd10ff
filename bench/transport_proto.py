"""Prototype, not used by logwarden: refresh requests over a bare ``asyncio.Protocol``.

What is left of a refresh's cost in logwarden's h11 client is h11's pure-Python state machine
(about a third of the samples, bench/README.md) and a stream reader/writer pair per connection.
A refresh is simple: a HEAD (or GET) with a known target, and an answer whose head ends with a
blank line and whose body length is given. This sends the request line byte for byte and
parses only the status line and ``Content-Length``; anything else (chunked bodies, 1xx,
upgrades) closes the connection, so a production version would fall back to h11 there.

    python -m bench.transport_proto URL COUNT CONCURRENCY   # prints requests/s
"""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import urlsplit

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
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

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


async def send_all(url: str, targets: list[bytes], concurrency: int, host: str,
                   method: bytes = b"HEAD") -> None:
    """Send every target over ``concurrency`` kept-alive connections."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    tail = b" HTTP/1.1\r\nHost: %s\r\nX-Refresh: 1\r\nUser-Agent: logwarden-proto\r\n\r\n" % (
        host.encode())
    todo = iter(targets)

    host_, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def worker() -> None:
        transport, conn = await loop.create_connection(_Exchange, host_, port)
        try:
            for target in todo:
                if conn.closing:
                    transport.close()
                    transport, conn = await loop.create_connection(_Exchange, host_, port)
                await conn.request(method + b" " + target + tail, no_body=method == b"HEAD")
        finally:
            transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    targets = [b"/proto/r/%d?v=1" % i for i in range(count)]
    started = time.perf_counter()
    asyncio.run(send_all(url, targets, concurrency, "www.example.com"))
    print(f"{count / (time.perf_counter() - started):.1f}")


if __name__ == "__main__":
    main()
