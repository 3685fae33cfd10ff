"""Refresh modes: which requests one refresh sends to one peer, and what each answer means.

    route ─Refresh─▶ dispatcher (queues, lanes, retries, breaker) ─▶ mode.deliver(refresh, send)

The dispatcher only delivers: it calls :meth:`Mode.deliver` with a ``send`` that carries one
:class:`Request` to the peer (with retries, the breaker and a concurrency slot) and returns the
outcome its :attr:`Request.judge` gave the answer. A mode decides what to send and in which
order, and may send several requests for one refresh. To add one: a class here with
``from_config`` and an entry in :data:`MODES` (the ``mode`` setting's choices come from it).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from logwarden.deliver.peerhttp import Answer
from logwarden.model import USER_AGENT, Refresh

if TYPE_CHECKING:  # config imports this module for the mode names
    from logwarden.config import Config

REFRESH = "refresh"
"""A probe's outcome when the peer lacks the URL: go on with the refresh."""
_PURGED = frozenset({200, 204})
_NOT_CACHED = frozenset({404, 412})  # ngx_cache_purge 2.3 answers 404, later forks 412
_STORED_BY_HEAD = frozenset({b"MISS", b"EXPIRED", b"REVALIDATED"})
DEFAULT_CACHE_STATUS_HEADER = "X-Cache-Status"
"""What examples/nginx.conf adds: ``add_header X-Cache-Status $upstream_cache_status always``."""
_BYPASSED = b"BYPASS"


def refreshed(answer: Answer, cache_status: bytes | None) -> str:
    """A bypass request. A 200 alone proves nothing: a peer that ignores the refresh header
    answers 200 from its cache too. So with ``cache_status`` (a lower-case header name) it is
    ``ok`` only when that header says ``BYPASS``: the peer skipped its cache, went to its
    upstream and stored the answer (NGINX 1.22 says ``BYPASS`` for a bypassed HEAD and GET,
    whether the URL was cached or not, even when the upstream then fails). Any other value
    (``HIT``, ``STALE``, ``UPDATING``, ``EXPIRED``, ``REVALIDATED``, and ``MISS``, which a
    bypass never gives: the peer handled it as any client's request) is ``not_refreshed``; no
    header at all is ``unverified``. Without ``cache_status`` any answer below 400 is ``ok``."""
    if answer.status >= 400:
        return "http_error"
    if cache_status is None:
        return "ok"
    said = answer.header(cache_status)
    if said is None:
        return "unverified"
    return "ok" if said.strip().upper() == _BYPASSED else "not_refreshed"


def verified_by(header: str) -> Callable[[Answer], str]:
    """The bypass judge reading ``header`` (:func:`refreshed`); ``""``: by status only."""
    name = header.lower().encode("ascii") if header else None
    return lambda answer: refreshed(answer, name)


def purged(answer: Answer) -> str:
    if answer.status in _PURGED:
        return "ok"
    return "not_cached" if answer.status in _NOT_CACHED else "http_error"


def probed(answer: Answer) -> str:
    """What a plain HEAD says about a URL on a node (``X-Cache-Status``, examples/nginx.conf):
    ``hit``: cached already; ``ok``: that HEAD stored it (NGINX fetches and stores the whole
    object for a HEAD it cannot answer from the cache); else a refresh is needed (also when
    the node does not say)."""
    cache = answer.header(b"x-cache-status")
    if answer.status >= 400 or cache is None:
        return REFRESH
    if cache == b"HIT":
        return "hit"
    return "ok" if cache in _STORED_BY_HEAD else REFRESH


@dataclass(frozen=True)
class Hint:
    """Logged once per peer (the dispatcher remembers which it gave) when an answer has
    ``outcome`` (and ``status``, when set): the peer answers, but is wired wrong, and the
    metrics alone would not say which line of its config to fix."""

    outcome: str
    text: str
    """Follows "peer URL " in the log line: what it does, the usual causes and their fix."""
    status: int | None = None
    level: int = logging.WARNING

    def matches(self, outcome: str, status: int | None) -> bool:
        return outcome == self.outcome and self.status in (None, status)


@dataclass(frozen=True)
class Request:
    """One kind of request a mode sends; the target and Host are the refresh's own."""

    method: str
    headers: tuple[tuple[str, str], ...]
    judge: Callable[[Answer], str]
    """The outcome of an answer (``ok``, ``http_error``, …); transport failures are the
    dispatcher's."""
    names_holder: bool = False
    """Its first attempt names the node holding the new copy (origin offload): a retry after
    a 502/504 (the source did not answer) or a timeout fetches from the origin instead."""
    hints: tuple[Hint, ...] = ()
    """What to tell the operator about a peer whose answers show a wiring mistake."""
    variant: str = ""
    """The variant class it refreshes (``--variant``), for the metrics; "" without classes."""
    stores: bool = False
    """A refreshed answer is the copy the peer now stores (a bypass; not a purge): its ETag
    or Last-Modified says which version that is."""

    def hint(self, outcome: str, status: int | None) -> Hint | None:
        """The hint an answer calls for, if any."""
        return next((h for h in self.hints if h.matches(outcome, status)), None)


@dataclass(frozen=True)
class Variant:
    """One class of copies a node keeps per URL (``--variant 'Accept-Encoding: br'``): the
    request header that selects it, or none (``--variant ''``: the request without it)."""

    header: tuple[str, str] | None

    @property
    def value(self) -> str:
        """The class as the log shows it (the header's value; "" for none)."""
        return self.header[1] if self.header else ""

    def headers(self, *headers: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return (*headers, self.header) if self.header else headers


def parse_variant(text: str) -> Variant:
    """``'Name: value'``, or ``''`` for the request without the header; ValueError if not."""
    if not text.strip():
        return Variant(None)
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or not value.strip() or " " in name.strip():
        raise ValueError("must be 'Header: value', or '' for the request without it")
    return Variant((name.strip(), value.strip()))


Send = Callable[[Request, Refresh], Awaitable[str]]
"""Carries one request for a refresh to the peer (retries included); returns its outcome."""


class Mode(ABC):
    """What one refresh is, as requests to one peer."""

    name: ClassVar[str]

    @abstractmethod
    def requests(self) -> tuple[Request, ...]:
        """Every request one refresh may send, in order (``replay`` shows their methods)."""

    @abstractmethod
    async def deliver(self, refresh: Refresh, send: Send) -> str:
        """Send what ``refresh`` needs; the outcome to count for it."""

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(r.method for r in self.requests())


DEFAULT_HEADER = ("X-Refresh", "1")


class Bypass(Mode):
    """A bypass request: the secret header the peers map to ``proxy_cache_bypass``, so the
    peer fetches from its upstream and replaces its entry, even a fresh one. ``cache_status``
    names the header whose ``BYPASS`` proves it did (:func:`refreshed`); ``""``: trust any
    answer below 400."""

    name = "refresh"

    def __init__(self, method: str = "HEAD", header: tuple[str, str] = DEFAULT_HEADER,
                 cache_status: str = DEFAULT_CACHE_STATUS_HEADER,
                 variant: Variant = Variant(None)) -> None:
        self.refresh = Request(method, variant.headers(header, ("User-Agent", USER_AGENT)),
                               verified_by(cache_status), names_holder=True,
                               hints=bypass_hints(header[0], cache_status),
                               variant=variant.value, stores=True)

    @classmethod
    def from_config(cls, cfg: Config, variant: Variant = Variant(None)) -> Bypass:
        return cls(cfg.refresh_method, cfg.refresh_header_pair, cfg.cache_status_header,
                   variant)

    def requests(self) -> tuple[Request, ...]:
        return (self.refresh,)

    async def deliver(self, refresh: Refresh, send: Send) -> str:
        return await send(self.refresh, refresh)


class Purge(Mode):
    """The purge method (ngx_cache_purge or a ``proxy_cache_purge`` location); with
    ``then_refresh`` a bypass after it, so the peer's next client gets a HIT."""

    name = "purge"

    def __init__(self, method: str = "PURGE", header: tuple[str, str] = DEFAULT_HEADER,
                 then_refresh: Bypass | None = None, variant: Variant = Variant(None)) -> None:
        self.purge = Request(method, variant.headers(header, ("User-Agent", USER_AGENT)),
                             purged, hints=(Hint(
                                 "http_error", f"refuses {method} (403): list this node's "
                                 "address in the peer's geo $logwarden_peer and give both the "
                                 "same refresh secret (examples/nginx.conf, location @purge)",
                                 status=403, level=logging.ERROR),), variant=variant.value)
        self.then_refresh = then_refresh

    @classmethod
    def from_config(cls, cfg: Config, variant: Variant = Variant(None)) -> Purge:
        then = Bypass.from_config(cfg, variant) if cfg.purge_then_refresh else None
        return cls(cfg.purge_method, cfg.refresh_header_pair, then, variant)

    def requests(self) -> tuple[Request, ...]:
        return (self.purge, *(self.then_refresh.requests() if self.then_refresh else ()))

    async def deliver(self, refresh: Refresh, send: Send) -> str:
        outcome = await send(self.purge, refresh)
        if self.then_refresh is None or outcome not in ("ok", "not_cached"):
            return outcome
        warmed = await self.then_refresh.deliver(refresh, send)
        return outcome if warmed == "ok" else warmed


def header_variable(header: str) -> str:
    """The NGINX variable of a request header: ``X-Refresh`` is ``$http_x_refresh``."""
    return "$http_" + header.lower().replace("-", "_")


def deaf_causes(header: str, address: str = "ADDRESS") -> str:
    """Why a peer answers a refresh from its cache, in the names of examples/nginx.conf;
    ``address`` is the one this node connects from, when known."""
    return ("(1) its geo $logwarden_peer lacks this node's address (add "
            f"'{address} 1;' for the address this node connects from); (2) its map "
            f"\"$logwarden_peer:{header_variable(header)}\" $logwarden_refresh has another "
            f"secret than this node's {header} header (the line '\"1:SECRET\" 1;'); (3) the "
            "cached location lacks 'proxy_cache_bypass $logwarden_refresh;'")


def bypass_hints(header: str, cache_status: str) -> tuple[Hint, ...]:
    """What a bypass answer that is not ``ok`` (nor an error) usually means."""
    if not cache_status:
        return ()
    return (
        Hint("not_refreshed", f"answers refreshes from its cache ({cache_status} is not "
             "BYPASS), so it keeps its old copies. The usual causes, in the peer's nginx.conf: "
             + deaf_causes(header)),
        Hint("unverified", f"sends no {cache_status} header: refreshes to it are counted "
             f"'unverified', not 'ok' (add 'add_header {cache_status} $upstream_cache_status "
             "always;' as examples/nginx.conf does, or set cache_status_header = '' to judge "
             "them by status only)"),
    )


class ProbeFirst(Mode):
    """``warm --only-missing``: a plain HEAD first (see :func:`probed`); ``then`` only where
    the node lacks the URL."""

    name = "probe-first"

    def __init__(self, then: Mode) -> None:
        self.probe = Request("HEAD", (("User-Agent", USER_AGENT),), probed)
        self.then = then

    def requests(self) -> tuple[Request, ...]:
        return (self.probe, *self.then.requests())

    async def deliver(self, refresh: Refresh, send: Send) -> str:
        found = await send(self.probe, refresh)
        return found if found != REFRESH else await self.then.deliver(refresh, send)


class Variants(Mode):
    """One refresh of every variant class (README "Variants"): a node keeps a copy per class
    under keys of its own, and a refresh replaces only the copy its request selects, so each
    class needs its own requests: the configured mode, built once per class.

    On the node whose line triggered (``refresh.here``) the triggering class is fresh already
    and skipped. With origin offload only the triggering class names the holder: it is the one
    class the holder is known to have fresh; the others come from the origin. The outcome is
    the first class's that is not ``ok``, else ``ok``."""

    name = "variants"

    def __init__(self, classes: Sequence[tuple[Variant, Mode]]) -> None:
        self.classes = tuple(classes)

    @classmethod
    def of(cls, cfg: Config, mode: Callable[[Config, Variant], Mode]) -> Variants:
        return cls([(variant, mode(cfg, variant)) for variant in cfg.variants])

    def requests(self) -> tuple[Request, ...]:
        return tuple(r for _, mode in self.classes for r in mode.requests())

    async def deliver(self, refresh: Refresh, send: Send) -> str:
        outcomes = []
        for variant, mode in self.classes:
            triggered = variant.value == refresh.variant
            if refresh.here and triggered:
                continue
            outcomes.append(await mode.deliver(
                refresh if triggered else refresh._replace(holder=None), send))
        return next((o for o in outcomes if o != "ok"), "ok")


MODES: dict[str, Callable[[Config, Variant], Mode]] = {
    Bypass.name: Bypass.from_config,
    Purge.name: Purge.from_config,
}
"""The modes ``--mode`` chooses from; each builds the requests of one variant class."""


def mode_of(cfg: Config) -> Mode:
    """The configured mode, once per ``--variant`` class when there are classes."""
    if not cfg.variants:
        return MODES[cfg.mode](cfg, Variant(None))
    return Variants.of(cfg, MODES[cfg.mode])
