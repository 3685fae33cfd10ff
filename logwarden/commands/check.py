"""What ``logwarden check`` sees in the followed logs, before anything runs.

The last lines of each followed file are parsed with the chosen format: a wrong
``--log-format`` shows at once, where ``run`` would count every line malformed and send
nothing. A FIFO is never read here (the lines ``check`` took would be missing from ``run``);
how it is followed is said instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from logwarden.config import Config
from logwarden.parse.logformat import LogFormat
from logwarden.sources.fifo import STREAM_NOTE, is_fifo
from logwarden.sources.file import LogPattern

SAMPLE_BYTES = 64 * 1024
SAMPLE_LINES = 200
SAMPLE_FILES = 20
"""Files of one glob sampled at most."""


@dataclass(frozen=True)
class Said:
    """What ``check`` found in the logs: one line per followed file, and whether a file has
    lines of which none parses (``check`` then exits 1)."""

    lines: tuple[str, ...]
    ok: bool


def check_logs(config: Config) -> Said:
    parser = config.log_format_parser()
    lines, ok = [], True
    for pattern in config.access_log:
        if is_fifo(pattern):
            lines.append(f"access_log {pattern}: {STREAM_NOTE}; not sampled (reading it would "
                         "take lines from run)")
            continue
        paths = LogPattern(pattern).paths()
        files = [path for path in paths if os.path.isfile(path)]
        if not files:
            lines.append(f"access_log {pattern}: no file yet (run waits for it)")
        for path in files[:SAMPLE_FILES]:
            said, parsed = _sample(path, parser)
            lines.append(f"access_log {path}: {said}")
            ok &= parsed
        if len(files) > SAMPLE_FILES:
            lines.append(f"access_log {pattern}: {len(files) - SAMPLE_FILES} more files, "
                         "not sampled")
    return Said(tuple(lines), ok)


def _sample(path: str, parser: LogFormat) -> tuple[str, bool]:
    """What the last lines of ``path`` show; False when there are lines and none parses."""
    try:
        last = last_lines(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})", True  # run retries; config checked access
    if not last:
        return "empty: no line yet to try the log_format on", True
    parsed = sum(parser.parse(line) is not None for line in last)
    if parsed == 0:
        shown = last[-1][:200].decode("utf-8", "backslashreplace")
        return (f"none of its last {len(last)} lines parses with the log_format: give the "
                f"format this file is written with (its log_format in nginx.conf, or "
                f"--nginx-conf); the last line: {shown!r}"), False
    return f"{parsed} of its last {len(last)} lines parse with the log_format", True


def last_lines(path: str, max_bytes: int = SAMPLE_BYTES,
               max_lines: int = SAMPLE_LINES) -> list[bytes]:
    """The last complete lines of ``path``, within its last ``max_bytes``, without newlines
    (a line cut by the window's start, and one still being written, left out)."""
    with open(path, "rb") as fh:
        start = max(0, fh.seek(0, os.SEEK_END) - max_bytes)
        fh.seek(start)
        lines = fh.read(max_bytes).split(b"\n")
    lines.pop()  # after the last newline
    if start > 0 and lines:
        lines.pop(0)
    return lines[-max_lines:]
