"""A throwaway Redis server on loopback for bus mode (tests and ``make demo-bus``).

Debian's ``redis-server``, started on a free 127.0.0.1 port with its own directory, nothing
persisted (``--save '' --appendonly no``), in its own process group. :meth:`RedisServer.kill`
simulates a crash; :meth:`RedisServer.start` again brings it back on the same port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from lab.cluster import free_port, wait_until
from lab.process import stop_process


def find_redis() -> str | None:
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")


class RedisServer:
    """One ``redis-server`` process; ``with`` or start()/stop(); never outlives its owner."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.dir = Path(workdir)
        self.url = f"redis://{host}:{self.port}/0"
        self._binary = find_redis() or "redis-server"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
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
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

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
