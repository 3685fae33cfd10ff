"""The refresh client (logwarden/deliver/peerhttp.py): its answer parser fed every split of
what peers send, then against a real NGINX on loopback: keepalive_requests, chunked and sized
bodies, HEAD, 304, ``Connection: close``, bodies over max_body, exact raw targets, and
scripted peers for the closes NGINX can race with."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from lab import NginxNode, free_port, wait_until
from lab.cluster import EXAMPLE_CONFIG, current_user
from logwarden.deliver.peerhttp import (
    Answer,
    BodyTooLarge,
    ConnectError,
    PeerClient,
    ProtocolError,
    _Answering,
)

HOST = "www.example.com"


# --- the parser, fed by hand ------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


OK = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Cache-Status: BYPASS\r\nContent-Length: 5\r\n\r\n"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n")

#: (what the peer sends, request method, status, body kept, connection reusable after it)
ANSWERS = {
    "sized": (OK + b"hello", "GET", 200, b"hello", True),
    "head": (OK, "HEAD", 200, b"", True),
    "204": (b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n", "GET", 204, b"", True),
    "304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", "GET", 304, b"", True),
    "chunked": (CHUNKED + b"\r\n", "GET", 200, b"hello world", True),
    "chunked-trailer": (CHUNKED + b"X-T: 1\r\n\r\n", "GET", 200, b"hello world", True),
    "100-continue": (b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"hello", "GET", 200, b"hello",
                     True),
    "close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "GET",
              200, b"ok", False),
    "close-token": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n"
                    b"Content-Length: 0\r\n\r\n", "GET", 200, b"", False),
    "http/1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", 200, b"ok", False),
    "reason-less": (b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", "GET", 404, b"", True),
    "extra-bytes": (OK + b"hellojunk", "GET", 200, b"hello", False),
}


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The whole, every cut in two, and byte by byte."""
    yield [data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


def feed(pieces: list[bytes], method: str = "GET",
         max_body: int = 100) -> tuple[asyncio.Future[Answer], _Answering]:
    conn = _Answering("")
    conn.connection_made(FakeTransport())
    waiter = conn.send(b"%s / HTTP/1.1\r\n\r\n" % method.encode(), method == "HEAD", max_body)
    for piece in pieces:
        conn.data_received(piece)
    return waiter, conn


@pytest.mark.parametrize("name", ANSWERS)
async def test_every_split_of_an_answer_parses_alike(name: str) -> None:
    data, method, status, body, reusable = ANSWERS[name]
    for pieces in splits(data):
        waiter, conn = feed(pieces, method)
        assert waiter.done(), (name, pieces)
        answer = waiter.result()
        assert (answer.status, answer.body, conn.reusable) == (status, body, reusable), pieces
        assert conn.transport is not None and conn.transport.is_closing() is not reusable


async def test_fields_are_kept_in_order_with_lower_case_names() -> None:
    waiter, _ = feed([OK + b"hello"])
    answer = waiter.result()
    assert answer.headers == [(b"server", b"nginx"), (b"x-cache-status", b"BYPASS"),
                              (b"content-length", b"5")]
    assert answer.header(b"x-cache-status") == b"BYPASS"
    assert answer.header(b"vary") is None


async def test_a_body_without_length_ends_with_the_connection() -> None:
    data = b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\nall of it"
    for pieces in splits(data):
        waiter, conn = feed(pieces)
        assert not waiter.done()
        conn.connection_lost(None)  # the peer's FIN
        assert waiter.result().body == b"all of it" and not conn.reusable


async def test_max_body_zero_reads_the_body_and_keeps_none() -> None:
    waiter, conn = feed([CHUNKED + b"\r\n"], max_body=0)
    assert waiter.result().body == b"" and conn.reusable


#: what the peer sends, and the error it must give
BROKEN = {
    "not-http": (b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError, "not an HTTP/1.x status line"),
    "bad-status": (b"HTTP/1.1 2x0 OK\r\n\r\n", ProtocolError, "status line"),
    "bad-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", ProtocolError,
                   "Content-Length"),
    "two-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                    ProtocolError, "Content-Length"),
    "folded": (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n\r\n", ProtocolError, "header line"),
    "no-colon": (b"HTTP/1.1 200 OK\r\nX-A\r\n\r\n", ProtocolError, "header line"),
    "bad-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                  ProtocolError, "chunk size"),
    "chunk-no-crlf": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
                      ProtocolError, "CRLF"),
    "upgrade": (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", ProtocolError, "101"),
    "too-large": (OK + b"hello", BodyTooLarge, "over 4 bytes"),
    "too-large-chunked": (CHUNKED, BodyTooLarge, "over 4 bytes"),
}


@pytest.mark.parametrize("name", BROKEN)
async def test_broken_answers_fail_and_close(name: str) -> None:
    data, error, message = BROKEN[name]
    for pieces in splits(data):
        waiter, conn = feed(pieces, max_body=4)
        with pytest.raises(error, match=message):
            waiter.result()
        assert conn.transport is not None and conn.transport.is_closing()
        assert not conn.reusable


async def test_a_close_mid_answer_says_whether_anything_came() -> None:
    for pieces, received in (([], False), ([OK[:10]], True), ([OK + b"hel"], True)):
        waiter, conn = feed(pieces)
        conn.connection_lost(ConnectionResetError())
        with pytest.raises(ProtocolError, match="closed before the answer") as caught:
            waiter.result()
        assert caught.value.received is received  # type: ignore[attr-defined]


async def test_bytes_nobody_asked_for_end_an_idle_connection() -> None:
    waiter, conn = feed([OK + b"hello"])
    assert waiter.result().status == 200 and conn.idle
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert not conn.idle and conn.transport is not None and conn.transport.is_closing()


async def test_methods_hosts_and_fields_that_cannot_be_sent_are_refused() -> None:
    client = PeerClient("127.0.0.1", free_port(), None, 1)  # nothing listens: nothing is sent
    for method, host, headers in (("GE T", HOST, []), ("GET", "a\r\nX-Evil: 1", []),
                                  ("GET", HOST, [("X-A", "1\r\nX-Evil: 1")]),
                                  ("GET", HOST, [("X A", "1")]), ("GET", HOST, [("X-A", "\0")]),
                                  ("GET", HOST, [("X-A", "caf\u00e9")])):
        with pytest.raises(ValueError):
            await client.fetch(method, b"/", host, headers)
    with pytest.raises(ConnectError):
        await client.fetch("GET", b"/", HOST, [("X-A", "a\tb")])


# --- scripted peers: the closes NGINX can race with ---------------------------------------------


class ScriptedPeer:
    """Answers each request on a connection with the next of ``script``: bytes to send, then
    whether to close. ``b""`` with close: read the request and close without answering."""

    def __init__(self, script: list[tuple[bytes, bool]]) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> ScriptedPeer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while self.script:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                data, close = self.script.pop(0)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def scripted(script: list[tuple[bytes, bool]],
                   max_idle: int = 1) -> AsyncIterator[tuple[ScriptedPeer, PeerClient]]:
    """A scripted peer and a client of it, both closed however the test ends."""
    peer = await ScriptedPeer(script).start()
    client = PeerClient("127.0.0.1", peer.port, None, max_idle)
    try:
        yield peer, client
    finally:
        await client.aclose()
        await peer.close()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_an_idle_connection_the_peer_closed_is_not_used() -> None:
    async with scripted([(NO_CONTENT, True), (NO_CONTENT, False)]) as (peer, client):
        assert (await client.fetch("HEAD", b"/1", HOST, [])).status == 204
        await asyncio.wait_for(client._idle[0].closed, 5)  # the peer's FIN, while it is idle
        assert (await client.fetch("HEAD", b"/2", HOST, [])).status == 204
    assert (len(peer.requests), peer.connections) == (2, 2)


async def test_a_request_on_a_connection_closed_unanswered_goes_once_more_on_a_fresh_one(
) -> None:
    """The race at NGINX's keepalive_timeout: it closes as the request arrives, answering
    nothing; the request goes again on a new connection. A close after part of an answer is
    an error, not a retry: the peer may have handled it."""
    script = [(NO_CONTENT, False), (b"", True), (NO_CONTENT, False),
              (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart", True), (NO_CONTENT, False)]
    async with scripted(script) as (peer, client):
        assert (await client.fetch("GET", b"/1", HOST, [])).status == 204
        assert (await client.fetch("GET", b"/2", HOST, [])).status == 204  # retried once
        with pytest.raises(ProtocolError, match="closed before the answer"):
            await client.fetch("GET", b"/3", HOST, [])
        assert (await client.fetch("GET", b"/4", HOST, [])).status == 204
    assert [r.split(b" ")[1] for r in peer.requests] == [b"/1", b"/2", b"/2", b"/3", b"/4"]
    assert peer.connections == 3


async def test_a_cancelled_request_closes_its_connection() -> None:
    async with scripted([(b"HTTP/1.1 200 OK\r\n", False), (NO_CONTENT, False)]) as (peer, client):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.fetch("GET", b"/slow", HOST, [])
        assert not client._idle
        assert (await client.fetch("GET", b"/next", HOST, [])).status == 204
    assert peer.connections == 2


async def test_fetch_timeouts_fail_each_request_at_its_own_deadline() -> None:
    """One timer serves every request: a later request with a shorter timeout still ends
    first, and an answered one is not touched."""
    script = [(b"HTTP/1.1 200 OK\r\n", False)] * 2 + [(NO_CONTENT, False)]
    async with scripted(script, max_idle=2) as (peer, client):
        loop = asyncio.get_running_loop()
        started = loop.time()
        ended: dict[str, float] = {}

        async def slow(name: str, timeout: float) -> None:
            with pytest.raises(TimeoutError):
                await client.fetch("GET", b"/" + name.encode(), HOST, [], timeout=timeout)
            ended[name] = loop.time() - started

        long = asyncio.create_task(slow("long", 0.6))
        await asyncio.sleep(0.05)
        await slow("short", 0.2)
        await long
        assert 0.24 <= ended["short"] < 0.5 and 0.59 <= ended["long"] < 0.9, ended
        assert (await client.fetch("GET", b"/ok", HOST, [], timeout=0.2)).status == 204
    assert peer.connections == 3  # each timed-out request closed its connection


# --- a real NGINX ------------------------------------------------------------------------------

BIG = bytes(range(256)) * 400  # 100 KiB, over a socket read
KEEPALIVE_REQUESTS = 3


def nginx_config(node: NginxNode) -> str:
    p = node.prefix
    temp = "".join(f"{kind}_temp_path {p}/tmp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
user {current_user()};
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    {temp}
    log_format conn '$connection $connection_requests $request_method $request_uri $status';
    access_log {p}/logs/access.log conn;
    keepalive_requests {KEEPALIVE_REQUESTS};
    server {{
        listen {node.address}:{node.port};
        root {p}/html;
        location /204 {{ return 204; }}
        location = /close {{ keepalive_timeout 0; return 200 "closing"; }}
        location /gz/ {{ gzip on; gzip_min_length 1; gzip_types *; }}
        location / {{ }}
    }}
}}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NginxNode]:
    node = NginxNode("p", "127.0.0.41", EXAMPLE_CONFIG, "http://127.0.0.1:9", (), tmp_path,
                     config=nginx_config)
    for path in ("html/big.bin", "html/gz/big.bin"):
        (node.prefix / path).parent.mkdir(parents=True, exist_ok=True)
        (node.prefix / path).write_bytes(BIG)
    with node:
        yield node


def logged(node: NginxNode, count: int) -> list[list[str]]:
    """The access log's lines, split, once it has ``count`` (NGINX writes after answering)."""
    def lines() -> list[list[str]]:
        return [ln.split() for ln in node.access_log.read_text().splitlines()]

    wait_until(lambda: len(lines()) >= count, timeout=5, what=f"{count} access-log lines")
    return lines()


@pytest.mark.nginx
async def test_keepalive_requests_close_loses_and_repeats_nothing(node: NginxNode) -> None:
    client = PeerClient(node.address, node.port, None, 2)
    for i in range(10):
        method = ("HEAD", "GET")[i % 2]
        answer = await client.fetch(method, b"/204?i=%d" % i, HOST, [])
        assert answer.status == 204
    await client.aclose()
    lines = logged(node, 10)
    assert [ln[3] for ln in lines] == [f"/204?i={i}" for i in range(10)]
    assert [int(ln[1]) for ln in lines] == [1, 2, 3] * 3 + [1]  # requests per connection
    assert len({ln[0] for ln in lines}) == 4


@pytest.mark.nginx
async def test_bodies_as_nginx_frames_them_on_one_connection(node: NginxNode) -> None:
    client = PeerClient(node.address, node.port, None, 1)
    big = await client.fetch("GET", b"/big.bin", HOST, [], max_body=len(BIG))
    assert (big.status, big.body, big.header(b"content-length")) == (200, BIG, b"102400")
    head = await client.fetch("HEAD", b"/big.bin", HOST, [])
    assert (head.status, head.body, head.header(b"content-length")) == (200, b"", b"102400")
    etag = head.header(b"etag")
    assert etag is not None
    same = await client.fetch("GET", b"/big.bin", HOST, [("If-None-Match", etag.decode())],
                              max_body=len(BIG))
    assert (same.status, same.body) == (304, b"")
    zipped = await client.fetch("GET", b"/gz/big.bin", HOST, [("Accept-Encoding", "gzip")],
                                max_body=len(BIG))
    assert zipped.header(b"transfer-encoding") == b"chunked"
    assert gzip.decompress(zipped.body) == BIG
    discarded = await client.fetch("GET", b"/gz/big.bin", HOST, [("Accept-Encoding", "gzip")])
    assert (discarded.status, discarded.body) == (200, b"")
    await client.aclose()
    lines = logged(node, 5)
    assert [ln[1] for ln in lines] == ["1", "2", "3", "1", "2"]  # kept alive throughout
    assert len({ln[0] for ln in lines}) == 2


@pytest.mark.nginx
async def test_a_body_over_max_body_fails_and_the_next_request_gets_a_new_connection(
    node: NginxNode,
) -> None:
    client = PeerClient(node.address, node.port, None, 1)
    with pytest.raises(BodyTooLarge):
        await client.fetch("GET", b"/big.bin", HOST, [], max_body=1000)
    assert (await client.fetch("GET", b"/204", HOST, [])).status == 204
    await client.aclose()
    assert len({ln[0] for ln in logged(node, 2)}) == 2


@pytest.mark.nginx
async def test_connection_close_answers_are_each_on_a_new_connection(node: NginxNode) -> None:
    client = PeerClient(node.address, node.port, None, 1)
    for _ in range(3):
        answer = await client.fetch("GET", b"/close", HOST, [], max_body=100)
        assert (answer.status, answer.body, answer.header(b"connection")) == (
            200, b"closing", b"close")
    assert not client._idle
    await client.aclose()
    assert [ln[1] for ln in logged(node, 3)] == ["1", "1", "1"]


@pytest.mark.nginx
async def test_raw_targets_arrive_byte_for_byte(node: NginxNode) -> None:
    client = PeerClient(node.address, node.port, None, 1)
    targets = [b"/204?a=/./b/../c//d&q=%2f", b"/204/caf\xc3\xa9?x=%7e~", b"/204//?x=1#"]
    for target in targets:
        assert (await client.fetch("HEAD", target, HOST, [])).status == 204
    await client.aclose()
    # NGINX's log escapes bytes >= 0x80 as \xHH
    assert [ln[3] for ln in logged(node, 3)] == [
        "/204?a=/./b/../c//d&q=%2f", "/204/caf\\xC3\\xA9?x=%7e~", "/204//?x=1#"]


# --- the same on uvloop (the daemon's loop when the extra is installed) -------------------------

ON_NGINX = (test_keepalive_requests_close_loses_and_repeats_nothing,
            test_bodies_as_nginx_frames_them_on_one_connection,
            test_a_body_over_max_body_fails_and_the_next_request_gets_a_new_connection,
            test_connection_close_answers_are_each_on_a_new_connection,
            test_raw_targets_arrive_byte_for_byte)
SCRIPTED = (test_an_idle_connection_the_peer_closed_is_not_used,
            test_a_request_on_a_connection_closed_unanswered_goes_once_more_on_a_fresh_one,
            test_a_cancelled_request_closes_its_connection,
            test_fetch_timeouts_fail_each_request_at_its_own_deadline)


@pytest.mark.nginx
@pytest.mark.parametrize("test", ON_NGINX, ids=lambda t: t.__name__[5:])
def test_on_uvloop_with_nginx(test: Callable[[NginxNode], Awaitable[None]],
                              node: NginxNode) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test(node))


@pytest.mark.parametrize("test", SCRIPTED, ids=lambda t: t.__name__[5:])
def test_on_uvloop_scripted(test: Callable[[], Awaitable[None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test())
