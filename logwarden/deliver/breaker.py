"""The per-peer circuit breaker: a dead peer costs one probe per cool-down, not a request
per refresh (used by :mod:`logwarden.deliver.dispatcher`)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Closed until ``failures`` failed attempts in a row; then open: nothing is sent until
    ``cooldown`` seconds have passed and one probe is let through. Its success closes it, its
    failure restarts the cool-down."""

    def __init__(self, failures: int, cooldown: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self.streak = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    @property
    def state(self) -> str:
        """``closed``, ``open`` (skipping), or ``probing`` (open, its probe out)."""
        if self.opened_at is None:
            return "closed"
        return "probing" if self.probing else "open"

    def cooling(self) -> bool:
        """True while refreshes must be skipped: open, and its cool-down not over."""
        return self.opened_at is not None and self.clock() < self.opened_at + self.cooldown

    def waiting(self) -> bool:
        """True while no request may go out: cooling down, or another caller's probe is out."""
        return self.probing or self.cooling()

    def allow(self) -> bool:
        """May a request go out now? When open, the first caller after the cool-down probes."""
        if self.waiting():
            return False
        self.probing = self.is_open
        return True

    def record(self, failed: bool) -> bool:
        """Note an attempt's result; True when this changed whether the breaker is open."""
        was_open, self.probing = self.is_open, False
        if not failed:
            self.streak, self.opened_at = 0, None
            return was_open
        self.streak += 1
        if was_open or self.streak >= self.failures:
            self.opened_at = self.clock()
        return self.is_open != was_open
