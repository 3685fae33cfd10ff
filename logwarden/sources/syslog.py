"""Receive NGINX's ``access_log syslog:`` datagrams and hand their messages to the parser queue.

    NGINX ─UDP or unix datagram─▶ socket buffer ─▶ SyslogSource ─Batch─▶ lines queue

One datagram carries one log line (nginx-facts §5): ``<PRI>Mmm dd hh:mm:ss HOST TAG: MESSAGE``,
RFC 3164 style, day space-padded, no year, no trailing newline, no HOST with ``nohostname``.
Relays such as rsyslog may forward RFC 5424 instead. :func:`parse_datagram` strips either
header; the message goes to the same log_format parser as a file line.

The receive path never waits: a reader callback drains the socket (``recvmsg`` until
``EAGAIN``) and a batch that does not fit in the bounded queue is dropped and counted. UDP has
no backpressure, so waiting would only move the loss into the kernel. What the kernel drops
when the socket buffer is full is counted too: ``SO_RXQ_OVFL`` tells the socket's drop count
with each datagram, ``/proc/net/udp`` also tells the drops after the last one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from logwarden.ops.metrics import Metrics
from logwarden.sources import Batch, LineQueue, SourceError

log = logging.getLogger(__name__)

Address = tuple[str, int] | str
"""A UDP ``(host, port)`` or the path of a unix datagram socket."""

RECV_BUFFER = 256 * 1024
"""More than NGINX can send: UDP ≤ 65 507 bytes, unix ≈ net.core.wmem_default (208 KiB)."""
BATCH_DATAGRAMS = 1024
"""Datagrams read per wake-up at most, so one busy listener cannot starve the event loop."""
DROPS_INTERVAL = 1.0
"""Seconds between reads of /proc/net/udp, which also knows the drops after the last datagram."""
IGNORE_REASONS = ("malformed", "other_tag", "disallowed")

# Linux values; Python's socket module does not name them.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_ANCILLARY_SIZE = socket.CMSG_SPACE(4)

_PRI = rb"<(?:1[0-8][0-9]|19[01]|[1-9]?[0-9])>"
_RFC3164 = re.compile(
    _PRI + rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-3][0-9] "
    rb"[0-9]{2}:[0-9]{2}:[0-9]{2} "
    rb"(?:[^ :]+ )?"  # HOST, absent with nohostname (a host never ends in ':', a tag does)
    rb"([^ :\[]+)(?:\[[^\] ]*\])?: ?")  # TAG, maybe with [PID] (relays), then ': '
_SD_ELEMENT = rb'\[[^\] ="]+(?: [^\] ="]+="(?:[^"\\]|\\.)*")*\]'  # PARAM-VALUE escapes \" \\ \]
_RFC5424 = re.compile(
    _PRI + rb"1 [^ ]+ [^ ]+ ([^ ]+) [^ ]+ [^ ]+ "  # VERSION TIMESTAMP HOST APP-NAME PROCID MSGID
    rb"(?:-|(?:" + _SD_ELEMENT + rb")+)"
    rb"(?: (?:\xef\xbb\xbf)?|\Z)", re.DOTALL)  # MSG is optional and may start with a BOM


class SyslogMessage(NamedTuple):
    tag: bytes
    """The RFC 3164 TAG, or the RFC 5424 APP-NAME (``-`` when nil)."""
    message: bytes


def parse_datagram(data: bytes) -> SyslogMessage | None:
    """The tag and message of one datagram, RFC 3164 (as NGINX sends it) or RFC 5424.

    ``None`` when it is not syslog. One trailing newline, which relays may add, is removed.
    """
    match = _RFC3164.match(data) or _RFC5424.match(data)
    if match is None:
        return None
    message = data[match.end():]
    return SyslogMessage(match.group(1), message[:-1] if message.endswith(b"\n") else message)


def parse_url(url: str) -> Address:
    """``udp://HOST:PORT`` (``[V6]`` in brackets) or ``unix:///PATH``; ValueError says why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme == "unix":
        return _unix_path(parts.netloc, parts.path, parts.query, parts.fragment)
    if parts.scheme != "udp":
        raise ValueError("must be udp://HOST:PORT or unix:///PATH")
    if not parts.hostname or port is None or parts.path or parts.query or parts.username:
        raise ValueError("must be udp://HOST:PORT (an IPv6 address in brackets)")
    return parts.hostname, port


def _unix_path(netloc: str, path: str, query: str, fragment: str) -> str:
    if netloc or query or fragment or not path.startswith("/"):
        raise ValueError("must be unix:///ABSOLUTE/PATH")
    if len(os.fsencode(path)) > 107:  # sizeof(sun_path) - 1
        raise ValueError("is too long for a unix socket path (107 bytes at most)")
    return path


class SyslogSource:
    """Listens on one ``udp://`` or ``unix://`` URL; ``run()`` until ``stop()``.

    Owns its socket: ``bind()`` binds it (a stale unix socket file is replaced), called by the
    daemon before it starts anything, or else by ``run()``; ``run()`` reads what the kernel
    still holds at the stop, then closes the socket and removes its socket file.
    """

    def __init__(
        self,
        url: str,
        out: LineQueue,
        metrics: Metrics,
        *,
        tag: str = "nginx",
        rcvbuf: int = 4 << 20,
        allow: Iterable[str] = (),
        max_line_bytes: int = 64 * 1024,
        address: Address | None = None,
    ) -> None:
        """``address``: ``url`` parsed already (the config keeps it), else parsed here."""
        self.name = url
        self.address = parse_url(url) if address is None else address
        self.out = out
        self.metrics = metrics
        self.tag = tag.encode()
        self.rcvbuf = rcvbuf
        # Only UDP has source addresses; a unix socket is guarded by its file's permissions.
        self.allow = tuple(ipaddress.ip_network(a) for a in allow) if self.is_udp else ()
        self.max_line_bytes = max_line_bytes
        self.sock: socket.socket | None = None
        self.local_address: Any = None
        """Where the socket is bound (the real port when the URL says 0)."""
        self._view = memoryview(bytearray(RECV_BUFFER))
        self._kernel_drops_seen = 0
        self._socket_inode = 0
        """The socket's inode in sockfs, as /proc/net/udp names it."""
        self._file_inode = 0
        """The inode of our unix socket file, so that we remove only our own."""
        self._stopping = asyncio.Event()
        self.last_line_at = 0.0
        # Bounded: a spoofed flood would otherwise fill the cache with source addresses.
        self._allowed = functools.lru_cache(maxsize=4096)(self._in_allow_list)
        self._datagrams = metrics.syslog_datagrams.labels(url)
        self._queue_drops = metrics.syslog_queue_drops.labels(url)
        self._kernel_drops = metrics.syslog_kernel_drops.labels(url)
        self._rejected = {reason: metrics.syslog_ignored.labels(url, reason)
                          for reason in IGNORE_REASONS} | {"too_long": metrics.lines_too_long}

    @property
    def is_udp(self) -> bool:
        return isinstance(self.address, tuple)

    @property
    def state(self) -> str:
        if self.sock is None:
            return "closed" if self._stopping.is_set() else "starting"
        return "listening"

    def status(self) -> dict[str, object]:
        """Where it listens: the bound address (the real port when the URL says 0)."""
        address = self.local_address
        if isinstance(address, tuple):
            host, port = address[:2]
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"kind": "syslog", "listener": address}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Listen until ``stop()``; a socket that cannot be bound is logged and ends the run."""
        try:
            self.bind()
        except SourceError as exc:
            log.error("%s", exc)
            return
        sock = self.sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._receive)
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DROPS_INTERVAL):
                        await self._stopping.wait()
                self._poll_kernel_drops()
        finally:
            loop.remove_reader(sock.fileno())
            self._receive()  # what arrived before the stop is not lost
            self._poll_kernel_drops()
            self._close()

    # -- the socket ----------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the socket now if it is not yet: the daemon binds before it starts anything, so
        that an address in use is a start-up error. Raises SourceError."""
        if self.sock is not None:
            return
        try:
            self.sock = self._open()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SourceError(
                f"syslog: {self.name!r} cannot be bound ({reason}): does another process "
                "(rsyslog, another logwarden) listen there? Give a free --syslog URL") from exc

    def _open(self) -> socket.socket:
        sock = _bind_udp(*self.address) if isinstance(self.address, tuple) else _bind_unix(
            self.address)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            granted = self._set_rcvbuf(sock)
            self._socket_inode = os.fstat(sock.fileno()).st_ino
            if isinstance(self.address, str):
                self._file_inode = os.lstat(self.address).st_ino
            self.local_address = sock.getsockname()
        except OSError:
            sock.close()
            raise
        log.info("listening for syslog on %s (receive buffer %d bytes, tag %r)", self.name,
                 granted, self.tag.decode())
        return sock

    def _set_rcvbuf(self, sock: socket.socket) -> int:
        """Ask for ``rcvbuf`` bytes; say so when the kernel grants less. Returns the grant."""
        try:  # with CAP_NET_ADMIN (root) the buffer may exceed net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        # Linux stores twice the value asked for (bookkeeping overhead) and reports that.
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if granted < self.rcvbuf:
            log.warning("%s: asked for a %d-byte receive buffer, the kernel granted %d; raise "
                        "net.core.rmem_max or bursts will be dropped", self.name, self.rcvbuf,
                        granted)
        return granted

    def _close(self) -> None:
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        if isinstance(self.address, str):
            _remove_if_ours(self.address, self._file_inode)

    # -- receiving -----------------------------------------------------------------------------

    def _receive(self) -> None:
        """Read what the socket holds (a batch at most), keep the wanted messages, enqueue."""
        assert self.sock is not None
        recv, view, kept_lines = self.sock.recvmsg_into, self._view, []
        counts: collections.Counter[str] = collections.Counter()
        received = 0
        for _ in range(BATCH_DATAGRAMS):
            try:
                size, ancillary, flags, source = recv((view,), _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            received += 1
            if ancillary:
                self._note_ancillary(ancillary)
            kept = self._accept(view[:size].tobytes(), flags, source)
            if isinstance(kept, bytes):
                kept_lines.append(kept)
            else:
                counts[kept] += 1
        self._datagrams.inc(received)
        for reason, count in counts.items():
            self._rejected[reason].inc(count)
        self._enqueue(kept_lines)

    def _accept(self, data: bytes, flags: int, source: Any) -> bytes | str:
        """The message to parse, or the reason the datagram is ignored."""
        if self.allow and not self._allowed(source[0]):
            return "disallowed"
        if flags & socket.MSG_TRUNC:
            return "too_long"
        parsed = parse_datagram(data)
        if parsed is None:
            return "malformed"
        if parsed.tag != self.tag:
            return "other_tag"
        if len(parsed.message) > self.max_line_bytes:
            return "too_long"
        if b"\n" in parsed.message:  # NGINX escapes every control byte: not its line
            return "malformed"
        return parsed.message

    def _in_allow_list(self, host: str) -> bool:
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 senders as ::ffff:a.b.c.d
        return any(ip in network for network in self.allow)

    def _enqueue(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            self.out.put_nowait(Batch.of(lines))
        except asyncio.QueueFull:
            self._queue_drops.inc(len(lines))
            return
        self.metrics.lines.inc(len(lines))
        self.last_line_at = time.time()

    # -- kernel drops --------------------------------------------------------------------------

    def _note_ancillary(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                self._note_kernel_drops(int.from_bytes(data[:4], sys.byteorder))

    def _poll_kernel_drops(self) -> None:
        if self.sock is not None and self.is_udp:
            drops = proc_udp_drops(self._socket_inode, self.sock.family)
            if drops is not None:
                self._note_kernel_drops(drops)

    def _note_kernel_drops(self, total: int) -> None:
        """``total`` is the socket's drop count so far, from either source: count what is new."""
        if total > self._kernel_drops_seen:
            self._kernel_drops.inc(total - self._kernel_drops_seen)
            self._kernel_drops_seen = total


def proc_udp_drops(inode: int, family: int) -> int | None:
    """The ``drops`` column of /proc/net/udp(6) for the socket with ``inode``, if found."""
    table = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(table, encoding="ascii") as fh:
            next(fh)  # header
            for line in fh:
                fields = line.split()
                if int(fields[9]) == inode:
                    return int(fields[12])
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None


def _bind_udp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: str) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a process that died; a live socket or other file stays."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:  # nobody bound to it any more
            os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, "another process listens on this socket", path)


def _remove_if_ours(path: str, inode: int) -> None:
    """Unlink our socket file, unless another process has replaced it meanwhile."""
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
