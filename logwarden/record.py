"""The message that flows from the parser to the triggers: one access-log line, reduced."""

from __future__ import annotations

from typing import NamedTuple


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
