"""A real HTTP/1.1 origin on loopback for the lab cluster: versioned bodies, recorded requests.

Every path (the request target without its query) has a version counter that starts at 1 and
moves only when the test calls :meth:`Origin.bump`, so a response body tells which copy a cache
node holds. ``?ma=N`` sets ``Cache-Control: max-age=N`` (default 60), ``?cc=VALUE`` the whole
``Cache-Control`` (``no-store``, ``private``...), ``?cookie=1`` adds a ``Set-Cookie``,
``?etag=1`` an ETag and ``?lm=1`` a Last-Modified per version; ``?split=1`` and ``?flap=1``
move the version by themselves (:meth:`Origin.version_for`). GET and
HEAD are answered; HEAD sends the same headers without a body. :meth:`Origin.put` serves a
fixed document at a path (a sitemap), and :meth:`Origin.fail` makes every request fail until
:meth:`Origin.heal`: with an HTTP status, or by closing the connection without an answer
(NGINX's ``error``).

The server runs on its own thread; :meth:`Origin.stop` shuts the listener, cuts the kept-alive
connections NGINX holds open, and joins every handler thread, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from lab.process import Running

DEFAULT_MAX_AGE = 60
LAST_MODIFIED_BASE = 1_767_225_600  # 2026-01-01: version N was modified N hours later
CLOSE = "close"
"""``Origin.fail(CLOSE)``: close each connection without answering (NGINX logs 502, ``error``)."""


@dataclass(frozen=True)
class OriginRequest:
    """One request as the origin received it; ``target`` is the raw request target."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def _max_age(target: str) -> int:
    query = target.partition("?")[2]
    try:
        return max(0, int(parse_qs(query).get("ma", [DEFAULT_MAX_AGE])[0]))
    except ValueError:
        return DEFAULT_MAX_AGE


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real origin behind `keepalive`
    # Headers and body go out in two writes; with Nagle on, the body waits for NGINX's delayed
    # ACK (~40 ms), long after a HEAD client already has its answer.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        # The raw target from the request line: self.path is not always raw (gh-87389 folds a
        # leading "//" into "/"). Bytes were decoded as latin-1, so encoding back is exact.
        target = self.requestline.split()[1]
        origin = self.server.origin
        origin._record(OriginRequest(self.command, target, dict(self.headers.items())))
        failure = origin.failure
        if isinstance(failure, str):  # CLOSE
            self.close_connection = True
            with contextlib.suppress(OSError):  # NGINX may have given up already
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        path = target.split("?", 1)[0]
        query = parse_qs(target.partition("?")[2])
        version = origin.version_for(path, query, self.headers.get("User-Agent", ""))
        vary = "vary=ae" in target.partition("?")[2].split("&")
        encoding = self.headers.get("Accept-Encoding", "")
        body, content_type = origin.document(path) or (
            f"version={version} path={target}"
            f"{f' encoding={encoding}' if vary else ''}\n".encode("latin-1"), "text/plain")
        self.send_response(failure or 200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", query.get("cc", [f"max-age={_max_age(target)}"])[0])
        if "etag" in query:  # ?etag=1: a strong ETag per version
            self.send_header("ETag", f'"v{version}"')
        if "lm" in query:  # ?lm=1: a Last-Modified per version, an hour apart
            self.send_header("Last-Modified", formatdate(LAST_MODIFIED_BASE + 3600 * version,
                                                         usegmt=True))
        if "cookie" in query:  # ?cookie=1: a session cookie, as logged-in pages send
            self.send_header("Set-Cookie", f"session={version}; Path=/; HttpOnly")
        self.send_header("X-Version", str(version))
        if vary:  # ?vary=ae: as an app server that compresses per Accept-Encoding
            self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded in Origin.requests; keep the test output clean


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # stop() joins the handler threads
    block_on_close = True

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(), i.e. a reverse DNS lookup; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection NGINX reset (after ``fail(CLOSE)``, or at stop) is not a test error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        """Wake handler threads blocked reading the next request on a kept-alive connection."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)


class Origin(Running):
    """Versioned origin on ``127.0.0.1:<free port>``; start()/stop() or a ``with`` block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._armed: set[str] = set()
        self._documents: dict[str, tuple[bytes, str]] = {}
        self._requests: list[OriginRequest] = []
        self.failure: int | str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> Origin:
        if self._server is not None:
            raise RuntimeError("origin already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"lab-origin-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        if thread is not None:
            server.shutdown()  # serve_forever returns: no new connections
            thread.join()
        server.cut_connections()
        server.server_close()  # joins the handler threads (block_on_close)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # address ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("origin not started")
        return self._server.server_port

    @property
    def address(self) -> str:
        """``host:port``, as in an NGINX ``upstream`` block."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # versions and requests -------------------------------------------------------------------

    def version(self, path: str) -> int:
        with self._lock:
            return self._versions.get(path, 1)

    def version_for(self, path: str, query: dict[str, list[str]], agent: str) -> int:
        """The version a request gets: ``?flap=1`` bumps it on every fetch; ``?split=1`` on
        the first fetch by logwarden (a refresh) after a client's, as if the origin changed
        between the triggering node's fetch and its peers' refreshes."""
        with self._lock:
            if "flap" in query:
                self._versions[path] = self._versions.get(path, 1) + 1
            elif "split" in query:
                if not agent.startswith("logwarden/"):
                    self._armed.add(path)
                elif path in self._armed:
                    self._armed.discard(path)
                    self._versions[path] = self._versions.get(path, 1) + 1
            return self._versions.get(path, 1)

    def bump(self, path: str) -> int:
        """Publish a new version of ``path`` (no query); returns it."""
        with self._lock:
            self._versions[path] = self._versions.get(path, 1) + 1
            return self._versions[path]

    def put(self, path: str, body: bytes, content_type: str = "application/xml") -> None:
        """Serve ``body`` at ``path`` (any query) instead of the versioned text."""
        with self._lock:
            self._documents[path] = (body, content_type)

    def document(self, path: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._documents.get(path)

    def fail(self, failure: int | str) -> None:
        """Answer every request with status ``failure`` (e.g. 500), or :data:`CLOSE` them."""
        if failure != CLOSE and not (isinstance(failure, int) and 400 <= failure <= 599):
            raise ValueError(f"failure must be an HTTP error status or {CLOSE!r}: {failure!r}")
        self.failure = failure

    def heal(self) -> None:
        self.failure = None

    @property
    def requests(self) -> list[OriginRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[OriginRequest]:
        return [r for r in self.requests if r.path == path]

    def _record(self, request: OriginRequest) -> None:
        with self._lock:
            self._requests.append(request)
