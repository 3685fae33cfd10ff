"""The one admission path: from a decided refresh to where it goes.

    decide ─Refresh─▶ Router.route ─▶ Target: the dispatcher (peers) | the bus | a Recorder

``run`` (direct or bus mode), the bus's receiving side, ``replay``, ``warm`` and its dry run all
admit refreshes through this class, so what replay shows cannot differ from what the agent
does. The rules, in this order, cheapest first; the first that applies names the refusal:

========================  =============================================================
``deduplicated``          the same URL was admitted within ``--dedup-window``
``no_listener``           no target for the URL's scheme (NGINX keys http and https apart)
``refused``               the target or host cannot be sent byte for byte (model.replayable);
                          logged at a bounded rate (:class:`RefusalLog`), not only counted
``too_long``, ``filtered``,
``rate``                  storm control (:mod:`logwarden.route.storm`)
========================  =============================================================

An admitted refresh names this node as the holder of the new copy when origin offload is on
(``--refresh-from-self``, URLs of ``--self``'s scheme only), then goes to the target.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from logwarden.decide.window import Window
from logwarden.model import Refresh, refusal_reason, replayable
from logwarden.ops.metrics import STORM_REASONS, Metrics
from logwarden.route.storm import StormControl

if TYPE_CHECKING:
    from prometheus_client import Counter as PromCounter

    from logwarden.config import Config

log = logging.getLogger(__name__)


class Target(Protocol):
    """Where admitted refreshes go."""

    def has_listener(self, scheme: str) -> bool: ...

    def refuse(self, refresh: Refresh) -> None:
        """Account for a refresh refused as not replayable."""

    def submit(self, refresh: Refresh) -> None: ...


REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two warnings about refused refreshes."""


class RefusalLog:
    """Says that refreshes were refused, and why, at most once per ``interval`` seconds.

    A refused URL is never refreshed on the peers, so a counter alone leaves an operator
    guessing which URL and why; a warning per refusal would let one client flood logwarden's
    own log. So the first refusal is a warning at once, later ones within ``interval`` are
    counted, and the first after it says how many there were and shows its own URL and reason
    (refusals with no refusal after them stay in ``outcome="refused"``). Targets and hosts
    are shown escaped as NGINX's access log writes them: no raw control bytes in this log.
    ``clock`` is real time even in replay: it bounds this log, not the access log's span."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._count = 0
        """Refused since the last warning."""
        self._since: float | None = None
        """When the last warning was written."""

    def __call__(self, refresh: Refresh) -> None:
        self._count += 1
        now = self.clock()
        if self._since is not None and now - self._since < self.interval:
            return
        others = self._count - 1
        log.warning("refused to refresh %s: %s%s", refresh.url, refusal_reason(refresh),
                    f"; {others} more refused in the last {now - self._since:.0f} s"
                    if others and self._since is not None else "")
        self._count, self._since = 0, now


class Router:
    """Admits refreshes (see the module docstring) and hands them to ``target``."""

    def __init__(self, target: Target, metrics: Metrics, *, dedup: Window | None = None,
                 storm: StormControl | None = None, holder: tuple[str, str] | None = None,
                 refusal_log: RefusalLog | None = None,
                 counts: Mapping[str, PromCounter] | None = None) -> None:
        """``dedup``/``storm``: off when None (a URL list meant as asked). ``holder``:
        (scheme, ``ADDRESS:PORT``) of this node, named as the holder of the new copy for
        origin offload. ``refusal_log``: where refusals are said (default:
        :class:`RefusalLog`'s interval, real time). ``counts``: the counter of each reason
        but ``refused`` (which the target counts); default: ``triggers_deduplicated`` and
        ``storm_dropped``; ``{}`` when the caller counts what :meth:`route` returns (the
        bus's receiving side: its dedup is not the triggers')."""
        self.target = target
        self.dedup = dedup
        self.storm = storm
        self.holder = holder
        self.refusal_log = refusal_log if refusal_log is not None else RefusalLog()
        self._counts = counts if counts is not None else {
            "deduplicated": metrics.triggers_deduplicated,
            **{r: metrics.storm_dropped.labels(r) for r in STORM_REASONS}}

    @classmethod
    def from_config(cls, cfg: Config, target: Target, metrics: Metrics,
                    clock: Callable[[], float] = time.monotonic) -> Router:
        """The admission ``run`` and ``replay`` apply: dedup window, storm control and origin
        offload as configured. ``clock``: replay's line time, so both span the log's time."""
        return cls(target, metrics, dedup=Window(cfg.dedup_window, cfg.dedup_max_urls, clock),
                   storm=StormControl(rate=cfg.max_refresh_rate, burst=cfg.max_refresh_burst,
                                      max_target_bytes=cfg.max_target_bytes, only=cfg.only,
                                      skip=cfg.skip, clock=clock),
                   holder=cfg.holder)

    def refusal(self, refresh: Refresh) -> str | None:
        """Why ``refresh`` may not go out, or None; every rule as in the module docstring.
        Admitting spends dedup memory and a token: call it once per refresh."""
        if self.dedup is not None and not self.dedup.admit(refresh[:3]):  # .key, sliced in C
            return "deduplicated"
        if not self.target.has_listener(refresh.scheme):
            return "no_listener"
        if not replayable(refresh):
            return "refused"
        return self.storm.refusal(refresh) if self.storm is not None else None

    def route(self, refresh: Refresh) -> str | None:
        """Admit ``refresh`` and hand it on, or count why not; returns the refusal."""
        reason = self.refusal(refresh)
        if reason is None:
            holder = self.holder
            if holder is not None and holder[0] == refresh.scheme:
                refresh = refresh._replace(holder=holder[1])
            self.target.submit(refresh)
        elif reason == "refused":
            self.refusal_log(refresh)
            self.target.refuse(refresh)
        elif reason in self._counts:
            self._counts[reason].inc()
        return reason

    def route_all(self, refreshes: Sequence[Refresh]) -> None:
        """One batch's refreshes, in order. At debug level every decision is logged, so an
        operator can see why a URL was refreshed, or why not."""
        if not log.isEnabledFor(logging.DEBUG):
            for refresh in refreshes:
                self.route(refresh)
            return
        for refresh in refreshes:
            reason = self.route(refresh)
            log.debug("%s %s%s", refresh.cache_status, refresh.url,
                      f" (not sent: {reason})" if reason else "")


class AlsoHere:
    """A target that also hands each refresh it submits, marked ``here``, to this node's own
    NGINX (bus mode with variant classes: the triggering node's other classes need a refresh
    too, and the bus's other nodes do not send this node one)."""

    def __init__(self, target: Target, here: Target) -> None:
        self.target = target
        self.here = here

    def has_listener(self, scheme: str) -> bool:
        return self.target.has_listener(scheme)

    def refuse(self, refresh: Refresh) -> None:
        self.target.refuse(refresh)

    def submit(self, refresh: Refresh) -> None:
        self.target.submit(refresh)
        if self.here.has_listener(refresh.scheme):
            self.here.submit(refresh._replace(here=True))


class Recorder:
    """A target that sends nothing: what would go to each of ``peers`` (``replay``, ``run
    --dry-run``, ``warm --dry-run``). With ``dynamic`` peers (a peers file, DNS) every scheme
    may have a listener; with no peers at all (replay without a peer list) too: the log is
    the subject."""

    def __init__(self, peers: Sequence[str] = (), *, dynamic: bool = False,
                 on_submit: Callable[[Refresh], None] | None = None,
                 metrics: Metrics | None = None) -> None:
        """``metrics``: count what would be sent as fan-outs (``run --dry-run``), so the
        accounting holds as for a real run."""
        self.peers = tuple(dict.fromkeys(peers))
        self.dynamic = dynamic
        self.on_submit = on_submit
        self.refused = 0
        self._fanouts = metrics.fanouts if metrics is not None else None
        self._by_scheme: dict[str, list[str]] = {}
        for peer in self.peers:
            self._by_scheme.setdefault(peer.partition("://")[0], []).append(peer)
        self._submitted: Counter[str] = Counter()
        """Refreshes per scheme: counted per peer only when asked (this is the line path)."""

    def peers_of(self, scheme: str) -> list[str]:
        return self._by_scheme.get(scheme, [])

    @property
    def submitted(self) -> Counter[str]:
        """Refreshes per peer."""
        return Counter({peer: n for scheme, n in self._submitted.items()
                        for peer in self.peers_of(scheme)})

    def has_listener(self, scheme: str) -> bool:
        return self.dynamic or not self.peers or scheme in self._by_scheme

    def refuse(self, refresh: Refresh) -> None:
        self.refused += 1

    def submit(self, refresh: Refresh) -> None:
        self._submitted[refresh.scheme] += 1
        if self._fanouts is not None:
            self._fanouts.inc()
        if self.on_submit is not None:
            self.on_submit(refresh)
