"""A small HTTP/1.1 client for refresh requests: exact targets, per-host SNI, kept-alive pools.

Why not a general-purpose client: NGINX keys its cache on the raw ``$request_uri``, so the
request line must carry the client's bytes unchanged (general clients normalise ``/./`` and
``//`` and re-quote); an https peer is reached at its own address while the TLS handshake
names the original host (SNI), so kept-alive connections are pooled per host, not per peer.
Why not h11 (this module's wire format until issue 21): its pure-Python state machine was a
third of a refresh's cost, and it allows only visible ASCII in the request target while NGINX
also takes raw bytes >= 0x80 and keys on them. So each connection is a bare
:class:`asyncio.Protocol`: the request is written in one piece (the target as given, checked by
:func:`logwarden.model.request_target_ok`; the method, Host and fields checked here, cached),
and the answer is parsed as it arrives (:class:`_Answering`): status line and fields, then the
body framed as RFC 9112 section 6.3 says: none after HEAD or for 1xx/204/304, ``chunked``,
``Content-Length``, or until the peer closes. 1xx answers before the final one are skipped.

One request at a time per connection (no pipelining: a timeout or a ``keepalive_requests``
close would leave the requests behind it undecided). A connection is kept for the next request
unless the answer said ``Connection: close`` (NGINX does on the last of its
``keepalive_requests``, or came as HTTP/1.0, or its body ran until the close), or was cut off
(a body over ``max_body``, a timeout). A kept-alive connection the peer closed while it was
idle is noticed (its ``connection_lost``) and never reused; one it closes just as a request
goes out, before any byte of answer, is replaced once by a fresh one: NGINX closes a kept-alive
connection only between requests, so the request was never handled and is not counted twice.

Errors, as raised by :meth:`PeerClient.fetch`::

    PeerError
     ├── ConnectError    no TCP connection (refused, unreachable)
     ├── TLSError        handshake or certificate verification failed
     ├── ProtocolError   the peer closed or broke the connection mid-exchange, or answered
     │                   what is not HTTP/1.x
     └── BodyTooLarge    fetch(): the body is over max_body

Timeouts: ``fetch(timeout=)`` raises TimeoutError, as ``asyncio.timeout`` does, which callers
may use instead; a request that timed out or was cancelled closes its connection.
:meth:`PeerClient.fetch` returns the status, the headers (a refresh mode judges them: e.g.
X-Cache-Status) and up to ``max_body`` bytes of the body (``logwarden warm``'s sitemaps).
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
from collections import deque
from typing import NamedTuple, cast
from urllib.parse import urlsplit

from logwarden.model import request_target_ok

MAX_HEAD = 65536
"""Bytes an answer's status line and fields may take (NGINX's own default for requests is
``large_client_header_buffers 4 8k``)."""
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")  # no CR, LF, NUL, DEL (HTAB is fine)
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_NO_BODY = frozenset({204, 304})


class PeerError(Exception):
    """A refresh request did not get an answer."""


class ConnectError(PeerError):
    pass


class TLSError(PeerError):
    pass


class ProtocolError(PeerError):
    pass


class BodyTooLarge(PeerError):
    pass


class Answer(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    """As received, names lower-cased."""
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None. A loop, not a generator:
        every answer is judged by its headers, and this is half the cost."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Closed(ProtocolError):
    def __init__(self, received: bool) -> None:
        super().__init__("connection closed before the answer was complete")
        self.received = received


@functools.lru_cache(maxsize=1024)
def _request_parts(method: str, host: str,
                   headers: tuple[tuple[str, str], ...]) -> tuple[bytes, bytes]:
    """What goes before the target (``METHOD ``) and after it (the version, Host and the
    fields, the blank line). Checked once per combination: a refresh sends the same few."""
    name = method.encode("ascii")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{method!r} is not a request method")
    fields = [b"Host: " + _value(host)]
    for key, value in headers:
        raw = key.encode("ascii")
        if not _TOKEN.fullmatch(raw):
            raise ValueError(f"{key!r} is not a header name")
        fields.append(raw + b": " + _value(value))
    return name + b" ", b" HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n"


def _value(text: str) -> bytes:
    raw = text.encode("ascii")
    if not _FIELD_VALUE.fullmatch(raw):
        raise ValueError(f"{text!r} cannot be a header value")
    return raw


class _Answering(asyncio.Protocol):
    """One connection; :meth:`send` writes a request and returns the future of its answer,
    which :meth:`data_received` fills in. ``key`` is its TLS server name ('' for http)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        """Done once the connection is gone (:meth:`connection_lost`)."""
        self.reusable = False
        """The last answer left the connection open for another request."""
        self.deadline = 0.0
        """Loop time by which the answer must be complete (:meth:`PeerClient.fetch`)."""
        self._waiter: asyncio.Future[Answer] | None = None
        self._buffer = bytearray()
        self._received = False
        self._no_body = False
        self._max_body = 0
        self._reader = self._head
        self._status = 0
        self._fields: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._left = 0  # Content-Length: bytes still to come; chunked: of the current chunk
        self._keep = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def send(self, request: bytes, no_body: bool, max_body: int) -> asyncio.Future[Answer]:
        assert self.transport is not None and self._waiter is None
        self._waiter = waiter = self.closed.get_loop().create_future()
        self.reusable = self._received = False
        self._no_body, self._max_body = no_body, max_body
        self.transport.write(request)
        return waiter

    @property
    def idle(self) -> bool:
        """Open and waiting for a request."""
        return (self.reusable and self._waiter is None and not self.closed.done()
                and self.transport is not None and not self.transport.is_closing())

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def time_out(self) -> None:
        self._fail(TimeoutError())

    # --- reading the answer -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: the connection is out of step
            self.close()
            return
        self._received = True
        self._buffer += data
        try:
            while self._waiter is not None and self._reader():
                pass
        except PeerError as exc:  # ProtocolError, BodyTooLarge
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.reusable = False
        if self._waiter is not None:
            if exc is None and self._reader == self._until_close:
                self._done()
            else:
                self._fail(_Closed(self._received))

    def _head(self) -> bool:
        """Status line and fields; True when the body's reader is set and may go on."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError(f"answer head over {MAX_HEAD} bytes")
            return False
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[:end + 4]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit() \
                or rest[3:4] not in (b"", b" "):
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        fields = []
        keep = version == b"HTTP/1.1"
        length = chunked = until_close = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1] in b" \t" or line[0] in b" \t":
                raise ProtocolError(f"bad header line: {line[:80]!r}")
            name = name.lower()
            value = value.strip(b" \t")
            fields.append((name, value))
            if name == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise ProtocolError(f"bad Content-Length: {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                until_close = not chunked
            elif name == b"connection" and b"close" in value.lower():
                keep = keep and b"close" not in (t.strip() for t in value.lower().split(b","))
        if status < 200:
            if status == 101:
                raise ProtocolError("101 Switching Protocols: no upgrade was asked for")
            return True  # an interim answer: the final one follows
        self._status, self._fields, self._keep = status, fields, keep
        self._body = bytearray()
        if self._no_body or status in _NO_BODY:
            self._done()
        elif chunked:
            self._reader = self._chunk_size
        elif until_close or length is None:
            self._keep = False
            self._reader = self._until_close
        elif length:
            self._left = length
            self._reader = self._sized
        else:
            self._done()
        return True

    def _sized(self) -> bool:
        buffer, left = self._buffer, self._left
        if len(buffer) < left:
            self._left -= len(buffer)
            self._keep_body(buffer)
            buffer.clear()
            return False
        self._keep_body(buffer[:left])
        del buffer[:left]
        self._done()
        return True

    def _chunk_size(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("chunk size line too long")
            return False
        size = bytes(buffer[:end]).split(b";", 1)[0].strip()
        del buffer[:end + 2]
        if not _HEX.fullmatch(size):
            raise ProtocolError(f"bad chunk size: {size[:40]!r}")
        self._left = int(size, 16)
        self._reader = self._chunk if self._left else self._trailer
        return True

    def _chunk(self) -> bool:
        buffer = self._buffer
        if len(buffer) < self._left + 2:
            taken = min(len(buffer), self._left)
            self._keep_body(buffer[:taken])
            del buffer[:taken]
            self._left -= taken
            return False
        if buffer[self._left:self._left + 2] != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
        self._keep_body(buffer[:self._left])
        del buffer[:self._left + 2]
        self._reader = self._chunk_size
        return True

    def _trailer(self) -> bool:
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):
            del buffer[:2]
            self._done()
            return True
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError(f"trailer over {MAX_HEAD} bytes")
            return False
        del buffer[:end + 4]  # trailer fields: NGINX sends none to a refresh; not kept
        self._done()
        return True

    def _until_close(self) -> bool:
        self._keep_body(self._buffer)
        self._buffer.clear()
        return False

    def _keep_body(self, data: bytes | bytearray) -> None:
        if self._max_body and data:
            self._body += data
            if len(self._body) > self._max_body:
                raise BodyTooLarge(f"body over {self._max_body} bytes")

    def _done(self) -> None:
        waiter, self._waiter = self._waiter, None
        self._reader = self._head
        # Bytes after the answer: nothing was asked for them, the connection is out of step.
        self.reusable = self._keep and not self._buffer
        if not self.reusable:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, self._fields, bytes(self._body)))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._buffer.clear()
        self._reader = self._head
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def host_port(url: str) -> tuple[str, int]:
    """The host and port an ``http(s)://`` URL names, the port defaulting to its scheme's."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def holder_name(url: str) -> str:
    """``ADDRESS:PORT`` of a node's URL as ``X-Logwarden-Source`` names it: the port spelled
    out, an IPv6 address in brackets, as the peers' nginx.conf map lists the nodes."""
    host, port = host_port(url)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    """Requests to one peer address; at most ``max_idle`` idle connections are kept, over
    all hosts (the most recently used is taken first, the oldest closed first)."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, max_idle: int) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.max_idle = max_idle
        self._idle: deque[_Answering] = deque()
        self._timed: set[_Answering] = set()
        """Connections awaiting an answer with a deadline."""
        self._alarm: asyncio.TimerHandle | None = None
        self._alarm_at = 0.0

    async def fetch(self, method: str, target: bytes, host: str,
                    headers: list[tuple[str, str]], *, max_body: int = 0,
                    timeout: float | None = None, body: bytes = b"") -> Answer:
        """Send one request with ``target`` as its exact request target (and ``body``, with
        its Content-Length: a CDN's purge API takes JSON); returns the answer
        with at most ``max_body`` bytes of body (more raises :class:`BodyTooLarge`; 0: the
        body is read and not kept). Without an answer within ``timeout`` seconds (connecting
        included) it raises TimeoutError, as ``asyncio.timeout`` around it would; but the
        client keeps one timer for all its requests instead of one per request, which cost
        a refresh ~4 µs, more than parsing its answer (bench/README.md, issue 21).

        The Host header (and SNI, over TLS) is ``host``. A kept-alive connection the peer
        closed meanwhile is replaced once, transparently, if it answered nothing. A target
        that :func:`~logwarden.model.request_target_ok` refuses, or a method, host or header
        that cannot be sent as it is, raises ValueError (the router refuses those targets and
        hosts before they get here).
        """
        if not request_target_ok(target):
            raise ValueError(f"{target!r} cannot be sent byte for byte")
        length = (("Content-Length", str(len(body))),) if body else ()
        before, after = _request_parts(method, host, (*headers, *length))
        request = before + target + after + body
        no_body = method == "HEAD"
        key = host if self.tls is not None else ""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, request, no_body, max_body, deadline)
            except _Closed as exc:
                if exc.received:
                    raise
                # a kept-alive connection the peer had closed: try a fresh one
        if deadline is None:
            conn = await self._connect(key)
        else:
            async with asyncio.timeout_at(deadline):
                conn = await self._connect(key)
        return await self._exchange(conn, request, no_body, max_body, deadline)

    async def _exchange(self, conn: _Answering, request: bytes, no_body: bool,
                        max_body: int, deadline: float | None) -> Answer:
        waiter = conn.send(request, no_body, max_body)
        if deadline is not None:
            conn.deadline = deadline
            self._timed.add(conn)
            if self._alarm is None or deadline < self._alarm_at:
                self._set_alarm(deadline)
        try:
            answer = await waiter
        except BaseException:
            conn.close()
            raise
        finally:
            self._timed.discard(conn)
        if conn.reusable:
            self._idle.append(conn)
            if len(self._idle) > self.max_idle:
                self._idle.popleft().close()
        return answer

    def _set_alarm(self, when: float) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_at = when
        self._alarm = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        """Fail the requests past their deadline; wake again at the next one."""
        self._alarm = None
        now = asyncio.get_running_loop().time()
        for conn in [c for c in self._timed if c.deadline <= now]:
            self._timed.discard(conn)
            conn.time_out()
        if self._timed:
            self._set_alarm(min(c.deadline for c in self._timed))

    async def _connect(self, key: str) -> _Answering:
        try:
            key.encode("idna")  # as ssl does, but before a socket exists (3.11 leaks it)
        except UnicodeError as exc:
            raise TLSError(f"{key!r} is not a TLS server name: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Answering(key), self.host, self.port, ssl=self.tls,
                server_hostname=key or None)
        except ssl.SSLError as exc:
            raise TLSError(str(exc)) from None
        except OSError as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from None
        return conn

    async def reachable(self) -> None:
        """Open and close a TCP connection (no TLS: no host name to verify); OSError if not."""
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, self.host, self.port)
        transport.close()

    def _take_idle(self, key: str) -> _Answering | None:
        idle = self._idle
        while idle:
            if idle[-1].key == key:  # always so over plain http
                conn = idle.pop()
            else:
                found = next((c for c in reversed(idle) if c.key == key), None)
                if found is None:
                    return None
                idle.remove(found)
                conn = found
            if conn.idle:
                return conn
            conn.close()
        return None

    async def aclose(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        closing = []
        while self._idle:
            conn = self._idle.popleft()
            conn.close()
            closing.append(conn.closed)
        await asyncio.gather(*closing)
