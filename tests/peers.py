"""Small real HTTP peers on loopback for dispatcher tests: they record, stall or fail on cue."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from lab import free_port


@dataclass
class RecordingPeer:
    """Answers with ``statuses`` in order, then ``status``; records every raw request head.
    Every answer says ``X-Cache-Status: <cache_status>`` (None: no such header), so by default
    a bypass refresh to it is verified ``ok``, as a correctly wired NGINX peer answers."""

    status: int = 200
    cache_status: str | None = "BYPASS"
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    url: str = ""

    async def start(self) -> RecordingPeer:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.url = f"http://{self.host}:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
            await writer.wait_closed()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.heads.append(head)
                await asyncio.sleep(self.delay)
                status = self.statuses.pop(0) if self.statuses else self.status
                body = b"" if head.startswith(b"HEAD ") else b"ok"
                cache = (b"" if self.cache_status is None
                         else b"X-Cache-Status: %s\r\n" % self.cache_status.encode())
                writer.write(b"HTTP/1.1 %d X\r\n%sContent-Length: 2\r\n\r\n%s"
                             % (status, cache, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def request_lines(self) -> list[bytes]:
        return [h.split(b"\r\n", 1)[0] for h in self.heads]

    def headers(self, i: int) -> dict[bytes, bytes]:
        lines = self.heads[i].split(b"\r\n")[1:]
        return {k.lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines if ln)}


def dead_url() -> str:
    """A loopback URL with nothing listening (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def silent_url(scheme: str = "http") -> Iterator[str]:
    """A loopback URL that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
