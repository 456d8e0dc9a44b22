"""Rate limits kept in one small SQLite file beside the ledger, shared by every process.

Two kinds live here:
- intake limits: a token bucket per key (client IP, source), answered 429 at the door;
- the HubSpot call budget: a rolling window (HubSpot counts "100 per 10 s rolling", so a
  token bucket, which allows a full bucket plus its refill inside one window, would overshoot),
  taken before every call by every worker process, and corrected by HubSpot's own count.

An intake request over the limit is answered 429 before anything is parsed or written, so a
flood never reaches the ledger. The buckets live in a small SQLite file beside the ledger
(``<ledger>.limits.db``, WAL), not in the ledger itself: a limiter transaction is a few
microseconds and never holds the ledger's write lock, so intake writes never wait on it,
and every gunicorn worker (or second app in one process) counts against the same limit.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import CallBudget, LedgerSettings
from .errors import ThrottledError
from .sqlitepool import SqlitePool

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT NOT NULL, key TEXT NOT NULL, tokens REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS calls (name TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS calls_by_name ON calls (name, at);
CREATE TABLE IF NOT EXISTS call_days (name TEXT NOT NULL, day TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (name, day));
"""


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _count_day(db: sqlite3.Connection, name: str, now: float) -> None:
    db.execute(
        "INSERT INTO call_days VALUES (?, ?, 1) ON CONFLICT (name, day) DO UPDATE SET n = call_days.n + 1", (name, _day(now))
    )


def limits_path(ledger_path: Path) -> Path:
    """Where the shared counters of a ledger's intake live."""
    return ledger_path.with_name(ledger_path.name + ".limits.db")


def open_limits(ledger: LedgerSettings) -> LimitStore:
    """The counters of this ledger: the file beside the SQLite ledger, or tables in the PostgreSQL
    one, so every worker and intake process on every machine counts against the same limits."""
    if ledger.url:
        from .ledger_pg import PgLimitStore

        return PgLimitStore(ledger.url, ledger.password(), ledger.busy_timeout_seconds)
    return LimitStore(limits_path(ledger.path), ledger.busy_timeout_seconds)


def store_errors(ledger: LedgerSettings) -> tuple[type[Exception], ...]:
    """What :func:`open_limits`'s store raises when it cannot count, opening included."""
    if ledger.url:
        from .ledger_pg import PgLimitStore

        return PgLimitStore.errors
    return LimitStore.errors


def limits_exist(ledger: LedgerSettings) -> bool:
    return bool(ledger.url) or limits_path(ledger.path).exists()


class LimitStore:
    """The shared SQLite file, on a few connections shared by the process's threads (a forked
    child opens its own).

    Opening one costs ~90 µs of CPU, more than the query: a call per request (intake) or per
    HubSpot call and batch decision (worker) made that a visible share of both, so they are
    kept; shared, not one a thread, so a worker's hundred threads do not hold a hundred.
    """

    # Past this many rows, buckets idle long enough to be full again are dropped.
    MAX_KEYS = 10_000
    # What a failing store raises; a limiter that cannot count lets the request or call through.
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    # As many as gunicorn's threads (8 by default), so intake's requests never queue for one.
    CONNECTIONS = 8

    def __init__(self, path: Path, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self.timeout = busy_timeout_seconds
        self._conns = SqlitePool(path, busy_timeout_seconds, self.CONNECTIONS, _limits_connection)
        with self._conns.connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (rolled back if the block raises)."""
        with self._conns.connection() as db:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """A read, taking no lock."""
        return self._conns.rows(sql, params)

    def take(self, name: str, key: str, capacity: float, rate: float, now: float) -> float:
        """Take one token from bucket ``(name, key)``: 0 if granted, else seconds until one is."""
        with self._transaction() as db:
            row = db.execute("SELECT tokens, last FROM buckets WHERE name=? AND key=?", (name, key)).fetchone()
            tokens, last = row if row else (capacity, now)
            tokens = min(capacity, tokens + max(0.0, now - last) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            tokens = tokens if wait else tokens - 1
            db.execute(
                """INSERT INTO buckets VALUES (?, ?, ?, ?)
                   ON CONFLICT (name, key) DO UPDATE SET tokens = excluded.tokens, last = excluded.last""",
                (name, key, tokens, now),
            )
            if not row and db.execute("SELECT count(*) FROM buckets").fetchone()[0] > self.MAX_KEYS:
                db.execute("DELETE FROM buckets WHERE name=? AND last < ?", (name, now - capacity / rate))
        return wait

    def take_window(self, name: str, limit: int, window: float, now: float) -> float:
        """One call in a rolling window of ``limit`` per ``window`` s: 0 if granted, else seconds to wait."""
        with self._transaction() as db:
            db.execute("DELETE FROM calls WHERE name=? AND at <= ?", (name, now - window))
            used = db.execute("SELECT count(*) FROM calls WHERE name=?", (name,)).fetchone()[0]
            if used < limit:
                db.execute("INSERT INTO calls VALUES (?, ?)", (name, now))
                _count_day(db, name, now)
                wait = 0.0
            else:
                # The slot that frees first is the (used - limit + 1)-th oldest call's.
                oldest = db.execute(
                    "SELECT at FROM calls WHERE name=? ORDER BY at LIMIT 1 OFFSET ?", (name, used - limit)
                ).fetchone()[0]
                wait = max(0.001, oldest + window - now)
        return wait

    def count_call(self, name: str, now: float) -> None:
        """Count a call that no window limits (for `leadbridge stats`)."""
        with self._transaction() as db:
            _count_day(db, name, now)

    def calls_by_day(self, name: str, since: float) -> dict[str, int]:
        """Calls made per UTC day, from the day of ``since`` on."""
        rows = self._rows("SELECT day, n FROM call_days WHERE name=? AND day >= ?", (name, _day(since)))
        return {str(day): int(n) for day, n in rows}

    def window_count(self, name: str, window: float, now: float) -> int:
        """Calls counted in the window ending now (a read: takes no lock)."""
        return int(self._rows("SELECT count(*) FROM calls WHERE name=? AND at > ?", (name, now - window))[0][0])

    def fill_window(self, name: str, used: int, window: float, now: float) -> None:
        """The other side counted ``used`` calls in its window: count at least as many here."""
        with self._transaction() as db:
            db.execute("DELETE FROM calls WHERE name=? AND at <= ?", (name, now - window))
            ours = db.execute("SELECT count(*) FROM calls WHERE name=?", (name,)).fetchone()[0]
            db.executemany("INSERT INTO calls VALUES (?, ?)", [(name, now)] * max(0, used - ours))

    def secret(self, name: str) -> bytes:
        """A random secret created once per file, so every worker signs and checks alike."""
        with self._transaction() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT DO NOTHING", (name, secrets.token_bytes(32)))
            return bytes(db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()[0])


def _limits_connection(conn: sqlite3.Connection) -> None:
    # Rate windows last seconds: a power cut may lose the newest few, never the ledger's data.
    conn.execute("PRAGMA synchronous=NORMAL")


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
        except self.store.errors as exc:
            # A stuck limits file must not stop leads: let the request through and say so.
            log.warning("rate limiter unavailable (%s); request allowed", type(exc).__name__)
            return 0.0


WINDOW_MARGIN_SECONDS = 0.25
# A burst slot a thread took ahead of its next call (CallPacer.prepay).
_prepaid = threading.local()


class CallPacer:
    """HubSpot's burst limit, spent by every worker process on the machine together.

    Each call takes a slot in the shared rolling window first (search calls also take one in
    the search window). When none is free the call waits, up to ``max_wait_seconds``; past
    that it raises ThrottledError, so the delivery is deferred and keeps its attempt. HubSpot's
    answer headers say how much of the window it has counted (another process on the same
    token, calls made before a restart); when that is more than ours, ours catches up.
    """

    API, SEARCH = "hubspot", "hubspot-search"

    def __init__(
        self,
        ledger: LedgerSettings,
        budget: CallBudget,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ledger, self.budget = ledger, budget
        self.clock, self.sleep = clock, sleep
        self._store: LimitStore | None = None
        # What this ledger's store raises, known before it is opened (opening can fail too).
        self._errors = store_errors(ledger)

    def acquire(self, *, search: bool = False) -> None:
        """Wait for a slot (bounded), or raise ThrottledError; none if :meth:`prepay` took it."""
        if getattr(_prepaid, "slot", False):
            _prepaid.slot = False
        else:
            self._wait_for(*self._window(search=False))
        if search:
            self._wait_for(*self._window(search=True))

    def prepay(self) -> None:
        """Wait for the slot of this thread's next call now (a batch leader, before it takes
        its batch: whoever queues while it waits goes in the same call). Past
        ``max_wait_seconds`` nothing is taken: the call itself then waits and raises."""
        try:
            self._wait_for(*self._window(search=False))
        except ThrottledError:
            return
        _prepaid.slot = True

    @staticmethod
    def forget_prepaid() -> None:
        """Drop a slot :meth:`prepay` took that no call used (the batch made none)."""
        _prepaid.slot = False

    def free_share(self) -> float:
        """How much of the rolling window is unspent, 0 to 1 (1 with no limit, or no limits file)."""
        name, limit, window = self._window(search=False)
        if limit <= 0:
            return 1.0
        used = self._safely(lambda s: s.window_count(name, window, self.clock()))
        return 1.0 if used is None else max(0.0, 1 - used / limit)

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Correct our count from HubSpot's ``X-HubSpot-RateLimit-Remaining``."""
        name, limit, window = self._window(search=False)
        try:
            remaining = int((headers or {})["X-HubSpot-RateLimit-Remaining"])
        except (KeyError, TypeError, ValueError):
            return  # search answers and errors from proxies carry no such header
        if limit > 0 and remaining < limit:
            self._safely(lambda s: s.fill_window(name, limit - remaining, window, self.clock()))

    def spent(self, *, search: bool = False) -> None:
        """HubSpot answered 429 anyway: treat that window as full."""
        name, limit, window = self._window(search=search)
        if limit > 0:
            self._safely(lambda s: s.fill_window(name, limit, window, self.clock()))

    def _window(self, *, search: bool) -> tuple[str, int, float]:
        """(name, limit, window kept) of the burst or the search window.

        Kept a little longer than HubSpot's: our clock stamps a call as it leaves, HubSpot's
        as it arrives, so a call that left fast can land inside a window we think has moved on.
        """
        budget = self.budget
        if search:
            return self.SEARCH, budget.search_requests, budget.search_per_seconds + WINDOW_MARGIN_SECONDS
        return self.API, budget.requests, budget.per_seconds + WINDOW_MARGIN_SECONDS

    def _wait_for(self, name: str, limit: int, window: float) -> None:
        if limit <= 0:
            self._safely(lambda s: s.count_call(name, self.clock()))
            return
        waited = 0.0
        while True:
            wait = self._safely(lambda s: s.take_window(name, limit, window, self.clock())) or 0.0
            if wait <= 0:
                return
            if waited + wait > self.budget.max_wait_seconds:
                shown = window - WINDOW_MARGIN_SECONDS
                raise ThrottledError(
                    f"HubSpot call budget in use ({limit} per {shown:g} s); next slot in {wait:.1f} s", retry_after=wait
                )
            self.sleep(wait)
            waited += wait

    def _safely(self, use: Callable[[LimitStore], float | None]) -> float | None:
        try:
            if self._store is None:  # opened at the first call, so `leadbridge try` writes no file
                self._store = open_limits(self.ledger)
            return use(self._store)
        except self._errors as exc:
            # A stuck limits file must not stop leads: HubSpot's own 429 still paces us.
            log.warning("HubSpot call budget unavailable (%s); call allowed", type(exc).__name__)
            return None
