"""The messages every stage shares, and the few pure facts about them.

    sources ─bytes─▶ parse ─Record─▶ decide ─Refresh─▶ route ─▶ deliver / bus / replay

A leaf: it imports nothing of logwarden but its version, so the input side and the output side
can both use it without importing each other (as mtail keeps its one ``LogLine`` apart).
"""

from __future__ import annotations

from typing import NamedTuple

from logwarden import __version__

USER_AGENT = f"logwarden/{__version__}"
"""Every request logwarden sends carries it; lines showing it are logwarden's own."""
OWN_AGENT_MARK = b"logwarden/"
"""The prefix of :data:`USER_AGENT` that marks a line as logwarden's own request. Such lines
must reach the triggers even when they cannot trigger: they remember logwarden's own purges
from them (the processor's sift keeps them)."""


class Caching(NamedTuple):
    """The caching headers of the origin's answer, when the format logs them (``None``: not
    sent, or not in the format): what :mod:`logwarden.decide.cacheable` reads to tell whether
    NGINX stored the answer."""

    cache_control: bytes | None = None
    expires: bytes | None = None
    x_accel_expires: bytes | None = None
    vary: bytes | None = None
    set_cookie: bytes | None = None
    """A Set-Cookie flag (``0``/``1`` from a map, README) or the header itself."""


class Record(NamedTuple):
    """What deciding on and replaying a refresh needs from one access-log line.

    Values are as NGINX saw them, after undoing the log's escaping. ``None`` means the
    format does not carry the field, or NGINX logged it empty (``-`` / ``""``). Immutable; a
    NamedTuple because it is built for every candidate line: 3x cheaper than a frozen dataclass.
    """

    method: str
    """Request method, e.g. ``"GET"``; ``""`` when the request line was unparseable."""
    target: bytes
    """Raw request target in origin form (path and query, never normalised): NGINX keys on it."""
    cache_status: str
    """``$upstream_cache_status``: ``"MISS"``, ``"HIT"``, …; ``""`` when NGINX logged it empty."""
    host: str | None = None
    """``$host`` (or ``$http_host`` lower-cased, port and trailing dot stripped)."""
    scheme: str | None = None
    status: int | None = None
    """``$status``, the response code sent to the client."""
    upstream_status: str | None = None
    """``$upstream_status`` verbatim; may be a list such as ``"502, 200"``."""
    user_agent: bytes | None = None
    time: float | None = None
    """Unix time NGINX wrote the line: ``$msec``, ``$time_iso8601`` or ``$time_local``."""
    upstream_header_time: bytes | None = None
    """``$upstream_header_time`` as logged (``b"-"``: no answer), when the format has it."""
    upstream_date: bytes | None = None
    """``$upstream_http_date``: the cached copy's ``Date`` on an answer from the cache."""
    variant: bytes | None = None
    """The variant class of the request (``--variant-variable``), when the format logs it."""
    caching: Caching | None = None
    """The origin answer's caching headers, when the format logs any of them."""
    version: str | None = None
    """Which copy the answer is (:func:`version_of`): from ``$upstream_http_etag``, else
    ``$upstream_http_last_modified``, when the format logs them and the origin sent them."""

    @property
    def own(self) -> bool:
        """A line of logwarden's own request (refresh, purge or warm)."""
        return self.user_agent is not None and self.user_agent.startswith(OWN_AGENT_MARK)


class Refresh(NamedTuple):
    """One URL to refresh on every other node. A NamedTuple, as :class:`Record` is: built for
    every triggering line; ``_replace`` gives a changed copy."""

    scheme: str
    host: str
    target: bytes
    cache_status: str
    """The status that triggered it, for metrics and logs."""
    logged_at: float | None = None
    """Unix time of the triggering line, when the format has one."""
    holder: str | None = None
    """``ADDRESS:PORT`` of the node that holds the new copy (origin offload): refresh requests
    name it in ``X-Logwarden-Source`` so the peers fetch from it instead of the origin."""
    variant: str | None = None
    """The variant class whose copy the triggering line stored (``--variant``); None when
    the line does not tell."""
    here: bool = False
    """For the node that triggered: refresh its other variant classes only."""
    version: str | None = None
    """The triggering line's copy (:attr:`Record.version`), to compare with the peers'."""
    changed: bool | None = None
    """Whether that copy differs from the last one this node saw of the URL; None: no
    version, or none seen before."""
    heal: bool = False
    """A second round for nodes left on another copy than the newest (a split round)."""

    @property
    def key(self) -> tuple[str, str, bytes]:
        return self.scheme, self.host, self.target

    @property
    def url(self) -> str:
        """For people and logs: host and target escaped as NGINX's access log writes them
        (:func:`escaped`), so a raw UTF-8 target reads as in that log, and no control byte
        of a refused one reaches a terminal or logwarden's own log."""
        host = escaped(self.host.encode("utf-8", "surrogatepass"))
        return f"{self.scheme}://{host}{escaped(self.target)}"


def version_of(etag: bytes | None, last_modified: bytes | None) -> str | None:
    """A copy's identity as a line or an answer shows it: its ETag (a weak one, as NGINX's
    gzip makes it from a strong one, counts the same), else its Last-Modified. A length is
    not taken: the log's and an answer's differ with compression."""
    if etag:
        return "e:" + etag.removeprefix(b"W/").decode("latin-1")
    if last_modified:
        return "m:" + last_modified.decode("latin-1")
    return None


def is_5xx(status: str) -> bool:
    return len(status) == 3 and status.startswith("5") and status.isdigit()


def final_upstream_status(upstream_status: str) -> str:
    """The last entry of an ``$upstream_*`` list: ``"502, 200"`` (next upstream) or
    ``"502 : 504"`` (internal redirect) gives ``"200"``/``"504"``."""
    return upstream_status.replace(":", ",").rsplit(",", 1)[-1].strip()


STORED_COPY = frozenset({"EXPIRED", "STALE", "UPDATING", "REVALIDATED"})
"""Cache statuses of an answer from (or replacing) a stored copy: the URL is cacheable, and a
triggering line of one is a change of a page clients are served from cache. (HIT too, but no
HIT line is parsed: the prefilter skips them.)"""

_PRINTABLE_ASCII = bytes(range(0x21, 0x7F))
_NON_ASCII = bytes(range(0x80, 0x100))


def request_target_ok(target: bytes) -> bool:
    """Whether ``target`` can go into a request line byte for byte, as NGINX keys on it.

    - Printable ASCII (0x21-0x7E): the request-target grammar, sent as it is.
    - Bytes >= 0x80 (raw UTF-8, as some clients send it): outside that grammar, but NGINX
      accepts them and keys its cache on them; they cannot end the request line or a field,
      so they are sent unchanged. Percent-encoding them would refresh a different entry.
    - Control bytes (< 0x20, CR and LF among them), space and DEL (0x7F): refused. CR/LF would
      inject header lines, a space would end the target early, NUL and DEL are not text.

    It must also be in origin form (start with ``/``): the only form a peer's cache holds."""
    rest = target.translate(None, _PRINTABLE_ASCII)  # what is not printable ASCII: mostly none
    return target.startswith(b"/") and (not rest or not rest.translate(None, _NON_ASCII))


def host_ok(host: str) -> bool:
    """Printable ASCII without spaces or slashes: the Host header and SNI allow no more."""
    return bool(host) and host.isascii() and host.isprintable() and " " not in host \
        and "/" not in host and "\\" not in host


def replayable(refresh: Refresh) -> bool:
    """Whether a request for ``refresh`` can carry its target and host byte for byte
    (:func:`request_target_ok` written out: this runs for every fan-out)."""
    target = refresh.target
    rest = target.translate(None, _PRINTABLE_ASCII)
    return target.startswith(b"/") and (not rest or not rest.translate(None, _NON_ASCII)) \
        and host_ok(refresh.host)


def refusal_reason(refresh: Refresh) -> str | None:
    """Why ``refresh`` is not :func:`replayable`, for a person (None when it is): the first
    offending byte of the target, or the host. Slow; only for the refusals that are logged."""
    target = refresh.target
    if not target.startswith(b"/"):
        return "the target does not start with /"
    for byte in target:
        if byte == 0x20:
            return "a space in the target"
        if byte < 0x20 or byte == 0x7F:
            return f"control byte 0x{byte:02X} in the target"
    if not host_ok(refresh.host):
        return "the host is not printable ASCII without spaces, / or \\"
    return None


_ESCAPES = tuple(chr(b) if 0x20 <= b <= 0x7E and b not in b'"\\' else f"\\x{b:02X}"
                 for b in range(256))


def escaped(data: bytes) -> str:
    """``data`` as NGINX's default log escaping writes it (``"``, ``\\``, bytes < 0x20 and
    > 0x7E as ``\\xHH``): safe to write into a log, and the text to grep the access log for."""
    return "".join([_ESCAPES[b] for b in data])
