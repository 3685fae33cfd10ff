"""Where the bus's Redis is and how to log in: the ``--bus`` URL, credentials, TLS, Sentinel.

    redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]                   one server (rediss://: TLS)
    redis+sentinel://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]
                                                                 the master Sentinel names
                                                                 (rediss+sentinel://: TLS to
                                                                 the sentinels and the master)

The password (from the URL or ``--bus-password-file``) lives only in :class:`BusAddress`'s
``password``, which no repr, message or ``check`` output shows: :func:`mask` replaces it with
``***`` wherever a URL is said. Connections are the ``redis`` client's own (AUTH, TLS,
Sentinel's master discovery and failover), made without retries: a failure must surface in
the bus, to be counted and to fall back, not hide behind the client's own reconnect loop.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:  # imported when a bus connects: ~7 MiB of RSS an agent without --bus saves
    import redis.asyncio as redis
    from redis.asyncio.sentinel import Sentinel

SCHEMES = {"redis": (False, False), "rediss": (True, False),  # scheme: (tls, sentinel)
           "redis+sentinel": (False, True), "rediss+sentinel": (True, True)}
PORTS = (6379, 26379)  # a server's, a sentinel's
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:\[\]]+))(?::(?P<port>\d+))?$")
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
"""Longer than the reader's blocking XREAD (1 s), with room for a loaded Redis."""


@dataclass(frozen=True)
class TlsFiles:
    """``--bus-ca`` (default: the system's CAs), ``--bus-cert`` and ``--bus-key`` (a client
    certificate, for a Redis with ``tls-auth-clients yes``)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class BusAddress:
    """A parsed ``--bus`` URL: the server (or the sentinels), the database, the login."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    master: str | None
    """Sentinel's name of the master; None for one server."""
    db: int
    username: str | None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return SCHEMES[self.scheme][0]

    @property
    def shown(self) -> str:
        """The URL as messages say it: the password, if it is in the URL, as ``***``."""
        login = (self.username or "") + (":***" if self.password is not None else "")
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = f"/{self.master}/{self.db}" if self.master else f"/{self.db}"
        return f"{self.scheme}://{login + '@' if login else ''}{hosts}{path}"


def mask(url: str) -> str:
    """``url`` with what stands between ``:`` and the last ``@`` of its login as ``***``."""
    scheme, sep, rest = url.partition("://")
    login, at, hosts = rest.rpartition("@")
    if not sep or not at or ":" not in login:
        return url
    return f"{scheme}://{login.partition(':')[0]}:***@{hosts}"


def parse(url: str) -> BusAddress:
    """ValueError (never quoting the URL: it may hold a password) unless ``url`` is one of
    the forms in the module docstring."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError("is not a redis://, rediss://, redis+sentinel:// or "
                         "rediss+sentinel:// URL")
    login, _, after = rest.rpartition("@")  # a password may hold "/" or "?": "@" ends it
    if any(c in after for c in "?#"):
        raise ValueError("must not carry a query or fragment")
    netloc, _, path = after.partition("/")
    sentinel = SCHEMES[scheme][1]
    hosts = tuple(_host_port(part, PORTS[sentinel]) for part in netloc.split(","))
    if not sentinel and len(hosts) > 1:
        raise ValueError("names several hosts: only redis+sentinel:// takes a list")
    parts = path.split("/") if path else []
    if parts and parts[-1] == "":
        parts.pop()
    master = parts.pop(0) if sentinel and parts else None
    if sentinel and not master:
        raise ValueError("has no master name: redis+sentinel://HOST:PORT[,…]/MASTER[/DB]")
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ValueError("has a database that is not a number")
    user, colon, password = login.partition(":")
    return BusAddress(scheme, hosts, master, int(parts[0]) if parts else 0,
                      unquote(user) or None, unquote(password) if colon else None)


def _host_port(text: str, default: int) -> tuple[str, int]:
    match = _HOST_PORT.match(text)
    if match is None:
        raise ValueError("has no host, or a bad HOST:PORT")
    port = int(match["port"]) if match["port"] else default
    if not 0 < port < 65536:
        raise ValueError("has a bad port")
    return match["v6"] or match["name"], port


class Servers:
    """The Redis clients of one bus: to the server, or to the master Sentinel names (asked
    again at each new connection, so a failover is followed); closed together."""

    def __init__(self, address: BusAddress, tls: TlsFiles) -> None:
        self.address = address
        self._kwargs: dict[str, Any] = _connection_kwargs(address, tls)
        self._clients: list[redis.Redis] = []
        self._sentinel: Sentinel | None = None
        if address.master:
            from redis.asyncio.sentinel import Sentinel

            login = {"db", "username", "password", "client_name"}
            self._sentinel = Sentinel(
                address.hosts,
                sentinel_kwargs={k: v for k, v in self._kwargs.items() if k not in login},
            )  # type: ignore[no-untyped-call]

    def client(self, name: str) -> redis.Redis:
        """A client whose connections say ``name`` in ``CLIENT LIST``."""
        if self._sentinel is not None:
            assert self.address.master is not None
            made: redis.Redis = self._sentinel.master_for(
                self.address.master, **{**self._kwargs, "client_name": name})
        else:
            import redis.asyncio as redis

            host, port = self.address.hosts[0]
            made = redis.Redis(host=host, port=port, **{**self._kwargs, "client_name": name})
        self._clients.append(made)
        return made

    async def aclose(self) -> None:
        for made in self._clients:
            await made.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


def _connection_kwargs(address: BusAddress, tls: TlsFiles) -> dict[str, Any]:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    kwargs: dict[str, Any] = {
        "db": address.db, "username": address.username, "password": address.password,
        "socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 5, "retry": Retry(NoBackoff(), 0)}
    if address.tls:
        kwargs.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                      ssl_ca_certs=tls.ca, ssl_certfile=tls.cert, ssl_keyfile=tls.key)
    return kwargs


def settings_problem(exc: BaseException) -> str | None:
    """What ``exc`` says is wrong with the settings, which no retry fixes (the credentials
    were refused, the server's certificate is not trusted); None when the server may just
    not be reachable yet."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    if isinstance(exc, AuthenticationError | NoPermissionError) or (
            isinstance(exc, ResponseError) and "AUTH" in str(exc)):
        return (f"refused the login ({exc}): check the user and the password "
                "(--bus-password-file, or the URL's)")
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"presented a certificate that is not trusted ({cause.verify_message}): "
                    "give the CA that signed it with --bus-ca")
        if isinstance(cause, ssl.SSLError):  # not TLS there, or our certificate refused
            return (f"failed the TLS handshake ({cause.reason}): is it a TLS port, and does "
                    "it take --bus-cert?")
        cause = cause.__cause__ or cause.__context__
    return None
