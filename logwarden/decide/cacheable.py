"""Whether NGINX stored the answer a line shows, read from the origin's caching headers.

A response NGINX does not store is logged ``MISS`` on every request, and a refresh of it on a
peer stores nothing either: fanning it out only multiplies the origin's load. When the format
logs the origin answer's caching headers (``$upstream_http_cache_control``,
``$upstream_http_expires``, ``$upstream_http_x_accel_expires``, ``$upstream_http_vary`` and a
Set-Cookie flag, see README "Uncacheable answers"), the line itself says so, and
:func:`uncacheable_rule` applies NGINX's own rules (``ngx_http_upstream.c``):

1. ``Set-Cookie``: never stored.
2. ``Vary: *`` (or a Vary longer than the 128 bytes NGINX keeps): never stored.
3. ``X-Accel-Expires``: ``0`` is not stored; a time (``N`` or ``@unix-time``) is, whatever
   Cache-Control and Expires say.
4. ``Cache-Control``: ``no-cache``, ``no-store`` or ``private`` anywhere in it; else
   ``s-maxage``, or ``max-age``: ``0`` or not a number is not stored, a time is.
5. ``Expires``: a date in the past, or one NGINX cannot read, is not stored; a future one is.
6. None of those gave a time: ``proxy_cache_valid`` for the status decides, when the NGINX
   config is known (``--nginx-conf``); else the answer is taken as stored (the learning of
   :mod:`logwarden.decide.triggers` still catches it at its second MISS).

``proxy_ignore_headers`` drops a header from the rules. Each rule has a label of its own
(:data:`RULES`): ``logwarden_uncacheable_total{rule}``. NGINX 1.22 applies X-Accel-Expires
only when it comes before Cache-Control in the answer; 1.23 and later always: the rules
follow the later order, which is what the origin means.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from logwarden.model import Caching

RULES = ("set_cookie", "vary", "x_accel_expires", "no_cache", "no_store", "private", "max_age",
         "expires", "no_valid", "repeated_miss")
"""Every reason a line is taken as uncacheable; the last is the triggers' learning."""
FETCHED = frozenset({"MISS", "EXPIRED"})
"""Cache statuses of lines whose upstream fields show the origin's full answer (a STALE or
UPDATING client line, a REVALIDATED 304, show none or another one)."""
VARY_MAX = 128
"""``NGX_HTTP_CACHE_VARY_LEN``: NGINX does not store an answer whose Vary is longer."""
_DEFAULT_VALID_CODES = frozenset({200, 301, 302})
"""The statuses ``proxy_cache_valid TIME;`` (no codes) covers."""
_TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
               "M": 2592000, "y": 31536000}
_TIME = re.compile(r"(\d+)(ms|[smhdwMy]?)")
_SECONDS = re.compile(rb"[^,; ]*")
"""A max-age value runs to one of these, as NGINX reads it."""


class CachePolicy(NamedTuple):
    """What the NGINX config says about storing, for the locations that write the log.

    Made from every caching location of the followed log (:meth:`union`): a header counts as
    ignored when one of them ignores it, a status as covered when one covers it, so that a
    line of any of them is judged uncacheable only when none would store it."""

    ignore_headers: frozenset[str] = frozenset()
    """``proxy_ignore_headers`` names, lower-case."""
    valid: frozenset[int | None] = frozenset()
    """Statuses ``proxy_cache_valid`` stores for a time > 0; ``None``: ``any``."""

    @classmethod
    def of(cls, ignore_headers: Iterable[str], cache_valid: Iterable[Sequence[str]]
           ) -> CachePolicy:
        """From the arguments of one location's ``proxy_ignore_headers`` and each of its
        ``proxy_cache_valid`` directives."""
        valid: set[int | None] = set()
        for args in cache_valid:
            if not args or parse_time(args[-1]) <= 0:
                continue
            codes = args[:-1]
            valid.update(_DEFAULT_VALID_CODES if not codes else
                         (None if code == "any" else int(code) for code in codes
                          if code == "any" or code.isdigit()))
        return cls(frozenset(h.lower() for h in ignore_headers), frozenset(valid))

    @classmethod
    def union(cls, policies: Iterable[CachePolicy]) -> CachePolicy:
        ignore: set[str] = set()
        valid: set[int | None] = set()
        for policy in policies:
            ignore |= policy.ignore_headers
            valid |= policy.valid
        return cls(frozenset(ignore), frozenset(valid))

    def stores(self, status: int | None) -> bool:
        return None in self.valid or status in self.valid


def parse_time(text: str) -> float:
    """An NGINX time (``10m``, ``1h30m``, ``30``: seconds); -1 when NGINX would refuse it."""
    pos, total = 0, 0.0
    while pos < len(text):
        match = _TIME.match(text, pos)
        if match is None or match.end() == pos:
            return -1.0
        total += int(match.group(1)) * _TIME_UNITS.get(match.group(2) or "s", 1)
        pos = match.end()
    return total if text else -1.0


def uncacheable_rule(caching: Caching, status: int | None, now: float,
                     policy: CachePolicy | None,
                     judged: tuple[str | None, bool] | None = None) -> str | None:
    """The rule (:data:`RULES`) by which NGINX did not store this answer; None when it did,
    or may have. ``now``: when the answer was logged (Expires is compared with it).
    ``judged``: what :func:`header_rule` said of ``caching``, when already asked."""
    rule, timed = header_rule(caching, policy) if judged is None else judged
    if rule is not None or timed:
        return rule
    ignored = policy.ignore_headers if policy is not None else frozenset()
    if caching.expires is not None and "expires" not in ignored:
        return None if _future(caching.expires, now) else "expires"
    if policy is not None and not policy.stores(status):
        return "no_valid"
    return None


def header_rule(caching: Caching, policy: CachePolicy | None) -> tuple[str | None, bool]:
    """Rules 1 to 4, those that need neither the line's time nor its status: (the rule, or
    None; whether a header gave the answer a time, so that no later rule applies). The
    processor runs them on a line before parsing the rest of it."""
    ignored = policy.ignore_headers if policy is not None else frozenset()
    if caching.set_cookie not in (None, b"0") and "set-cookie" not in ignored:
        return "set_cookie", False
    vary = caching.vary
    if vary is not None and "vary" not in ignored and (vary == b"*" or len(vary) > VARY_MAX):
        return "vary", False
    if caching.x_accel_expires is not None and "x-accel-expires" not in ignored:
        rule, timed = _x_accel_expires(caching.x_accel_expires)
        if rule is not None or timed:
            return rule, timed
    if caching.cache_control is not None and "cache-control" not in ignored:
        return _cache_control(caching.cache_control.lower())
    return None, False


def _x_accel_expires(value: bytes) -> tuple[str | None, bool]:
    """(rule, gave a time). NGINX ignores a value that is not a number."""
    absolute = value.startswith(b"@")
    number = value[1:] if absolute else value
    if not number.isdigit():
        return None, False
    if int(number) == 0:  # "@0" sets no time: proxy_cache_valid decides
        return (None, False) if absolute else ("x_accel_expires", False)
    return None, True


def _cache_control(value: bytes) -> tuple[str | None, bool]:
    """(rule, gave a time) for a lower-cased Cache-Control, as NGINX reads it: substrings,
    not tokens (``no-cache="x"`` and ``private=...`` count too)."""
    for word, rule in ((b"no-cache", "no_cache"), (b"no-store", "no_store"),
                       (b"private", "private")):
        if word in value:
            return rule, False
    at, skip = value.find(b"s-maxage="), 9
    if at < 0:
        at, skip = value.find(b"max-age="), 8
    if at < 0:
        return None, False
    digits = _SECONDS.match(value, at + skip)
    seconds = digits.group() if digits else b""
    if not seconds.isdigit() or int(seconds) == 0:
        return "max_age", False  # NGINX: "0", or a value that is not a number
    return None, True


def _future(value: bytes, now: float) -> bool:
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp() >= now
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
