"""The one frozen configuration, built once from defaults < TOML file < environment < flags.

Every setting is declared once in ``SETTINGS``; the CLI flags, the TOML keys and the
``LOGWARDEN_*`` environment variables are all derived from that table, so the three ways of
configuring logwarden cannot drift apart. Validation happens here, before any task starts,
and every error names the offending key and value.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from logwarden.decide.cacheable import CachePolicy
from logwarden.deliver.downstream import Template, read_template
from logwarden.deliver.modes import (
    DEFAULT_CACHE_STATUS_HEADER,
    MODES,
    Mode,
    Variant,
    mode_of,
    parse_variant,
)
from logwarden.deliver.peerhttp import holder_name
from logwarden.parse.logformat import ESCAPES, LogFormat, LogFormatError
from logwarden.parse.nginxconf import AccessLog, NginxConfError
from logwarden.parse.nginxconf import choose as choose_access_logs
from logwarden.parse.nginxconf import read as read_nginx_conf
from logwarden.route.busredis import BusAddress, mask
from logwarden.route.busredis import parse as parse_bus_url
from logwarden.route.discovery import check_peer_url, is_self, peer_identity, read_peers_file
from logwarden.sources.positions import default_path as default_positions_path
from logwarden.sources.syslog import Address
from logwarden.sources.syslog import parse_url as parse_syslog_url

ENV_PREFIX = "LOGWARDEN_"
CACHE_STATUSES = ("MISS", "BYPASS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "HIT")
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_OWN_OUTPUT = re.compile(r"/(?:dev/(?:stdout|stderr|fd/[12])|proc/(?:self|thread-self)/fd/[12])")
_MAX_LINKS = 8
_INSTANCE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the key and the value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"{key}: {value!r} {reason}")
        self.key = key


@dataclass(frozen=True)
class Setting:
    """One configurable value: its type, default and help text, shared by flag, TOML and env."""

    name: str
    kind: type
    default: Any
    help: str
    multiple: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[str, Any], object] | None = None
    """Raises ConfigError naming the key and value; returns a parsed form to keep, or None."""
    attr: str = ""
    """The Config field, when it differs from the setting's name."""
    also: tuple[str, ...] = ()
    """The commands besides ``run`` (and ``check``, which checks what ``run`` would start) that
    read it, so take its flag: ``replay``, ``warm``. Every key is accepted in the TOML file and
    the environment by every command: one file serves them all."""

    @property
    def field(self) -> str:
        return self.attr or self.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


# -- checks: each takes (key, value), raises ConfigError naming both, and returns the parsed
# value the config keeps (or None) ------------------------------------------------------------


def _check_peer_url(key: str, url: str) -> None:
    try:
        check_peer_url(url)
    except ValueError as exc:
        raise ConfigError(key, url, str(exc)) from None


def _check_peers_file(key: str, path: str | None) -> tuple[str, ...]:
    """The peers the file names at the start."""
    if path is None:
        return ()
    try:
        return read_peers_file(path)
    except OSError as exc:
        raise ConfigError(key, path, f"cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(key, path, str(exc)) from None


def _check_access_logs(key: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    """A log that is not there yet is waited for; one that is there must be a readable file
    or FIFO, and not logwarden's own output. The paths made absolute: positions are saved
    under them, and a restart from another working directory must find them."""
    for path in paths:
        own = _own_output(path)
        if own is not None:
            named = "is" if own == os.path.normpath(path) else f"leads to {own}, which is"
            raise ConfigError(key, path, f"{named} the standard output or error of the process "
                              "that reads it: logwarden would read its own output. Have NGINX "
                              "write the access log to a file, a FIFO or syslog, and give "
                              "logwarden that")
        if set("*?[") & set(os.path.dirname(path)):
            raise ConfigError(key, path, "may have glob characters in the file name only")
        if os.path.isdir(path):
            raise ConfigError(key, path, "is a directory: give the access log file (a glob "
                              "such as DIR/*.log follows every match)")
        if os.path.exists(path) and not os.access(path, os.R_OK):
            raise ConfigError(key, path, "cannot be read (permission denied): run logwarden as "
                              "a user that may read it (Debian: a member of the adm group, as "
                              "examples/logwarden.service does)")
        mode = os.stat(path).st_mode if os.path.exists(path) else stat.S_IFREG
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ConfigError(key, path, "is not a file or a FIFO (a device or a socket): give "
                              "the file NGINX's access_log writes")
    return tuple(os.path.abspath(path) for path in paths)


def _own_output(path: str) -> str | None:
    """The name of a standard output or error that ``path`` is, or leads to through symbolic
    links (Docker's nginx image links /var/log/nginx/access.log to /dev/stdout)."""
    for _ in range(_MAX_LINKS):
        if _OWN_OUTPUT.fullmatch(os.path.normpath(path)):
            return os.path.normpath(path)
        try:
            path = os.path.join(os.path.dirname(path), os.readlink(path))
        except OSError:
            return None
    return None


def _check_syslog_urls(key: str, urls: tuple[str, ...]) -> tuple[Address, ...]:
    addresses = []
    for url in urls:
        try:
            addresses.append(parse_syslog_url(url))
        except ValueError as exc:
            raise ConfigError(key, url, str(exc)) from None
    return tuple(addresses)


def _check_networks(key: str, networks: tuple[str, ...]) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network)
        except ValueError as exc:
            raise ConfigError(key, network, f"is not a network in CIDR notation ({exc})") from None


def _check_syslog_tag(key: str, tag: str) -> None:
    if not tag or any(c in tag for c in " :[]") or not tag.isprintable() or not tag.isascii():
        raise ConfigError(key, tag, "is not a syslog tag (printable ASCII, no space, ':' or [])")


def _check_peers(key: str, urls: tuple[str, ...]) -> None:
    for url in urls:
        _check_peer_url(key, url)


def _check_self(key: str, url: str | None) -> None:
    if url is not None:
        _check_peer_url(key, url)


def _check_self_is_a_peer(url: str | None, peers: tuple[str, ...], dns: tuple[str, ...]) -> None:
    """``self`` must be one of the peers known at the start (``--peer``, the peers file), the
    same scheme, host and port (a default port, a trailing slash and case do not count), else
    the node refreshes itself. With ``--peers-dns`` the peers are only known once resolved,
    after the start: nothing is checked."""
    if url is None or not peers or dns:
        return
    own = peer_identity(url)
    if any(peer_identity(p) == own for p in peers):
        return
    raise ConfigError("self", url, f"is not one of the peers ({', '.join(peers)}): "
                      "list this node among them (the same list on every node) and give "
                      "--self as it is spelled there")


def _check_bus(key: str, url: str | None) -> BusAddress | None:
    if url is None:
        return None
    try:
        return parse_bus_url(url)
    except ValueError as exc:
        raise ConfigError(key, mask(url), str(exc)) from None


def _read_bus_password(key: str, path: str | None) -> str | None:
    """The file's first line; errors name the file, never its content."""
    if path is None:
        return None
    password = _read_secret_file(key, path).partition("\n")[0].strip()
    if not password:
        raise ConfigError(key, path, "is empty: it must hold the Redis password")
    return password


def _read_bus_secrets(key: str, path: str | None) -> tuple[bytes, ...]:
    """One or two lines: the secret this node signs with, then the one it still accepts
    while a fleet rolls it (README, "The bus")."""
    if path is None:
        return ()
    lines = [line.strip() for line in _read_secret_file(key, path).splitlines() if line.strip()]
    if not 1 <= len(lines) <= 2:
        raise ConfigError(key, path, f"holds {len(lines)} secrets: give one line (the secret) "
                          "or two (the secret to sign with, then the previous one)")
    if any(len(line) < 16 for line in lines):
        raise ConfigError(key, path, "holds a secret shorter than 16 characters")
    return tuple(line.encode() for line in lines)


def _read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(key, path, f"cannot be read ({reason})") from None


def _bus_settings(v: dict[str, Any], parsed: dict[str, Any]) -> BusAddress | None:
    """The bus's settings together: a secret to sign with, one password, TLS files only
    for a TLS URL. The URL is kept with its password masked (``check`` prints it; the
    password stays in the returned address)."""
    address: BusAddress | None = parsed["bus"]
    if address is None:
        return None
    v["bus"] = address.shown
    if not parsed["bus_secret_file"]:
        raise ConfigError("bus_secret_file", None, "is required with bus: a file only the "
                          "agents read, holding the secret every message is signed with")
    password = parsed["bus_password_file"]
    if password is not None:
        if address.password is not None:
            raise ConfigError("bus_password_file", v["bus_password_file"], "and the bus URL "
                              "both give a password: keep one (the file: a URL is shown)")
        address = replace(address, password=password)
    for name in ("bus_ca", "bus_cert", "bus_key"):
        if v[name] and not address.tls:
            raise ConfigError(name, v[name], f"needs a TLS bus (rediss://), not {v['bus']}")
    if v["bus_key"] and not v["bus_cert"]:
        raise ConfigError("bus_key", v["bus_key"], "needs bus_cert, the certificate it goes with")
    return address


def _check_channel(key: str, channel: str) -> None:
    if not channel or not channel.isascii() or not channel.isprintable() or " " in channel:
        raise ConfigError(key, channel, "is not a channel name (printable ASCII, no space)")


def _check_header(key: str, header: str) -> None:
    """Errors show the header masked (:func:`masked_header`): its value is the secret."""
    name, sep, value = header.partition(":")
    if not sep or not _TOKEN.match(name.strip()) or not value.strip():
        raise ConfigError(key, masked_header(header), "must look like 'Name: value' with a "
                          "non-empty value")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in header) or not header.isascii():
        raise ConfigError(key, masked_header(header), "must be ASCII without control "
                          "characters")


def masked_header(header: str) -> str:
    """The refresh header as ``check`` and errors show it: its name, never its value (the
    shared secret)."""
    name, sep, _ = header.partition(":")
    return f"{name.strip()}: ***" if sep else "***"


def _check_statuses(key: str, raw: tuple[str, ...]) -> tuple[str, ...]:
    """The statuses upper-cased, each once (a comma-separated item counts as several)."""
    statuses = tuple(dict.fromkeys(s.upper() for item in raw for s in _split(item)))
    for s in statuses:
        if s not in CACHE_STATUSES:
            raise ConfigError(key, s, f"is not a cache status ({', '.join(CACHE_STATUSES)})")
    if not statuses:
        raise ConfigError(key, "", "must name at least one cache status")
    return statuses


def _check_variants(key: str, texts: tuple[str, ...]) -> tuple[Variant, ...]:
    """Each class once, all of one header (a node keys one header's classes apart)."""
    variants = []
    for text in texts:
        try:
            variants.append(parse_variant(text))
        except ValueError as exc:
            raise ConfigError(key, text, str(exc)) from None
    headers = {variant.header[0].lower() for variant in variants if variant.header}
    if len(headers) > 1:
        raise ConfigError(key, ", ".join(texts), "names more than one header: give the "
                          "classes of one header (the one the node's map keys on)")
    if len(set(variants)) != len(variants):
        raise ConfigError(key, ", ".join(texts), "names a class twice")
    return tuple(variants)


def _check_header_file(key: str, path: str | None) -> str | None:
    return None if path is None else read_header_file(key, path)


def read_header_file(key: str, path: str) -> str:
    """The header line in ``path``; errors name the file, never its content (a secret). The
    daemon reads it again on SIGHUP."""
    try:
        header = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, path, f"cannot be read: {exc}") from None
    try:
        _check_header(key, header)
    except ConfigError:
        raise ConfigError(key, path, "must hold one line 'Name: value', printable ASCII with a "
                          "non-empty value") from None
    return header


def _check_header_name(key: str, name: str) -> None:
    if name and not _TOKEN.match(name):
        raise ConfigError(key, name, "is not a header name (an HTTP token such as "
                          "X-Cache-Status), nor '' to turn verification off")


def _check_token(key: str, value: str) -> None:
    if not _TOKEN.match(value):
        raise ConfigError(key, value, "is not an HTTP method token")


def _check_regexes(key: str, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(key, pattern, f"is not a regular expression: {exc}") from None


def _check_readable(key: str, path: str | None) -> None:
    if path is not None and not os.access(path, os.R_OK):
        raise ConfigError(key, path, "is not a readable file")


def _check_listen(key: str, listen: str) -> tuple[str, int] | None:
    if listen == "off":
        return None
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(key, listen, str(exc)) from None


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` / ``[V6]:PORT`` into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError("must be HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host:
        ipaddress.IPv6Address(host)
    return host, int(port)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, value, "must be greater than 0")


def _not_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(key, value, "must not be negative")


def _check_instance(key: str, name: str | None) -> None:
    if name is not None and not _INSTANCE.match(name):
        raise ConfigError(key, name, "is not an instance name (letters, digits, '.', '_', '-'; "
                          "64 at most)")


def _check_default_host(key: str, host: str | None) -> None:
    if host is not None and (not host or any(c in host for c in " /\r\n\t\0")):
        raise ConfigError(key, host, "is not a host name")


def _check_downstreams(key: str, specs: tuple[str, ...]) -> tuple[Template | str, ...]:
    """Each edge URL as it is, each template read (its auth header file too, never shown)."""
    parsed: list[Template | str] = []
    for spec in specs:
        try:
            if spec.startswith("template:"):
                parsed.append(read_template(spec.removeprefix("template:")))
            else:
                check_peer_url(spec)
                parsed.append(spec)
        except ValueError as exc:
            hint = "" if spec.startswith(("template:", "http:", "https:")) else \
                ": give an edge as http(s)://HOST[:PORT], a CDN's API as template:FILE"
            raise ConfigError(key, spec, f"{exc}{hint}") from None
    return tuple(parsed)


def _check_headers(key: str, headers: tuple[str, ...]) -> None:
    for header in headers:
        _check_header(key, header)


def _check_doctor_url(key: str, url: str) -> None:
    """The canary of ``doctor``: a path (on ``default_host``) or an http(s) URL with a host."""
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ConfigError(key, url, "must be printable ASCII without spaces (percent-encode "
                          "the rest)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if not url.startswith("/") and not (url.startswith(("http://", "https://")) and host):
        raise ConfigError(key, url, "is neither a path (/...) nor an http(s) URL")




SETTINGS: tuple[Setting, ...] = (
    Setting("access_log", str, (), "Access log file to tail (repeatable).", multiple=True,
            check=_check_access_logs, also=("replay",)),
    Setting("syslog", str, (), "Syslog listener for NGINX's access_log syslog: udp://HOST:PORT "
            "or unix:///PATH (repeatable).", multiple=True, check=_check_syslog_urls,
            also=("replay",)),
    Setting("syslog_tag", str, "nginx", "Syslog tag (RFC 5424 APP-NAME) of the access log; "
            "other tags are counted and ignored.", check=_check_syslog_tag),
    Setting("syslog_rcvbuf", int, 4 << 20, "Receive buffer (SO_RCVBUF) bytes asked for each "
            "syslog socket.", check=_positive),
    Setting("syslog_allow", str, (), "Source network (CIDR) UDP syslog is accepted from "
            "(repeatable); default: any.", multiple=True, check=_check_networks),
    Setting("log_format", str, None, "The NGINX log_format string, exactly as in nginx.conf.",
            also=("replay",)),
    Setting("log_format_escape", str, "default", "The log_format's escape= parameter.",
            choices=ESCAPES, also=("replay",)),
    Setting("nginx_conf", str, None, "nginx.conf (includes followed), or '-' for `nginx -T` "
            "output on stdin: the access logs and their log_format are read from it.",
            also=("replay",)),
    Setting("nginx_prefix", str, None, "NGINX's prefix (nginx -p), for relative access_log "
            "paths in --nginx-conf (default: the --prefix `nginx -V` shows).", also=("replay",)),
    Setting("log_format_name", str, None, "With --nginx-conf: the log_format to read a file "
            "that several blocks write in different formats.", also=("replay",)),
    Setting("default_host", str, None, "Host header to send when the format has no $host.",
            check=_check_default_host, also=("replay", "warm")),
    Setting("from_start", bool, False, "Read what the file holds instead of starting at its end."),
    Setting("self", str, None, "This node's own peer URL; it is left out of the fan-out.",
            check=_check_self, attr="self_url", also=("replay", "warm")),
    Setting("peer", str, (), "Peer URL http(s)://ADDRESS[:PORT] (repeatable; same list on every "
            "node).", multiple=True, check=_check_peers, also=("replay", "warm")),
    Setting("peers_file", str, None, "File of peer URLs, one per line; read again when it "
            "changes and on SIGHUP.", check=_check_peers_file, also=("replay", "warm")),
    Setting("peers_dns", str, (), "http(s)://NAME:PORT: one peer per A/AAAA record of NAME, "
            "this node's own addresses left out (repeatable).", multiple=True, check=_check_peers,
            also=("replay", "warm")),
    Setting("dns_refresh", float, 30.0, "Seconds between lookups of the --peers-dns names.",
            check=_positive),
    Setting("refresh_from_self", bool, False, "Origin offload: refreshes name the node that "
            "holds the new copy (--self) in X-Logwarden-Source, for the peers to fetch it "
            "from there instead of the origin."),
    Setting("bus", str, None, "redis[s]://[USER[:PASSWORD]@]HOST[:PORT][/DB], or "
            "redis[s]+sentinel://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]: "
            "publish each trigger on a stream there and refresh the --local NGINX on the "
            "other nodes' entries, instead of a fan-out to peers.", check=_check_bus),
    Setting("bus_channel", str, "logwarden", "Redis stream (key) of the bus.",
            check=_check_channel),
    Setting("bus_password_file", str, None, "File holding the bus's Redis password (of the "
            "URL's user, or requirepass); never printed.", check=_read_bus_password),
    Setting("bus_secret_file", str, None, "File holding the secret bus messages are signed "
            "with (HMAC-SHA256; 16 characters or more); a second line: the previous secret, "
            "still accepted while a fleet rolls it. Required with --bus.",
            check=_read_bus_secrets),
    Setting("bus_ca", str, None, "CA certificate file a rediss:// bus's certificate is checked "
            "against (default: the system's).", check=_check_readable),
    Setting("bus_cert", str, None, "Client certificate file for a rediss:// bus that asks for "
            "one.", check=_check_readable),
    Setting("bus_key", str, None, "Private key file of --bus-cert (default: in that file).",
            check=_check_readable),
    Setting("bus_maxlen", int, 100_000, "Entries the bus's stream keeps (XADD MAXLEN ~): a "
            "node away longer than the fleet takes to publish them misses the oldest.",
            check=_positive),
    Setting("bus_max_skew", float, 30.0, "Seconds a bus message's signed time may differ "
            "from the time Redis added it (clock skew); further, it is a replay and ignored.",
            check=_positive),
    Setting("local", str, "http://127.0.0.1:80", "This node's NGINX, which bus messages "
            "refresh.", check=_check_peer_url),
    Setting("statuses", str, ("MISS", "EXPIRED", "UPDATING", "STALE"),
            "$upstream_cache_status values that trigger a refresh (repeatable or comma-separated).",
            multiple=True, check=_check_statuses, also=("replay",)),
    Setting("dedup_window", float, 1.0, "Seconds within which repeated triggers for one URL "
            "produce one fan-out.", check=_not_negative, also=("replay",)),
    Setting("dedup_max_urls", int, 50_000, "URLs the dedup window remembers at most (the "
            "oldest are forgotten first): bounds its memory.", check=_positive, also=("replay",)),
    Setting("refresh_method", str, "HEAD", "Method of refresh requests.", choices=("HEAD", "GET"),
            also=("replay", "warm")),
    Setting("refresh_header", str, "X-Refresh: 1", "Header 'Name: value' the peers map to "
            "proxy_cache_bypass.", check=_check_header, also=("warm",)),
    Setting("variant", str, (), "A variant class nodes key apart (README \"Variants\"): "
            "'Accept-Encoding: br' refreshes the copy clients of that class get; '' the one "
            "without the header (repeatable: one refresh request per class and peer).",
            multiple=True, check=_check_variants, also=("replay", "warm")),
    Setting("variant_variable", str, None, "The log_format variable whose value is a line's "
            "variant class (e.g. the map's logwarden_class); default: the variants' header "
            "when the format logs it ($http_accept_encoding).", also=("replay",)),
    Setting("refresh_header_file", str, None, "File holding the refresh header 'Name: value' "
            "with a shared secret; replaces --refresh-header, never printed.",
            check=_check_header_file, also=("warm",)),
    Setting("cache_status_header", str, DEFAULT_CACHE_STATUS_HEADER, "Header of the peers' "
            "answers holding $upstream_cache_status: a refresh counts as ok only when it says "
            "BYPASS; '' judges answers by status only.", check=_check_header_name, also=("warm",)),
    Setting("mode", str, "refresh", "refresh: a bypass request; purge: the purge method, "
            "then optionally a bypass request.", choices=tuple(MODES), also=("replay",)),
    Setting("purge_method", str, "PURGE", "Method of purge requests in purge mode.",
            check=_check_token, also=("replay",)),
    Setting("purge_then_refresh", bool, False, "In purge mode, send the bypass refresh after "
            "the purge, so the peer's next client gets a HIT.", also=("replay",)),
    Setting("retries", int, 2, "Retries of a refresh after a connect error, a timeout or "
            "502/503/504, with exponential backoff and jitter.", check=_not_negative,
            also=("warm",)),
    Setting("retry_backoff", float, 0.2, "Seconds before the first retry; doubled for each "
            "next one (±50% jitter).", check=_not_negative, also=("warm",)),
    Setting("breaker_failures", int, 5, "Failed attempts in a row after which a peer is "
            "skipped (its breaker opens).", check=_positive, also=("warm",)),
    Setting("breaker_cooldown", float, 10.0, "Seconds a skipped peer waits before one probe "
            "request may close its breaker.", check=_positive, also=("warm",)),
    Setting("max_refresh_rate", float, 100.0, "Fan-outs per second, all URLs together (token "
            "bucket); 0: no limit.", check=_not_negative, also=("replay",)),
    Setting("max_refresh_burst", int, 100, "Fan-outs the token bucket allows at once.",
            check=_positive, also=("replay",)),
    Setting("only", str, (), "Regex searched in the request target: only matching URLs fan "
            "out (repeatable).", multiple=True, check=_check_regexes, also=("replay",)),
    Setting("skip", str, (), "Regex searched in the request target: matching URLs never fan "
            "out (repeatable).", multiple=True, check=_check_regexes, also=("replay",)),
    Setting("max_target_bytes", int, 8192, "Longer request targets do not fan out.",
            check=_positive, also=("replay",)),
    Setting("peer_ca", str, None, "CA certificates (PEM) that https peers are verified "
            "against, instead of the system's.", check=_check_readable, also=("warm",)),
    Setting("insecure_peer_tls", bool, False, "Do not verify https peers' certificates.",
            also=("warm",)),
    Setting("concurrency", int, 64, "Refresh requests in flight at once, all peers together.",
            check=_positive, also=("warm",)),
    Setting("peer_concurrency", int, 8, "Refresh requests in flight at once to one peer.",
            check=_positive, also=("warm",)),
    Setting("timeout", float, 5.0, "Seconds a refresh request may take, connect to last byte.",
            check=_positive, also=("warm",)),
    Setting("queue_size", int, 10000, "Refreshes waiting per peer before new ones are dropped.",
            check=_positive, also=("warm",)),
    Setting("downstream", str, (), "A cache in front of the cluster, purged for a URL once "
            "every node holds a changed copy (README \"A CDN in front\"): http(s)://EDGE[:PORT] "
            "(Varnish, NGINX: --downstream-method), or template:FILE for a CDN's purge API "
            "(repeatable).", multiple=True, check=_check_downstreams),
    Setting("downstream_method", str, "PURGE", "Method of the purges sent to an edge "
            "downstream (PURGE, BAN...), with the original Host and target.", check=_check_token),
    Setting("downstream_header", str, (), "Header 'Name: value' sent with every purge to an "
            "edge downstream, e.g. a purge token (repeatable; its value is never printed nor "
            "logged).", multiple=True, check=_check_headers),
    Setting("downstream_rate", float, 10.0, "Purge requests per second to each downstream "
            "(token bucket; a template's \"rate\" wins); 0: no limit.", check=_not_negative),
    Setting("downstream_burst", int, 50, "Purge requests each downstream's token bucket "
            "allows at once (a template's \"burst\" wins).", check=_positive),
    Setting("downstream_delay", float, 1.0, "Bus mode: seconds from publishing a changed copy "
            "to purging the downstreams (no node learns when the others hold it).",
            check=_not_negative),
    Setting("metrics_listen", str, "127.0.0.1:9145", "HOST:PORT for /metrics and /healthz, "
            "or 'off'.", check=_check_listen),
    Setting("max_quiet", float, 600.0, "Seconds without a line read after which /status "
            "says degraded; 0: never.", check=_not_negative),
    Setting("origin_host_labels", int, 20, "Hosts with a label of their own in the origin-"
            "failure metrics (the most failing ones); the others are counted as 'other'.",
            check=_not_negative),
    Setting("shutdown_timeout", float, 10.0, "Seconds to finish queued refreshes on SIGTERM.",
            check=_not_negative),
    Setting("positions", str, None, "Positions (checkpoints) file, or 'off'. Default: one per "
            "agent, positions-NAME.json (NAME: --instance, else derived from what it follows) "
            "in $STATE_DIRECTORY, /var/lib/logwarden as root, else ./logwarden-positions-NAME."
            "json."),
    Setting("instance", str, None, "This agent's name among those on the host: names its "
            "default positions file; default: derived from its access logs and listeners.",
            check=_check_instance),
    Setting("positions_interval", float, 1.0, "Seconds between saves of the positions file.",
            check=_positive),
    Setting("max_line_bytes", int, 65536, "Longer lines are skipped and counted.", check=_positive,
            also=("replay",)),
    Setting("max_line_age", float, 300.0, "Lines older than this many seconds (by $msec, "
            "$time_local or $time_iso8601) are counted but do not trigger; 0 turns it off.",
            check=_not_negative),
    Setting("rotate_wait", float, 5.0, "Seconds a rotated-away file must be quiet before it is "
            "closed for good (NGINX writes to it until reopened).", check=_not_negative),
    Setting("poll_interval", float, 1.0, "Seconds between stat() checks of tailed files "
            "(inotify events wake the tailer sooner).", check=_positive),
    Setting("log_level", str, "info", "Logging level of logwarden's own lines.",
            choices=LOG_LEVELS, also=("warm",)),
    Setting("log_libraries", bool, False, "Log the libraries' lines (watchdog, asyncio, "
            "redis...) at --log-level too; default: their warnings and errors only.",
            also=("warm",)),
    Setting("summary_interval", float, 60.0, "Seconds between the info lines that say what "
            "the agent did since the last one; 0: none.", check=_not_negative),
    Setting("log_format_output", str, "text", "Form of logwarden's own log lines on stderr: "
            "text, or json (one object per line: time, level, logger, event, fields).",
            choices=("text", "json"), also=("warm",)),
    Setting("dry_run", bool, False, "Read, decide and count refreshes, but send none "
            "(benchmarks, trying a config).", also=("warm",)),
    Setting("doctor_url", str, "/", "The canary URL `logwarden doctor` refreshes on every "
            "node: a path (on --default-host) or http(s)://HOST/PATH; only its cache entry "
            "changes.", check=_check_doctor_url),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The validated, effective configuration. Built by :func:`load_config` only."""

    access_log: tuple[str, ...]
    syslog: tuple[str, ...]
    syslog_tag: str
    syslog_rcvbuf: int
    syslog_allow: tuple[str, ...]
    log_format: str
    log_format_escape: str
    nginx_conf: str | None
    nginx_prefix: str | None
    log_format_name: str | None
    default_host: str | None
    from_start: bool
    self_url: str | None
    peer: tuple[str, ...]
    peers_file: str | None
    peers_dns: tuple[str, ...]
    dns_refresh: float
    refresh_from_self: bool
    bus: str | None
    """The URL as given, its password masked: what connects is ``bus_address``."""
    bus_channel: str
    bus_password_file: str | None
    bus_secret_file: str | None
    bus_ca: str | None
    bus_cert: str | None
    bus_key: str | None
    bus_maxlen: int
    bus_max_skew: float
    local: str
    statuses: tuple[str, ...]
    dedup_window: float
    dedup_max_urls: int
    refresh_method: str
    refresh_header: str = field(repr=False)
    variant: tuple[str, ...]
    variant_variable: str | None
    refresh_header_file: str | None
    cache_status_header: str
    mode: str
    purge_method: str
    purge_then_refresh: bool
    retries: int
    retry_backoff: float
    breaker_failures: int
    breaker_cooldown: float
    max_refresh_rate: float
    max_refresh_burst: int
    only: tuple[str, ...]
    skip: tuple[str, ...]
    max_target_bytes: int
    peer_ca: str | None
    insecure_peer_tls: bool
    concurrency: int
    peer_concurrency: int
    timeout: float
    queue_size: int
    downstream: tuple[str, ...]
    downstream_method: str
    downstream_header: tuple[str, ...]
    downstream_rate: float
    downstream_burst: int
    downstream_delay: float
    metrics_listen: str
    origin_host_labels: int
    max_quiet: float
    shutdown_timeout: float
    positions: str | None
    instance: str | None
    positions_interval: float
    max_line_bytes: int
    max_line_age: float
    rotate_wait: float
    poll_interval: float
    log_level: str
    log_libraries: bool
    summary_interval: float
    log_format_output: str
    dry_run: bool
    doctor_url: str
    nginx_access_logs: tuple[AccessLog, ...] = field(default=(), repr=False, compare=False)
    """Every access log --nginx-conf found (``check`` prints them)."""
    cache_policy: CachePolicy | None = field(default=None, repr=False, compare=False)
    """What the NGINX config says NGINX stores, for the logs followed (None: no
    ``--nginx-conf``, or no caching location writes them)."""
    parser: LogFormat | None = field(default=None, repr=False, compare=False)
    """``log_format`` compiled, once (None for ``warm`` without a format)."""
    metrics_address: tuple[str, int] | None = field(default=None, repr=False, compare=False)
    """``metrics_listen`` parsed; None for ``off``."""
    syslog_addresses: tuple[Address, ...] = field(default=(), repr=False, compare=False)
    """``syslog`` parsed, one address per URL."""
    variants: tuple[Variant, ...] = field(default=(), repr=False, compare=False)
    """``variant`` parsed, one class each."""
    downstreams: tuple[Template | str, ...] = field(default=(), repr=False, compare=False)
    """``downstream`` parsed: an edge's URL, or the template its file holds."""
    bus_address: BusAddress | None = field(default=None, repr=False, compare=False)
    """``bus`` parsed, with the password (the URL's or ``bus_password_file``'s)."""
    bus_secrets: tuple[bytes, ...] = field(default=(), repr=False, compare=False)
    """``bus_secret_file``'s secrets: the first signs, each is accepted."""

    @property
    def refresh_mode(self) -> Mode:
        """What a refresh sends to a peer (``--mode``, ``--variant``, deliver/modes.py)."""
        return mode_of(self)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What works but is likely not meant: ``check`` prints it, ``run`` logs it at start."""
        said = []
        if (self.refresh_header_file is None
                and self.refresh_header == _BY_NAME["refresh_header"].default):
            said.append(f"refresh_header: no secret given, refreshes carry the default "
                        f"{self.refresh_header!r}; the example nginx.conf's map lets a refresh "
                        "bypass the cache only with your shared secret: put the line "
                        "'X-Refresh: <secret>' in a file only logwarden reads and give "
                        "--refresh-header-file")
        versions = {"upstream_http_etag", "upstream_http_last_modified"}
        if self.downstream and self.parser is not None \
                and not versions & set(self.parser.variables):
            said.append("downstream: the log_format has neither $upstream_http_etag nor "
                        "$upstream_http_last_modified, so no change can be told from an expiry "
                        "and nothing is ever purged: add them as the example format does")
        return tuple(said)

    @property
    def refresh_header_pair(self) -> tuple[str, str]:
        name, _, value = self.refresh_header.partition(":")
        return name.strip(), value.strip()

    @property
    def secrets(self) -> tuple[str, ...]:
        """What no log line may show: the refresh header's value, unless it is the default
        one (no secret); the edge downstreams' header values and the templates' auth headers'."""
        default = _BY_NAME["refresh_header"].default
        own = () if self.refresh_header == default else (self.refresh_header_pair[1],)
        return (*own, *(h.partition(":")[2].strip() for h in self.downstream_header),
                *(t.auth[1] for t in self.downstreams if isinstance(t, Template) and t.auth))

    @property
    def targets(self) -> tuple[str, ...]:
        """The static peers a refresh goes to: every ``--peer`` but this node itself
        (``--self``, and its listener of the other scheme on the same address)."""
        return tuple(p for p in self.peer if not is_self(p, self.self_url))

    @property
    def holder(self) -> tuple[str, str] | None:
        """(scheme, ``ADDRESS:PORT``) of this node as refreshes name it for origin offload
        (``--refresh-from-self``; the port spelled out, as the peers' nginx.conf map lists it)."""
        if not (self.refresh_from_self and self.self_url):
            return None
        return urlsplit(self.self_url).scheme, holder_name(self.self_url)

    @property
    def positions_path(self) -> Path | None:
        """``positions``, absolute; by default a file of this agent's own (:attr:`agent_name`),
        so that agents on one host never write each other's."""
        if self.positions == "off":
            return None
        if self.positions:
            return Path(self.positions).absolute()
        return default_positions_path(f"positions-{self.agent_name}.json").absolute()

    @property
    def agent_name(self) -> str:
        """``instance``, else what the agent follows: its first access log or listener as a
        file name (``var-log-nginx-access.log``, the last 40 characters) and a hash of all of
        them (paths that spell alike stay apart)."""
        if self.instance:
            return self.instance
        sources = (*self.access_log, *self.syslog)
        readable = re.sub(r"[^0-9A-Za-z._]+", "-", sources[0] if sources else "").strip("-")
        digest = hashlib.blake2b("\n".join(sources).encode(), digest_size=4).hexdigest()
        return f"{readable[-40:].lstrip('-.')}-{digest}".lstrip("-")

    def log_format_parser(self) -> LogFormat:
        """The compiled format (the commands that read lines require one)."""
        assert self.parser is not None, "this command's Needs lack log_format"
        return self.parser

    def to_toml(self) -> str:
        """The effective configuration as a TOML document that ``--config`` accepts back."""
        lines = []
        for s in SETTINGS:
            value = getattr(self, s.field)
            if s.name == "refresh_header" and self.refresh_header_file:
                continue  # the secret stays in its file
            if s.name == "refresh_header" and value != s.default:
                lines.append(f"# {s.name} = {_toml_value(masked_header(value))}  (the secret is "
                             "not printed: give it again, or with refresh_header_file)")
                continue
            if s.name == "downstream_header" and value:  # an edge's purge token, often
                lines.append(f"# {s.name} = {_toml_value(tuple(map(masked_header, value)))}  "
                             "(the values are not printed: give them again)")
                continue
            if s.name == "nginx_conf":
                continue  # what it stood for is printed instead: stdin cannot be read twice
            if value is not None:
                lines.append(f"{s.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Needs:
    """What a command needs of the configuration; checked before anything starts."""

    sources: bool = False
    """An access log or a syslog listener to read."""
    log_format: bool = False
    """A format to parse lines with (when one is given, it is checked anyway)."""
    peers: bool = False
    """A node to refresh other than this one: a peer, a peers file or DNS name, or the bus."""
    nodes: bool = False
    """Any node at all, this one (``--self``) included."""
    nginx_logs: bool = True
    """``nginx_conf`` gives the access logs and their format. ``nginx-snippet`` reads it for
    the cache zone and key instead: a config that does not log for logwarden yet."""


RUN = Needs(sources=True, log_format=True, peers=True)
REPLAY = Needs(log_format=True)
WARM = Needs(nodes=True)
DOCTOR = Needs(nodes=True)
SNIPPET = Needs(nodes=True, nginx_logs=False)


def load_config(
    flags: Mapping[str, Any],
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    needs: Needs = RUN,
    stdin: Callable[[], str] | None = None,
) -> Config:
    """Merge the layers (defaults < file < env < flags) and validate the result for a
    command that ``needs`` what it says. ``stdin`` gives the text of ``--nginx-conf -``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    layers = {"the file": _read_toml(config_file) if config_file else {},
              "the environment": _read_env(environ),
              "the flags": {k: v for k, v in flags.items() if v is not None and v != ()}}
    for layer in _alternatives_resolved(layers):
        values.update(layer)
    if values["nginx_conf"] and needs.nginx_logs:
        values.update(_from_nginx_conf(values, stdin))
    return _validate(values, needs)


ALTERNATIVES = (
    ("refresh_header", "refresh_header_file", "give one (the file keeps the secret off the "
     "command line)"),
    ("nginx_conf", "log_format", "drop --log-format, the one in the NGINX config is used"),
)
"""Settings that give one thing two ways, and the fix when one layer gives both. Otherwise the
highest layer that gives either decides and lower layers' values of both are dropped: a
``--refresh-header`` flag beats a ``refresh_header_file`` from the TOML file, ``--log-format``
its ``nginx_conf``, as a flag beats the file for any setting."""


def _alternatives_resolved(layers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The layers, lowest first, without what a higher layer's alternative replaces."""
    ordered = list(layers.values())
    for one, other, fix in ALTERNATIVES:
        given = [i for i, layer in enumerate(ordered) if one in layer or other in layer]
        if not given:
            continue
        top = given[-1]
        if one in ordered[top] and other in ordered[top]:
            raise ConfigError(other, ordered[top][other],
                              f"and {one} are both given in {list(layers)[top]}: {fix}")
        ordered[:top] = [{k: v for k, v in layer.items() if k not in (one, other)}
                         for layer in ordered[:top]]
    return ordered


def _from_nginx_conf(v: dict[str, Any], stdin: Callable[[], str] | None) -> dict[str, Any]:
    """The access logs, format and escaping the NGINX config gives; ``--access-log`` and
    ``--syslog`` pick among them."""
    source = v["nginx_conf"]
    try:
        found = read_nginx_conf(source, stdin, v["nginx_prefix"])
        chosen = choose_access_logs(found, source, access_log=v["access_log"],
                                    syslog=v["syslog"], format_name=v["log_format_name"])
    except NginxConfError as exc:
        raise ConfigError("nginx_conf", source, str(exc)) from None
    method = v["refresh_method"]
    if any("request_method" in c.key_roots or not c.convert_head for c in chosen.cache):
        method = "GET"  # a HEAD refresh fills the HEAD entry (or stores no body)
    return {"access_log": chosen.access_log, "syslog": chosen.syslog, "refresh_method": method,
            "syslog_tag": chosen.syslog_tag or v["syslog_tag"], "log_format": chosen.log_format,
            "log_format_escape": chosen.escape, "nginx_access_logs": found,
            "cache_policy": CachePolicy.union(CachePolicy.of(c.ignore_headers, c.cache_valid)
                                              for c in chosen.cache) if chosen.cache else None}


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", path, f"cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", path, f"is not valid TOML: {exc}") from exc
    return {name: _coerce(_setting(name, f"in {path}"), raw) for name, raw in doc.items()}


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        setting = _setting(var[len(ENV_PREFIX):].lower(), "in the environment", shown=var)
        out[setting.name] = _coerce(setting, raw, key=var, text=True)
    return out


def _setting(name: str, where: str, shown: str | None = None) -> Setting:
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, _BY_NAME, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(shown or name, name, f"is not a known setting ({where}){hint}")


def _split(raw: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", raw) if part]


def _coerce(setting: Setting, raw: Any, key: str | None = None, text: bool = False) -> Any:
    """Turn a TOML value, or an environment string (``text``), into the setting's type."""
    key = key or setting.name
    if setting.multiple:
        items = _split(raw) if text else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(key, raw, "must be a list of strings")
        return tuple(items)
    if setting.kind is bool:
        return _coerce_bool(key, raw, text)
    if setting.kind in (int, float) and text:
        try:
            return setting.kind(raw)
        except ValueError:
            raise ConfigError(key, raw, f"must be a number ({setting.kind.__name__})") from None
    if setting.kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, setting.kind) or isinstance(raw, bool) != (setting.kind is bool):
        raise ConfigError(key, raw, f"must be of type {setting.kind.__name__}")
    return raw


def _coerce_bool(key: str, raw: Any, text: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if text and raw.lower() in _TRUE + _FALSE:
        return raw.lower() in _TRUE
    raise ConfigError(key, raw, "must be true or false")


def _validate(v: dict[str, Any], needs: Needs) -> Config:
    parsed: dict[str, Any] = {}
    for s in SETTINGS:
        if s.check is not None:
            parsed[s.name] = s.check(s.name, v[s.name])
        if s.choices and v[s.name] not in s.choices:
            raise ConfigError(s.name, v[s.name], f"must be one of {', '.join(s.choices)}")
    v["statuses"], v["access_log"] = parsed["statuses"], parsed["access_log"]
    _check_self_is_a_peer(v["self"], (*v["peer"], *parsed["peers_file"]), v["peers_dns"])
    if needs.sources and not v["access_log"] and not v["syslog"]:
        raise ConfigError("access_log", "",
                          "is required: the access log file to tail (or a syslog listener)")
    parser = _check_format(v, parsed["variant"]) if v["log_format"] or needs.log_format \
        else None
    if parsed["refresh_header_file"]:
        v["refresh_header"] = parsed["refresh_header_file"]
    if v["refresh_from_self"] and not v["self"]:
        raise ConfigError("refresh_from_self", True, "needs self: the address peers fetch from")
    bus = _bus_settings(v, parsed)
    config = Config(**{_BY_NAME[name].field if name in _BY_NAME else name: value
                       for name, value in v.items()},
                    parser=parser, metrics_address=parsed["metrics_listen"],
                    syslog_addresses=parsed["syslog"], variants=parsed["variant"],
                    downstreams=parsed["downstream"], bus_address=bus,
                    bus_secrets=parsed["bus_secret_file"])
    if needs.nodes and not (config.peer or config.self_url or config.peers_file
                            or config.peers_dns):
        raise ConfigError("peer", "", "is required: the nodes to warm")
    if needs.peers and not (config.targets or config.peers_file or config.peers_dns
                            or config.bus):
        raise ConfigError("peer", ",".join(v["peer"]), "names no peer other than self "
                          "(and there is no --peers-file, --peers-dns or --bus)")
    return config


def _check_format(v: dict[str, Any], variants: tuple[Variant, ...]) -> LogFormat:
    """The format, compiled: it must parse and carry what the other settings rely on
    (``warm`` reads no log, so it checks a format only when one is given, e.g. in the shared
    TOML file)."""
    if not v["log_format"]:
        raise ConfigError("log_format", "", "is required: the log_format string from nginx.conf")
    fmt = _compile_format(v["log_format"], v["log_format_escape"])
    variable = _variant_variable(v["variant_variable"], variants, fmt.variables)
    if variable:
        fmt = _compile_format(v["log_format"], v["log_format_escape"], variable)
    if "host" not in fmt.variables and "http_host" not in fmt.variables and not v["default_host"]:
        raise ConfigError("log_format", v["log_format"],
                          "has neither $host nor $http_host: give --default-host HOST "
                          "(default_host in a TOML file), the Host that refreshes carry")
    if "BYPASS" in v["statuses"] and "http_user_agent" not in fmt.variables:
        raise ConfigError("statuses", ",".join(v["statuses"]),
                          "includes BYPASS, but the format lacks $http_user_agent, so logwarden "
                          "cannot tell its own refreshes apart: nodes would ping-pong")
    names = set(fmt.variables)
    if v["mode"] == "purge" and not ("http_user_agent" in names
                                     and names & {"request", "request_method"}):
        raise ConfigError("mode", "purge", "needs $http_user_agent and the method ($request or "
                          "$request_method) in the format: the refill after logwarden's own "
                          "PURGE is told apart by them, else nodes purge each other in a loop")
    return fmt


def _variant_variable(name: str | None, variants: tuple[Variant, ...],
                      variables: tuple[str, ...]) -> str | None:
    """The format's variable that tells a line's variant class: ``variant_variable``, else
    the variants' header when the format logs it (``$http_accept_encoding``), else none."""
    if name is not None:
        if name not in variables:
            raise ConfigError("variant_variable", name, "is not a variable of the log_format")
        return name
    headers = {variant.header[0] for variant in variants if variant.header}
    logged = [f"http_{h.lower().replace('-', '_')}" for h in headers]
    return next((name for name in logged if name in variables), None)


def _compile_format(fmt: str, escape: str, variant: str | None = None) -> LogFormat:
    try:
        return LogFormat.compile(fmt, escape, variant)
    except LogFormatError as exc:
        raise ConfigError("log_format", fmt, str(exc)) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are valid TOML basic strings
    return repr(value)

