"""Origin-failure visibility: count what a stale cache hides from users, by host.

``proxy_cache_use_stale error timeout http_500 ...`` keeps users served from old copies while
the origin fails, so nobody notices. The processor hands :class:`OriginWatch` every parsed line
whose ``$upstream_status`` shows a 5xx, or that is ``STALE`` (the batch sift keeps those even
when they cannot trigger), and it counts, once per batch:

- ``logwarden_origin_errors_total{host}``: the last upstream answer was a 5xx. NGINX writes 502
  itself for a refused or broken connection and 504 for a timeout;
- ``logwarden_stale_served_total{host,reason}``: the node served a ``STALE`` copy because the
  origin failed, the reason named like the ``proxy_cache_use_stale`` condition that allowed it;
- ``logwarden_stale_age_seconds``: how old that copy was: the line's time minus the cached
  response's ``Date``. On an answer from the cache NGINX fills ``$upstream_http_date`` from the
  cached headers, while ``$upstream_status`` keeps the failed attempt (measured on 1.22).

A ``STALE`` line with no upstream status is a background update, not a failure. Host names
come from requests and may be many: :class:`HostLabels` gives at most N of them a label.
"""

from __future__ import annotations

import email.utils
import functools
import time
from collections import Counter
from collections.abc import Callable

from logwarden.model import Record, final_upstream_status, host_ok, is_5xx
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat

OTHER = "other"
"""The host label of every host without a label of its own."""
STALE_REASONS = ("error", "timeout", "http_500", "http_502", "http_503", "http_504",
                 "http_403", "http_404", "http_429", "http_other")
"""``error``/``timeout``: the origin did not answer (needs ``$upstream_header_time``);
``http_NNN``: it answered NNN (without ``$upstream_header_time`` NGINX's own 502/504 for a dead
origin are counted here too); ``http_other``: any other status."""
WATCHED_STATUSES = frozenset({"MISS", "EXPIRED", "STALE", "BYPASS"})
"""The cache statuses a line of a failing origin shows (HIT, UPDATING, REVALIDATED never
carry a 5xx); the processor's sift lets them through. Lines without a cache status (``-``: a
location without proxy_cache) are not watched: the sift cannot find their 5xx cheaply."""
_NAMED_STATUSES = frozenset(r[5:] for r in STALE_REASONS if r[5:].isdigit())
_TIME_VARIABLES = ("msec", "time_iso8601", "time_local")


def stale_reason(final_status: str, header_time: bytes | None) -> str:
    """The use_stale condition behind a ``STALE`` line whose last upstream status is
    ``final_status``. ``header_time`` is the logged ``$upstream_header_time`` (``b"-"``: no
    answer), or None when the format lacks it."""
    if header_time is not None and final_upstream_status(header_time.decode("latin-1")) == "-":
        return "timeout" if final_status == "504" else "error"
    return f"http_{final_status}" if final_status in _NAMED_STATUSES else "http_other"


@functools.lru_cache(maxsize=256)
def http_date(value: bytes) -> float | None:
    """Unix time of an HTTP ``Date`` value; None if it is not one. Cached: a cached copy's
    lines all carry the same value."""
    try:
        return email.utils.parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class HostLabels:
    """At most ``size`` hosts get a label of their own, the others share ``other``.

    Free labels go to the first hosts seen; a host without one takes the label of the
    labelled host with the lowest volume once its own volume is more than twice that (so two
    similar hosts do not swap labels back and forth); ``on_evict`` then removes the displaced
    host's series. Volume is failure events, halved every ``half_life`` seconds so old
    incidents fade. Unlabelled hosts are tracked in bounded memory (``track`` hosts; the
    smaller half is forgotten when it is full), so a flood of distinct names costs nothing
    but a count under ``other``.
    """

    def __init__(self, size: int, on_evict: Callable[[str], None], *, track: int = 1000,
                 half_life: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.on_evict = on_evict
        self.track = max(track, 2)
        self.half_life = half_life
        self.clock = clock
        self.labelled: dict[str, float] = {}
        self._tracked: dict[str, float] = {}
        self._halved_at = clock()

    def label(self, host: str, volume: int = 1) -> str:
        """The label for ``host``, which just had ``volume`` more failure events."""
        self._decay()
        if host in self.labelled:
            self.labelled[host] += volume
            return host
        if not (self.size and host_ok(host) and len(host) <= 253):
            return OTHER
        count = self._tracked.pop(host, 0.0) + volume
        if len(self.labelled) < self.size:
            self.labelled[host] = count
            return host
        weakest = min(self.labelled, key=self.labelled.__getitem__)
        if count > 2 * self.labelled[weakest]:
            self._remember(weakest, self.labelled.pop(weakest))
            self.on_evict(weakest)
            self.labelled[host] = count
            return host
        self._remember(host, count)
        return OTHER

    def _remember(self, host: str, count: float) -> None:
        self._tracked[host] = count
        if len(self._tracked) > self.track:
            keep = sorted(self._tracked.items(), key=lambda item: item[1])[self.track // 2:]
            self._tracked = dict(keep)

    def _decay(self) -> None:
        now = self.clock()
        if now - self._halved_at < self.half_life:
            return
        self._halved_at = now
        for counts in (self.labelled, self._tracked):
            for host in counts:
                counts[host] /= 2


class OriginWatch:
    """Counts origin failures in the lines :meth:`note` is given; :meth:`flush` adds a
    batch's counts to the metrics (a labelled inc() costs more than deciding a line)."""

    def __init__(self, metrics: Metrics, fmt: LogFormat, *, default_host: str | None,
                 host_labels: int) -> None:
        self.metrics = metrics
        self.default_host = default_host or "-"
        names = set(fmt.variables)
        self.enabled = "upstream_status" in names
        """Without ``$upstream_status`` nothing tells a failure from a background update."""
        self._header_time = "upstream_header_time" in names
        self._age = "upstream_http_date" in names and bool(names & set(_TIME_VARIABLES))
        self.hosts = HostLabels(host_labels, self._forget)
        self._errors: Counter[str] = Counter()
        self._stale: Counter[tuple[str, str]] = Counter()
        self._ages: list[float] = []

    def note(self, record: Record) -> None:
        """Count ``record`` if it shows the origin failing."""
        if record.upstream_status is None:
            return
        final = final_upstream_status(record.upstream_status)
        host = record.host or self.default_host
        if is_5xx(final):
            self._errors[host] += 1
        if record.cache_status == "STALE" and final[:1] in ("4", "5"):  # use_stale's errors
            self._note_stale(record, host, final)

    def _note_stale(self, record: Record, host: str, final: str) -> None:
        header_time = (record.upstream_header_time or b"-") if self._header_time else None
        self._stale[host, stale_reason(final, header_time)] += 1
        date = record.upstream_date if self._age else None
        fetched = http_date(date) if date else None
        if fetched is not None and record.time is not None:
            self._ages.append(max(0.0, record.time - fetched))

    def flush(self) -> None:
        if not (self._errors or self._stale):
            return
        volume = Counter(self._errors)
        for (host, _), n in self._stale.items():
            volume[host] += n
        for host, n in volume.items():
            self.hosts.label(host, n)
        labelled, m = self.hosts.labelled, self.metrics  # after every eviction of the batch
        for host, n in self._errors.items():
            m.origin_errors.labels(host if host in labelled else OTHER).inc(n)
        for (host, reason), n in self._stale.items():
            m.stale_served.labels(host if host in labelled else OTHER, reason).inc(n)
        for age in self._ages:
            m.stale_age.observe(age)
        self._errors.clear()
        self._stale.clear()
        self._ages.clear()

    def _forget(self, host: str) -> None:
        """A host lost its label: its series go (its next events count under ``other``)."""
        self.metrics.origin_errors.remove(host)
        for reason in STALE_REASONS:
            self.metrics.stale_served.remove(host, reason)
