"""A throwaway Redis server on loopback for bus mode (tests, benchmarks and ``make demo-bus``).

Debian's ``redis-server``, started on a free 127.0.0.1 port with its own directory, nothing
persisted (``--save '' --appendonly no``), in its own process group. :meth:`RedisServer.kill`
simulates a crash; :meth:`RedisServer.start` again brings it back on the same port. Extra
``args`` give a password, ACL users or ``--replicaof``; ``tls`` makes it answer on a TLS port
only; ``monitor`` makes it a Sentinel (``redis-server --sentinel``) watching that master.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from secrets import token_urlsafe
from types import TracebackType

from lab.cluster import free_port, wait_until
from lab.process import stop_process


def secret_file(directory: Path, *secrets: str, name: str = "bus-secret") -> Path:
    """A ``--bus-secret-file``: ``secrets`` one a line (default: a new random one), readable
    by its owner only."""
    path = Path(directory) / name
    path.touch(0o600)
    path.write_text("".join(f"{s}\n" for s in secrets or (token_urlsafe(24),)))
    return path


def find_redis() -> str | None:
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")


@dataclass(frozen=True)
class Tls:
    """The server's certificate and key, and the CA it checks client certificates against
    (clients without one are let in)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Monitor:
    """The master a Sentinel watches, failed over half a second after it stops answering."""

    name: str
    host: str
    port: int


class RedisServer:
    """One ``redis-server`` process; ``with`` or start()/stop(); never outlives its owner."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", args: Sequence[str] = (),
                 tls: Tls | None = None, monitor: Monitor | None = None) -> None:
        self.host = host
        self.port = free_port(host)
        self.dir = Path(workdir)
        self.url = f"{'rediss' if tls else 'redis'}://{host}:{self.port}/0"
        self.args = tuple(args)
        self.tls = tls
        self.monitor = monitor
        self._binary = find_redis() or "redis-server"
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        if self.monitor is not None:  # Sentinel rewrites its file: one of its own
            m = self.monitor
            conf = self.dir / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind {self.host}\ndir {self.dir}\n"
                            f"sentinel monitor {m.name} {m.host} {m.port} 1\n"
                            f"sentinel down-after-milliseconds {m.name} 500\n"
                            f"sentinel failover-timeout {m.name} 2000\n")
            return [self._binary, str(conf), "--sentinel"]
        port = ["--port", str(self.port)]
        if self.tls is not None:
            t = self.tls
            port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(t.cert),
                    "--tls-key-file", str(t.key), "--tls-ca-cert-file", str(t.ca),
                    "--tls-auth-clients", "optional"]
        return [self._binary, *port, "--bind", self.host, "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), *self.args]

    def start(self, timeout: float = 5.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._answers, timeout, what=f"redis-server on port {self.port}")
        except BaseException:
            self.kill()
            raise
        return self

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{log}")
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as plain:
                if self.tls is None:
                    return self._pong(plain)
                context = ssl.create_default_context(cafile=self.tls.ca)
                context.check_hostname = False
                with context.wrap_socket(plain) as sock:
                    return self._pong(sock)
        except OSError:
            return False

    @staticmethod
    def _pong(sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, password or not

    @property
    def pid(self) -> int | None:
        """The server's pid while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, sig, 5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
