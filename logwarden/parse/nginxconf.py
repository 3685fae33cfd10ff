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
import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
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
    r"$upstream_http_x_accel_expires\t$upstream_http_vary\t$logwarden_set_cookie\t"
    r"$upstream_http_etag\t$upstream_http_last_modified'")
"""The format of examples/nginx.conf (a test keeps them equal), offered when none fits."""
SET_COOKIE_MAP = 'map $upstream_http_set_cookie $logwarden_set_cookie { "" 0; default 1; }'
"""The map the format's last field needs (whether the origin sent a cookie, never which)."""

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
class CacheScope:
    """A location (or a server without locations) that caches and writes an access log:
    the directives that say what NGINX stores there, inherited the way NGINX inherits them.
    Variables named are without ``$``; ``*_roots`` follow ``map``/``geo`` back to the
    variables NGINX computes them from (a ``geo`` from ``remote_addr``)."""

    where: str
    """``FILE:LINE`` of the location (or server) block."""
    zone: str
    key: str | None
    """``proxy_cache_key``; None: NGINX's default ``$scheme$proxy_host$request_uri``."""
    ignore_headers: tuple[str, ...] = ()
    cache_valid: tuple[tuple[str, ...], ...] = ()
    """The arguments of each ``proxy_cache_valid``."""
    key_roots: tuple[str, ...] = ()
    bypass: tuple[str, ...] = ()
    """The variables of every ``proxy_cache_bypass``."""
    bypass_roots: tuple[str, ...] = ()
    no_cache: tuple[str, ...] = ()
    """The variables of every ``proxy_no_cache``."""
    no_cache_roots: tuple[str, ...] = ()
    convert_head: bool = True
    background_update: bool = False
    use_stale: tuple[str, ...] = ()
    slice: bool = False
    cache_status_header: str | None = None
    """The ``add_header`` name whose value is ``$upstream_cache_status``."""
    gzip: bool = False
    """``gzip`` or ``gzip_vary`` on: NGINX compresses, or says it varies."""
    purge_keys: tuple[tuple[str, str], ...] = ()
    """``(FILE:LINE, key)`` of each ``proxy_cache_purge`` with a key, in the server."""


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
    cache: tuple[CacheScope, ...] = ()
    """The caching locations whose requests this directive logs."""
    params: tuple[str, ...] = ()
    """The directive's parameters after the format (``buffer=``, ``flush=``, ``if=``...)."""

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
    cache: tuple[CacheScope, ...] = ()
    """The caching locations of the logs picked."""


# --- reading ---------------------------------------------------------------------------------


def read(source: str, stdin: Callable[[], str] | None = None,
         prefix: str | None = None) -> tuple[AccessLog, ...]:
    """Every file or syslog access log of the config at ``source`` (``-``: read ``stdin()``;
    None: stdin is a terminal, nothing was piped). ``prefix``: NGINX's, for relative log
    paths (None: what ``nginx -V`` says, if found)."""
    if source == "-":
        return _from_dump(stdin() if stdin is not None else "", prefix)
    try:
        text = Path(source).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise NginxConfError(f"cannot be read: {exc.strerror}; give the path of nginx.conf "
                             "(`nginx -V` shows it as --conf-path) or pipe `nginx -T` "
                             "into --nginx-conf -") from None
    if _DUMP_MARKER.search(text):
        return _from_dump(text, prefix)
    return _walk_config(_DiskFiles(os.path.abspath(source)), prefix)


def _from_dump(text: str, prefix: str | None) -> tuple[AccessLog, ...]:
    pieces = split_dump(text)
    with tempfile.TemporaryDirectory(prefix="logwarden-nginx-T-") as tmp:
        return _walk_config(_DumpFiles(pieces, tmp), prefix)


@functools.cache
def nginx_prefix() -> str | None:
    """The prefix compiled into the nginx binary on this machine (``nginx -V``), if any."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if binary is None:
        return None
    try:
        said = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"--prefix=(\S+)", said.stderr + said.stdout)
    return match.group(1) if match else None


def split_dump(text: str) -> dict[str, str]:
    """``nginx -T`` output as ``{path: content}``, the main file first.

    Text without the markers is taken as one nginx.conf (``cat nginx.conf |``) whose includes
    cannot be followed. NGINX's own messages (``nginx: … syntax is ok``, also when stderr was
    piped in with ``2>&1``) are dropped; a failed test is an error, and so is no config at all
    (an empty stdin: nothing piped, or ``nginx -t``'s messages only)."""
    for said in _NGINX_SAYS.findall(text):
        if "test failed" in said or "[emerg]" in said or "[alert]" in said:
            raise NginxConfError(f"nginx -T reported an error: {said}")
    text = _NGINX_SAYS.sub("", text)
    marks = list(_DUMP_MARKER.finditer(text))
    if not marks:
        if not text.strip():
            raise NginxConfError("has no config on stdin: pipe `nginx -T` into it (capital T; "
                                 "`nginx -t` only tests), e.g. nginx -T | logwarden check "
                                 "--nginx-conf -")
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


def _walk_config(files: _DiskFiles | _DumpFiles, prefix: str | None) -> tuple[AccessLog, ...]:
    found = _Found(formats={"combined": (COMBINED, "default")}, logs=[])
    _walk(files, files.main, files.parse(files.main), found, depth=0)
    scopes: dict[str, list[CacheScope]] = {}
    main = _expand(files, files.main, files.parse(files.main), 0)
    _cache_scopes(files, main, _Inherited(), scopes, _Variables.of(files, main))
    return tuple(dict.fromkeys(
        replace(_access_log(args, where, found.formats, prefix),
                cache=tuple(scopes.get(where, ())))
        for args, where in found.logs))


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def variables_in(text: str) -> tuple[str, ...]:
    """The ``$variables`` of an NGINX string, in order, without ``$``."""
    return tuple(dict.fromkeys(a or b for a, b in _VARIABLE.findall(text)))


@dataclass
class _Variables:
    """The variables ``map`` and ``geo`` define (http level), and where each comes from."""

    sources: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, files: _DiskFiles | _DumpFiles, main: list[_Statement]) -> _Variables:
        sources: dict[str, tuple[str, ...]] = {}
        for path, stmt in main:
            if stmt["directive"] == "http" and "block" in stmt:
                for _, inner in _expand(files, path, stmt["block"], 0):
                    args = [_unescape(a) for a in inner["args"]]
                    if inner["directive"] == "map" and len(args) == 2:
                        sources[args[1].lstrip("$")] = variables_in(args[0])
                    elif inner["directive"] == "geo" and args:
                        source = variables_in(args[0]) if len(args) == 2 else ("remote_addr",)
                        sources[args[-1].lstrip("$")] = source
        return cls(sources)

    def roots(self, names: Iterable[str]) -> tuple[str, ...]:
        """The variables ``names`` are computed from, through maps and geos."""
        out: dict[str, None] = {}
        todo, seen = list(names), set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.sources:
                todo += self.sources[name]
            else:
                out[name] = None
        return tuple(out)


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


_Statement = tuple[str, dict[str, Any]]
"""A directive and the file it is in."""


def _expand(files: _DiskFiles | _DumpFiles, path: str, stmts: list[dict[str, Any]],
            depth: int) -> list[_Statement]:
    """One block's directives with ``include`` replaced by what it includes, as NGINX reads
    them (each keeps its own file, for the messages)."""
    out: list[_Statement] = []
    for stmt in stmts:
        if stmt["directive"] == "include" and stmt["args"]:
            if depth >= _MAX_INCLUDE_DEPTH:
                raise NginxConfError(f"{path}:{stmt['line']}: includes nested too deep (a loop?)")
            for included in files.expand(stmt["args"][0]):
                out += _expand(files, included, files.parse(included), depth + 1)
        else:
            out.append((path, stmt))
    return out


@dataclass(frozen=True)
class _Inherited:
    """The directives a block takes from the blocks around it unless it sets its own (for
    these, a block's own directives replace the inherited ones, in whatever order written)."""

    logs: tuple[str, ...] = ()
    """``FILE:LINE`` of the access_log directives in force (none after ``access_log off``)."""
    cache: str | None = None
    values: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()
    """The other directives in force: name and the arguments of each of its directives."""
    purge_keys: tuple[tuple[str, str], ...] = ()

    def within(self, block: list[_Statement]) -> _Inherited:
        own: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for path, stmt in block:
            own.setdefault(stmt["directive"], []).append(
                (f"{path}:{stmt['line']}", tuple(_unescape(a) for a in stmt["args"])))
        changed: dict[str, Any] = {}
        if "access_log" in own:
            changed["logs"] = tuple(where for where, args in own["access_log"]
                                    if args and args[0] != "off")
        if "proxy_cache" in own:
            zone = own["proxy_cache"][-1][1]
            changed["cache"] = None if not zone or zone[0] == "off" else zone[0]
        values = dict(self.values)
        for name in _INHERITED:
            if name in own:
                values[name] = tuple(args for _, args in own[name])
        changed["values"] = tuple(values.items())
        return replace(self, **changed)

    def scope(self, where: str, variables: _Variables) -> CacheScope:
        assert self.cache is not None
        v = dict(self.values)

        def args(name: str) -> tuple[str, ...]:
            return tuple(a for directive in v.get(name, ()) for a in directive)

        def last(name: str, default: str) -> str:
            return v[name][-1][0] if v.get(name) and v[name][-1] else default

        key = " ".join(v["proxy_cache_key"][-1]) if v.get("proxy_cache_key") else None
        bypass = tuple(n for a in args("proxy_cache_bypass") for n in variables_in(a))
        no_cache = tuple(n for a in args("proxy_no_cache") for n in variables_in(a))
        status_header = next((a[0] for a in v.get("add_header", ())
                              if len(a) >= 2 and "$upstream_cache_status" in a[1]), None)
        return CacheScope(
            where, self.cache, key, args("proxy_ignore_headers"), v.get("proxy_cache_valid", ()),
            variables.roots(variables_in(key or "$scheme$proxy_host$request_uri")),
            bypass, variables.roots(bypass), no_cache, variables.roots(no_cache),
            last("proxy_cache_convert_head", "on") == "on",
            last("proxy_cache_background_update", "off") == "on", args("proxy_cache_use_stale"),
            "slice" in v, status_header,
            last("gzip", "off") == "on" or last("gzip_vary", "off") == "on", self.purge_keys)


_INHERITED = ("proxy_cache_key", "proxy_ignore_headers", "proxy_cache_valid",
              "proxy_cache_bypass", "proxy_no_cache", "proxy_cache_convert_head",
              "proxy_cache_background_update", "proxy_cache_use_stale", "slice", "add_header",
              "gzip", "gzip_vary")
"""Directives a location inherits from its server and http blocks (when it sets none)."""
_SCOPE_BLOCKS = frozenset({"http", "server", "location"})


def _cache_scopes(files: _DiskFiles | _DumpFiles, block: list[_Statement],
                  inherited: _Inherited, found: dict[str, list[CacheScope]],
                  variables: _Variables, kind: str = "main", where: str = "") -> None:
    """Every location (and server without one) under ``block`` that caches, noted under
    each access_log directive in force there."""
    here = inherited.within(block)
    if kind == "server":  # a purge route is a location of the server: every one sees it
        here = replace(here, purge_keys=_purge_keys(files, block))
    children = [(path, stmt) for path, stmt in block
                if stmt["directive"] in _SCOPE_BLOCKS and "block" in stmt]
    for path, stmt in children:
        _cache_scopes(files, _expand(files, path, stmt["block"], 0), here, found, variables,
                      stmt["directive"], f"{path}:{stmt['line']}")
    serves = kind == "location" or (
        kind == "server" and not any(s["directive"] == "location" for _, s in children))
    if serves and here.cache is not None:
        scope = here.scope(where, variables)
        for log in here.logs:
            found.setdefault(log, []).append(scope)


def _purge_keys(files: _DiskFiles | _DumpFiles, block: list[_Statement]
                ) -> tuple[tuple[str, str], ...]:
    """``(FILE:LINE, key)`` of every ``proxy_cache_purge ZONE KEY`` in a server's block."""
    out = []
    for path, stmt in block:
        if stmt["directive"] == "proxy_cache_purge" and len(stmt["args"]) >= 2 \
                and stmt["args"][0] not in ("on", "off", "PURGE"):
            out.append((f"{path}:{stmt['line']}", " ".join(map(_unescape, stmt["args"][1:]))))
        if stmt["directive"] in ("location", "if") and "block" in stmt:
            out += _purge_keys(files, _expand(files, path, stmt["block"], 0))
    return tuple(out)


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


def _access_log(args: list[str], where: str, formats: dict[str, tuple[str, str]],
                prefix: str | None) -> AccessLog:
    target, format_name = args[0], args[1] if len(args) > 1 else "combined"
    if not target.startswith("syslog:") and not os.path.isabs(target):
        prefix = prefix or nginx_prefix()
        if prefix is None:
            return AccessLog(target, "file", format_name, "", "default", where, problem=(
                "a relative path, which NGINX resolves against its prefix (nginx -p, or the "
                "--prefix nginx -V shows): give it with --nginx-prefix"))
        target = os.path.join(prefix, target)
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
    return AccessLog(target, kind, format_name, fmt, escape, where, tag, problem,
                     params=tuple(params))


_OWN_OUTPUT = frozenset({"/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2",
                         "/dev/fd/1", "/dev/fd/2"})
"""Paths that are NGINX's own standard output: a container's log, not a file to tail (and
logwarden would read its own output if it opened them)."""
SYSTEM_LOGGER = frozenset({"/dev/log", "/run/systemd/journal/dev-log", "/var/run/syslog"})
"""The system logger's sockets: syslogd or journald owns them, logwarden cannot listen there."""


def _file_target(path: str) -> tuple[str, str | None]:
    """A path with variables in its file name is followed as a glob (every file it names)."""
    if path in _OWN_OUTPUT:
        return path, ("NGINX's standard output (logwarden would read its own): log to a file "
                      "or to syslog:server=127.0.0.1:5514 for logwarden")
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
        if server.removeprefix("unix:") in SYSTEM_LOGGER:
            return url, tag, ("the system logger's socket (syslogd or journald owns it): add "
                              "an access_log syslog:server=127.0.0.1:5514 for logwarden")
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
           syslog: Sequence[str] = (), format_name: str | None = None) -> Choice:
    """The access logs to follow: the ones ``access_log``/``syslog`` name, else every usable
    one when they share one format and are all files; otherwise the error says what to do.
    A path named by several directives is followed once; one written in several formats
    needs ``format_name`` (``--log-format-name``) to say which format to read it with."""
    if format_name is not None:
        named = [a for a in found if a.format_name == format_name]
        if not named:
            names = ", ".join(sorted({a.format_name for a in found})) or "none"
            raise NginxConfError(f"no access_log of {source} uses log_format {format_name} "
                                 f"(they use: {names})")
        found = named
    found = _mixed_formats(found)
    usable = _once([a for a in found if a.problem is None])
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
    picked = _once(picked)
    formats = {(a.log_format, a.escape) for a in picked}
    tags = {a.syslog_tag for a in picked if a.syslog_tag}
    if len(formats) > 1 or len(tags) > 1:
        raise NginxConfError("the access logs picked differ in log_format or syslog tag; run "
                             "one logwarden per format: "
                             + "; ".join(a.describe() for a in picked))
    fmt, escape = formats.pop()
    targets = {(a.kind, a.target) for a in picked}
    return Choice(tuple(a.target for a in picked if a.kind == "file"),
                  tuple(a.target for a in picked if a.kind == "syslog"),
                  tags.pop() if tags else None, fmt, escape,
                  tuple(dict.fromkeys(scope for a in found if (a.kind, a.target) in targets
                                      for scope in a.cache)))


def _once(logs: Sequence[AccessLog]) -> list[AccessLog]:
    """One entry per path or listener (several server blocks may name the same file)."""
    return list({(a.kind, a.target): a for a in reversed(logs)}.values())[::-1]


def _mixed_formats(found: Sequence[AccessLog]) -> list[AccessLog]:
    """``found`` with each path that several blocks write in different formats marked not
    usable: read with one format, the lines of the others would all count as malformed."""
    formats: dict[tuple[str, str], dict[str, str]] = {}
    for a in found:
        formats.setdefault((a.kind, a.target), {}).setdefault(a.format_name, a.where)
    out = []
    for a in found:
        seen = formats[(a.kind, a.target)]
        if len(seen) > 1 and a.problem is None:
            listed = ", ".join(f"{name} ({where})" for name, where in seen.items())
            a = replace(a, problem=f"written in several formats: {listed}; pick one with "
                                   "--log-format-name (the other lines would be malformed)")
        out.append(a)
    return out


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
            f"{SET_COOKIE_MAP} log_format logwarden {RECOMMENDED_LOG_FORMAT}; "
            f"access_log {directory}/logwarden.log logwarden; "
            "then reload NGINX and run logwarden again (`logwarden nginx-snippet` prints "
            "every line to add)")
