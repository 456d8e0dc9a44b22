"""Intake rate limits: a token bucket per key (client IP, source), shared by every worker.

A request over the limit is answered 429 before anything is parsed or written, so a
flood never reaches the ledger. The buckets live in a small SQLite file beside the ledger
(``<ledger>.limits.db``, WAL), not in the ledger itself: a limiter transaction is a few
microseconds and never holds the ledger's write lock, so intake writes never wait on it,
and every gunicorn worker (or second app in one process) counts against the same limit.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT NOT NULL, key TEXT NOT NULL, tokens REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def limits_path(ledger_path: Path) -> Path:
    """Where the shared counters of a ledger's intake live."""
    return ledger_path.with_name(ledger_path.name + ".limits.db")


class LimitStore:
    """The shared SQLite file: one short connection per call, so it is safe across threads and forks."""

    # Past this many rows, buckets idle long enough to be full again are dropped.
    MAX_KEYS = 10_000

    def __init__(self, path: Path, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self.timeout = busy_timeout_seconds
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def take(self, name: str, key: str, capacity: float, rate: float, now: float) -> float:
        """Take one token from bucket ``(name, key)``: 0 if granted, else seconds until one is."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT tokens, last FROM buckets WHERE name=? AND key=?", (name, key)).fetchone()
            tokens, last = row if row else (capacity, now)
            tokens = min(capacity, tokens + max(0.0, now - last) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            tokens = tokens if wait else tokens - 1
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", (name, key, tokens, now))
            if not row and db.execute("SELECT count(*) FROM buckets").fetchone()[0] > self.MAX_KEYS:
                db.execute("DELETE FROM buckets WHERE name=? AND last < ?", (name, now - capacity / rate))
            db.execute("COMMIT")
            return wait
        finally:
            db.close()

    def secret(self, name: str) -> bytes:
        """A random secret created once per file, so every worker signs and checks alike."""
        db = self._connect()
        try:
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, secrets.token_bytes(32)))
            return bytes(db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()[0])
        finally:
            db.close()


class RateLimiter:
    """``per_minute`` requests per key, with bursts up to the same number, counted in ``store``."""

    def __init__(self, store: LimitStore, name: str, per_minute: int) -> None:
        self.store, self.name = store, name
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0

    def allow(self, key: str, now: float | None = None) -> float:
        """0 if the request may go ahead, else how many seconds until it could."""
        if self.capacity <= 0:
            return 0.0
        try:
            # Wall time, not monotonic: the buckets are shared by processes and outlive them.
            return self.store.take(self.name, key, self.capacity, self.rate, time.time() if now is None else now)
        except sqlite3.Error as exc:
            # A stuck limits file must not stop leads: let the request through and say so.
            log.warning("rate limiter unavailable (%s); request allowed", type(exc).__name__)
            return 0.0
