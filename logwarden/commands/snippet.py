"""``logwarden nginx-snippet``: the NGINX lines a cache node needs for logwarden, for this cluster.

    config (peers, refresh header, variants, mode) + cache zone and key ─▶ three sections of text

The same lines as examples/nginx.conf, filled in for this cluster: the peers' addresses in the
``geo`` allow-list (and this machine's own, as it connects to them), the refresh secret in the
``map``, the variant classes, the purge route. Each section says the block it goes into:
``http`` (log format and access log, allow-list, secret map, class map), ``server`` (the
cache-status header, the purge route) and ``location`` (the cached one: bypass, the header kept
from the origin, the class recipe, the purge dispatch). The text holds the secret: it must be
in the map for NGINX to check it.

The cache key and zone matter for variants (the key gets the class) and purge mode (the purge
route names both); they come from ``--cache-key``/``--cache-zone``, else from ``--nginx-conf``
(:func:`read_cache`: its ``proxy_cache_path``, ``proxy_cache`` and ``proxy_cache_key``
directives, includes followed; a file, not ``nginx -T`` on stdin), else the example's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import crossplane

from logwarden.commands.warm import nodes_of
from logwarden.config import Config
from logwarden.deliver.modes import DEFAULT_CACHE_STATUS_HEADER, DEFAULT_HEADER, header_variable
from logwarden.deliver.peerhttp import host_port, source_address
from logwarden.parse.nginxconf import RECOMMENDED_LOG_FORMAT

DEFAULT_ZONE = "logwarden"
DEFAULT_KEY = "$scheme$host$request_uri"
"""examples/nginx.conf's zone and key (without the variant class)."""
DEFAULT_ACCESS_LOG = "/var/log/nginx/logwarden.log"
"""A file of its own: one file written in two formats cannot be read with one."""
CLASS_VARIABLE = "$logwarden_class"
SECTIONS = {
    "http": "paste inside http { }",
    "server": "paste inside the server { } that holds the cached location",
    "location": "paste inside the cached location { } (the one with proxy_cache)",
}
_HEADING = "# ==== {name}: {where} ===="
_REQUEST_METHOD = re.compile(r"\$(?:request_method\b|\{request_method\})")


class SnippetError(Exception):
    """The snippet cannot be written; the message says why and what to give."""


@dataclass(frozen=True)
class CacheSide:
    """The cached location's zone and key, and whether its config sets that key already (else
    the snippet must, where the key matters)."""

    zone: str | None
    """None when several zones are defined and none named: an error only in purge mode."""
    key: str
    key_set: bool


def read_cache(path: str) -> tuple[list[str], list[str], list[str]]:
    """(zones defined by ``proxy_cache_path``, zones named by ``proxy_cache``, the values of
    ``proxy_cache_key``) in the config at ``path``, includes followed, each once in order."""
    if path == "-":
        raise SnippetError("nginx_conf: '-': nginx-snippet reads the cache zone and key from "
                           "the file (give its path), or give --cache-zone and --cache-key")
    payload = crossplane.parse(path, check_ctx=False, check_args=False)
    if payload["errors"]:
        error = payload["errors"][0]
        raise SnippetError(f"nginx_conf: {error['file']}:{error.get('line') or ''}: "
                           f"{error['error']}")
    defined, used, keys = [], [], []
    for stmt in _statements(payload["config"]):
        name, args = stmt["directive"], stmt["args"]
        if name == "proxy_cache_path":
            defined += [a.split("=", 1)[1].split(":", 1)[0] for a in args
                        if a.startswith("keys_zone=")]
        elif name == "proxy_cache" and args and args[0] != "off" and "$" not in args[0]:
            used.append(args[0])
        elif name == "proxy_cache_key" and args:
            keys.append(args[0])
    return list(dict.fromkeys(defined)), list(dict.fromkeys(used)), list(dict.fromkeys(keys))


def _statements(files: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    def walk(stmts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for stmt in stmts:
            yield stmt
            yield from walk(stmt.get("block", []))

    for parsed in files:
        yield from walk(parsed["parsed"])


def cache_side(config: Config, zone: str | None, key: str | None) -> CacheSide:
    """The flags, else what ``nginx_conf`` says, else examples/nginx.conf's values."""
    if not config.nginx_conf:
        return CacheSide(zone or DEFAULT_ZONE, key or DEFAULT_KEY, True)
    defined, used, keys = read_cache(config.nginx_conf)
    if zone is None:
        named = used or defined
        zone = named[0] if len(named) == 1 else None
    if key is not None:
        return CacheSide(zone, key, True)
    if len(keys) > 1:
        raise SnippetError(f"nginx_conf: {config.nginx_conf} has several proxy_cache_key "
                           f"values ({', '.join(keys)}): give the cached location's with "
                           "--cache-key")
    return CacheSide(zone, keys[0], True) if keys else CacheSide(zone, DEFAULT_KEY, False)


def allow_list(nodes: Sequence[str]) -> list[tuple[str, str]]:
    """(address, why) for the ``geo``: every node's addresses, then this machine's own as it
    connects to them (on loopback, or another interface than its peer URL's)."""
    entries: dict[str, str] = {}
    for url in nodes:
        for address in _addresses(host_port(url)[0]):
            entries.setdefault(address, url)
    for url in nodes:
        source = source_address(*host_port(url))
        if source is not None and source not in entries:
            entries[source] = f"this machine, as it connects to {url}"
    return list(entries.items())


def _addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise SnippetError(f"peer: {host!r} cannot be resolved ({exc}): the geo allow-list "
                           "needs the nodes' addresses") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def quoted(text: str) -> str:
    """``text`` as one NGINX string argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sections(config: Config, allow: Sequence[tuple[str, str]], cache: CacheSide
             ) -> dict[str, list[str]]:
    """The lines of each section (:data:`SECTIONS`), comments included."""
    header, secret = config.refresh_header_pair
    status = config.cache_status_header or DEFAULT_CACHE_STATUS_HEADER
    purge = config.mode == "purge"
    variants = [v.header for v in config.variants if v.header]
    access_log = config.access_log[0] if config.access_log else DEFAULT_ACCESS_LOG
    http = [
        "# The access log logwarden follows (--access-log and this --log-format, or",
        "# --nginx-conf). A server or location with access_log lines of its own does not",
        "# inherit this one: add it beside those too.",
        f"log_format logwarden {RECOMMENDED_LOG_FORMAT};",
        "map $upstream_http_set_cookie $logwarden_set_cookie {",
        '    ""       0;',
        "    default  1;",
        "}",
        f"access_log {access_log} logwarden;",
        "",
        "# Who may force a refresh: the addresses the nodes' agents connect from.",
        "geo $logwarden_peer {",
        "    default  0;",
        *(f"    {address}  1;  # {why}" for address, why in allow),
        "}",
        "# A refresh only from those addresses and with exactly the secret of the agents'",
        f"# {header} header; anything else gets a normal cached answer.",
        f'map "$logwarden_peer:{header_variable(header)}" $logwarden_refresh {{',
        "    default  0;",
        f"    {quoted('1:' + secret)}  1;",
        "}",
    ]
    server = [
        "# Lets logwarden (and doctor) verify each refresh. A location with add_header lines of",
        "# its own does not inherit this one: add it there too.",
        f"add_header {status} $upstream_cache_status always;",
    ]
    location = [
        "# A refresh skips the cache lookup and STORES the answer: never add",
        "# $logwarden_refresh to proxy_no_cache.",
        "proxy_cache_bypass $logwarden_refresh;",
        "# Kept from the origin. A location with no proxy_set_header of its own inherits those",
        "# of its server or http block, and stops once this is added: copy them here too.",
        f'proxy_set_header {header} "";',
    ]
    key = cache.key
    if variants:
        name = variants[0][0]
        http += [
            "",
            f"# One copy per class of {name} (README \"Variants\"), tried in the order of",
            "# --variant; the rest get the class \"\".",
            f"map {header_variable(name)} $logwarden_class {{",
            '    default  "";',
            *(f"    {quoted('~*' + re.escape(value))}  {quoted(value)};" for _, value in variants),
            "}",
        ]
        location += [
            "# Variants: the origin gets the class, and its Vary no longer splits the cache.",
            f"proxy_set_header {name} $logwarden_class;",
            "proxy_ignore_headers Vary;",
        ]
        if CLASS_VARIABLE not in key:
            key += CLASS_VARIABLE
    if (variants or purge) and (key != cache.key or not cache.key_set):
        location += [
            "# The cache key refreshes and purges must name; replaces "
            + (f"{cache.key}." if cache.key_set else "NGINX's default"),
            *([] if cache.key_set else ["# $scheme$proxy_host$request_uri, which the purge "
                                        "route cannot name."]),
            f"proxy_cache_key {_argument(key)};",
        ]
    if purge:
        if cache.zone is None:
            raise SnippetError("nginx_conf: several cache zones and none named by proxy_cache: "
                               "give the cached location's with --cache-zone")
        method = config.purge_method
        server += [
            "",
            f"# {method} (logwarden --mode purge) for peers with the secret, 403 otherwise;",
            "# needs ngx_cache_purge (Debian: apt-get install libnginx-mod-http-cache-purge).",
            "# The key is proxy_cache_key's, $request_method as the GET clients send: in this",
            f"# location it is {method}. A named location: Debian 12's module crashes on the",
            f"# same-location 'proxy_cache_purge {method} from ...'.",
            "location @purge {",
            "    if ($logwarden_refresh = 0) { return 403; }",
            f"    proxy_cache_purge {cache.zone} {_argument(_REQUEST_METHOD.sub('GET', key))};",
            "}",
        ]
        location += [
            f"# {method} goes to the purge route (location @purge).",
            "error_page 418 = @purge;",
            f"if ($request_method = {method}) {{ return 418; }}",
        ]
    return {"http": http, "server": server, "location": location}


def _argument(text: str) -> str:
    return quoted(text) if re.search(r"[\s;{}\"'#\\]", text) else text


def render(config: Config, allow: Sequence[tuple[str, str]], cache: CacheSide) -> str:
    """The whole snippet: a heading, then each section under its own heading line."""
    header = config.refresh_header_pair[0]
    source = (f"from {config.refresh_header_file}" if config.refresh_header_file
              else "from refresh_header")
    lines = [
        f"# logwarden nginx-snippet: mode {config.mode}, {len(allow)} allowed address(es), "
        f"the {header} secret {source}.",
        "# It holds the refresh secret: keep it as private as the secret's file.",
    ]
    for name, body in sections(config, allow, cache).items():
        lines += ["", _HEADING.format(name=name, where=SECTIONS[name]), *body]
    return "\n".join(lines) + "\n"


def warnings(config: Config) -> list[str]:
    """What makes the snippet work but not protect or not refresh everything."""
    said = []
    if not config.refresh_header_file and config.refresh_header_pair == DEFAULT_HEADER:
        said.append(f"refresh_header: {': '.join(DEFAULT_HEADER)!r} is no secret: anybody "
                    "who guesses it from a peer address bypasses the cache; give "
                    "--refresh-header-file with a long random one")
    if config.variants and all(v.header for v in config.variants):
        said.append("variant: no '' class: requests matching no class are keyed with class "
                    "\"\", which no refresh covers; add --variant ''")
    return said


def snippet(config: Config, zone: str | None, key: str | None) -> tuple[str, list[str]]:
    """The ``nginx-snippet`` command: (the text, warnings for stderr)."""
    cache = cache_side(config, zone, key)
    allow = allow_list(asyncio.run(nodes_of(config)))
    return render(config, allow, cache), warnings(config)
