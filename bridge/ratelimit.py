"""Intake rate limits: a token bucket per key (client IP, source), in memory.

A request over the limit is answered 429 before anything is parsed or written, so a
flood never reaches the ledger. Limits are per process: with N gunicorn workers a client
can get up to N times the configured rate (a shared limiter arrives with PostgreSQL).
"""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """``per_minute`` requests per key, with bursts up to the same number."""

    # Past this many keys, idle full buckets are dropped so memory stays bounded.
    MAX_KEYS = 10_000

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> float:
        """0 if the request may go ahead, else how many seconds until it could."""
        if self.capacity <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._evict(now)
        return 0.0

    def _evict(self, now: float) -> None:
        full_after = self.capacity / self.rate
        self._buckets = {k: (t, last) for k, (t, last) in self._buckets.items() if now - last < full_after}
