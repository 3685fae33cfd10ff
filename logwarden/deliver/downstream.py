"""Purge the caches in front of the cluster once every node holds a changed copy.

    Dispatcher.converged ─on_changed─▶ Downstreams.submit ─per-downstream queue─▶ lanes ─▶ edge
                                                                                   └─▶ CDN API
    bus mode: AfterPublish ─(--downstream-delay after publishing)─▶ Downstreams.submit_later

A Varnish or NGINX edge, or a CDN, keeps whatever copy it fetched from whichever node for its
own TTL. Purging it on every expiry would throw its caching away, and purging it before every
node holds the new copy lets it fetch the old one again from a node not yet refreshed: so only
a copy that changed (:mod:`logwarden.decide.versions`), once the dispatcher saw every node
answer with it, is purged (README "A CDN in front").

Every downstream is a :class:`Template`: the request that purges one URL (or a batch of them)
there. An edge (``--downstream http://EDGE:PORT``) is ``--downstream-method`` to the edge with
the original Host and byte-exact target; ``template:FILE`` is a JSON file for a CDN's purge API
(:func:`read_template`). Each downstream owns a bounded queue (a URL already waiting is
coalesced, a full queue drops; both counted), a token bucket, a breaker and :data:`LANES`
workers; attempts are retried with backoff. Stopping: :meth:`Downstreams.close` sends what is
waiting until the deadline, then counts what it had to cut off as ``dropped``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from logwarden.deliver.breaker import Breaker
from logwarden.deliver.peerhttp import PeerClient, PeerError
from logwarden.deliver.retry import (
    RETRY_STATUSES,
    TRANSPORT_FAILURES,
    backoff,
    cut_off,
    failure,
)
from logwarden.model import USER_AGENT, Refresh, request_target_ok
from logwarden.ops.metrics import DOWNSTREAM_OUTCOMES, Metrics
from logwarden.route.storm import TokenBucket

if TYPE_CHECKING:  # config imports this module for the template check
    from logwarden.config import Config
    from logwarden.route.router import Target

log = logging.getLogger(__name__)

QUEUE_SIZE = 10000
"""URLs waiting per downstream; more are dropped and counted."""
LANES = 4
"""Requests in flight per downstream (the token bucket paces them)."""
CLIENTS = 32
"""Hosts a template whose URL names ``{host}`` keeps connections to, least recently used
closed first."""
MAX_RETRY_AFTER = 30.0
"""Seconds a 429's Retry-After may make a retry wait, at most."""
RETRY = RETRY_STATUSES | {429}
"""A CDN API says 429 when its rate limit is spent: worth another attempt, later."""
_NOT_CACHED = frozenset({404, 412})  # an NGINX edge's ngx_cache_purge: nothing stored there
FIELDS = ("scheme", "host", "target", "target_encoded")
TEMPLATE_KEYS = ("name", "method", "url", "headers", "auth_header_file", "body", "batch",
                 "rate", "burst")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_URL = re.compile(r"(?P<scheme>[^:/]+)://(?P<authority>(?:\{(?!target)[^{}]*\}|[^/{])+)"
                  r"(?P<rest>.*)", re.DOTALL)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SAMPLE = Refresh("https", "www.example.com", b"/caf\xc3\xa9?a=1&b=%2F", "EXPIRED")


class PurgeRequest(NamedTuple):
    """One purge request, ready for :meth:`PeerClient.fetch`."""

    scheme: str
    address: str
    port: int
    target: bytes
    host: str
    headers: list[tuple[str, str]]
    body: bytes


def _text(target: bytes) -> str:
    """``target`` for a header or a JSON string: raw bytes >= 0x80 (UTF-8 as some clients send
    it) as ``%XX``, the rest as it is (the router let only printable ASCII besides through)."""
    return re.sub(rb"[\x80-\xff]", lambda m: b"%%%02X" % m[0][0], target).decode("ascii")


def _values(refresh: Refresh) -> dict[str, str]:
    return {"scheme": refresh.scheme, "host": refresh.host, "target": _text(refresh.target),
            "target_encoded": quote(refresh.target, safe="")}


def _fill(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m[1]], text)


def _fill_body(value: Any, refreshes: Sequence[Refresh]) -> Any:
    """Placeholders filled in every string; a list whose one item is a string with
    placeholders holds that item once per URL of the batch."""
    if isinstance(value, str):
        return _fill(value, _values(refreshes[0]))
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str) and _PLACEHOLDER.search(value[0]):
            return [_fill(value[0], _values(refresh)) for refresh in refreshes]
        return [_fill_body(item, refreshes) for item in value]
    if isinstance(value, dict):
        return {key: _fill_body(item, refreshes) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Template:
    """The request that purges a URL from one downstream cache. ``url`` and ``headers`` may
    hold ``{scheme}``, ``{host}``, ``{target}`` (in the URL: the exact bytes NGINX keys on;
    elsewhere: bytes >= 0x80 as ``%XX``) and ``{target_encoded}`` (every reserved byte
    percent-encoded: the target as one query value or path segment); so may every string of
    ``body``, a JSON value. With ``batch`` > 1 the URL and headers hold none, and a list in the
    body holds one item per URL of the batch."""

    name: str
    """Its ``downstream`` label: an edge's URL, a template's ``name`` or ``template:FILE``."""
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = field(default=None, repr=False)
    """The header read from ``auth_header_file``: sent, never logged nor printed."""
    body: Any = None
    batch: int = 1
    rate: float | None = None
    """Requests per second (token bucket), else ``--downstream-rate``."""
    burst: int | None = None

    def request(self, refreshes: Sequence[Refresh]) -> PurgeRequest:
        """The request purging ``refreshes`` (one, or up to ``batch``)."""
        first = refreshes[0]
        values = _values(first)
        match = _URL.fullmatch(self.url)
        assert match is not None, "read_template checked the URL"
        authority = _fill(match["authority"], values)
        address, colon, port = authority.rpartition(":")
        if not colon or not port.isdigit():  # no port, or an IPv6 address's colons
            address, port = authority, ""
        scheme = _fill(match["scheme"], values)
        target = b"".join(first.target if part == "{target}" else
                          _fill(part, values).encode("ascii")
                          for part in re.split(r"(\{target\})", match["rest"]) if part)
        headers = [(name, _fill(value, values)) for name, value in self.headers]
        host = next((value for name, value in headers if name.lower() == "host"), address)
        headers = [(name, value) for name, value in headers if name.lower() != "host"]
        named = {name.lower() for name, _ in headers}
        if "user-agent" not in named:
            headers.append(("User-Agent", USER_AGENT))
        body = b""
        if self.body is not None:
            body = json.dumps(_fill_body(self.body, refreshes), separators=(",", ":")).encode()
            if "content-type" not in named:
                headers.append(("Content-Type", "application/json"))
        if self.auth is not None:
            headers.append(self.auth)
        address = address.removeprefix("[").removesuffix("]")
        default = 443 if scheme == "https" else 80
        return PurgeRequest(scheme, address, int(port) if port else default, target or b"/",
                            host, headers, body)


def edge(url: str, method: str, headers: Sequence[str]) -> Template:
    """A Varnish or NGINX edge at ``url``: ``method`` (PURGE, BAN...) for the original Host and
    target, with ``headers`` (``'Name: value'``) besides."""
    pairs = tuple((name.strip(), value.strip()) for name, _, value in
                  (header.partition(":") for header in headers))
    return Template(url, method, url.rstrip("/") + "{target}", (("Host", "{host}"), *pairs))


def _header(text: str, where: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name) or not value or not value.isascii() \
            or not value.isprintable():
        raise ValueError(f"{where} must be 'Name: value', printable ASCII with a non-empty value")
    return name, value


def _placeholders(value: Any) -> list[str]:
    if isinstance(value, str):
        return _PLACEHOLDER.findall(value)
    if isinstance(value, list):
        return [p for item in value for p in _placeholders(item)]
    if isinstance(value, dict):
        return [p for item in value.values() for p in _placeholders(item)]
    return []


def _batch_list(value: Any) -> bool:
    """Whether ``value`` holds a list that a batch fills, and placeholders nowhere else."""
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str) and _PLACEHOLDER.search(value[0]):
            return True
        return any(_batch_list(item) for item in value)
    if isinstance(value, dict):
        return any(_batch_list(item) for item in value.values())
    return False


def read_template(path: str) -> Template:
    """The template in the JSON file ``path``; ValueError saying what is wrong (never the
    content of its ``auth_header_file``)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("must hold a JSON object")
    unknown = sorted(set(doc) - set(TEMPLATE_KEYS))
    if unknown:
        raise ValueError(f"has an unknown key {unknown[0]!r} (known: {', '.join(TEMPLATE_KEYS)})")
    url, method, name = doc.get("url"), doc.get("method", "POST"), doc.get("name")
    if not isinstance(url, str) or _URL.fullmatch(url) is None:
        raise ValueError("needs \"url\": an http(s):// URL (placeholders allowed)")
    if not isinstance(method, str) or not _TOKEN.fullmatch(method):
        raise ValueError(f"\"method\" {method!r} is not an HTTP method token")
    if name is not None and (not isinstance(name, str) or not name.isprintable() or not name):
        raise ValueError("\"name\" must be a non-empty string")
    headers = doc.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("\"headers\" must be an object of strings")
    pairs = tuple(_header(f"{k}: {v}", f"header {k!r}") for k, v in headers.items())
    template = Template(name or f"template:{path}", method, url, pairs,
                        _auth(path, doc.get("auth_header_file")), doc.get("body"),
                        _number(doc, "batch", int, 1) or 1, _number(doc, "rate", float, 0),
                        _number(doc, "burst", int, 1))
    _check_placeholders(template)
    return template


def _auth(template: str, path: Any) -> tuple[str, str] | None:
    """The header in ``path`` (relative to the template's folder); errors name the file."""
    if path is None:
        return None
    if not isinstance(path, str):
        raise ValueError("\"auth_header_file\" must be a path")
    file = Path(template).parent / path
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"auth_header_file {str(file)!r} cannot be read: {exc}") from None
    try:
        return _header(text, f"auth_header_file {str(file)!r}")
    except ValueError as exc:
        raise ValueError(f"{exc} (one line)") from None


def _number(doc: dict[str, Any], key: str, kind: type, least: float) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or (kind is int and not isinstance(value, int)) or value < least:
        raise ValueError(f"{key!r} must be {'an integer' if kind is int else 'a number'} "
                         f">= {least:g}")
    return kind(value)


def _check_placeholders(template: Template) -> None:
    """Only :data:`FIELDS`; a batch's per-URL values in its body list only; and the URL must
    give a request for a sample URL."""
    strings = [template.url, *(value for _, value in template.headers)]
    for name in [p for s in strings for p in _PLACEHOLDER.findall(s)] \
            + _placeholders(template.body):
        if name not in FIELDS:
            raise ValueError(f"has an unknown placeholder {{{name}}} (known: "
                             f"{', '.join('{' + f + '}' for f in FIELDS)})")
    if template.batch > 1 and (any(_PLACEHOLDER.search(s) for s in strings)
                               or not _batch_list(template.body)):
        raise ValueError("with \"batch\" needs a list in \"body\" holding one string with "
                         "placeholders, and none in \"url\" or \"headers\"")
    request = template.request([_SAMPLE])
    if request.scheme not in ("http", "https") or not request.address \
            or not request_target_ok(request.target):
        raise ValueError(f"\"url\" {template.url!r} does not give an http(s) request")


@dataclass(frozen=True)
class PurgeSettings:
    """What the downstreams take from the config."""

    timeout: float = 5.0
    retries: int = 2
    retry_backoff: float = 0.2
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    rate: float = 10.0
    burst: int = 50
    queue_size: int = QUEUE_SIZE

    @classmethod
    def from_config(cls, cfg: Config) -> PurgeSettings:
        return cls(timeout=cfg.timeout, retries=cfg.retries, retry_backoff=cfg.retry_backoff,
                   breaker_failures=cfg.breaker_failures, breaker_cooldown=cfg.breaker_cooldown,
                   rate=cfg.downstream_rate, burst=cfg.downstream_burst)


class Downstream:
    """One cache in front: its queue, token bucket, breaker, lanes and connections."""

    def __init__(self, template: Template, settings: PurgeSettings, metrics: Metrics,
                 tls: Callable[[], ssl.SSLContext]) -> None:
        self.template = template
        self.settings = settings
        self.queue: asyncio.Queue[Refresh] = asyncio.Queue(settings.queue_size)
        rate = settings.rate if template.rate is None else template.rate
        self.bucket = TokenBucket(rate, template.burst or settings.burst)
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown)
        self.failing = False
        self.workers: list[asyncio.Task[None]] = []
        self._tls = tls
        self._waiting: set[tuple[str, str, bytes]] = set()
        self._busy = 0
        self._clients: OrderedDict[tuple[str, str, int], PeerClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._outcomes = {o: metrics.downstream_purges.labels(template.name, o)
                          for o in DOWNSTREAM_OUTCOMES}

    def start(self) -> None:
        self.workers = [asyncio.create_task(self._work(), name=f"downstream {self.template.name}")
                        for _ in range(LANES)]

    def offer(self, refresh: Refresh) -> None:
        if self.breaker.cooling():
            outcome = "skipped"
        elif refresh.key in self._waiting:
            outcome = "coalesced"
        else:
            try:
                self.queue.put_nowait(refresh)
            except asyncio.QueueFull:
                outcome = "dropped"
            else:
                self._waiting.add(refresh.key)
                return
        self.count(outcome)

    def count(self, outcome: str, n: int = 1) -> None:
        self._outcomes[outcome].inc(n)

    async def _work(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.template.batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            for refresh in batch:
                self._waiting.discard(refresh.key)
            self._busy += len(batch)
            try:
                outcome = await self._send(batch) if self.breaker.allow() else "skipped"
                self.count(outcome, len(batch))
                self._note(outcome, batch[0])
            finally:
                self._busy -= len(batch)
                for _ in batch:
                    self.queue.task_done()

    async def _send(self, batch: list[Refresh]) -> str:
        """The batch's request, retried after a connect error, a timeout, 429 or 502/503/504
        while the breaker stays closed; each attempt takes a token."""
        try:
            request = self.template.request(batch)
        except Exception:  # a bug must cost one purge, not a lane: say it loudly
            log.exception("downstream %s: no request for %s", self.template.name, batch[0].url)
            return "http_error"
        outcome, wait = "http_error", 0.0
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(max(backoff(self.settings.retry_backoff, attempt), wait))
            while not self.bucket.take():
                await asyncio.sleep(1 / self.bucket.rate)
            outcome, status, wait = await self._attempt(request)
            if (outcome not in TRANSPORT_FAILURES and status not in RETRY) \
                    or self.breaker.is_open:
                break
        return outcome

    async def _attempt(self, request: PurgeRequest) -> tuple[str, int | None, float]:
        """One attempt: (outcome, status, the Retry-After of a 429 in seconds)."""
        status, wait = None, 0.0
        try:
            async with asyncio.timeout(self.settings.timeout):
                answer = await self._client(request).fetch(
                    self.template.method, request.target, request.host, request.headers,
                    body=request.body)
        except (TimeoutError, PeerError) as exc:
            outcome = failure(exc)
        except Exception:  # a bug must cost one attempt, not a lane: say it loudly
            log.exception("downstream %s: %s failed unexpectedly", self.template.name,
                          self.template.method)
            outcome = "http_error"
        else:
            status = answer.status
            outcome = "ok" if 200 <= status < 300 else \
                "not_cached" if status in _NOT_CACHED else "http_error"
            after = answer.header(b"retry-after")
            if status == 429 and after is not None and after.strip().isdigit():
                wait = min(float(after), MAX_RETRY_AFTER)
        log.debug("downstream %s: %s -> %s %s", self.template.name, self.template.method,
                  status or "-", outcome)
        self.breaker.record(outcome in TRANSPORT_FAILURES or (status or 0) >= 500)
        return outcome, status, wait

    def _client(self, request: PurgeRequest) -> PeerClient:
        key = (request.scheme, request.address, request.port)
        client = self._clients.pop(key, None) or PeerClient(
            request.address, request.port, self._tls() if request.scheme == "https" else None,
            LANES)
        self._clients[key] = client
        if len(self._clients) > CLIENTS:
            _, oldest = self._clients.popitem(last=False)
            task = asyncio.create_task(oldest.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    def _note(self, outcome: str, refresh: Refresh) -> None:
        """Say when the downstream starts and stops failing, not every failed purge (nor any
        header: an API's token is one)."""
        failing = outcome not in ("ok", "not_cached", "skipped")
        if outcome != "skipped" and failing != self.failing:
            self.failing = failing
            if failing:
                log.warning("downstream %s is failing (%s, purging %s); see "
                            "logwarden_downstream_purges_total", self.template.name, outcome,
                            refresh.url)
            else:
                log.info("downstream %s purges again", self.template.name)

    async def close(self, deadline: float) -> int:
        """Send what is waiting until the loop-time ``deadline``; returns URLs cut off."""
        cut = await cut_off(self.queue, self.workers, lambda: self._busy, deadline)
        if cut:
            self.count("dropped", cut)
        await asyncio.gather(*self._closing, *(c.aclose() for c in self._clients.values()))
        return cut


class Downstreams:
    """Every configured downstream; told each URL of a changed copy the cluster holds."""

    def __init__(self, templates: Sequence[Template], settings: PurgeSettings,
                 metrics: Metrics) -> None:
        self._context: ssl.SSLContext | None = None
        self.all = [Downstream(t, settings, metrics, self._tls) for t in templates]
        self._later: dict[tuple[str, str, bytes], tuple[asyncio.TimerHandle, Refresh]] = {}

    @classmethod
    def from_config(cls, cfg: Config, metrics: Metrics) -> Downstreams:
        templates = [edge(t, cfg.downstream_method, cfg.downstream_header)
                     if isinstance(t, str) else t for t in cfg.downstreams]
        return cls(templates, PurgeSettings.from_config(cfg), metrics)

    def _tls(self) -> ssl.SSLContext:
        """A CDN's API or an https edge is verified by the system's CAs (one context: each
        load costs ~30-150 ms)."""
        if self._context is None:
            self._context = ssl.create_default_context()
        return self._context

    def start(self) -> None:
        for downstream in self.all:
            downstream.start()

    def submit(self, refresh: Refresh) -> None:
        """Purge ``refresh``'s URL from every downstream (the dispatcher's ``on_changed``)."""
        if refresh.key in self._later:  # bus mode's own purge of it is due soon
            for downstream in self.all:
                downstream.count("coalesced")
            return
        for downstream in self.all:
            downstream.offer(refresh)

    def submit_later(self, refresh: Refresh, delay: float) -> None:
        """:meth:`submit` in ``delay`` seconds (bus mode: after the other nodes' refresh)."""
        if refresh.key in self._later:
            self.submit(refresh)  # counted coalesced
            return

        def due() -> None:
            del self._later[refresh.key]
            self.submit(refresh)

        self._later[refresh.key] = (asyncio.get_running_loop().call_later(delay, due), refresh)

    async def close(self, timeout: float) -> int:
        """Purge what is due or waiting within ``timeout`` seconds; returns URLs cut off."""
        later, self._later = list(self._later.values()), {}
        for handle, refresh in later:  # what was due later is sent now, not lost
            handle.cancel()
            self.submit(refresh)
        deadline = asyncio.get_running_loop().time() + timeout
        cut = sum(await asyncio.gather(*(d.close(deadline) for d in self.all)))
        if cut:
            log.warning("shutdown deadline reached: %d downstream purges cut off", cut)
        return cut


class AfterPublish:
    """Bus mode's router target: hands each refresh to ``target`` (the bus) and a changed copy,
    ``delay`` seconds later, to the downstreams. On the bus no node learns when the others
    hold the copy (each refreshes its own NGINX), so the publisher waits instead."""

    def __init__(self, target: Target, downstreams: Downstreams, delay: float) -> None:
        self.target = target
        self.downstreams = downstreams
        self.delay = delay

    def has_listener(self, scheme: str) -> bool:
        return self.target.has_listener(scheme)

    def refuse(self, refresh: Refresh) -> None:
        self.target.refuse(refresh)

    def submit(self, refresh: Refresh) -> None:
        self.target.submit(refresh)
        if refresh.changed:
            self.downstreams.submit_later(refresh, self.delay)
