"""Where the peer list comes from: static ``--peer`` URLs, a ``--peers-file``, ``--peers-dns``.

The daemon asks :meth:`PeerList.current` at start, when the peers file changes, every
``--dns-refresh`` seconds and on SIGHUP, and hands a changed list to the dispatcher. A DNS name
(a Kubernetes headless Service, a Consul name) gives one peer per A/AAAA record; this node's
own addresses (its interfaces, and ``--self``) are left out of those, so one config serves
every node. A failed lookup or a bad peers file keeps the previous answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from logwarden.deliver.peerhttp import host_port

if TYPE_CHECKING:
    from logwarden.deliver.dispatcher import Dispatcher

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(name, port)`` → the addresses of every A/AAAA record of ``name``."""

_SIOCGIFADDR = 0x8915
LOOKUP_TIMEOUT = 5.0
"""Seconds one lookup may take: a dead DNS server must not hold up the start or a reload."""


def check_peer_url(url: str) -> None:
    """Raise ValueError unless ``url`` is ``http(s)://HOST[:PORT]`` and nothing more."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http(s)://HOST[:PORT] URL")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # port 0 would connect to the scheme's port (host_port): refuse it
        raise ValueError("has a bad port: ports are 1-65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("must not carry a path, query or credentials")


def peer_identity(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a peer URL: the same for ``http://A``, ``http://a:80/``."""
    host, port = host_port(url)
    return urlsplit(url).scheme, host.lower(), port


def is_self(url: str, self_url: str | None) -> bool:
    """Is ``url`` this node: ``self_url``, or its listener of the other scheme (same address)?"""
    if not self_url:
        return False
    scheme, host, port = peer_identity(url)
    own_scheme, own_host, own_port = peer_identity(self_url)
    return host == own_host and (port == own_port or scheme != own_scheme)


def read_peers_file(path: str) -> tuple[str, ...]:
    """One peer URL per line; blank lines and ``#`` comments are skipped.

    Raises OSError when unreadable, ValueError naming the line when a URL is bad.
    """
    urls = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        url = line.split("#", 1)[0].strip()
        if not url:
            continue
        try:
            check_peer_url(url)
        except ValueError as exc:
            raise ValueError(f"line {number}: {url!r} {exc}") from None
        urls.append(url)
    return tuple(urls)


async def system_resolver(name: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def interface_addresses() -> set[str]:
    """This host's addresses: each interface's (primary) IPv4 address and all IPv6 ones."""
    addresses = set()
    for _, name in socket.if_nameindex():
        with contextlib.suppress(OSError):
            addresses.add(_ipv4_of(name))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            addresses.add(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    return addresses


def _ipv4_of(interface: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", interface.encode()[:15])
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
    return socket.inet_ntoa(answer[20:24])


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


class PeerList:
    """The current peer URLs: static, peers file and DNS answers, without this node."""

    def __init__(self, static: Sequence[str], *, self_url: str | None,
                 peers_file: str | None = None, dns: Sequence[str] = (),
                 resolver: Resolver = system_resolver,
                 own_addresses: Callable[[], set[str]] = interface_addresses) -> None:
        self.static = tuple(static)
        self.self_url = self_url
        self.peers_file = peers_file
        self.dns = tuple(dns)
        self.resolver = resolver
        self.own_addresses = own_addresses
        self._file_peers: tuple[str, ...] = ()
        self._file_stamp: tuple[int, int, int] | None = None
        self._dns_peers: dict[str, tuple[str, ...]] = {}

    @property
    def dynamic(self) -> bool:
        return bool(self.peers_file or self.dns)

    def current(self) -> tuple[str, ...]:
        urls = (*self.static, *self._file_peers, *(u for d in self.dns
                                                  for u in self._dns_peers.get(d, ())))
        return tuple(u for u in dict.fromkeys(urls) if not is_self(u, self.self_url))

    def file_changed(self) -> bool:
        return self.peers_file is not None and self._stamp() != self._file_stamp

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.peers_file or "")
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def reload_file(self) -> None:
        """Read the peers file again; on an error keep the peers it gave before."""
        if self.peers_file is None:
            return
        self._file_stamp = self._stamp()
        try:
            self._file_peers = read_peers_file(self.peers_file)
        except (OSError, ValueError) as exc:
            log.error("peers file %s not used, keeping its previous peers: %s",
                      self.peers_file, exc)

    async def resolve(self) -> None:
        """Look every ``--peers-dns`` name up again; a failed lookup keeps its last answer."""
        own = self.own_addresses() if self.dns else set()
        for url in self.dns:
            scheme, name, port = peer_identity(url)
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT):
                    addresses = await self.resolver(name, port)
            except OSError as exc:  # TimeoutError is one
                log.warning("cannot resolve %s, keeping its last answer: %s", name, exc)
                continue
            self._dns_peers[url] = tuple(_url(scheme, a, port) for a in addresses
                                         if a not in own)

    async def follow(self, dispatcher: Dispatcher, reload: asyncio.Event, *,
                     poll_interval: float, dns_refresh: float) -> None:
        """Until cancelled: re-read the peers file when it changes, look the DNS names up
        every ``dns_refresh`` seconds, both at once when ``reload`` is set (SIGHUP); hand a
        changed peer list to the dispatcher."""
        next_lookup = time.monotonic() + dns_refresh
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_interval):
                    await reload.wait()
            forced = reload.is_set()
            reload.clear()
            if forced or self.file_changed():
                self.reload_file()
            if self.dns and (forced or time.monotonic() >= next_lookup):
                next_lookup = time.monotonic() + dns_refresh
                await self.resolve()
            peers = self.current()
            if peers != dispatcher.urls:
                log.info("peers now: %s", ", ".join(peers) or "none")
                dispatcher.set_peers(peers)
