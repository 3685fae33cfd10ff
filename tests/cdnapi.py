"""A local HTTP server standing in for a CDN's purge API: records what it receives."""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from lab.process import Running


@dataclass(frozen=True)
class Call:
    """One request as the API received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Names lower-cased."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        api = self.server.api
        with api.lock:
            api.calls.append(Call(self.command, self.requestline.split()[1],
                                  {k.lower(): v for k, v in self.headers.items()}, body))
            status = api.statuses.pop(0) if api.statuses else 200
        answer = json.dumps({"success": status < 300}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("Connection", "close")  # one request a connection: stop() joins all
        self.end_headers()
        self.close_connection = True
        self.wfile.write(answer)

    do_POST = do_PURGE = do_DELETE = do_GET = _record

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, api: RecordingAPI, host: str) -> None:
        self.api = api
        super().__init__((host, 0), _Handler)


@dataclass
class RecordingAPI(Running):
    """On ``host``, a free port; answers ``statuses`` in order, then 200 with JSON."""

    host: str = "127.0.0.1"
    statuses: list[int] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: _Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> RecordingAPI:
        self._server = _Server(self, self.host)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()
            self._server = self._thread = None

    def received(self) -> list[Call]:
        with self.lock:
            return list(self.calls)
