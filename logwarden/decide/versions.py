"""Which copy of each URL this node last stored: tells a change from an expiry that fetched
the same content again.

An expiry refetches a page whether it changed or not; only a change needs a purge of the caches
in front of the cluster (``--downstream``), and ``logwarden_changes_total`` counts only those.
The identity of a copy is its ETag or Last-Modified (:func:`logwarden.model.version_of`), from
the triggering line (the format logs ``$upstream_http_etag``/``$upstream_http_last_modified``).
"""

from __future__ import annotations

from collections import OrderedDict


class Versions:
    """The last version seen per URL, bounded to ``max_keys`` (least recently seen evicted)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._last: OrderedDict[object, str] = OrderedDict()

    def note(self, key: object, version: str) -> bool | None:
        """Remember ``version`` of ``key``: whether it differs from the one before (None:
        none known, a first copy or one forgotten)."""
        last = self._last
        before = last.pop(key, None)
        last[key] = version
        if len(last) > self.max_keys:
            last.popitem(last=False)
        return None if before is None else before != version
