"""``logwarden warm``: fill every node's cache with a list of URLs before clients ask for them.

A new URL otherwise takes its first burst of traffic as a MISS on every node in turn. The URLs
come from a file (one absolute URL or path per line), stdin, or a sitemap (file or URL; a
sitemap index is followed one level, ``.gz`` is read). Every node, this one included, gets the
same refresh request a fan-out sends (the bypass mode: warming refreshes in place, a purge
would empty every cache instead), admitted by the router (no node of its scheme, a target that
cannot be sent exactly) and sent through the same :class:`Dispatcher` (concurrency, refresh
header, retries, breaker, TLS), without dedup or storm control: the list is the storm asked
for. It is fed in chunks of ``--queue-size``, so nothing is dropped for a full queue. Answers
are judged as the daemon judges them (``modes.refreshed``): a node answering from its cache
(``not_refreshed``) failed; one without the cache-status header is counted ``unverified``.

With ``only_missing`` each node is asked a plain ``HEAD`` first (the probe-first mode,
``modes.probed``): a ``HIT`` needs nothing, and a ``MISS`` was stored by that ``HEAD`` itself.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit
from xml.etree import ElementTree

import click

from logwarden.config import Config
from logwarden.deliver.dispatcher import Dispatcher, DispatchSettings, tls_context
from logwarden.deliver.modes import Bypass, Mode, ProbeFirst
from logwarden.deliver.peerhttp import PeerClient, PeerError, host_port
from logwarden.model import USER_AGENT, Refresh
from logwarden.ops.metrics import Metrics
from logwarden.route.discovery import PeerList
from logwarden.route.router import Recorder, Router

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

log = logging.getLogger(__name__)

MAX_SITEMAP_BYTES = 50 * 1024 * 1024
"""The sitemap protocol's limit for one file, uncompressed."""
PROGRESS_INTERVAL = 5.0
"""Seconds between summary lines when stderr is not a terminal."""
SITEMAP_TIMEOUT = 60.0
"""Seconds a sitemap download may take (a sitemap may hold 50 MB)."""
SUCCESS = frozenset({"ok", "hit", "not_cached", "unverified"})
"""Outcomes that do not fail a warm. ``unverified`` (the node answered below 400 without its
cache-status header) is one: it is how every answer was judged before verification, and the
node's config, not this run, decides it; it is reported apart, never as "warmed".
``not_refreshed`` (the node answered from its cache) fails."""
WARM_STATUS = "WARM"
"""The ``cache_status`` of warm requests, as the dispatcher logs it."""


class WarmError(Exception):
    """The URL list cannot be read; the message says where."""


# ---------------------------------------------------------------------------------------------
# URL inputs


def url_refresh(url: str, default_host: str | None) -> Refresh:
    """A line of a URL list: ``http(s)://HOST[:PORT]/TARGET`` or ``/TARGET`` (on
    ``default_host``, over http). The target is kept byte for byte, as NGINX keys on it; a
    non-ASCII character becomes its UTF-8 bytes, what a client sending the URL raw sends (and
    a byte that was not UTF-8, decoded with ``surrogateescape``, that byte again)."""
    if url.startswith("/"):
        if not default_host:
            raise WarmError(f"{url!r} is a path: give --default-host for its Host")
        return Refresh("http", default_host, url.encode("utf-8", "surrogateescape"),
                       WARM_STATUS)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WarmError(f"{url!r} is neither an http(s) URL nor a path")
    rest = url.split("://", 1)[1].split("#", 1)[0]
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[slash:]
    target = target if target.startswith("/") else "/" + target
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Refresh(parts.scheme, host, target.encode("utf-8", "surrogateescape"), WARM_STATUS)


def url_list(text: str, default_host: str | None) -> list[Refresh]:
    """Every URL of a list (blank lines and ``#`` comments skipped), each once, in order."""
    refreshes = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                refreshes.append(url_refresh(line, default_host))
            except WarmError as exc:
                raise WarmError(f"line {number}: {exc}") from None
    return list(dict.fromkeys(refreshes))


def sitemap_locs(data: bytes) -> tuple[list[str], list[str]]:
    """(page URLs, child sitemap URLs) of a ``<urlset>`` or ``<sitemapindex>``; only each
    entry's own ``<loc>`` (not an image extension's)."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise WarmError(f"not a sitemap: {exc}") from None
    kind = _local(root.tag)
    if kind not in ("urlset", "sitemapindex"):
        raise WarmError(f"not a sitemap: the root element is <{kind}>")
    locs = [(loc.text or "").strip() for entry in root for loc in entry
            if _local(entry.tag) in ("url", "sitemap") and _local(loc.tag) == "loc"]
    locs = [loc for loc in locs if loc]
    return (locs, []) if kind == "urlset" else ([], locs)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def unpacked(data: bytes) -> bytes:
    """``data``, gunzipped if it is gzip; at most :data:`MAX_SITEMAP_BYTES`."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.GzipFile(fileobj=io.BytesIO(data)).read(MAX_SITEMAP_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise WarmError(f"bad gzip data: {exc}") from None
    if len(data) > MAX_SITEMAP_BYTES:
        raise WarmError(f"over {MAX_SITEMAP_BYTES} bytes")
    return data


def is_sitemap(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


@dataclass
class UrlInputs:
    """Reads the URL lists and sitemaps to warm (the command's SOURCE arguments); sitemap URLs
    are fetched from ``node`` with a plain GET."""

    default_host: str | None
    fetch: Callable[[Refresh], Awaitable[bytes]]
    stdin: Callable[[], bytes] = field(default=lambda: sys.stdin.buffer.read())

    async def urls(self, sources: Sequence[str]) -> list[Refresh]:
        found: list[Refresh] = []
        for source in sources:
            try:
                found += await self._one(source)
            except WarmError as exc:
                raise WarmError(f"{source}: {exc}") from None
        return list(dict.fromkeys(found))

    async def _one(self, source: str) -> list[Refresh]:
        if source.startswith(("http://", "https://")):
            data = await self._download(source)
        elif source == "-":
            data = unpacked(self.stdin())
        else:
            try:
                with open(source, "rb") as fh:
                    data = unpacked(fh.read(MAX_SITEMAP_BYTES + 1))
            except OSError as exc:
                raise WarmError(f"cannot be read: {exc.strerror}") from None
        if not is_sitemap(data):
            return url_list(data.decode("utf-8", "surrogateescape"), self.default_host)
        pages, children = sitemap_locs(data)
        for child in children:  # an index: its sitemaps hold the pages (no deeper nesting)
            more, nested = sitemap_locs(await self._download(child))
            if nested:
                raise WarmError(f"{child} is a sitemap index inside a sitemap index")
            pages += more
        return [url_refresh(page, self.default_host) for page in pages]

    async def _download(self, url: str) -> bytes:
        try:
            return unpacked(await self.fetch(url_refresh(url, self.default_host)))
        except WarmError as exc:
            raise WarmError(f"{url}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# warming


@dataclass
class Report:
    """Outcomes per node, and URLs no node could be asked for (no node of their scheme)."""

    nodes: dict[str, Counter[str]]
    urls: int
    no_node: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> bool:
        return bool(self.no_node) or any(set(c) - SUCCESS for c in self.nodes.values())

    def lines(self) -> list[str]:
        out = []
        for node, counts in self.nodes.items():
            failures = {o: n for o, n in counts.items() if o not in SUCCESS}
            text = f"{node}: {counts['ok']} warmed"
            if counts["hit"]:
                text += f", {counts['hit']} already cached"
            if counts["unverified"]:
                text += f", {counts['unverified']} unverified (no cache-status header)"
            text += f", {sum(failures.values())} failed"
            if failures:
                text += " (" + ", ".join(f"{o} {n}" for o, n in sorted(failures.items())) + ")"
            out.append(text)
        for scheme, n in self.no_node.items():
            out.append(f"{n} {scheme} URL(s) not warmed: no {scheme}:// node")
        return out


class Warmer:
    """Sends every URL to every node through one dispatcher; ``await run(urls)`` reports."""

    def __init__(self, nodes: Sequence[str], settings: DispatchSettings,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.nodes = list(dict.fromkeys(nodes))
        self.settings = settings
        self.metrics = Metrics()
        self.progress = progress

    async def run(self, urls: Sequence[Refresh]) -> Report:
        dispatcher = Dispatcher(self.nodes, self.settings, self.metrics)
        router = Router(dispatcher, self.metrics)
        dispatcher.start()
        report = Report({}, len(urls))
        ticker = asyncio.create_task(self._tick(dispatcher, len(urls)))
        try:
            for chunk in _chunks(urls, self.settings.queue_size):
                for refresh in chunk:
                    if router.route(refresh) == "no_listener":
                        report.no_node[refresh.scheme] += 1
                await asyncio.gather(*(peer.queue.join() for peer in dispatcher.peers))
        finally:
            ticker.cancel()
            await dispatcher.close(0)
        counts = self.metrics.outcomes()
        report.nodes = {node: counts.get(node, Counter()) for node in self.nodes}
        if self.progress:
            self.progress(self._done(), self._total(dispatcher, len(urls)))
        return report

    def _done(self) -> int:
        return sum(sum(c.values()) for c in self.metrics.outcomes().values())

    def _total(self, dispatcher: Dispatcher, urls: int) -> int:
        return urls * len(dispatcher.peers)

    async def _tick(self, dispatcher: Dispatcher, urls: int) -> None:
        while self.progress:
            await asyncio.sleep(0.2)
            self.progress(self._done(), self._total(dispatcher, urls))


def _chunks(items: Sequence[Refresh], size: int) -> Iterable[Sequence[Refresh]]:
    it = iter(items)
    while chunk := tuple(itertools.islice(it, size)):
        yield chunk


class Progress:
    """A progress bar on a terminal; else a summary line every :data:`PROGRESS_INTERVAL` s."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._bar: ProgressBar[int] | None = None
        self._shown = 0
        self._said = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label="warming", file=self.out)
            self._bar.update(done - self._shown)
            self._shown = done
        elif time.monotonic() - self._said >= PROGRESS_INTERVAL:
            self._said = time.monotonic()
            click.echo(f"warm: {done}/{total} requests done", file=self.out)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()


def node_client(node: str, settings: DispatchSettings) -> PeerClient:
    """A one-connection client for ``node``'s URL, with the dispatcher's TLS rules: for the
    requests a command sends outside the dispatcher."""
    https = urlsplit(node).scheme == "https"
    tls = tls_context(settings.peer_ca, settings.insecure_tls) if https else None
    return PeerClient(*host_port(node), tls, 1)


class NodeFetcher:
    """Downloads sitemaps from the first node of the URL's scheme, as a client would (its
    own agent ignores the line: the User-Agent is logwarden's)."""

    def __init__(self, nodes: Sequence[str], settings: DispatchSettings) -> None:
        self.nodes = nodes
        self.settings = settings

    async def __call__(self, refresh: Refresh) -> bytes:
        node = next((n for n in self.nodes if urlsplit(n).scheme == refresh.scheme), None)
        if node is None:
            raise WarmError(f"no {refresh.scheme}:// node to fetch it from")
        client = node_client(node, self.settings)
        try:
            async with asyncio.timeout(max(self.settings.timeout, SITEMAP_TIMEOUT)):
                answer = await client.fetch("GET", refresh.target, refresh.host,
                                            [("User-Agent", USER_AGENT)],
                                            max_body=MAX_SITEMAP_BYTES)
        except (PeerError, TimeoutError) as exc:
            raise WarmError(f"from {node}: {exc or 'timed out'}") from None
        except ValueError as exc:  # a target the client refuses: no router in front of it
            raise WarmError(str(exc)) from None
        finally:
            await client.aclose()
        if answer.status != 200:
            raise WarmError(f"{node} answered {answer.status}")
        return answer.body


async def nodes_of(config: Config) -> list[str]:
    """Every node: --self, --peer, the peers file and the DNS answers (this node's own
    addresses included: it is warmed too)."""
    source = PeerList(config.peer, self_url=None, peers_file=config.peers_file,
                        dns=config.peers_dns, own_addresses=set)
    source.reload_file()
    await source.resolve()
    return list(dict.fromkeys([*([config.self_url] if config.self_url else []), *source.current()]))


def _dry_run(nodes: Sequence[str], urls: Sequence[Refresh], out: TextIO) -> int:
    """What the router would admit for each node; exit 1 when some URL could not be sent."""
    recorder = Recorder(nodes)
    router, refused = Router(recorder, Metrics()), Counter[str]()
    for refresh in urls:
        reason = router.route(refresh)
        if reason is not None:
            refused[f"{reason} ({refresh.scheme})" if reason == "no_listener" else reason] += 1
    for node in recorder.peers:
        click.echo(f"{node}: {recorder.submitted[node]} to warm (dry run: nothing sent)",
                   file=out)
    for reason, n in sorted(refused.items()):
        click.echo(f"{n} URL(s) would not be sent: {reason}", file=out)
    return 1 if refused else 0


def warm(config: Config, sources: Sequence[str], *, only_missing: bool,
         out: TextIO, err: TextIO) -> int:
    """The ``warm`` command: 0 when every URL was warmed (or already cached, or unverified) on
    every node, 1 when any failed anywhere, 2 when the sources cannot be read. The summary goes to
    ``out``, progress and errors to ``err``."""
    return asyncio.run(_warm(config, sources, only_missing, out, err))


async def _warm(config: Config, sources: Sequence[str], only_missing: bool,
                out: TextIO, err: TextIO) -> int:
    nodes = await nodes_of(config)
    mode: Mode = Bypass.from_config(config)
    settings = DispatchSettings.from_config(config, ProbeFirst(mode) if only_missing else mode)
    try:
        urls = await UrlInputs(config.default_host, NodeFetcher(nodes, settings)).urls(sources)
    except WarmError as exc:
        click.echo(f"logwarden: error: {exc}", file=err)
        return 2
    click.echo(f"warming {len(urls)} URL(s) on {len(nodes)} node(s)"
               + (", only where missing" if only_missing else ""), file=err)
    if config.dry_run:  # the sources are read and admitted, nothing is sent
        return _dry_run(nodes, urls, out)
    progress = Progress(err)
    started = time.monotonic()
    report = await Warmer(nodes, settings, progress).run(urls)
    progress.close()
    for line in report.lines():
        click.echo(line, file=out)
    click.echo(f"done in {time.monotonic() - started:.1f} s"
               + ("; some URLs were NOT warmed" if report.failed else ""), file=out)
    return 1 if report.failed else 0
