"""``logwarden doctor``: a live check of every node's refresh wiring, before going live.

    nodes (--self, --peer, peers file, DNS) ─▶ per node, in order: the checks' requests ─▶ a row

A peer that ignores a refresh still answers 200, from its cache, and a bypass NGINX does not
store answers ``BYPASS`` and changes nothing: only the cache status of a sequence of answers
tells. For one canary URL (``doctor_url``: its host and target, on each node's own scheme),
every node is sent, one request after the other (the order is the proof):

- refresh mode: the refresh itself (:class:`~logwarden.deliver.modes.Bypass`, method and header
  as configured). ``BYPASS`` proves this node's address is in the node's allow-list, the secret
  matches and the bypass is wired. Then the same request without the refresh header: ``HIT``
  proves it does not bypass for anybody, and that the refresh stored its answer (with the
  bypass variable also in ``proxy_no_cache``, NGINX bypasses, stores nothing, and the plain
  request is a ``MISS``). A canary that was cached before hides that last mistake: NGINX keeps
  the old copy and the ``HIT`` is that one (measured on 1.22); hence a canary no client asks for.
- purge mode: two plain requests, the second a ``HIT`` (the canary is cached), then the purge
  (:class:`~logwarden.deliver.modes.Purge`): ``200``/``204``; ``404``/``412`` would say its key
  is not the cache key, since the entry is there. A plain request then refills it (``MISS``);
  with ``purge_then_refresh`` the refresh checks follow instead.
- with ``--variant``s, each class on its own, with its header.

Each request goes once (a wiring check, not a delivery: no retries), with logwarden's
User-Agent, so the agents beside the nodes ignore their lines and nothing fans out. Nothing
changes on a node but the canary's cache entry. The nodes are checked in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import click

from logwarden.commands.warm import WarmError, node_client, nodes_of, url_refresh
from logwarden.config import Config
from logwarden.deliver.dispatcher import DispatchSettings
from logwarden.deliver.modes import Bypass, Purge, Request, Variant, deaf_causes, header_variable
from logwarden.deliver.peerhttp import (
    Answer,
    ConnectError,
    PeerError,
    TLSError,
    host_port,
    source_address,
)
from logwarden.model import USER_AGENT, Refresh, escaped

Headers = tuple[tuple[str, str], ...]


class DoctorError(Exception):
    """doctor cannot check with this configuration; the message says why."""


class Failed(Exception):
    """A check failed on a node: what it answered, and the fix."""


@dataclass(frozen=True)
class Row:
    """One node's verdict: what its answers proved, or the first check that failed."""

    node: str
    ok: bool
    text: str


class NodeCheck:
    """The checks of one node, each request once and in order; :meth:`run` gives its row."""

    def __init__(self, url: str, config: Config, canary: Refresh) -> None:
        self.url = url
        self.config = config
        self.canary = canary
        self.status_header = config.cache_status_header
        self.client = node_client(url, DispatchSettings.from_config(config))

    async def run(self) -> Row:
        classes = self.config.variants or (Variant(None),)
        try:
            for variant in classes:
                try:
                    proved = await self._class(variant)
                except Failed as exc:
                    if not self.config.variants:
                        raise
                    raise Failed(f"class {_class_name(variant)}: {exc}") from None
        except Failed as exc:
            return Row(self.url, False, str(exc))
        finally:
            await self.client.aclose()
        counted = f"{len(classes)} classes: " if self.config.variants else ""
        return Row(self.url, True, counted + proved)

    async def _class(self, variant: Variant) -> str:
        plain = (self.config.refresh_method, variant.headers(("User-Agent", USER_AGENT)))
        if self.config.mode != "purge":
            return await self._refreshed(variant, plain)
        first = await self._plain("plain request", plain)
        again = await self._plain("plain request again", plain)
        if again != "HIT":
            raise Failed(f"plain request again: {self.status_header}: {again}, not HIT (first "
                         f"{first}): the canary is not cached; pick a --doctor-url this node "
                         "stores (no Set-Cookie, no-store, private or max-age=0)")
        purged = await self._purged(Purge.from_config(self.config, variant).purge)
        if self.config.purge_then_refresh:
            return f"cached (HIT), {purged}, {await self._refreshed(variant, plain)}"
        refill = await self._plain("plain request after the purge", plain)
        if refill != "MISS":
            raise Failed(f"plain request after the purge: {self.status_header}: {refill}, "
                         "not MISS: the purge did not remove the canary's entry (does the "
                         "purge location key it as proxy_cache_key does?)")
        return f"cached (HIT), {purged}, refilled (MISS)"

    async def _refreshed(self, variant: Variant, plain: tuple[str, Headers]) -> str:
        refresh = Bypass.from_config(self.config, variant).refresh
        answer = await self._ask("refresh", refresh.method, refresh.headers)
        outcome = refresh.judge(answer)
        if outcome == "unverified":
            raise Failed(self._no_header("refresh"))
        if outcome == "http_error":
            raise Failed(self._bad_status("refresh", answer.status))
        if outcome != "ok":
            said = self._said(answer)
            header = self.config.refresh_header_pair[0]
            raise Failed(f"refresh not bypassed ({self.status_header}: {said}), for one of "
                         "three reasons its answer cannot tell apart: "
                         + deaf_causes(header, await self._source()))
        after = await self._plain("plain request after the refresh", plain)
        if after != "HIT":
            raise Failed(f"refresh bypassed but not stored (the plain request after it: "
                         f"{self.status_header}: {after}): the bypass variable is also in "
                         "proxy_no_cache (remove it there: the refreshed answer must be "
                         "stored), or the canary's answer is not cacheable (no-store, private, "
                         "max-age=0, Set-Cookie: pick another --doctor-url)")
        return "refreshed (BYPASS), then stored (HIT)"

    async def _purged(self, purge: Request) -> str:
        answer = await self._ask("purge", purge.method, purge.headers)
        outcome = purge.judge(answer)
        if outcome == "ok":
            return f"purged ({answer.status})"
        if outcome == "not_cached":
            raise Failed(f"purge: {answer.status} (nothing purged) though the canary is "
                         "cached: the purge location's key differs from proxy_cache_key (the "
                         f"same variables in both; $request_method is {purge.method} there)")
        hint = purge.hint(outcome, answer.status)
        if hint is not None:
            raise Failed(f"purge: {hint.text}; this node connects from {await self._source()}")
        raise Failed(f"purge: {answer.status}, not 200: {purge.method} does not reach a "
                     "proxy_cache_purge location (add the purge route: logwarden "
                     "nginx-snippet --mode purge)")

    async def _plain(self, what: str, plain: tuple[str, Headers]) -> str:
        """A request without the refresh header: its cache status (never ``BYPASS``)."""
        answer = await self._ask(what, *plain)
        if answer.status >= 400:
            raise Failed(self._bad_status(what, answer.status))
        said = self._said(answer)
        if said is None:
            raise Failed(self._no_header(what))
        if said == "BYPASS":
            variable = header_variable(self.config.refresh_header_pair[0])
            raise Failed(f"{what}: {self.status_header}: BYPASS without the refresh header: "
                         "anybody can bypass its cache; feed proxy_cache_bypass from "
                         f"$logwarden_refresh only (the map of \"$logwarden_peer:{variable}\", "
                         "default 0)")
        return said

    async def _ask(self, what: str, method: str, headers: Headers) -> Answer:
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self.client.fetch(method, self.canary.target, self.canary.host,
                                               list(headers))
        except TimeoutError:
            raise Failed(f"{what}: no answer within {timeout} s (--timeout)") from None
        except ConnectError as exc:
            raise Failed(f"{what}: cannot connect ({exc}): is NGINX listening at this "
                         "URL?") from None
        except TLSError as exc:
            raise Failed(f"{what}: TLS failed ({exc}): the certificate must be valid for "
                         f"{self.canary.host} (--peer-ca)") from None
        except PeerError as exc:
            raise Failed(f"{what}: {exc}") from None

    def _said(self, answer: Answer) -> str | None:
        said = answer.header(self.status_header.lower().encode("ascii"))
        return None if said is None else said.decode("latin-1").strip().upper()

    def _no_header(self, what: str) -> str:
        header = self.status_header
        return (f"{what}: no {header} header: add 'add_header {header} "
                "$upstream_cache_status always;' to the cached location (none either when the "
                "canary is not in a location with proxy_cache)")

    def _bad_status(self, what: str, status: int) -> str:
        why = {421: f"{self.canary.host} is not a server_name of this listener",
               404: "no such page"}.get(status, "its origin failed" if status >= 500 else "")
        return (f"{what}: answered {status}{f' ({why})' if why else ''}: the canary must be a "
                "page this node serves from its cache (--doctor-url, --default-host)")

    async def _source(self) -> str:
        """The address this node's requests come from, as the node's allow-list sees it."""
        return await asyncio.to_thread(source_address, *host_port(self.url)) or "ADDRESS"


def _class_name(variant: Variant) -> str:
    return f"'{variant.header[0]}: {variant.header[1]}'" if variant.header else "''"


def doctor(config: Config, out: TextIO) -> int:
    """The ``doctor`` command: one row per node on ``out``; 0 when every node passed, else 1.
    Raises :class:`DoctorError` before any request when the config cannot be checked with."""
    if not config.cache_status_header:
        raise DoctorError("cache_status_header: '' turns verification off, and doctor reads "
                          "it: give the header the nodes add (X-Cache-Status)")
    try:  # a path is on default_host
        canary = url_refresh(config.doctor_url, config.default_host)
    except WarmError as exc:
        raise DoctorError(f"doctor_url: {exc}") from None
    return asyncio.run(_doctor(config, canary, out))


async def _doctor(config: Config, canary: Refresh, out: TextIO) -> int:
    nodes = await nodes_of(config)
    classes = f", {len(config.variants)} variant classes" if config.variants else ""
    click.echo(f"doctor: canary {canary.host}{escaped(canary.target)} on {len(nodes)} "
               f"node(s), mode {config.mode}{classes}", file=out)
    rows = await asyncio.gather(*(NodeCheck(node, config, canary).run() for node in nodes))
    for line in table(rows):
        click.echo(line, file=out)
    failed = sum(not row.ok for row in rows)
    click.echo(f"{failed} of {len(rows)} node(s) NOT ready: fix the FAIL rows, then run "
               "doctor again" if failed else f"all {len(rows)} node(s) ready", file=out)
    return 1 if failed else 0


def table(rows: Sequence[Row]) -> list[str]:
    width = max((len(row.node) for row in rows), default=0)
    return [f"{'ok' if row.ok else 'FAIL':4}  {row.node:<{width}}  {row.text}" for row in rows]
