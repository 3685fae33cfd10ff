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

    @property
    def key(self) -> tuple[str, str, bytes]:
        return self.scheme, self.host, self.target

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target.decode('latin-1')}"


def is_5xx(status: str) -> bool:
    return len(status) == 3 and status.startswith("5") and status.isdigit()


def final_upstream_status(upstream_status: str) -> str:
    """The last entry of an ``$upstream_*`` list: ``"502, 200"`` (next upstream) or
    ``"502 : 504"`` (internal redirect) gives ``"200"``/``"504"``."""
    return upstream_status.replace(":", ",").rsplit(",", 1)[-1].strip()


_PRINTABLE = bytes(range(0x21, 0x7F))


def request_target_ok(target: bytes) -> bool:
    """Only printable ASCII can be replayed: anything else could inject into the request line
    (CR, LF, NUL, spaces), and HTTP/1.1 clients refuse raw bytes >= 0x80 in a target, which
    NGINX does accept; percent-encoding them would refresh a different cache entry."""
    return target.startswith(b"/") and not target.translate(None, _PRINTABLE)


def host_ok(host: str) -> bool:
    """Printable ASCII without spaces or slashes: the Host header and SNI allow no more."""
    return bool(host) and host.isascii() and host.isprintable() and " " not in host \
        and "/" not in host and "\\" not in host


def replayable(refresh: Refresh) -> bool:
    """Whether a request for ``refresh`` can carry its target and host byte for byte
    (:func:`request_target_ok` written out: this runs for every fan-out)."""
    target = refresh.target
    return target.startswith(b"/") and not target.translate(None, _PRINTABLE) \
        and host_ok(refresh.host)
