"""``/status`` at a glance: the page ``/`` shows of the JSON the daemon builds at request time
(:meth:`logwarden.daemon.Daemon.status`), with links to ``/status`` and ``/metrics``.

Plain HTML, no script: every value is escaped (peer URLs, paths and listeners come from the
config, a source's state from the code, but nothing here trusts that), and the page reloads
itself every :data:`RELOAD_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

RELOAD_SECONDS = 10


def render_page(status: Mapping[str, Any]) -> bytes:
    """The page of one ``/status`` document."""
    reasons = status.get("degraded") or []
    bus = status.get("bus")
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{RELOAD_SECONDS}">',
        f"<title>logwarden {_text(status['instance'])}: {_text(status['status'])}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:.2em .8em;"
        "text-align:left}.degraded{color:#b00}</style></head><body>",
        f"<h1>logwarden {_text(status['version'])} &middot; {_text(status['instance'])}</h1>",
        f"<p class={_text(status['status'])}><b>{_text(status['status'])}</b>"
        + "".join(f"<br>{_text(reason)}" for reason in reasons) + "</p>",
        "<h2>Peers</h2>",
        _table(("peer", "breaker", "last ok", "last outcome", "queued", "in flight"),
               ([p["url"], p["breaker"], _ago(p["last_ok_age_seconds"]), p["last_outcome"],
                 p["queue"], p["in_flight"]] for p in status["peers"])),
        "<h2>Sources</h2>",
        _table(("source", "state", "last line", "reading"),
               ([s["name"], s["state"], _ago(s["last_line_age_seconds"]), _reading(s)]
                for s in status["sources"])),
    ]
    if bus is not None:
        parts.append(f"<h2>Bus</h2><p>{_text(bus['url'])} channel {_text(bus['channel'])}: "
                     f"{'connected' if bus['connected'] else 'disconnected'}</p>")
    queues = ", ".join(f"{_text(name)} {_text(n)}" for name, n in status["queues"].items())
    parts += [f"<p>Queued: {queues}. Up {_ago(status['uptime_seconds'], '')}.</p>",
              '<p><a href="/status">/status</a> (JSON) &middot; <a href="/metrics">/metrics'
              '</a> &middot; <a href="/healthz">/healthz</a></p></body></html>\n']
    return "".join(parts).encode()


def _reading(source: Mapping[str, Any]) -> str:
    if source.get("kind") == "syslog":
        return f"listening on {source['listener']}"
    files = source.get("files", [])
    return "; ".join(f"{f['path']}{' (rotated)' if f['rotated'] else ''} at {f['offset']}, "
                     f"{f['lag_bytes']} bytes behind" for f in files) or "no file yet"


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = ["<table><tr>", *(f"<th>{_text(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        cells += ["<tr>", *(f"<td>{_text(v)}</td>" for v in row), "</tr>"]
    return "".join([*cells, "</table>"])


def _ago(seconds: float | None, suffix: str = " ago") -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f} s{suffix}" if seconds < 120 else f"{seconds / 60:.0f} min{suffix}"


def _text(value: object) -> str:
    return escape("-" if value is None else str(value))
