"""A real NGINX cache cluster on loopback, built from ``examples/nginx.conf``.

:func:`render_config` turns the example operators copy into a config that runs here: every
production value it rewrites (listen port, paths, origin, peer allow-list, user) is replaced
literally and the replacement is checked, so an edit to the example that the templater does
not know about fails loudly instead of silently testing a different config.

:class:`NginxNode` owns one NGINX master (foreground, ``daemon off``, own process group) and
stops it with SIGQUIT, then SIGKILL to the whole group after a deadline: no NGINX process
outlives it. :class:`Cluster` owns an :class:`~lab.origin.Origin` (unless given one) and N nodes
on ``127.0.0.11``, ``127.0.0.12``, ... and stops all it started, even after a failed start.

Loopback only: nodes listen on 127.0.0.0/8 and the rendered config is checked to contain no
other IPv4 address.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import urlsplit

from lab.origin import Origin
from lab.process import Running, children, stop_process

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "nginx.conf"

#: The address the lab's agents and test clients connect from by default: on Linux a socket
#: connecting to 127.0.0.12 gets source 127.0.0.1 unless it binds another one.
CLIENT_ADDRESS = "127.0.0.1"
#: A source address outside every allow-list: "the internet".
OUTSIDER_ADDRESS = "127.0.0.99"

# Production values in examples/nginx.conf that render_config() rewrites.
_PROD_USER = "user www-data;"
_PROD_WORKERS = "worker_processes auto;"
_PROD_PID = "pid /run/nginx.pid;"
_PROD_ERROR_LOG = "error_log /var/log/nginx/error.log;"
_PROD_ACCESS_LOG = "access_log /var/log/nginx/access.log logwarden;"
_PROD_CACHE_PATH = "proxy_cache_path /var/cache/nginx/logwarden "
_PROD_ORIGIN = "server 10.0.1.10:8080;"
_PROD_SECRET = re.compile(r'^([ \t]*)"1:CHANGE-ME-SECRET"([ \t]+1;[^\n]*\n)', re.MULTILINE)
#: The refresh header's secret in lab nodes: logwarden's default header is ``X-Refresh: 1``.
LAB_SECRET = "1"
_SECRET = re.compile(r"[0-9A-Za-z._~-]+")
_PROD_PEERS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
#: The origin-offload map's entries: ``"1:ADDRESS:PORT" ADDRESS:PORT;``, one per node.
_SOURCE_ENTRY = re.compile(r'^[ \t]*"1:(?P<src>[0-9.]+:\d+)"[ \t]+(?P=src);[^\n]*\n', re.MULTILINE)
_PROD_LISTEN = re.compile(r"\blisten\s+80\b")
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_LAB_WORKERS = 2  # "auto" would start one per CPU, per node

#: The ``logwarden`` log_format fields, in order (``refresh`` is ``$logwarden_refresh``: 1 for a
#: peer's request with the secret, else 0; the header itself is never logged).
LOG_FIELDS = (
    "msec", "scheme", "host", "port", "method", "target", "status", "cache_status",
    "upstream_status", "request_time", "refresh", "user_agent", "cache_control", "expires",
    "x_accel_expires", "vary", "set_cookie", "etag", "last_modified",
)


class NginxError(RuntimeError):
    """NGINX refused the config, exited early, or did not open its port in time."""


class LogLine(NamedTuple):
    """One line of the ``logwarden`` TAB format, fields as logged (``-`` when empty)."""

    msec: str
    scheme: str
    host: str
    port: str
    method: str
    target: str
    status: str
    cache_status: str
    upstream_status: str
    request_time: str
    refresh: str
    user_agent: str
    cache_control: str
    expires: str
    x_accel_expires: str
    vary: str
    set_cookie: str
    etag: str
    last_modified: str

    @classmethod
    def parse(cls, line: str) -> LogLine:
        fields = line.rstrip("\n").split("\t")
        if len(fields) != len(LOG_FIELDS):
            raise ValueError(f"expected {len(LOG_FIELDS)} TAB-separated fields: {line!r}")
        return cls(*fields)


class Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage  # case-insensitive .get()
    body: bytes


# ---------------------------------------------------------------------------------------------
# helpers


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A TCP (or ``SOCK_DGRAM``: UDP) port free on ``host`` now (bind port 0, read, release)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_nginx() -> str | None:
    """The nginx binary: on PATH, else Debian's /usr/sbin (not on a normal user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def wait_until(
    condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll ``condition`` until true; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _replace(text: str, old: str, new: str, *, count: int = 1) -> str:
    found = text.count(old)
    if found != count:
        raise ValueError(
            f"template: expected {count} occurrence(s) of {old!r}, found {found}; "
            "update lab/cluster.py render_config() together with examples/nginx.conf")
    return text.replace(old, new)


def _code(text: str) -> str:
    """The config without comments (good enough for checks: our values never contain '#')."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# templating


def render_config(
    template: str, *, listen: str, port: int, prefix: Path, origin: str,
    peers: Sequence[str], user: str, syslog: str | None = None, sources: Sequence[str] = (),
    variants: bool = False, secrets: Sequence[str] = (LAB_SECRET,),
) -> str:
    """Turn ``examples/nginx.conf`` into a config that runs under ``prefix`` on loopback.

    ``listen`` is the node's address, ``origin`` the upstream ``host:port``, ``peers`` the
    addresses allowed to force a refresh, ``sources`` the nodes' ``ADDRESS:PORT`` that an
    offloaded refresh may fetch from. ``syslog`` (``127.0.0.1:PORT`` or ``unix:/PATH``)
    also sends the access log there, tagged ``nginx``. ``variants`` uncomments the example's
    variant-class recipe (its lines marked ``# VARIANTS``). ``secrets``: the refresh secrets
    the node accepts (several while one is rotated to another). Run the result with
    ``-g 'daemon off;'``.
    """
    prefix = Path(prefix).resolve()
    if re.search(r"[\s;#\"'{}$]", str(prefix)):
        raise ValueError(f"prefix must be a plain path, got {prefix!r}")
    for addr in (listen, origin.rsplit(":", 1)[0], *peers,
                 *(s.rsplit(":", 1)[0] for s in sources)):
        if not ipaddress.ip_address(addr).is_loopback:
            raise ValueError(f"lab addresses must be loopback, got {addr!r}")

    text = template
    # root: the worker must write cache and temp dirs inside the caller's workdir (pytest's
    # tmp_path lives under a 0700 directory, so a chown to www-data would not be enough).
    # Not root: NGINX ignores the directive with a warning and runs as us.
    text = _replace(text, _PROD_USER, f"user {user};")
    text = _replace(text, _PROD_WORKERS, f"worker_processes {_LAB_WORKERS};")
    text = _replace(text, _PROD_PID, f"pid {prefix}/nginx.pid;")
    text = _replace(text, _PROD_ERROR_LOG, f"error_log {prefix}/logs/error.log;")
    access_log = f"access_log {prefix}/logs/access.log logwarden;"
    if syslog is not None:
        access_log += f"\n    access_log syslog:server={syslog},tag=nginx logwarden;"
    text = _replace(text, _PROD_ACCESS_LOG, access_log)
    text = _replace(text, _PROD_CACHE_PATH, f"proxy_cache_path {prefix}/cache ")
    text = _replace(text, _PROD_ORIGIN, f"server {origin};")
    if not secrets or not all(_SECRET.fullmatch(s) for s in secrets):
        raise ValueError(f"secrets must be one or more plain tokens, got {secrets!r}")
    text, found = _PROD_SECRET.subn(
        lambda m: "".join(f'{m.group(1)}"1:{s}"{m.group(2)}' for s in secrets), text)
    if found != 1:
        raise ValueError('template: the map entry "1:CHANGE-ME-SECRET" 1; not found once')

    # geo allow-list: drop the production peers, put the lab's where the first one was.
    entry = re.compile(r"^[ \t]*(?P<addr>[0-9.]+)[ \t]+1;[^\n]*\n", re.MULTILINE)
    prod = [m for m in entry.finditer(text) if m.group("addr") in _PROD_PEERS]
    if sorted(m.group("addr") for m in prod) != sorted(_PROD_PEERS):
        raise ValueError(f"template: geo entries for {_PROD_PEERS} not found as '<addr> 1;'")
    indent = re.match(r"[ \t]*", prod[0].group(0))
    lab_entries = "".join(f"{indent.group(0) if indent else ''}{p} 1;\n" for p in peers)
    for m in reversed(prod):
        text = text[: m.start()] + (lab_entries if m is prod[0] else "") + text[m.end():]

    text = _render_sources(text, sources)
    if variants:
        text, found = _VARIANT_LINE.subn(r"\1\2", text)
        if found < 4:
            raise ValueError(f"template: {found} lines marked '# VARIANTS' found, expected 4")
    text, listens = _PROD_LISTEN.subn(f"listen {listen}:{port}", text)
    if listens == 0:
        raise ValueError("template: no 'listen 80' found")
    for directive in re.findall(r"\blisten\s+[^;]*;", _code(text)):
        if f"{listen}:{port}" not in directive:
            raise ValueError(f"template: listen directive not rewritten: {directive!r}")

    # Debian's defaults live in /var/lib/nginx; keep every temp dir inside the prefix.
    temp = "".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};\n" for kind in _TEMP_PATHS
        if not re.search(rf"^\s*{kind}_temp_path\s", text, re.MULTILINE))
    text = _replace(text, "\nhttp {\n", "\nhttp {\n" + temp)
    for kind in _TEMP_PATHS:
        text = re.sub(rf"^(\s*{kind}_temp_path)\s+[^\s;]+", rf"\1 {prefix}/tmp/{kind}", text,
                      flags=re.MULTILINE)

    # Nothing left writing outside the prefix or talking off loopback (comments may keep
    # theirs; read-only paths such as a load_module under /usr are fine).
    code = _code(text)
    for path in re.findall(r"(?<![\w.])/(?:var|run)/[^\s;]*", code):
        if path.startswith(f"{prefix}/"):
            continue
        raise ValueError(f"template: path outside the prefix left in the config: {path}")
    for ip in re.findall(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])", code):
        if not ipaddress.ip_address(ip).is_loopback:
            raise ValueError(f"template: non-loopback address left in the config: {ip}")
    return text


_VARIANT_LINE = re.compile(r"^([ \t]*)# (\S.*?)\s*# VARIANTS$", re.MULTILINE)


def _render_sources(text: str, sources: Sequence[str]) -> str:
    """The offload map lists the lab's nodes where the production ones were."""
    prod = list(_SOURCE_ENTRY.finditer(text))
    if sorted(m.group("src") for m in prod) != sorted(f"{p}:80" for p in _PROD_PEERS):
        raise ValueError('template: offload map entries "1:<addr>:80" <addr>:80; not found')
    indent = re.match(r"[ \t]*", prod[0].group(0))
    pad = indent.group(0) if indent else ""
    lab = "".join(f'{pad}"1:{s}" {s};\n' for s in sources)
    for m in reversed(prod):
        text = text[: m.start()] + (lab if m is prod[0] else "") + text[m.end():]
    return text


Edit = Callable[[str], str]
"""Changes a rendered config (:class:`NginxNode`'s ``edit``): a node wired differently."""
Render = Callable[["NginxNode"], str]
"""A config of the caller's own for a node (:class:`NginxNode`'s ``config``), instead of the
rendered example: built from the node's ``address``, ``port``, ``prefix``, ``origin`` and
``sources`` (every node's ``ADDRESS:PORT``)."""


def _no_bypass(text: str) -> str:
    return _replace(text, "proxy_cache_bypass $logwarden_refresh;", "")


def _client_not_in_geo(text: str) -> str:
    text, found = re.subn(rf"^[ \t]*{re.escape(CLIENT_ADDRESS)}[ \t]+1;\n", "", text,
                          flags=re.MULTILINE)
    if found != 1:
        raise ValueError(f"template: no geo entry '{CLIENT_ADDRESS} 1;' to drop")
    return text


def _other_secret(text: str) -> str:
    return _replace(text, f'"1:{LAB_SECRET}"', '"1:not-the-agents-secret"')


#: A node that ignores refreshes and answers them from its cache, each way an operator gets it
#: wrong: no ``proxy_cache_bypass``, the agents' address (:data:`CLIENT_ADDRESS`) missing from
#: its ``geo $logwarden_peer``, another secret in its refresh map.
DEAF: dict[str, Edit] = {
    "no_bypass": _no_bypass,
    "not_in_geo": _client_not_in_geo,
    "other_secret": _other_secret,
}


def _bypass_not_stored(text: str) -> str:
    return _replace(text, "proxy_cache_bypass $logwarden_refresh;",
                    "proxy_cache_bypass $logwarden_refresh;\n"
                    "            proxy_no_cache $logwarden_refresh;")


def _no_cache_status(text: str) -> str:
    return _replace(text, "add_header X-Cache-Status $upstream_cache_status always;", "")


#: Every way to wire a node wrong that ``logwarden doctor`` tells apart: :data:`DEAF`, a bypass
#: variable also in ``proxy_no_cache`` (the refresh bypasses and stores nothing), and no
#: ``X-Cache-Status`` header (nothing can be verified).
MISWIRED: dict[str, Edit] = {
    **DEAF,
    "bypass_not_stored": _bypass_not_stored,
    "no_cache_status": _no_cache_status,
}


# ---------------------------------------------------------------------------------------------
# one node


class _RawHTTPConnection(http.client.HTTPConnection):
    """Sends the request line as latin-1, so any byte of a ``bytes`` target goes out as is."""

    def _encode_request(self, request: str) -> bytes:
        return request.encode("latin-1")


def request(
    address: str, port: int, path: str | bytes, host: str = "www.example.com",
    headers: dict[str, str] | None = None, method: str = "GET", source: str | None = None,
    timeout: float = 5.0,
) -> Response:
    """One request to ``address:port`` on a fresh connection, target sent byte for byte."""
    target = path.decode("latin-1") if isinstance(path, bytes) else path
    conn = _RawHTTPConnection(address, port, timeout=timeout,
                              source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


class NginxNode(Running):
    """One NGINX master serving the rendered example config; start()/stop() or ``with``."""

    def __init__(
        self, name: str, address: str, template_path: Path, origin_url: str,
        peers: Sequence[str], workdir: Path, *, port: int | None = None,
        nginx: str | None = None, syslog: str | None = None, sources: Sequence[str] = (),
        variants: bool = False, edit: Edit | None = None, config: Render | None = None,
        secrets: Sequence[str] = (LAB_SECRET,),
    ) -> None:
        """``sources``: the ``ADDRESS:PORT`` of the nodes this one may fetch an offloaded
        refresh from (the origin-offload map); ``variants``: the variant-class recipe on;
        ``edit`` changes the rendered config (e.g. one of :data:`DEAF`); ``config`` replaces
        it with one of the caller's own; ``secrets``: the refresh secrets it accepts (change
        them, then :meth:`reload`)."""
        self.variants = variants
        self.config = config
        self.secrets = tuple(secrets)
        self.name = name
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.url = f"http://{address}:{self.port}"
        self.template_path = Path(template_path)
        origin = urlsplit(origin_url)
        self.origin = f"{origin.hostname}:{origin.port}"
        self.peers = tuple(peers)
        self.syslog = syslog
        self.sources = tuple(sources)
        self.edit = edit
        self.prefix = Path(workdir).resolve() / name
        self.conf_path = self.prefix / "nginx.conf"
        self.access_log = self.prefix / "logs" / "access.log"
        self.error_log = self.prefix / "logs" / "error.log"
        self.pid_path = self.prefix / "nginx.pid"
        self._stderr_path = self.prefix / "logs" / "nginx.stderr"
        self._nginx = nginx or find_nginx() or "nginx"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"NginxNode({self.name!r}, {self.url!r})"

    # lifecycle -------------------------------------------------------------------------------

    def _args(self) -> list[str]:
        return [self._nginx, "-c", str(self.conf_path), "-p", f"{self.prefix}/",
                "-g", "daemon off;"]

    def render(self) -> str:
        if self.config is not None:
            return self.config(self)
        text = render_config(
            self.template_path.read_text(), listen=self.address, port=self.port,
            prefix=self.prefix, origin=self.origin, peers=self.peers, user=current_user(),
            syslog=self.syslog, sources=self.sources, variants=self.variants,
            secrets=self.secrets)
        return self.edit(text) if self.edit else text

    def start(self, timeout: float = 10.0) -> NginxNode:
        if self._proc is not None:
            raise RuntimeError(f"{self} already started")
        for sub in ("logs", "cache", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        check = subprocess.run([*self._args(), "-t", "-q"], capture_output=True, timeout=30)
        if check.returncode != 0:
            raise NginxError(f"nginx -t failed for {self.conf_path}:\n"
                             + check.stderr.decode(errors="replace"))
        self._stderr = self._stderr_path.open("wb")
        try:
            # Own session = own process group: stop() can SIGKILL master and workers together.
            self._proc = subprocess.Popen(
                self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._stderr, start_new_session=True)
        except BaseException:
            self._stderr.close()
            self._stderr = None
            raise
        try:
            wait_until(self._accepting, timeout, what=f"{self} to accept connections")
        except BaseException:
            self.stop()
            raise
        return self

    def _accepting(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise NginxError(f"{self} exited with {self._proc.returncode}:\n{self._diagnostics()}")
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _diagnostics(self) -> str:
        parts = []
        for path in (self._stderr_path, self.error_log):
            if path.exists():
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    @property
    def pid(self) -> int | None:
        """The master's pid while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGQUIT); SIGKILL to the whole process group after ``timeout`` s."""
        proc = self._proc
        if proc is None:
            return
        try:
            stop_process(proc, signal.SIGQUIT, timeout, group=True)
        finally:
            self._proc = None
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    def reload(self, timeout: float = 10.0) -> None:
        """``nginx -s reload`` of the config rendered again (after ``secrets`` changed, say):
        SIGHUP to the master once ``nginx -t`` accepts it; returns when every worker runs the
        new config (those of the old one have exited, their idle connections closed)."""
        if self.pid is None:
            raise RuntimeError(f"{self} is not running")
        master, old = self.pid, children(self.pid)
        self.conf_path.write_text(self.render())
        check = subprocess.run([*self._args(), "-t", "-q"], capture_output=True, timeout=30)
        if check.returncode != 0:
            raise NginxError(f"nginx -t failed for {self.conf_path}:\n"
                             + check.stderr.decode(errors="replace"))
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: bool(children(master)) and not children(master) & old, timeout,
                   what=f"{self}'s workers to run the reloaded config")

    def reopen(self, timeout: float = 5.0) -> None:
        """``nginx -s reopen``: SIGUSR1 to the master; returns once the access log exists.

        The workers reopen right after the master, so a line written in the next
        milliseconds may still land in the old file: poll for the line you expect.
        """
        if self.pid is None:
            raise RuntimeError(f"{self} is not running")
        os.kill(self.pid, signal.SIGUSR1)
        wait_until(self.access_log.exists, timeout, what=f"{self.access_log} to be reopened")

    # client ----------------------------------------------------------------------------------

    def get(
        self, path: str | bytes, host: str = "www.example.com",
        headers: dict[str, str] | None = None, method: str = "GET", source: str | None = None,
        timeout: float = 5.0,
    ) -> Response:
        """One request on a fresh connection, target sent byte for byte (:func:`request`).

        ``source`` binds the client socket (e.g. :data:`OUTSIDER_ADDRESS` for a non-peer).
        """
        return request(self.address, self.port, path, host, headers, method, source, timeout)

    # access log ------------------------------------------------------------------------------

    def log_lines(self) -> list[LogLine]:
        """Every complete line of the access log, parsed."""
        try:
            data = self.access_log.read_bytes().decode("latin-1")
        except FileNotFoundError:
            return []
        return [LogLine.parse(line) for line in data.splitlines(keepends=True)
                if line.endswith("\n")]

    def wait_log(
        self, match: Callable[[LogLine], bool], timeout: float = 5.0, count: int = 1,
    ) -> list[LogLine]:
        """Wait until ``count`` access-log lines satisfy ``match``; return all that do.

        NGINX writes the line after the response is finished, so it can trail the response
        the client already read by a fraction of a millisecond.
        """
        found: list[LogLine] = []

        def ready() -> bool:
            nonlocal found
            found = [line for line in self.log_lines() if match(line)]
            return len(found) >= count

        wait_until(ready, timeout, what=f"{count} matching line(s) in {self.access_log}")
        return found


# ---------------------------------------------------------------------------------------------
# the cluster


class Cluster(Running):
    """An origin and N NGINX nodes on 127.0.0.11, .12, ...; start()/stop() or ``with``.

    Every node allows refreshes from ``client_address`` (where the agents connect from) and
    from every node address. If ``origin`` is given the cluster uses it and leaves it running.
    ``edits`` changes the config of the nodes at those indexes (e.g. ``{2: DEAF["no_bypass"]}``);
    ``config`` gives every node a config of the caller's own instead of the example's.
    """

    def __init__(
        self, workdir: Path, *, nodes: int = 3, addresses: Sequence[str] | None = None,
        origin: Origin | None = None, template_path: Path = EXAMPLE_CONFIG,
        client_address: str = CLIENT_ADDRESS, variants: bool = False,
        edits: Mapping[int, Edit] | None = None, config: Render | None = None,
        secrets: Sequence[str] = (LAB_SECRET,),
    ) -> None:
        self.workdir = Path(workdir)
        self.config = config
        self.variants = variants
        self.secrets = tuple(secrets)
        self.addresses = tuple(addresses or (f"127.0.0.{11 + i}" for i in range(nodes)))
        self.template_path = Path(template_path)
        self.peers = tuple(dict.fromkeys((client_address, *self.addresses)))
        self.edits = dict(edits or {})
        self._own_origin = origin is None
        self.origin = origin if origin is not None else Origin()
        self.nodes: list[NginxNode] = []

    def start(self) -> Cluster:
        try:
            if self._own_origin:
                self.origin.start()
            ports = [free_port(address) for address in self.addresses]
            sources = [f"{a}:{p}" for a, p in zip(self.addresses, ports, strict=True)]
            for i, address in enumerate(self.addresses):
                node = NginxNode(
                    chr(ord("a") + i) if i < 26 else f"n{i + 1}", address,
                    self.template_path, self.origin.url, self.peers, self.workdir,
                    port=ports[i], sources=sources, variants=self.variants,
                    edit=self.edits.get(i), config=self.config,
                    secrets=self.secrets)
                self.nodes.append(node)
                node.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node, then the origin if the cluster started it; all are tried."""
        errors: list[BaseException] = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if self._own_origin:
            try:
                self.origin.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __getitem__(self, index: int) -> NginxNode:
        return self.nodes[index]

    def __iter__(self) -> Iterator[NginxNode]:
        return iter(self.nodes)
