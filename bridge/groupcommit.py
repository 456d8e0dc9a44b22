"""Group commit: the writes of many waiting threads in one transaction, one fsync.

Every webhook must be on disk before its 2xx, and every worker checkpoint before the next
side effect. Done one write per transaction, the threads of a process fight each other for
SQLite's write lock through its busy handler, which sleeps in growing steps (up to 100 ms)
and is unfair: under a burst, a thread that lost once keeps losing, acks of a few
milliseconds turn into seconds, and a worker running 200 deliveries at once spends its time
waiting for the lock (measured: 16 leads/s, then "database is locked" crashes).

Here (through bridge/batching.py) the first thread to arrive becomes the leader: it takes
the write lock, runs its own write and every write queued behind it (each in a savepoint,
so one failure fails only its own caller), commits once, and wakes them all; the next
thread queued meanwhile leads the next batch. Nobody returns before the commit that holds
their write, so the durability promise is unchanged, and a burst costs one fsync per batch
instead of one per write.

Between processes (the other intake processes, the worker) the leader polls for the lock
at a steady interval rather than in SQLite's growing steps: intake's group every
millisecond, the worker's every few, so when both wait, intake gets the lock first.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .batching import Batcher, Failed

# Most writes in one transaction: bounds how long the lock is held for one batch.
MAX_BATCH = 200
POLL_SECONDS = 0.001


class GroupCommit:
    """Runs ``work(conn)`` callables in shared write transactions on one connection."""

    def __init__(
        self,
        path: Path,
        busy_timeout: float,
        *,
        poll: float = POLL_SECONDS,
        max_batch: int = MAX_BATCH,
        autocheckpoint_pages: int = 10_000,
    ) -> None:
        self.path, self.busy_timeout, self.poll = path, busy_timeout, poll
        self.autocheckpoint_pages = autocheckpoint_pages
        self._batcher: Batcher[Callable[[sqlite3.Connection], Any], Any] = Batcher(self._write, max_batch)
        self._conn: sqlite3.Connection | None = None

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` inside a committed write transaction; returns its result or raises its error."""
        return self._batcher.submit(work)

    def _write(self, batch: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        conn = self._connection()
        begin_immediate(conn, self.busy_timeout, self.poll)
        outcomes: list[Any] = []
        try:
            for n, work in enumerate(batch):
                conn.execute(f"SAVEPOINT w{n}")
                try:
                    outcomes.append(work(conn))
                except Exception as exc:
                    outcomes.append(Failed(exc))
                    conn.execute(f"ROLLBACK TO w{n}")
                conn.execute(f"RELEASE w{n}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _connection(self) -> sqlite3.Connection:
        # One connection for every leader thread in turn: only one leads at a time.
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            # The worker checkpoints at SQLite's usual 1,000 pages; intake only when the WAL is
            # far larger than that (no worker running), so a request rarely pays for one.
            conn.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint_pages}")
            self._conn = conn
        return self._conn


def begin_immediate(conn: sqlite3.Connection, timeout: float, poll: float) -> None:
    """BEGIN IMMEDIATE, asking again every ``poll`` seconds until ``timeout``.

    SQLite's own busy handler sleeps in growing steps (up to 100 ms) and is unfair: a writer
    that lost once keeps losing to fresh arrivals. Asking at a steady short interval gets
    the lock within about ``poll`` of it coming free; a shorter ``poll`` wins more often.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll)
