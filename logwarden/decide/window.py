"""A bounded time window of keys: the memory behind dedup, purge marks and failed updates.

Used by the triggers (logwarden's own purges, failed background updates) and by the router
(the dedup window). Bounded in keys, O(1) per call.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable


class Window:
    """Keys seen within the last ``window`` seconds, bounded to ``max_keys`` (oldest evicted).

    Insertion order is time order, so expired keys are all at the front; ``_head``, the time of
    the front key, spares looking there on the calls where nothing expires. An OrderedDict, not
    a dict: evicting its oldest key is O(1), where a dict scans the deleted slots at its front."""

    def __init__(self, window: float, max_keys: int, clock: Callable[[], float]) -> None:
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[object, float] = OrderedDict()
        self._head = math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: object) -> bool:
        now = self.clock()
        if now - self._head >= self.window:
            self._expire(now)
        seen = self._seen
        if key in seen:
            return False
        seen[key] = now
        if len(seen) > self.max_keys:
            seen.popitem(last=False)
            self._head = next(iter(seen.values()), math.inf)
        elif len(seen) == 1:
            self._head = now
        return True

    def discard(self, key: object) -> bool:
        """Forget ``key``; True if it was seen within the window."""
        now = self.clock()
        if now - self._head >= self.window:
            self._expire(now)
        seen = self._seen
        if seen.pop(key, None) is None:
            return False
        self._head = next(iter(seen.values()), math.inf)
        return True

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, t = next(iter(seen.items()))
            if now - t < self.window:
                self._head = t
                return
            del seen[key]
        self._head = math.inf
