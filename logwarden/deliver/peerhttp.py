"""A small HTTP/1.1 client for refresh requests: exact targets, per-host SNI, kept-alive pools.

Why not a general-purpose client: NGINX keys its cache on the raw ``$request_uri``, so the
request line must carry the client's bytes unchanged (general clients normalise ``/./`` and
``//`` and re-quote); an https peer is reached at its own address while the TLS handshake
names the original host (SNI), so kept-alive connections are pooled per host, not per peer.
The wire format is h11's, but for the request target: h11 allows only visible ASCII there (the
RFC's grammar), while NGINX also takes raw bytes >= 0x80 (UTF-8 as some clients send it) and
keys on them. So h11 writes the request with a one-byte placeholder target, which this module
swaps for the real one (h11's state only follows the method and headers); the target is
checked here instead (:func:`logwarden.model.request_target_ok`). Otherwise this module only
moves bytes and owns the connections.

Errors, as raised by :meth:`PeerClient.fetch`::

    PeerError
     ├── ConnectError    no TCP connection (refused, unreachable)
     ├── TLSError        handshake or certificate verification failed
     ├── ProtocolError   the peer closed or broke the connection mid-exchange
     └── BodyTooLarge    fetch(): the body is over max_body

Timeouts are the caller's (``asyncio.timeout``); a cancelled request closes its connection.
:meth:`PeerClient.fetch` returns the status, the headers (a refresh mode judges them: e.g.
X-Cache-Status) and up to ``max_body`` bytes of the body (``logwarden warm``'s sitemaps).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

import h11

from logwarden.model import request_target_ok

_READ_SIZE = 65536
_PLACEHOLDER = b"/"
"""The target h11 writes into the request line, replaced by the real one before sending."""


class PeerError(Exception):
    """A refresh request did not get an answer."""


class ConnectError(PeerError):
    pass


class TLSError(PeerError):
    pass


class ProtocolError(PeerError):
    pass


class Answer(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    """As received, names lower-cased (h11)."""
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None. A loop, not a generator:
        every answer is judged by its headers, and this is half the cost."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class BodyTooLarge(PeerError):
    pass


class _Connection:
    """One kept-alive connection; ``key`` is the TLS server name ('' for plain http)."""

    def __init__(self, key: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def exchange(self, request: h11.Request, target: bytes, max_body: int = 0,
                       payload: bytes = b"") -> Answer:
        """Send ``request`` (its target the placeholder) with ``target`` as its request target
        and ``payload`` as its body, and read the whole answer; keeps up to ``max_body`` body
        bytes."""
        response, received, body = None, False, bytearray()
        head = self.h11.send(request)
        start = len(request.method) + 1  # h11 wrote b"METHOD / HTTP/1.1\r\nHost: ..."
        try:
            self.writer.write(b"".join((head[:start], target, head[start + len(_PLACEHOLDER):],
                                        self.h11.send(h11.Data(data=payload)) if payload else b"",
                                        self.h11.send(h11.EndOfMessage()))))
            await self.writer.drain()
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await self.reader.read(_READ_SIZE)
                    received = received or bool(data)
                    self.h11.receive_data(data)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data) and max_body:
                    body += event.data
                    if len(body) > max_body:
                        raise BodyTooLarge(f"body over {max_body} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    return Answer(response.status_code, list(response.headers), bytes(body))
                elif isinstance(event, h11.ConnectionClosed):
                    raise _Closed(received)
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(f"bad answer: {exc}") from None
        except OSError as exc:  # reset, broken pipe, TLS alert
            raise _Closed(received) from exc

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        self.writer.close()


class _Closed(ProtocolError):
    def __init__(self, received: bool) -> None:
        super().__init__("connection closed before the answer was complete")
        self.received = received


def host_port(url: str) -> tuple[str, int]:
    """The host and port an ``http(s)://`` URL names, the port defaulting to its scheme's."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def source_address(host: str, port: int) -> str | None:
    """The local address a connection to ``host:port`` leaves from: the one a peer's allow-list
    must hold (unless NAT or a proxy sits between). None when there is no route. A connected
    UDP socket asks the kernel's routing without sending anything."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            return str(sock.getsockname()[0])
    except OSError:
        return None


class PeerClient:
    """Requests to one peer address; at most ``max_idle`` idle connections are kept."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, max_idle: int) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.max_idle = max_idle
        self._idle: deque[_Connection] = deque()

    async def fetch(self, method: str, target: bytes, host: str,
                    headers: list[tuple[str, str]], *, max_body: int = 0,
                    body: bytes = b"") -> Answer:
        """Send one request with ``target`` as its exact request target (and ``body``, with its
        Content-Length: a CDN's purge API takes JSON); returns the answer with at most
        ``max_body`` bytes of body (more raises :class:`BodyTooLarge`).

        The Host header (and SNI, over TLS) is ``host``. A kept-alive connection the peer
        closed meanwhile is replaced once, transparently, if it answered nothing. A target
        that :func:`~logwarden.model.request_target_ok` refuses raises ValueError (the router
        refuses those before they get here).
        """
        if not request_target_ok(target):
            raise ValueError(f"{target!r} cannot be sent byte for byte")
        length = [("Content-Length", str(len(body)))] if body else []
        request = h11.Request(method=method, target=_PLACEHOLDER,
                              headers=[("Host", host), *headers, *length])
        key = host if self.tls is not None else ""
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, request, target, max_body, body)
            except _Closed as exc:
                if exc.received:
                    raise
                # a kept-alive connection the peer had closed: try a fresh one
        return await self._exchange(await self._connect(key), request, target, max_body, body)

    async def _exchange(self, conn: _Connection, request: h11.Request, target: bytes,
                        max_body: int, body: bytes = b"") -> Answer:
        try:
            answer = await conn.exchange(request, target, max_body, body)
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return answer

    async def _connect(self, key: str) -> _Connection:
        try:
            key.encode("idna")  # as ssl does, but before a socket exists (3.11 leaks it)
        except UnicodeError as exc:
            raise TLSError(f"{key!r} is not a TLS server name: {exc}") from None
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.tls, server_hostname=key or None)
        except ssl.SSLError as exc:
            raise TLSError(str(exc)) from None
        except OSError as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(key, reader, writer)

    async def reachable(self) -> None:
        """Open and close a TCP connection (no TLS: no host name to verify); OSError if not."""
        _, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def _take_idle(self, key: str) -> _Connection | None:
        while conn := next((c for c in reversed(self._idle) if c.key == key), None):
            self._idle.remove(conn)
            if not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if not conn.reusable or conn.reader.at_eof():
            conn.close()
            return
        conn.h11.start_next_cycle()
        self._idle.append(conn)
        while len(self._idle) > self.max_idle:
            self._idle.popleft().close()

    async def aclose(self) -> None:
        while self._idle:
            conn = self._idle.popleft()
            conn.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await conn.writer.wait_closed()
