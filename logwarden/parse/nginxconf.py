"""Find the access logs logwarden can follow in an NGINX config, with their ``log_format``.

Input is nginx.conf itself (``include`` files followed the way NGINX does: relative to the
main file's directory, globs sorted) or the output of ``nginx -T``, which is every file NGINX
read, each after a ``# configuration file PATH:`` line. Each file is tokenised and nested by
``crossplane`` (NGINX's own Python parser); its checks of directive contexts and argument
counts are off, because NGINX has already accepted the config and crossplane's tables lag
behind NGINX (see the README). This module then walks the tree: ``log_format`` in ``http``,
every ``access_log`` in ``http``/``server``/``location``, ``stream`` and ``mail`` skipped.

Each access log found says whether logwarden can use it, and if not, why; :func:`choose`
picks the ones to follow (``--access-log``/``--syslog`` decide when several qualify).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane
from crossplane.errors import NgxParserBaseException

from logwarden.parse.logformat import ESCAPES, LogFormat, LogFormatError
from logwarden.sources.syslog import parse_url as parse_syslog_url

COMBINED = ("'$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent "
            "\"$http_referer\" \"$http_user_agent\"'")
"""NGINX's predefined ``combined`` format (it lacks the cache status)."""
RECOMMENDED_LOG_FORMAT = (
    r"'$msec\t$scheme\t$host\t$server_port\t$request_method\t$request_uri\t$status\t"
    r"$upstream_cache_status\t$upstream_status\t$request_time\t$logwarden_refresh\t"
    r"$http_user_agent\t$upstream_http_cache_control\t$upstream_http_expires\t"
    r"$upstream_http_x_accel_expires\t$upstream_http_vary\t$logwarden_set_cookie'")
"""The format of examples/nginx.conf (a test keeps them equal), offered when none fits."""

_DUMP_MARKER = re.compile(r"^# configuration file (.+):$", re.MULTILINE)
_NGINX_SAYS = re.compile(  # what nginx -T prints on stderr, maybe piped in with 2>&1
    r"^(?:nginx: |\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )"
    r"(?:\[\w+\] .*|(?:the )?configuration file .*)$", re.MULTILINE)
_CONF_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", '"': '"', "'": "'", "\\": "\\"}
_SKIPPED_BLOCKS = frozenset({"stream", "mail", "events", "types", "map", "geo", "upstream"})
_MAX_INCLUDE_DEPTH = 32


class NginxConfError(ValueError):
    """The config cannot be read, or offers no access log logwarden can follow."""


@dataclass(frozen=True)
class AccessLog:
    """One ``access_log`` directive that writes a file or to syslog."""

    target: str
    """A file path (variables in the file name turned into a ``*`` glob) or a syslog URL as
    logwarden's ``--syslog`` takes it (``udp://HOST:PORT``, ``unix:///PATH``)."""
    kind: str
    """``file`` or ``syslog``."""
    format_name: str
    log_format: str
    """The format as quoted pieces, exactly what ``--log-format`` takes."""
    escape: str
    where: str
    """``FILE:LINE`` of the directive."""
    syslog_tag: str | None = None
    problem: str | None = None
    """Why logwarden cannot follow it; None when it can."""

    def describe(self) -> str:
        state = "usable" if self.problem is None else f"not usable: {self.problem}"
        return f"{self.kind} {self.target} format {self.format_name} ({self.where}): {state}"


@dataclass(frozen=True)
class Choice:
    """What to follow: the settings ``--nginx-conf`` stands for."""

    access_log: tuple[str, ...]
    syslog: tuple[str, ...]
    syslog_tag: str | None
    log_format: str
    escape: str


# --- reading ---------------------------------------------------------------------------------


def read(source: str, stdin: Callable[[], str] | None = None) -> tuple[AccessLog, ...]:
    """Every file or syslog access log of the config at ``source`` (``-``: read ``stdin()``)."""
    if source == "-":
        if stdin is None:
            raise NginxConfError("'-' needs the config (or `nginx -T` output) on stdin")
        return _from_dump(stdin())
    try:
        text = Path(source).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise NginxConfError(f"cannot be read: {exc.strerror}; give the path of nginx.conf "
                             "(`nginx -V` shows it as --conf-path) or pipe `nginx -T` "
                             "into --nginx-conf -") from None
    if _DUMP_MARKER.search(text):
        return _from_dump(text)
    return _walk_config(_DiskFiles(os.path.abspath(source)))


def _from_dump(text: str) -> tuple[AccessLog, ...]:
    pieces = split_dump(text)
    with tempfile.TemporaryDirectory(prefix="logwarden-nginx-T-") as tmp:
        return _walk_config(_DumpFiles(pieces, tmp))


def split_dump(text: str) -> dict[str, str]:
    """``nginx -T`` output as ``{path: content}``, the main file first.

    Text without the markers is taken as one nginx.conf (``cat nginx.conf |``) whose includes
    cannot be followed. NGINX's own messages (``nginx: … syntax is ok``, also when stderr was
    piped in with ``2>&1``) are dropped; a failed test is an error."""
    for said in _NGINX_SAYS.findall(text):
        if "test failed" in said or "[emerg]" in said or "[alert]" in said:
            raise NginxConfError(f"nginx -T reported an error: {said}")
    text = _NGINX_SAYS.sub("", text)
    marks = list(_DUMP_MARKER.finditer(text))
    if not marks:
        return {"<stdin>": text}
    return {m.group(1): text[m.end() + 1:marks[i + 1].start() if i + 1 < len(marks) else None]
            for i, m in enumerate(marks)}


class _DiskFiles:
    """Config files on disk: includes resolved like NGINX (relative to the main file's dir)."""

    def __init__(self, main: str) -> None:
        self.main = main
        self.prefix = os.path.dirname(main)

    def expand(self, pattern: str) -> list[str]:
        path = os.path.join(self.prefix, pattern)
        if glob.has_magic(path):
            return sorted(glob.glob(path))
        return [path]

    def parse(self, path: str) -> list[dict[str, Any]]:
        return _crossplane(path, path)


class _DumpFiles:
    """The files of an ``nginx -T`` dump; crossplane reads files, so each goes to ``tmp``."""

    def __init__(self, pieces: dict[str, str], tmp: str) -> None:
        self.pieces = pieces
        self.main = next(iter(pieces))
        self.prefix = os.path.dirname(self.main)
        self.tmp = tmp

    def expand(self, pattern: str) -> list[str]:
        path = os.path.join(self.prefix, pattern)
        if glob.has_magic(path):
            return sorted(p for p in self.pieces if fnmatch.fnmatchcase(p, path))
        return [path]

    def parse(self, path: str) -> list[dict[str, Any]]:
        if path not in self.pieces:
            raise NginxConfError(f"{path} is included but not in the nginx -T output")
        copy = os.path.join(self.tmp, f"{list(self.pieces).index(path)}.conf")
        with open(copy, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(self.pieces[path])
        return _crossplane(copy, path)


def _crossplane(path: str, shown: str) -> list[dict[str, Any]]:
    """One file's statements. crossplane reports syntax errors (an unbalanced brace, an
    unterminated quote) in its payload even with ``catch_errors=False``, with the tree cut
    short: each is checked here, never trusted to raise."""
    try:
        payload = crossplane.parse(path, single=True, check_ctx=False, check_args=False,
                                   onerror=lambda exc: exc)
    except OSError as exc:
        raise NginxConfError(f"{shown}: cannot be read: {exc.strerror}") from None
    for error in payload["errors"]:
        cause = error.get("callback")
        if isinstance(cause, OSError):
            raise NginxConfError(f"{shown}: cannot be read: {cause.strerror}")
        reason = cause.strerror if isinstance(cause, NgxParserBaseException) else error["error"]
        raise NginxConfError(f"{shown}:{error['line']}: {reason}")
    parsed: list[dict[str, Any]] = payload["config"][0]["parsed"]
    return parsed


# --- walking ---------------------------------------------------------------------------------


@dataclass
class _Found:
    formats: dict[str, tuple[str, str]]
    logs: list[tuple[list[str], str]]


def _walk_config(files: _DiskFiles | _DumpFiles) -> tuple[AccessLog, ...]:
    found = _Found(formats={"combined": (COMBINED, "default")}, logs=[])
    _walk(files, files.main, files.parse(files.main), found, depth=0)
    return tuple(dict.fromkeys(_access_log(args, where, found.formats)
                               for args, where in found.logs))


def _walk(files: _DiskFiles | _DumpFiles, path: str, stmts: list[dict[str, Any]],
          found: _Found, depth: int) -> None:
    for stmt in stmts:
        name, args = stmt["directive"], stmt["args"]
        where = f"{path}:{stmt['line']}"
        if name == "include" and args:
            if depth >= _MAX_INCLUDE_DEPTH:
                raise NginxConfError(f"{where}: includes nested too deep (a loop?)")
            for included in files.expand(args[0]):
                _walk(files, included, files.parse(included), found, depth + 1)
        elif name == "log_format" and len(args) >= 2:
            escape, pieces = _escape_and_pieces(args[1:])
            found.formats[args[0]] = (" ".join(_quote(_unescape(p)) for p in pieces), escape)
        elif name == "access_log" and args and args[0] != "off":
            found.logs.append(([_unescape(a) for a in args], where))
        if "block" in stmt and name not in _SKIPPED_BLOCKS:
            _walk(files, path, stmt["block"], found, depth)


def _escape_and_pieces(args: list[str]) -> tuple[str, list[str]]:
    if args[0].startswith("escape="):
        return args[0].removeprefix("escape="), args[1:]
    return "default", args


def _unescape(arg: str) -> str:
    """The argument as NGINX sees it: crossplane keeps the config's backslash escapes."""
    return re.sub(r"\\(.)", lambda m: _CONF_ESCAPES.get(m.group(1), m.group(0)), arg,
                  flags=re.DOTALL)


def _quote(piece: str) -> str:
    """A piece in single quotes that logformat reads back as exactly ``piece``."""
    text = (piece.replace("\\", "\\\\").replace("'", "\\'").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))
    return f"'{text}'"


def _access_log(args: list[str], where: str, formats: dict[str, tuple[str, str]]) -> AccessLog:
    target, format_name = args[0], args[1] if len(args) > 1 else "combined"
    fmt, escape = formats.get(format_name, ("", "default"))
    problem = None if format_name in formats else f"log_format {format_name} is not defined"
    params = args[2:]
    kind, tag = "file", None
    if target.startswith("syslog:"):
        kind = "syslog"
        target, tag, syslog_problem = _syslog_target(target)
        problem = problem or syslog_problem
    else:
        target, path_problem = _file_target(target)
        problem = problem or path_problem
    if any(p == "gzip" or p.startswith("gzip=") for p in params):
        problem = problem or "gzip-compressed: logwarden reads plain text"
    if problem is None and escape not in ESCAPES:
        problem = f"unknown escape={escape}"
    if problem is None:
        try:
            LogFormat.compile(fmt, escape)
        except LogFormatError as exc:
            problem = str(exc).split(":", 1)[0]
    return AccessLog(target, kind, format_name, fmt, escape, where, tag, problem)


def _file_target(path: str) -> tuple[str, str | None]:
    """A path with variables in its file name is followed as a glob (every file it names)."""
    directory, name = os.path.split(path)
    if "$" in directory:
        return path, "variables in the directory cannot be followed"
    if "$" in name:
        return os.path.join(directory, re.sub(r"\$(\{\w+\}|\w+)", "*", name)), None
    return path, None


def _syslog_target(target: str) -> tuple[str, str, str | None]:
    """``syslog:server=ADDR[:PORT],tag=T,…`` as logwarden's listener URL, tag and problem."""
    params = dict(p.partition("=")[::2] for p in target.removeprefix("syslog:").split(","))
    server, tag = params.get("server", ""), params.get("tag", "nginx")
    if server.startswith("unix:"):
        url = "unix://" + server.removeprefix("unix:")
    else:
        host, port = server, "514"  # NGINX's default syslog port
        if re.search(r":\d+$", server) and not server.endswith("]"):
            host, _, port = server.rpartition(":")
        url = f"udp://{host}:{port}"
    try:
        parse_syslog_url(url)
    except ValueError as exc:
        return url, tag, f"cannot listen on {url}: {exc}"
    return url, tag, None


# --- choosing --------------------------------------------------------------------------------


def choose(found: Sequence[AccessLog], source: str, *, access_log: Sequence[str] = (),
           syslog: Sequence[str] = ()) -> Choice:
    """The access logs to follow: the ones ``access_log``/``syslog`` name, else every usable
    one when they share one format and are all files; otherwise the error says what to do."""
    usable = [a for a in found if a.problem is None]
    if access_log or syslog:
        picked = [_pick(found, t, "file") for t in access_log]
        picked += [_pick(found, t, "syslog") for t in syslog]
    elif not usable:
        raise NginxConfError(_none_usable(found, source))
    elif len(usable) == 1 or (all(a.kind == "file" for a in usable)
                              and len({(a.log_format, a.escape) for a in usable}) == 1):
        picked = usable
    else:
        raise NginxConfError("several access logs qualify; pick with --access-log PATH or "
                             "--syslog URL: " + "; ".join(a.describe() for a in usable))
    formats = {(a.log_format, a.escape) for a in picked}
    tags = {a.syslog_tag for a in picked if a.syslog_tag}
    if len(formats) > 1 or len(tags) > 1:
        raise NginxConfError("the access logs picked differ in log_format or syslog tag; run "
                             "one logwarden per format: "
                             + "; ".join(a.describe() for a in picked))
    fmt, escape = formats.pop()
    return Choice(tuple(a.target for a in picked if a.kind == "file"),
                  tuple(a.target for a in picked if a.kind == "syslog"),
                  tags.pop() if tags else None, fmt, escape)


def _pick(found: Sequence[AccessLog], target: str, kind: str) -> AccessLog:
    for a in found:
        if a.kind == kind and a.target == target:
            if a.problem is not None:
                raise NginxConfError(f"{target} cannot be followed: {a.describe()}")
            return a
    listed = "; ".join(a.describe() for a in found) or "no access_log at all"
    raise NginxConfError(f"{target} is not an access_log of the config (it has: {listed})")


def _none_usable(found: Sequence[AccessLog], source: str) -> str:
    files = [a.target for a in found if a.kind == "file"]
    directory = os.path.dirname(files[0]) if files else "/var/log/nginx"
    seen = "; ".join(a.describe() for a in found) or "no access_log writing a file or syslog"
    return (f"no access log logwarden can use in {source} ({seen}). Add to its http block: "
            f"log_format logwarden {RECOMMENDED_LOG_FORMAT}; "
            f"access_log {directory}/logwarden.log logwarden; "
            "then reload NGINX and run logwarden again")
