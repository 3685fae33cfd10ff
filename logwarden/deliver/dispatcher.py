"""Fan refreshes out to the other peers: one bounded queue, breaker and worker set per peer.

    Router ─admitted Refresh─▶ Dispatcher.submit ─per-peer queue─▶ workers ─▶ mode.deliver

The dispatcher only delivers: what one refresh sends and how an answer is judged is the
refresh mode's (:mod:`logwarden.deliver.modes`), which refreshes may go out is the router's.

Each peer is isolated. A dead or slow peer fills only its own queue (new refreshes for it are
dropped and counted) and holds only its own workers. Its first worker ("own lane") never
takes a slot of the global ``--concurrency`` pool; the others take one per attempt and only
work while the peer's last attempt succeeded, so a failing peer never competes with healthy
ones for slots, and backoff sleeps hold none. After ``breaker_failures`` failed attempts in a
row its breaker opens: refreshes for it are skipped and counted without a request until a
single probe, after ``breaker_cooldown`` seconds, succeeds.

One refresh per (peer, URL) is queued or in flight at a time; a repeat is coalesced into it.
The peer list can change while running (:meth:`Dispatcher.set_peers`): peers that stay keep
their queues; removed ones are cut off at once.

Stopping: :meth:`Dispatcher.close` lets the workers finish what is queued until the deadline,
then cancels them and counts what was cut off as ``dropped``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import Histogram

from logwarden.deliver.breaker import Breaker
from logwarden.deliver.modes import Bypass, Hint, Mode, Request
from logwarden.deliver.peerhttp import Answer, PeerClient, PeerError, holder_name, host_port
from logwarden.deliver.retry import (
    RETRY_STATUSES,
    TRANSPORT_FAILURES,
    backoff,
    cut_off,
    failure,
)
from logwarden.model import Refresh, escaped, version_of
from logwarden.ops.metrics import REFRESH_OUTCOMES, Metrics

if TYPE_CHECKING:  # config imports discovery, bus...: keep the dispatcher free of them
    from logwarden.config import Config

log = logging.getLogger(__name__)

VARY_HOST_LABELS = 20
"""Hosts with a label of their own in ``logwarden_vary_uncovered_total``."""
HEAL_DELAY = 0.1
"""Seconds between a split round's last answer and its heal. The heal's nodes copy the newest
node's, and a refresh's answer (a HEAD's headers) can come before that node has stored the
body; asked earlier, it would miss and fetch from the origin."""
SOURCE_HEADER = "X-Logwarden-Source"
"""Names the node holding the new copy (origin offload); examples/nginx.conf maps it to a
known node, never to the address as sent."""


@dataclass(frozen=True)
class DispatchSettings:
    """What the dispatcher needs from the config, and nothing else."""

    mode: Mode = field(default_factory=Bypass)
    """What one refresh sends to a peer and how its answers are judged."""
    timeout: float = 5.0
    retries: int = 2
    retry_backoff: float = 0.2
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    concurrency: int = 64
    peer_concurrency: int = 8
    queue_size: int = 10000
    peer_ca: str | None = None
    insecure_tls: bool = False
    variant_header: str | None = None
    """The request header ``--variant`` classes are of (lower-case); a ``Vary`` on any other
    cannot be refreshed and is reported."""

    @classmethod
    def from_config(cls, cfg: Config, mode: Mode | None = None) -> DispatchSettings:
        """What the dispatcher takes from the config; ``mode`` instead of the configured one
        (``warm`` refreshes in place)."""
        return cls(
            mode=mode or cfg.refresh_mode, timeout=cfg.timeout,
            retries=cfg.retries, retry_backoff=cfg.retry_backoff,
            breaker_failures=cfg.breaker_failures, breaker_cooldown=cfg.breaker_cooldown,
            concurrency=cfg.concurrency, peer_concurrency=cfg.peer_concurrency,
            queue_size=cfg.queue_size, peer_ca=cfg.peer_ca, insecure_tls=cfg.insecure_peer_tls,
            variant_header=next((v.header[0].lower() for v in cfg.variants if v.header), None))


def tls_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    """Verifies peers against ``ca_file`` (else the system CAs) and the original host name."""
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Labelled(dict[str, Any]):
    """Labelled metric children by label value, looked up once each: a labels() call costs
    more than the rest of the per-request accounting."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: str) -> Any:
        self[key] = child = self.make(key)
        return child


class VaryWatch:
    """Says when a peer's answer varies on a request header no ``--variant`` covers: NGINX
    then keeps a copy per value of that header, and no refresh can replace those copies
    (README "Variants"). Warns once per host; counts per host, the first
    :data:`VARY_HOST_LABELS` hosts with a label of their own, the others as ``other``."""

    def __init__(self, covered: str | None, metrics: Metrics) -> None:
        self.covered = covered
        self.metrics = metrics
        self._told: set[str] = set()

    def notice(self, answer: Answer, host: str) -> None:
        vary = answer.header(b"vary")
        if vary is None:
            return
        names = {n.strip().lower() for n in vary.decode("latin-1").split(",")} - {"", "*"}
        uncovered = sorted(names - {self.covered})
        if not uncovered:
            return
        told = host in self._told
        label = host if told or len(self._told) < VARY_HOST_LABELS else "other"
        self.metrics.vary_uncovered.labels(label).inc()
        if not told and len(self._told) < VARY_HOST_LABELS:
            self._told.add(host)
            log.warning(
                "%s answers vary on %s: NGINX keeps a copy per value of %s, and a refresh "
                "replaces only one of them; the others stay old until they expire. Key the "
                "cache on a normalised class and give logwarden one --variant per class "
                "(README \"Variants\"), or proxy_ignore_headers Vary if the answer does not "
                "really vary", host, ", ".join(uncovered), "/".join(uncovered))


class FanOut:
    """The peers of one fan-out still to answer, and which copy each refreshed one now holds.
    The last answer observes the propagation time (from the triggering line's own time) and
    hands the fan-out to ``converged``: the dispatcher compares the copies there."""

    __slots__ = ("converged", "histogram", "left", "refresh", "versions")

    def __init__(self, left: int, refresh: Refresh, histogram: Histogram | None,
                 converged: Callable[[FanOut], None] | None) -> None:
        self.left = left
        self.refresh = refresh
        self.histogram = histogram
        self.converged = converged
        self.versions: dict[Peer, str | None] = {}

    def answered(self, peer: Peer, answer: Answer) -> None:
        """``peer`` refreshed the copy: its answer names which one it stores now."""
        self.versions[peer] = version_of(answer.header(b"etag"),
                                         answer.header(b"last-modified"))

    def done(self) -> None:
        self.left -= 1
        if self.left:
            return
        if self.histogram is not None and self.refresh.logged_at:
            self.histogram.observe(max(0.0, time.time() - self.refresh.logged_at))
        if self.converged is not None:
            self.converged(self)


_Item = tuple[Refresh, FanOut | None]


class Peer:
    """One peer listener: its queue, breaker, workers and connections."""

    def __init__(self, url: str, settings: DispatchSettings, metrics: Metrics,
                 slots: asyncio.Semaphore, tls: ssl.SSLContext | None, vary: VaryWatch) -> None:
        parts = urlsplit(url)
        self.vary = vary
        self.url = url
        self.scheme = parts.scheme
        self.settings = settings
        self.metrics = metrics
        self.slots = slots
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(settings.queue_size)
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown)
        self.client = PeerClient(*host_port(url), tls if self.scheme == "https" else None,
                                 settings.peer_concurrency)
        self.workers: list[asyncio.Task[None]] = []
        self.failing = False
        self.last_outcome: str | None = None
        self.last_ok: float | None = None
        """When a refresh last counted ``ok`` (``time.time()``)."""
        self._pending: set[tuple[str, str, bytes]] = set()
        self._busy = 0
        self._healthy = asyncio.Event()  # extra lanes work only while the peer answers
        self._own_slot = asyncio.Semaphore(1)
        self._probed = asyncio.Event()  # set while no probe is out
        self._probed.set()
        self._told: set[Hint] = set()
        metrics.init_peer(url)
        # Looked up once: a labels() call costs more than deciding a log line.
        self._outcomes = {o: metrics.refreshes.labels(url, o) for o in REFRESH_OUTCOMES}
        self._duration = metrics.refresh_duration.labels(url)
        self._requests = _Labelled(lambda v: metrics.refresh_requests.labels(v or "none"))

    def start(self) -> None:
        name = urlsplit(self.url).netloc
        self.workers = [asyncio.create_task(self._work(lane), name=f"peer {name} #{lane}")
                        for lane in range(self.settings.peer_concurrency)]
        self.workers.append(asyncio.create_task(self._recover(), name=f"peer {name} probe"))

    def offer(self, refresh: Refresh, fanout: FanOut | None = None) -> None:
        if self.breaker.cooling():  # a probe in flight may be about to close it: queue
            outcome = "skipped"
        elif refresh.key in self._pending:
            outcome = "coalesced"
        else:
            try:
                self.queue.put_nowait((refresh, fanout))
            except asyncio.QueueFull:
                outcome = "dropped"
            else:
                self._pending.add(refresh.key)
                return
        self.count(outcome)
        if fanout:
            fanout.done()

    def count(self, outcome: str, n: int = 1) -> None:
        self._outcomes[outcome].inc(n)
        self.last_outcome = outcome
        if outcome == "ok":
            self.last_ok = time.time()

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows of this peer."""
        return {"url": self.url, "breaker": self.breaker.state, "last_ok": self.last_ok,
                "last_outcome": self.last_outcome, "queue": self.queue.qsize(),
                "in_flight": self._busy}

    async def _work(self, lane: int) -> None:
        slot = self._own_slot if lane == 0 else self.slots
        while True:
            if lane:
                await self._healthy.wait()
            refresh, fanout = await self.queue.get()
            # Coalesce only with refreshes not yet sent: one already on its way may have left
            # before the change that triggered the repeat, so the repeat must go too.
            self._pending.discard(refresh.key)
            self._busy += 1
            try:
                outcome = await self.deliver(refresh, slot, fanout) if await self._admit() \
                    else "skipped"
                self.count(outcome)
                self._note(outcome)
                if fanout:
                    fanout.done()
            finally:
                self._busy -= 1
                self.queue.task_done()

    async def _admit(self) -> bool:
        """Whether to send now: behind another worker's probe, wait for its answer rather
        than skip a refresh the peer may be able to take."""
        while self.breaker.probing:
            await self._probed.wait()
        if not self.breaker.allow():
            return False
        if self.breaker.probing:
            self._probed.clear()
        return True

    async def _recover(self) -> None:
        """Probe an open breaker after each cool-down even when no refresh comes along, so a
        peer that is back shows up (logwarden_peer_up) before the next change needs it. The
        probe is a TCP connect: a request would need a URL to refresh."""
        while True:
            await asyncio.sleep(self.settings.breaker_cooldown)
            if not self.breaker.is_open or self.breaker.waiting() or not self.queue.empty():
                continue
            self.breaker.allow()
            self._probed.clear()
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await self.client.reachable()
            except (OSError, TimeoutError):
                self._record("connect_error", None)
            else:
                self._record("ok", None)

    async def deliver(self, refresh: Refresh, slot: asyncio.Semaphore,
                      fanout: FanOut | None = None) -> str:
        """What the mode sends for ``refresh`` on this peer, each request with retries; the
        refreshed answer of the triggering class tells ``fanout`` the copy now stored."""

        async def send(request: Request, refresh: Refresh) -> str:
            return await self._with_retries(request, refresh, slot, fanout)

        return await self.settings.mode.deliver(refresh, send)

    async def _with_retries(self, request: Request, refresh: Refresh,
                            slot: asyncio.Semaphore, fanout: FanOut | None = None) -> str:
        """Retry connect errors, timeouts and 502/503/504 with exponential backoff and jitter,
        while the breaker stays closed; other answers are final."""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self.metrics.refresh_retries.labels(self.url).inc()
                await asyncio.sleep(backoff(self.settings.retry_backoff, attempt))
            headers = list(request.headers)
            if request.names_holder and not attempt and refresh.holder:
                headers.append((SOURCE_HEADER, refresh.holder))
            outcome, status = await self._attempt(request, refresh, slot, headers, fanout)
            retry = outcome in TRANSPORT_FAILURES or status in RETRY_STATUSES
            if not retry or self.breaker.is_open:
                break
        self._requests[request.variant].inc()
        return outcome

    async def _attempt(self, request: Request, refresh: Refresh, slot: asyncio.Semaphore,
                       headers: list[tuple[str, str]], fanout: FanOut | None = None
                       ) -> tuple[str, int | None]:
        """One request; returns (outcome, status). Never raises for I/O errors."""
        status, method = None, request.method
        async with slot:
            started = time.perf_counter()
            try:  # the client's timeout: one timer for all requests, not one each
                answer = await self.client.fetch(method, refresh.target, refresh.host,
                                                 headers, timeout=self.settings.timeout)
                status = answer.status
            except (TimeoutError, PeerError) as exc:
                outcome = failure(exc)
                if outcome == "tls_error":
                    log.debug("TLS to %s for %s failed: %s", self.url, refresh.host, exc)
            except Exception:  # a bug must cost one request, not a worker: say it loudly
                log.exception("%s %s%s host=%s failed unexpectedly", method, self.url,
                              escaped(refresh.target), refresh.host)
                outcome = "http_error"
            else:
                outcome = request.judge(answer)
                self.vary.notice(answer, refresh.host)
                if fanout is not None and outcome == "ok" and refresh.version is not None \
                        and request.stores and request.variant == (refresh.variant or ""):
                    fanout.answered(self, answer)
            self._duration.observe(time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):  # escaping the target costs: only when shown
            log.debug("%s %s%s host=%s -> %s %s", method, self.url, escaped(refresh.target),
                      refresh.host, status or "-", outcome)
        self._record(outcome, status)
        self._hint(request, outcome, status)
        return outcome, status

    def _record(self, outcome: str, status: int | None) -> None:
        """Feed the breaker: transport failures and 5xx count, any other answer is a success
        (``not_refreshed`` and ``unverified`` too: the peer is up, only wired wrong)."""
        failed = (outcome in TRANSPORT_FAILURES or (status or 0) >= 500
                  or (status is None and outcome == "http_error"))
        self._probed.set()
        if failed:
            self._healthy.clear()
        else:
            self._healthy.set()
        if self.breaker.record(failed):
            self._breaker_changed(outcome)

    def _hint(self, request: Request, outcome: str, status: int | None) -> None:
        """Say once per peer what an answer showing a wiring mistake means (a 403 to a purge,
        a refresh answered from the cache...), with the line to fix: the counters say only
        that something is wrong, and every request would repeat it."""
        if not request.hints:
            return
        hint = request.hint(outcome, status)
        if hint is not None and hint not in self._told:
            self._told.add(hint)
            log.log(hint.level, "peer %s %s", self.url, hint.text)

    def _breaker_changed(self, outcome: str) -> None:
        up = not self.breaker.is_open
        self.metrics.peer_up.labels(self.url).set(1 if up else 0)
        if up:
            log.info("peer %s is back: its breaker closed", self.url)
        else:
            log.warning("peer %s is down after %d failed attempts in a row (last: %s); "
                        "skipping it, probing again every %ss", self.url, self.breaker.streak,
                        outcome, self.settings.breaker_cooldown)

    def _note(self, outcome: str) -> None:
        """Log when the peer starts and stops failing, not every failed request."""
        failing = outcome not in ("ok", "not_cached", "hit", "unverified")
        if outcome != "skipped" and failing != self.failing:
            self.failing = failing
            if failing:
                log.warning("peer %s is failing (%s); see logwarden_refreshes_total", self.url,
                            outcome)
            else:
                log.info("peer %s answers again", self.url)

    async def close(self, deadline: float) -> int:
        """Finish queued work until the loop-time ``deadline``; returns requests cut off."""
        cut = await cut_off(self.queue, self.workers, lambda: self._busy, deadline)
        if cut:
            self.count("dropped", cut)
        await self.client.aclose()
        return cut


class Dispatcher:
    """Hands each admitted refresh to the peers of its scheme (admission is the router's).

    A refresh of an ``https`` URL goes to the ``https://`` peer URLs only, an ``http`` one to
    the ``http://`` URLs: NGINX keeps separate cache entries per scheme. With variant classes,
    this node (``own``) gets every fan-out of its scheme too, marked ``here``: the mode then
    refreshes its other classes (its line stored one). It counts as one more peer.
    """

    def __init__(self, peers: Sequence[str], settings: DispatchSettings, metrics: Metrics,
                 *, propagation: bool = False, own: str | None = None,
                 home: str | None = None,
                 on_changed: Callable[[Refresh], None] | None = None) -> None:
        """``propagation``: observe ``logwarden_propagation_seconds`` (the line times are
        precise: the format has ``$msec``). ``own``: this node's URL, for its own classes.
        ``home``: this node's URL, to heal it when the peers got a newer copy than its line
        shows (:meth:`converged`). ``on_changed``: told each refresh of a changed copy once
        every node holds the same one (the caches in front may then be purged)."""
        self.on_changed = on_changed
        self.settings = settings
        self.metrics = metrics
        self.propagation = propagation
        self.home_url = home
        self._home: Peer | None = None
        self.peers: list[Peer] = []
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tls: ssl.SSLContext | None = None
        self._by_scheme: dict[str, list[Peer]] = {}
        self._started = False
        self._retired: set[asyncio.Task[int]] = set()
        self._heals: dict[int, tuple[asyncio.TimerHandle, list[Peer], Refresh]] = {}
        self._heal_keys = itertools.count()
        self._closing = False
        self._vary = VaryWatch(settings.variant_header, metrics)
        self.own = self._new_peer(own) if own else None
        self.set_peers(peers)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(peer.url for peer in self.peers)

    def set_peers(self, urls: Sequence[str]) -> None:
        """Follow a new peer list. Peers that stay keep their queue, breaker and connections;
        new ones start; removed ones are cut off at once (queued refreshes counted as
        ``dropped``) and never contacted again. Repeated URLs count once."""
        current = {peer.url: peer for peer in self.peers}
        self.peers = [current.pop(url) if url in current else self._new_peer(url)
                      for url in dict.fromkeys(urls)]
        self._by_scheme = {}
        for peer in self.peers:
            self._by_scheme.setdefault(peer.scheme, []).append(peer)
        for peer in current.values():
            self.metrics.peer_up.remove(peer.url)
            task = asyncio.create_task(peer.close(_now()), name=f"retire {peer.url}")
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def _new_peer(self, url: str) -> Peer:
        tls = None
        if url.startswith("https:"):
            if self._tls is None:  # one context for all peers: each load costs ~30-150 ms
                self._tls = tls_context(self.settings.peer_ca, self.settings.insecure_tls)
            tls = self._tls
        peer = Peer(url, self.settings, self.metrics, self._slots, tls, self._vary)
        if self._started:
            peer.start()
        return peer

    def start(self) -> None:
        self._started = True
        for peer in self._all():
            peer.start()

    def _all(self) -> list[Peer]:
        return [*self.peers, *([self.own] if self.own else []),
                *([self._home] if self._home else [])]

    def _own_for(self, scheme: str) -> Peer | None:
        return self.own if self.own is not None and self.own.scheme == scheme else None

    def has_listener(self, scheme: str) -> bool:
        """Whether a peer of ``scheme`` is there to refresh."""
        return scheme in self._by_scheme

    def refuse(self, refresh: Refresh) -> None:
        """A fan-out whose every request is refused (its target or host cannot be sent byte
        for byte): counted per peer, so that fan-outs = outcomes of each peer still holds."""
        self.metrics.fanouts.inc()
        own = self._own_for(refresh.scheme)
        for peer in [*self._by_scheme.get(refresh.scheme, ()), *([own] if own else [])]:
            peer.count("refused")

    def submit(self, refresh: Refresh) -> None:
        """Queue the refresh for every peer of its scheme (the router checked there is one)."""
        peers = self._by_scheme.get(refresh.scheme, ())
        own = self._own_for(refresh.scheme)
        self.metrics.fanouts.inc()
        fanout = None
        timed = self.propagation and refresh.logged_at
        if timed or refresh.version is not None:
            fanout = FanOut(len(peers) + (own is not None), refresh,
                            self.metrics.propagation if timed else None,
                            self.converged if refresh.version is not None else None)
        for peer in peers:
            peer.offer(refresh, fanout)
        if own is not None:
            own.offer(refresh._replace(here=True), fanout)

    def converged(self, fanout: FanOut) -> None:
        """Every peer has answered a fan-out of a versioned line. A peer whose refresh fetched
        another copy than the line's (the origin changed between this node's fetch and the
        peers': a split round) leaves the cluster on two versions for a whole TTL: refresh
        every node not on the newest copy once more, this one included (``home``), naming a
        node that holds it in ``X-Logwarden-Source``. Where the nodes' nginx.conf has origin
        offload's map they copy that node's (an origin changing faster than a refresh round
        would split the heal again); elsewhere the header is ignored and they fetch from the
        origin. At most one extra round per change: a heal's own fan-out is not healed again."""
        refresh, seen = fanout.refresh, fanout.versions
        copies = [v for v in seen.values() if v is not None]
        if refresh.heal or not copies:
            if refresh.changed and len(set(copies)) <= 1:
                self._changed(refresh)
            return
        # A peer fetched after this node: a copy other than the line's is the newer one
        # (the most common of them; of equals, the last answer's).
        newer = [v for v in copies if v != refresh.version] or copies
        newest = max(reversed(newer), key=newer.count)
        behind = [peer for peer, v in seen.items() if v is not None and v != newest]
        home = self._home_peer() if refresh.version != newest else None
        if not behind and home is None:
            if refresh.changed:
                self._changed(refresh)
            return
        self.metrics.heals.inc()
        source = next(peer for peer, v in seen.items() if v == newest)
        log.info("split round for %s: this node's line shows %s, its peers hold %s; "
                 "refreshing %d node(s) again from %s", refresh.url, refresh.version,
                 ", ".join(sorted(set(copies))), len(behind) + (home is not None), source.url)
        nodes = [*behind, *([home] if home is not None else [])]
        # the peers fetched a copy other than the line's: a change, whatever the memory said
        heal = refresh._replace(heal=True, version=newest, changed=True,
                                holder=holder_name(source.url))
        key = next(self._heal_keys)
        later = asyncio.get_running_loop().call_later(
            0.0 if self._closing else HEAL_DELAY, self._heal, key)
        self._heals[key] = later, nodes, heal

    def _heal(self, key: int) -> None:
        """Offer a heal :meth:`converged` put off (at once when closing)."""
        later, nodes, heal = self._heals.pop(key)
        later.cancel()
        healed = FanOut(len(nodes), heal, None, self.converged)
        for peer in nodes:
            peer.offer(heal, healed)

    def _changed(self, refresh: Refresh) -> None:
        if self.on_changed is not None:
            self.on_changed(refresh)

    def _home_peer(self) -> Peer | None:
        """This node as a peer, made on the first heal it needs."""
        if self._home is None and self.home_url is not None:
            self._home = self._new_peer(self.home_url)
        return self._home

    def depth(self) -> int:
        return sum(peer.queue.qsize() for peer in self._all())

    @property
    def refreshable(self) -> bool:
        """Whether any peer's breaker is closed: a refresh can reach it."""
        return any(not peer.breaker.is_open for peer in self.peers)

    def set_mode(self, mode: Mode) -> None:
        """Send what ``mode`` says from now on (SIGHUP read the refresh header file again):
        queued refreshes go with it, those in flight finish with the old one."""
        self.settings = replace(self.settings, mode=mode)
        for peer in self._all():
            peer.settings = self.settings

    async def close(self, timeout: float) -> int:
        """Drain every peer within ``timeout`` seconds; returns how many refreshes were cut off."""
        deadline = _now() + timeout
        self._closing = True  # heals from here on are offered at once, to drain with the rest
        for key in list(self._heals):
            self._heal(key)
        await asyncio.gather(*self._retired)
        cut = sum(await asyncio.gather(*(peer.close(deadline) for peer in self._all())))
        if cut:
            log.warning("shutdown deadline reached: %d refresh requests cut off", cut)
        return cut


def _now() -> float:
    return asyncio.get_running_loop().time()
