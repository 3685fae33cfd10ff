"""What ``logwarden check --nginx-conf`` says of the NGINX side, per followed log and location.

Reading only the log side, a config can look usable while logwarden would do nothing useful
or the wrong thing there: a cache key a refresh does not reproduce, a bypass that any client
can use or that stores nothing, a buffered log. Each caching location whose requests reach a
followed log (:class:`logwarden.parse.nginxconf.CacheScope`) gets a verdict — ``ok``,
``warning`` or ``error`` — with the reasons and the line to change (nginx-facts §11 has the
measurements behind each).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from logwarden.config import Config
from logwarden.parse.nginxconf import AccessLog, CacheScope

LEVELS = ("ok", "warning", "error")
_FROM_THE_NODE = frozenset({
    "scheme", "host", "http_host", "request_uri", "uri", "document_uri", "is_args", "args",
    "query_string", "proxy_host", "proxy_port", "server_name", "server_port", "server_addr",
    "hostname"})
_FROM_THE_URI = "arg_"
"""Key variables a refresh reproduces: it replays the scheme, host and raw request URI to the
same server block (``args`` and ``query_string`` are part of the URI)."""
_PER_CLIENT = ("http_", "cookie_", "remote_", "binary_remote_addr", "realip_", "ssl_client_",
               "jwt_")
"""Key variables taken from the client's request headers or connection, which a refresh does
not carry (``arg_*`` it does: they are in the request URI it replays)."""


@dataclass(frozen=True)
class Verdict:
    level: str
    """One of :data:`LEVELS`."""
    log: str
    where: str
    """``FILE:LINE`` of the location (or of the access_log directive)."""
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.level}: {self.log} <- {self.where}: " + "; ".join(self.reasons)


def verdicts(config: Config) -> list[Verdict]:
    """One verdict per followed log and caching location (and one per log directive for its
    parameters); none without ``--nginx-conf``."""
    followed = {*config.access_log, *config.syslog}
    out = []
    for log in config.nginx_access_logs:
        if log.target not in followed:
            continue
        if params := list(_log_params(log)):
            out.append(Verdict("warning", log.target, log.where, tuple(params)))
        for scope in log.cache:
            found = list(_scope(scope, config))
            level = max((lvl for lvl, _ in found), key=LEVELS.index, default="ok")
            reasons = tuple(text for _, text in found) or (
                "a refresh bypasses the lookup and stores the new copy here",)
            out.append(Verdict(level, log.target, scope.where, reasons))
        if not log.cache:
            out.append(Verdict("warning", log.target, log.where, (
                "no location that caches (proxy_cache) writes this log: its lines show "
                "no cache status to act on",)))
    return list(dict.fromkeys(out))


def _log_params(log: AccessLog) -> Iterator[str]:
    for param in log.params:
        name = param.partition("=")[0]
        if name in ("buffer", "flush"):
            yield (f"{param}: NGINX writes a buffered line only when the buffer fills or "
                   "flush= runs out (the example's lines showed ~1 s late with flush=1s), and "
                   "loses the buffer when a worker dies; fix: drop buffer= and flush= from "
                   f"{log.where}")
        elif name == "if":
            yield (f"{param}: NGINX writes only the lines where it holds; a copy stored by a "
                   "request it does not log is never propagated")


def _scope(scope: CacheScope, config: Config) -> Iterator[tuple[str, str]]:
    """(level, reason with the fix) for each thing wrong or worth saying at ``scope``."""
    yield from _key(scope, config)
    yield from _bypass(scope, config)
    if "vary" not in {h.lower() for h in scope.ignore_headers} and scope.gzip \
            and not config.variants:
        yield "warning", (
            "Vary is honoured and gzip is on: an answer with Vary: Accept-Encoding is kept "
            "once per Accept-Encoding string, and a refresh replaces one of them (README "
            "\"Variants\"); fix: key a class and give one --variant per class")
    if config.mode == "refresh" and scope.cache_status_header is None \
            and config.cache_status_header:
        yield "warning", (
            f"no add_header {config.cache_status_header} $upstream_cache_status: a refresh "
            "cannot be verified (counted unverified); fix: add_header "
            f"{config.cache_status_header} $upstream_cache_status always;")


def _key(scope: CacheScope, config: Config) -> Iterator[tuple[str, str]]:
    key = scope.key or "$scheme$proxy_host$request_uri (the default)"
    roots = set(scope.key_roots)
    if "request_method" in roots:
        if config.mode == "purge":
            purges = ", ".join(f"{k} ({w})" for w, k in scope.purge_keys) or "none found"
            yield "error", (
                f"proxy_cache_key {key} holds $request_method: the purge location's key "
                f"evaluates it as PURGE and never names a GET entry (purge keys: {purges}); "
                "fix: drop $request_method from proxy_cache_key and the purge key")
        elif config.refresh_method == "GET":
            yield "ok", (f"proxy_cache_key {key} holds $request_method: refreshes are sent "
                         "as GET (a HEAD refresh would fill the HEAD entry)")
        else:
            yield "error", (f"proxy_cache_key {key} holds $request_method and refreshes are "
                            "HEAD: they fill the HEAD entry, GET clients stay stale; fix: "
                            "--refresh-method GET")
    if not scope.convert_head and config.mode == "refresh":
        yield ("ok" if config.refresh_method == "GET" else "error"), (
            "proxy_cache_convert_head off: a HEAD refresh would store a HEAD answer (no body)"
            + (": refreshes are sent as GET" if config.refresh_method == "GET"
               else "; fix: --refresh-method GET"))
    covered = {f"http_{name.lower().replace('-', '_')}" for v in config.variants
               if v.header for name in (v.header[0],)}
    for var in scope.key_roots:
        if var in _FROM_THE_NODE or var.startswith(_FROM_THE_URI) or var in covered \
                or var == "request_method":
            continue
        if var == "slice_range":
            yield "warning", ("slice: every range is an entry of its own, and a refresh fills "
                              "only the one it asks for; the other ranges stay stale")
        elif var.startswith(_PER_CLIENT):
            yield "warning", (
                f"proxy_cache_key {key} depends on ${var} (from the client's request): a "
                "refresh, which does not carry it, fills another entry than the clients use; "
                f"fix: give a --variant per value of it, or take it out of the key")
    if "scheme" in roots and config.parser is not None \
            and "scheme" not in config.parser.variables:
        yield "warning", ("proxy_cache_key holds $scheme, the log_format not: every refresh "
                          "goes as http, https entries are never refreshed; fix: add $scheme "
                          "to the log_format")


def _bypass(scope: CacheScope, config: Config) -> Iterator[tuple[str, str]]:
    if config.mode == "purge" and not config.purge_then_refresh:
        return
    header = config.refresh_header_pair[0]
    variable = "http_" + header.lower().replace("-", "_")
    add = (f"fix: add a geo of the peer addresses and a map of \"$peer:${variable}\" with the "
           "secret (examples/nginx.conf, or `logwarden nginx-snippet`), then proxy_cache_bypass "
           "$logwarden_refresh;")
    if not scope.bypass:
        yield "error", f"no proxy_cache_bypass: a refresh is answered from the cache; {add}"
        return
    if variable not in scope.bypass_roots:
        yield "error", (f"proxy_cache_bypass {' '.join('$' + v for v in scope.bypass)} does not "
                        f"depend on {header}: a refresh is answered from the cache; {add}")
        return
    if variable in scope.bypass:
        yield "error", (f"proxy_cache_bypass takes ${variable} itself: any client sending "
                        f"{header} forces an origin fetch; {add}")
    if set(scope.bypass_roots) & set(scope.no_cache_roots) & {variable}:
        yield "error", ("the bypass also feeds proxy_no_cache: a refreshed answer is not "
                        "stored, every refresh is an origin fetch for nothing; fix: remove "
                        f"{' '.join('$' + v for v in scope.no_cache)} from proxy_no_cache, "
                        "or keep the refresh header out of it")
