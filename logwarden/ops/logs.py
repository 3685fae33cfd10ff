"""logwarden's own log lines on stderr: text for people (the default), or one JSON object per
line for machines (``--log-format-output json``): time, level, logger, event and the
record's extra fields, with the traceback as ``exception`` when there is one.

Every record is one line: control characters in a message (a URL, a path, a library's text)
are written as ``\\xHH``, as NGINX writes them in its access log, so nothing read from a log
line can split or forge one of ours; a traceback keeps its line breaks and nothing else. The
shared secret given to :func:`hide` is written ``***`` wherever it appears. The libraries'
loggers (watchdog logs every inotify event at debug, asyncio, redis) stay at warning unless
asked for: at debug level their lines would bury logwarden's, and a log written next to the
access log it watches made watchdog log its own writes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUTPUTS = ("text", "json")
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_CONTROLS = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    0x2028: "\\u2028", 0x2029: "\\u2029"}
"""C0, DEL, C1 and the Unicode line and paragraph separators."""
_CONTROLS_BUT_NEWLINE = {c: e for c, e in _CONTROLS.items() if c != 0x0A}
_hidden: set[str] = set()


def escape_controls(text: str) -> str:
    """``text`` with every control character written as ``\\xHH`` (one line)."""
    return text.translate(_CONTROLS)


def hide(secret: str) -> None:
    """Write ``secret`` as ``***`` in every line from now on (the refresh header's value)."""
    _hidden.add(secret)


def _masked(text: str) -> str:
    for secret in _hidden:
        text = text.replace(secret, "***")
    return text


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, one line per record (plus a traceback's own lines)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return super().formatException(ei).translate(_CONTROLS_BUT_NEWLINE)

    def format(self, record: logging.LogRecord) -> str:
        return _masked(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; values that JSON cannot hold are written as text."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": escape_controls(record.getMessage()),
        }
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if fields:
            line["fields"] = fields
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _masked(json.dumps(line, default=str, ensure_ascii=False))


def setup(level: str, output: str = "text", libraries: bool = False,
          secrets: tuple[str, ...] = ()) -> None:
    """Send logwarden's records at ``level`` or above to stderr in ``output`` form, and the
    other loggers' at warning or above (at ``level`` too with ``libraries``); ``secrets`` are
    never shown (:func:`hide`)."""
    for secret in secrets:
        hide(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if output == "json" else TextFormatter())
    ours = logging.getLevelName(level.upper())
    logging.basicConfig(level=ours if libraries else max(ours, logging.WARNING),
                        handlers=[handler], force=True)
    logging.getLogger("logwarden").setLevel(ours)
