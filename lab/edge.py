"""The tier in front of the cluster, on loopback: HAProxy round-robin over the lab's NGINX nodes
(the load balancer of the original problem), and a Varnish edge cache in front of it, rendered
from ``examples/varnish.vcl`` as :func:`lab.cluster.render_config` renders nginx.conf: every
production value is replaced literally and the replacement checked.

Both run in the foreground in a process group of their own and are stopped with
:func:`lab.process.stop_process`. Varnish runs with ``-j none``: as root its default jail
drops to the ``vcache`` user, which cannot read a VCL under pytest's 0700 temporary folder.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from lab.cluster import Response, _replace, free_port, request, wait_until
from lab.process import Running, stop_process

EXAMPLE_VCL = Path(__file__).resolve().parent.parent / "examples" / "varnish.vcl"
INSTALL_HINT = "Debian: apt-get install -y varnish haproxy (make system-deps)"
_PROD_BACKEND = '.host = "10.0.0.100";   # the load balancer in front of the NGINX nodes\n' \
                '    .port = "80";'
_PROD_ACL = '    "10.0.0.1";\n    "10.0.0.2";\n    "10.0.0.3";\n'
_PROD_TOKEN = '"CHANGE-ME-PURGE-TOKEN"'
_EDGE_TTL = "# set beresp.ttl = 1h;  # EDGE TTL"


def find(name: str) -> str | None:
    """``varnishd`` or ``haproxy``: on PATH, else Debian's /usr/sbin."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def render_vcl(template: str, *, backend: str, agents: Sequence[str], token: str,
               ttl: int | None = None) -> str:
    """``examples/varnish.vcl`` with ``backend`` (``HOST:PORT``), the agents' addresses in the
    purge ACL, the purge token, and (``ttl``) an edge TTL of its own instead of the nodes'."""
    host, port = backend.rsplit(":", 1)
    text = _replace(template, _PROD_BACKEND, f'.host = "{host}";\n    .port = "{port}";')
    text = _replace(text, _PROD_ACL, "".join(f'    "{a}";\n' for a in agents))
    text = _replace(text, _PROD_TOKEN, f'"{token}"')
    if ttl is not None:
        text = _replace(text, _EDGE_TTL, f"set beresp.ttl = {ttl}s;")
    return text


class _Foreground(Running):
    """A server run in the foreground, its output in ``log``; ready when ``address:port``
    accepts connections."""

    def __init__(self, workdir: Path, address: str) -> None:
        self.workdir = Path(workdir).resolve()
        self.address = address
        self.port = free_port(address)
        self.url = f"http://{address}:{self.port}"
        self.log = self.workdir / "output.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> _Foreground:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("wb")
        self._proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=self._out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._accepting, timeout, what=f"{self.url} to accept connections")
        except BaseException:
            self.stop()
            raise
        return self

    def _accepting(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self.args()[0]} exited with {self._proc.returncode}:\n"
                               f"{self.log.read_text(errors='replace')[-4000:]}")
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            try:
                stop_process(self._proc, timeout=5, group=True)
            finally:
                self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def get(self, path: str | bytes, host: str = "www.example.com",
            headers: dict[str, str] | None = None, method: str = "GET") -> Response:
        return request(self.address, self.port, path, host, headers, method)


class HAProxy(_Foreground):
    """Round robin over ``servers`` (``HOST:PORT``), on ``address``."""

    def __init__(self, workdir: Path, address: str, servers: Sequence[str]) -> None:
        super().__init__(workdir, address)
        self.config = self.workdir / "haproxy.cfg"
        self.servers = tuple(servers)

    def args(self) -> list[str]:
        lines = ["global", "    maxconn 256", "defaults", "    mode http",
                 "    timeout connect 2s", "    timeout client 10s", "    timeout server 10s",
                 "frontend cluster", f"    bind {self.address}:{self.port}",
                 "    default_backend nodes", "backend nodes", "    balance roundrobin",
                 *(f"    server n{i} {s}" for i, s in enumerate(self.servers))]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(lines) + "\n")
        return [find("haproxy") or "haproxy", "-db", "-f", str(self.config)]


class Varnish(_Foreground):
    """``examples/varnish.vcl`` on ``address``, its backend ``backend`` (``HOST:PORT``)."""

    def __init__(self, workdir: Path, address: str, backend: str, *, agents: Sequence[str],
                 token: str, ttl: int | None = None) -> None:
        super().__init__(workdir, address)
        self.vcl = self.workdir / "edge.vcl"
        self.vcl_text = render_vcl(EXAMPLE_VCL.read_text(), backend=backend, agents=agents,
                                   token=token, ttl=ttl)

    def args(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.vcl.write_text(self.vcl_text)
        return [find("varnishd") or "varnishd", "-F", "-j", "none", "-n",
                str(self.workdir / "instance"), "-a", f"{self.address}:{self.port}",
                "-f", str(self.vcl), "-T", "none", "-s", "malloc,32m",
                "-p", "thread_pools=1", "-p", "thread_pool_min=5", "-p", "thread_pool_max=50"]
