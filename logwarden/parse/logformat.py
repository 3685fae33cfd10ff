"""Compile an NGINX ``log_format`` string into a parser of access-log lines.

The operator gives the format exactly as written in nginx.conf, so there is nothing to
translate by hand. Each variable becomes a regex group whose pattern follows from what NGINX
can write there: with the default escaping every ``"``, ``\\``, control byte and byte >= 0x7f
inside a value is written as ``\\xHH``; with ``escape=json`` as a JSON escape (bytes >= 0x80 stay
raw). So a value followed by such a delimiter can be matched with a negated class, which is
both exact and fast; other values fall back to a lazy group anchored by the rest of the line.
Values are unescaped back to the exact bytes NGINX saw (nginx-facts §6).

Most lines are HITs that can never trigger: :mod:`logwarden.parse.prefilter` spares them the
full parse with a cheap test built from the format's literals (:attr:`LogFormat.tokens`).
Patterns use the stdlib ``re``: on these patterns it measured 2-4x faster than the ``regex``
package (bench/README.md).
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter

from logwarden.model import Caching, Record, version_of

ESCAPES = ("default", "json", "none")
CACHING_VARIABLES = ("upstream_http_cache_control", "upstream_http_expires",
                     "upstream_http_x_accel_expires", "upstream_http_vary",
                     "logwarden_set_cookie", "upstream_http_set_cookie")
"""The origin answer's caching headers, in :class:`Caching`'s order; the Set-Cookie flag is
the example's map, or the header itself (its value is not needed, nor wise to log)."""

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
_CONF_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "'": "'", "\\": "\\"}
_CONF_ESCAPE = re.compile(r"""\\([tnr"'\\])""")
# Between nginx.conf's quoted pieces: blanks, a comment line, the closing ';', or a piece.
_CONF_WORD = re.compile(r"\s+|#[^\n]*|;|'((?:[^'\\]|\\.)*)'|" + r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_DIRECTIVE = re.compile(r"\s*(log_format\s|escape=)")
_HEX_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")
_JSON_ESCAPE = re.compile(rb"\\(?:u([0-9A-Fa-f]{4})|(.))", re.DOTALL)
_JSON_SIMPLE = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n",
                b"r": b"\r", b"t": b"\t"}

_new = tuple.__new__
"""Makes a NamedTuple from a tuple without its Python-level ``__new__``."""
_NUMBER = rb"\d+"
_DECIMAL = rb"\d+\.\d+"
# Variables whose values have a fixed shape in every escaping (NGINX writes them itself).
_SHAPES: dict[str, bytes] = {
    "status": rb"\d{3}",
    "msec": _DECIMAL,
    "request_time": _DECIMAL,
    "body_bytes_sent": _NUMBER,
    "bytes_sent": _NUMBER,
    "request_length": _NUMBER,
    "connection": _NUMBER,
    "connection_requests": _NUMBER,
    "pid": _NUMBER,
    "server_port": _NUMBER,
    "time_local": rb"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}",
    "time_iso8601": rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)",
    "upstream_cache_status": rb"[A-Z]*",
}
# Variables that never hold a space: a following space delimits them.
_NO_SPACE = frozenset({"remote_addr", "host", "scheme", "request_method", "server_name",
                       "server_addr", "server_protocol", "upstream_addr", "binary_remote_addr"})


class LogFormatError(ValueError):
    """The log_format cannot be used; the message says what is missing or wrong."""


@dataclass(frozen=True, slots=True)
class _Slots:
    """Group indexes (0-based) of the fields a Record needs (-1: the format lacks it)."""

    request: int
    method: int
    uri: int
    cache_status: int
    host: int
    http_host: int
    scheme: int
    status: int
    upstream_status: int
    user_agent: int
    msec: int
    time_iso8601: int
    time_local: int
    upstream_header_time: int
    upstream_date: int
    variant: int
    cache_control: int
    expires: int
    x_accel_expires: int
    vary: int
    set_cookie: int
    etag: int
    last_modified: int


class LogFormat:
    """A compiled format: ``parse(line)`` gives a Record, or None for a line it does not match."""

    def __init__(self, fmt: str, escape: str, tokens: tuple[tuple[str, str], ...],
                 variables: tuple[str, ...], pattern: re.Pattern[bytes],
                 groups: tuple[str, ...], variant: str | None = None) -> None:
        self.format = fmt
        self.escape = escape
        self.tokens = tokens
        """The format's pieces in order: ``("lit", text)`` and ``("var", name)``."""
        self.variables = variables
        self.pattern = pattern
        self._groups = groups
        self._unescape: Callable[[bytes], bytes | None] = _UNESCAPERS[escape]
        self._values = _VALUES[escape]
        self._free = tuple(i for i, name in enumerate(groups) if name not in _SHAPES)
        """Groups whose values may hold an escape (a status or a time cannot)."""
        index = {name: i for i, name in enumerate(groups)}
        self._slots = _Slots(*(index.get(v, -1) for v in (
            "request", "request_method", "request_uri", "upstream_cache_status", "host",
            "http_host", "scheme", "status", "upstream_status", "http_user_agent", "msec",
            "time_iso8601", "time_local", "upstream_header_time", "upstream_http_date",
            variant or "", *CACHING_VARIABLES[:4],
            next((name for name in CACHING_VARIABLES[4:] if name in index), ""),
            "upstream_http_etag", "upstream_http_last_modified")))
        self._versioned = "upstream_http_etag" in index \
            or "upstream_http_last_modified" in index
        s = self._slots
        self._plan = (s.method, s.uri, s.request, s.status, s.cache_status, s.host, s.http_host,
                      s.scheme, s.upstream_status, s.user_agent, s.upstream_header_time,
                      s.upstream_date, s.variant, s.etag, s.last_modified)
        self._caching_slots = (s.cache_control, s.expires, s.x_accel_expires, s.vary,
                               s.set_cookie)
        glanced = (s.cache_status, s.user_agent, s.upstream_status)
        self._glance_groups = () if -1 in glanced else tuple(i + 1 for i in glanced)
        present = [i + 1 for i in self._caching_slots if i >= 0]
        self._caching_span = (min(present), max(present)) if present else (0, 0)
        self._caching = itemgetter(*self._caching_slots) \
            if {*CACHING_VARIABLES} & set(variables) else None
        self._time_field = ((s.msec, "") if s.msec >= 0 else
                            (s.time_iso8601, "%Y-%m-%dT%H:%M:%S%z") if s.time_iso8601 >= 0 else
                            (s.time_local, "%d/%b/%Y:%H:%M:%S %z"))

    @classmethod
    def compile(cls, fmt: str, escape: str = "default", variant: str | None = None
                ) -> LogFormat:
        """``variant``: the variable whose value is a line's variant class (``Record.variant``),
        e.g. the class a ``map`` gives, or the raw ``http_accept_encoding``."""
        if escape not in ESCAPES:
            raise LogFormatError(f"unknown escape {escape!r}: use one of {', '.join(ESCAPES)}")
        tokens = _tokens(_unquote(fmt))
        variables = tuple(dict.fromkeys(t for kind, t in tokens if kind == "var"))
        _require(variables)
        pattern, groups = _pattern(tokens, escape)
        return cls(fmt, escape, tuple(tokens), variables, re.compile(pattern, re.DOTALL), groups,
                   variant)

    def fields(self, line: bytes) -> dict[str, bytes | None] | None:
        """Every variable's unescaped value; None when the line does not match."""
        match = self.pattern.fullmatch(_strip_newline(line))
        if match is None:
            return None
        return {name: self._unescape(value)
                for name, value in zip(self._groups, match.groups(), strict=True)}

    def parse(self, line: bytes) -> Record | None:
        match = self.pattern.fullmatch(_strip_newline(line))
        return None if match is None else self.record(match, line)

    def match(self, line: bytes) -> re.Match[bytes] | None:
        """The first half of :meth:`parse`: whether the line is of this format."""
        return self.pattern.fullmatch(_strip_newline(line))

    @property
    def logs_caching(self) -> bool:
        """Whether the format logs any of the origin answer's caching headers."""
        return self._caching is not None

    def glance(self, match: re.Match[bytes]) -> tuple[bytes, bytes | None, bytes | None]:
        """The cache status, user agent and upstream status of a matched line as logged:
        whether its caching headers (:meth:`caching`) decide it, without building the
        record."""
        if self._glance_groups:  # the three in the format: one call in C
            return match.group(*self._glance_groups)  # type: ignore[return-value]
        group, s = match.group, self._slots
        return (group(s.cache_status + 1), group(s.user_agent + 1) if s.user_agent >= 0
                else None, group(s.upstream_status + 1) if s.upstream_status >= 0 else None)

    def caching_span(self, match: re.Match[bytes]) -> bytes:
        """The stretch of a matched line that holds its caching headers (with whatever the
        format puts between them): equal stretches hold equal headers, so it keys a cache
        of what they decide (one slice; building :meth:`caching` costs four times more)."""
        first, last = self._caching_span
        return match.string[match.start(first):match.end(last)]

    def caching(self, match: re.Match[bytes]) -> Caching:
        """The caching headers of a matched line, unescaped (a format that logs them:
        :attr:`logs_caching`)."""
        group, unescape = match.group, self._unescape
        return Caching._make([None if i < 0 else unescape(group(i + 1))
                              for i in self._caching_slots])

    def record(self, match: re.Match[bytes], line: bytes) -> Record:
        """The second half of :meth:`parse`. Straight-line on purpose: this runs for every
        candidate line (bench/README.md): the slots come as one tuple of locals (an attribute
        each cost 30 ns), the tuples are made with ``tuple.__new__`` (a NamedTuple's
        ``__new__`` binds its arguments in Python: twice the cost)."""
        v = self._values(match.groups(), line, self._free)  # v[-1]: a field not in format
        (method, uri, request, status, cache, host, http_host, scheme, upstream, agent,
         header_time, date, variant, etag, modified) = self._plan
        if method >= 0 and uri >= 0:
            verb = (v[method] or b"").decode("latin-1")
            target = _origin_form(v[uri] or b"")
        else:
            verb, target = _split_request(v[request] or b"")
        code, caching, ups = v[status], self._caching, v[upstream]
        return _new(Record, (
            verb, target, (v[cache] or b"").decode("latin-1"), _host(v[host], v[http_host]),
            None if (sch := v[scheme]) is None else sch.decode("latin-1"),
            int(code) if code and code.isdigit() else None,
            None if ups is None else ups.decode("latin-1"), v[agent], self._time(v),
            v[header_time], v[date], v[variant],
            None if caching is None else _new(Caching, caching(v)),
            version_of(v[etag], v[modified]) if self._versioned else None))

    def _time(self, values: list[bytes | None]) -> float | None:
        slot, fmt = self._time_field
        value = values[slot]
        if not value:
            return None  # "-" or no time in the format: no age check
        try:
            return _parse_time(value, fmt) if fmt else float(value)
        except ValueError:
            return None  # a value NGINX would not write


@functools.lru_cache(maxsize=256)
def _parse_time(value: bytes, fmt: str) -> float:
    """Cached: every line of a second carries the same text."""
    return datetime.strptime(value.decode("ascii"), fmt).timestamp()


def _require(variables: tuple[str, ...]) -> None:
    if not variables:
        raise LogFormatError("log format has no $variables")
    if "upstream_cache_status" not in variables:
        raise LogFormatError("log format lacks $upstream_cache_status: add it to the log_format "
                             "so logwarden can see which requests fetched a new copy")
    if "request" not in variables and not {"request_uri", "request_method"} <= set(variables):
        missing = "$request_method" if "request_uri" in variables else "$request_uri"
        raise LogFormatError(f"log format lacks the request target: add $request, or "
                             f"$request_uri with $request_method (missing {missing})")


def _unquote(fmt: str) -> str:
    """The format as NGINX sees what ``fmt`` would be in nginx.conf.

    Quoted pieces (``'a' "b"``, also pasted from nginx.conf with ``#`` comment lines between
    them and the closing ``;``) are joined the way NGINX's config parser does. Other text is
    the bare format (it may start with a quote); NGINX undoes its escapes outside quotes too,
    so ``$a\\t$b`` typed without quotes holds a TAB, as in nginx.conf. Pieces over several
    lines that do not parse, and a pasted ``log_format NAME`` or ``escape=``, are errors:
    taken as the bare format, no line would match."""
    directive = _DIRECTIVE.match(fmt)
    if directive:
        raise LogFormatError(f"log format starts with {directive.group(1).strip()!r}: give only "
                             "the quoted pieces after 'log_format NAME', and escape= as "
                             "--log-format-escape")
    text = fmt.strip()
    if text[:1] in ("'", '"'):
        try:
            return _join_quoted(text)
        except ValueError as exc:
            if "\n" in text or text.endswith(";"):
                raise LogFormatError(f"log format looks like pieces from nginx.conf, but {exc}: "
                                     "give the quoted pieces after 'log_format NAME'") from None
    return _conf_unescape(fmt)


def _join_quoted(text: str) -> str:
    pieces, pos, closed = [], 0, False
    while pos < len(text):
        word = _CONF_WORD.match(text, pos)
        if word is None:
            char = text[pos]
            what = f"unterminated {char} quote" if char in "'\"" else f"unexpected {char!r}"
            raise ValueError(f"{what} at offset {pos}")
        if closed and word.group(0)[0] in ";'\"":
            raise ValueError(f"text after the closing ';' at offset {pos}")
        closed = closed or word.group(0) == ";"
        if word.group(0)[0] in "'\"":
            piece = word.group(1) if word.group(1) is not None else word.group(2)
            pieces.append(_conf_unescape(piece))
        pos = word.end()
    return "".join(pieces)


def _conf_unescape(text: str) -> str:
    """NGINX's config escapes undone: ``\\t``, ``\\n``, ``\\r``, ``\\"``, ``\\'``, ``\\\\``
    (another backslash stays as it is)."""
    return _CONF_ESCAPE.sub(lambda m: _CONF_ESCAPES[m.group(1)], text)


def _tokens(fmt: str) -> list[tuple[str, str]]:
    """Split into ("lit", text) and ("var", name) in order."""
    tokens, pos = [], 0
    for m in _VARIABLE.finditer(fmt):
        if m.start() > pos:
            tokens.append(("lit", fmt[pos:m.start()]))
        tokens.append(("var", m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(fmt):
        tokens.append(("lit", fmt[pos:]))
    return tokens


def _pattern(tokens: list[tuple[str, str]], escape: str) -> tuple[bytes, tuple[str, ...]]:
    parts, groups = [], []
    for i, (kind, text) in enumerate(tokens):
        if kind == "lit":
            parts.append(re.escape(text.encode()))
            continue
        following = tokens[i + 1][1].encode()[:1] if i + 1 < len(tokens) else b""
        value = _value_pattern(text, following, escape)
        if text in groups:
            parts.append(b"(?:" + value + b")")  # a repeated variable: match, keep the first
        else:
            groups.append(text)
            parts.append(b"(" + value + b")")
    return b"".join(parts), tuple(groups)


def _value_pattern(name: str, following: bytes, escape: str) -> bytes:
    if name in _SHAPES and escape != "none":
        return _SHAPES[name] + (rb"|\-" if escape == "default" else b"|")
    if not following:
        return b".*"
    if escape == "json" and following == b'"':
        return rb'(?:[^"\\]|\\.)*'  # a JSON string body: a quote inside is written \"
    if _never_raw(following[0], escape) or (following == b" " and name in _NO_SPACE):
        return b"[^\\x%02x]*" % following[0]
    return b".*?"


def _never_raw(byte: int, escape: str) -> bool:
    """True when NGINX never writes this byte raw inside a value, so it delimits the value.

    (A backslash does appear raw: it starts every escape sequence.)"""
    if escape == "none":
        return False
    if escape == "json":
        return byte < 0x20
    return byte == 0x22 or byte < 0x20 or byte >= 0x7F


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _unescape_default(value: bytes) -> bytes | None:
    if value == b"-":
        return None
    return _unhex(value) if b"\\x" in value else value


def _unhex(value: bytes) -> bytes:
    """``\\xHH`` back to its byte. NGINX writes a backslash only to start one (its own is
    ``\\x5C``), so when every backslash starts a ``\\x``, the C escape decoder is exact (and
    5x faster than a regex with a callback); anything else (a line NGINX did not write) takes
    the regex, which undoes ``\\xHH`` alone."""
    if value.count(b"\\") == value.count(b"\\x"):
        try:
            decoded: bytes = codecs.escape_decode(value)[0]
            return decoded
        except ValueError:  # a \x without two hex digits
            pass
    unescaped: bytes = _HEX_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), value)
    return unescaped


def _unescape_json(value: bytes) -> bytes | None:
    if not value:
        return None
    if b"\\" not in value:
        return value
    unescaped: bytes = _JSON_ESCAPE.sub(_json_char, value)
    return unescaped


def _json_char(m: re.Match[bytes]) -> bytes:
    if m.group(1) is not None:
        code = int(m.group(1), 16)
        return bytes((code,)) if code < 0x100 else chr(code).encode()
    char: bytes = m.group(2)
    return _JSON_SIMPLE.get(char, b"\\" + char)


def _unescape_none(value: bytes) -> bytes | None:
    return value or None


_DASH_IS_NONE: dict[bytes, bytes | None] = {b"-": None}
_EMPTY_IS_NONE: dict[bytes, bytes | None] = {b"": None}


def _values_default(groups: tuple[bytes, ...], line: bytes,
                    free: tuple[int, ...]) -> list[bytes | None]:
    """Every group unescaped, and a None at the end. ``map(dict.get)`` runs in C: half the
    time of a comprehension; most lines have no escape at all, and on those that do, only the
    ``free`` groups (not of a fixed shape such as a status or a time) can hold one."""
    values = [*map(_DASH_IS_NONE.get, groups, groups), None]
    if b"\\x" in line:
        for i in free:
            value = values[i]
            if value is not None and b"\\x" in value:
                values[i] = _unhex(value)
    return values


def _values_json(groups: tuple[bytes, ...], line: bytes,
                 free: tuple[int, ...]) -> list[bytes | None]:
    values = [*map(_EMPTY_IS_NONE.get, groups, groups), None]
    if b"\\" in line:
        for i in free:
            value = values[i]
            if value is not None and b"\\" in value:
                values[i] = _unescape_json(value)
    return values


def _values_none(groups: tuple[bytes, ...], line: bytes,
                 free: tuple[int, ...]) -> list[bytes | None]:
    return [*map(_EMPTY_IS_NONE.get, groups, groups), None]


_VALUES: dict[str, Callable[[tuple[bytes, ...], bytes, tuple[int, ...]],
                            list[bytes | None]]] = {
    "default": _values_default, "json": _values_json, "none": _values_none}
_UNESCAPERS: dict[str, Callable[[bytes], bytes | None]] = {
    "default": _unescape_default, "json": _unescape_json, "none": _unescape_none}


def _split_request(request: bytes) -> tuple[str, bytes]:
    """``METHOD SP TARGET [SP HTTP/x.y]`` → (method, origin-form target), or ("", b"")."""
    method, sp, rest = request.partition(b" ")
    if not sp or not method:
        return "", b""
    head, sp, protocol = rest.rpartition(b" ")
    target = head if sp and protocol.startswith(b"HTTP/") else rest
    return method.decode("latin-1"), _origin_form(target)


def _origin_form(target: bytes) -> bytes:
    """``http://host/p?q`` (absolute form) → ``/p?q``; NGINX's $request_uri is the same."""
    if target[:1] == b"/" or b"://" not in target[:10]:
        return target
    after = target.partition(b"://")[2]
    cut = min((i for i in (after.find(b"/"), after.find(b"?")) if i >= 0), default=len(after))
    rest = after[cut:]
    return rest if rest.startswith(b"/") else b"/" + rest


def _host(host: bytes | None, http_host: bytes | None) -> str | None:
    if host:
        return host.decode("latin-1")
    if not http_host:
        return None
    name = http_host.decode("latin-1").lower()
    if name.startswith("["):  # [v6]:port
        name = name[: name.find("]") + 1] if "]" in name else name
    else:
        name = name.rpartition(":")[0] or name if name.count(":") == 1 else name
    return name.rstrip(".") or None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
