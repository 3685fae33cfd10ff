"""The cheap cache-status test that spares the full parse the lines that cannot trigger.

Most lines are HITs. A line is skipped when it shows a cache-status value between the literals
that surround ``$upstream_cache_status`` in the format, and none of the triggering statuses
there. That is exact for the trigger decision: NGINX writes the literals as they are, so a line
whose field holds a triggering status always contains ``<before>STATUS<after>`` and is parsed.
A skipped line is not checked any further: a line showing ``HIT`` but broken elsewhere counts as
ignored, not malformed (it could not trigger either way). A line showing no cache-status value
at all is parsed, so a garbage line is still counted as malformed. Lines whose
``$http_user_agent`` starts with ``keep_agent`` (logwarden's own requests: the triggers
remember its purges) are always parsed. A format with no literal between the field and its
neighbours skips nothing.

For a list of lines, two scans run in C over it (does every line show a status? which lines
hold a triggering one or the kept agent?) instead of a Python call per line, which costs more
than the test itself; a list with a line showing no status goes line by line.

For a block (lines as one bytes object, each followed by ``\\n``, as the sources hand them on),
two regex scans: how many lines show a status (a match runs to the end of its line, so there is at
most one per line), and where the lines that must be parsed are; only those are sliced out of
the block, the others are never made into objects. A block with a line showing no status, or
a format whose literals around the field (or the statuses, or the kept agent) hold a newline,
is split and goes as a list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from logwarden.parse.logformat import LogFormat

_TOUCHING = "touching"
"""A variable with another variable right beside it: no literal to search for."""

_Search = Callable[[bytes], re.Match[bytes] | None]


class Prefilter:
    """The test for one format and set of triggering ``statuses``, compiled once."""

    def __init__(self, fmt: LogFormat, statuses: Iterable[str],
                 keep_agent: bytes | None = None) -> None:
        words = sorted({s.encode() for s in statuses})
        line = _patterns(fmt, words, keep_agent, block=False)
        block = _patterns(fmt, words, keep_agent, block=True)
        self._line: tuple[_Search, _Search] | None = None
        """Searches for "must be parsed" and "shows a cache status"; None: cannot tell."""
        if line is not None:
            self._line = re.compile(line[0]).search, re.compile(line[1]).search
        self._block: tuple[re.Pattern[bytes], re.Pattern[bytes]] | None = None
        """The same for lines in a block, each match running to its line's end; None: split."""
        if block is not None:
            self._block = (re.compile(b"(?:" + block[0] + rb")[^\n]*+"),
                           re.compile(b"(?:" + block[1] + rb")[^\n]*+()"))

    def skip(self, line: bytes) -> bool:
        """True for a line that cannot trigger, so its full parse can be skipped."""
        if self._line is None:
            return False
        wanted, showing = self._line
        return wanted(line) is None and showing(line) is not None

    def sift(self, lines: list[bytes]) -> list[bytes]:
        """The lines :meth:`skip` would not skip, in order."""
        if self._line is None:
            return list(lines)
        wanted, showing = self._line
        if None in map(showing, lines):
            return [line for line in lines if wanted(line) is not None or showing(line) is None]
        return list(filter(wanted, lines))

    def sift_block(self, block: bytes, count: int) -> list[bytes]:
        """:meth:`sift` for the ``count`` lines of ``block`` (each followed by ``\\n``), sliced
        out of it."""
        if self._block is None or len(self._block[1].findall(block)) != count:
            lines = block.split(b"\n")
            lines.pop()  # after the last newline
            return self.sift(lines)
        kept, pos, wanted, line_start = [], 0, self._block[0].search, block.rfind
        while match := wanted(block, pos):
            pos = match.end()  # the end of that line
            kept.append(block[line_start(b"\n", 0, match.start()) + 1:pos])
        return kept


def _patterns(fmt: LogFormat, words: list[bytes], keep_agent: bytes | None,
              block: bool) -> tuple[bytes, bytes] | None:
    """Patterns for "must be parsed" and "shows a cache status"; None: cannot tell.
    ``block``: for lines in a block, where no match may cross a newline (None if a literal
    holds one)."""
    around = _around(fmt.tokens, "upstream_cache_status")
    if _TOUCHING in around:
        return None
    before, after = around
    assert not isinstance(before, str) and not isinstance(after, str)
    statuses = b"|".join(map(re.escape, words)) or b"(?!)"
    wanted = [(before, b"(?:" + statuses + b")" + _edge(after, start=False, block=block))]
    if keep_agent:
        ua = _around(fmt.tokens, "http_user_agent")[0] if "http_user_agent" in fmt.variables \
            else _TOUCHING
        wanted.append((b"" if isinstance(ua, str) else ua, re.escape(keep_agent)))
    if block and b"\n" in b"".join([before or b"", after or b"", keep_agent or b"", *words,
                                     *(lit or b"" for lit, _ in wanted)]):
        return None
    shape = rb"[A-Z]*" if fmt.escape == "json" else rb"[A-Z]+|-"  # what NGINX writes
    showing = _edge(before, start=True, block=block) + b"(?:" + shape + b")" \
        + _edge(after, start=False, block=block)
    return _alternatives(wanted, block), showing


def _around(tokens: Sequence[tuple[str, str]],
            name: str) -> tuple[bytes | str | None, bytes | str | None]:
    """The literal text right before and after the first ``$name``: None at the line's start
    or end, ``_TOUCHING`` where another variable is beside it."""
    i = tokens.index(("var", name))
    edges: list[bytes | str | None] = []
    for j in (i - 1, i + 1):
        if not 0 <= j < len(tokens):
            edges.append(None)
        else:
            edges.append(tokens[j][1].encode() if tokens[j][0] == "lit" else _TOUCHING)
    return edges[0], edges[1]


def _edge(literal: bytes | str | None, start: bool, block: bool) -> bytes:
    """The pattern of a literal found by :func:`_around` (never ``_TOUCHING`` here); ``block``:
    the line is one of many in a block, each followed by a newline."""
    if literal is None:
        if block:
            return rb"(?m:^)" if start else rb"(?m:$)"
        return rb"\A" if start else rb"(?:\r?\n)?\Z"
    assert isinstance(literal, bytes)
    return re.escape(literal)


def _alternatives(choices: list[tuple[bytes | None, bytes]], block: bool) -> bytes:
    """``(literal, pattern)`` choices as one pattern, their common leading bytes factored out:
    ``re`` then scans for that prefix in C; a bare alternation is ~3x slower (bench/README)."""
    literals = [lit for lit, _ in choices if lit is not None]
    if len(literals) < len(choices):
        return b"|".join(_edge(lit, start=True, block=block) + pattern
                         for lit, pattern in choices)
    n = 0
    while n < min(map(len, literals)) and len({lit[n] for lit in literals}) == 1:
        n += 1
    rests = [re.escape(lit[n:]) + pattern for lit, (_, pattern) in zip(literals, choices,
                                                                        strict=True)]
    return re.escape(literals[0][:n]) + b"(?:" + b"|".join(rests) + b")"
