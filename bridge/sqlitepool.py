"""A few SQLite connections shared by a process's threads, instead of one per thread.

Every SQLite connection parses and keeps its own copy of the schema (about 110 KB for the
ledger's) and its own page cache. With one connection a thread, a worker running 100
deliveries on 100 threads held 30-34 MB of them (``sqlite3_memory_used``), a quarter of its
memory. A short read or write transaction needs a connection only while it runs: it
borrows one of these and gives it back, with every row already fetched.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A read or a limiter transaction takes a fraction of a millisecond.
SIZE = 4


class SqlitePool:
    def __init__(
        self,
        path: Path,
        busy_timeout: float,
        size: int = SIZE,
        setup: Callable[[sqlite3.Connection], None] = lambda conn: None,
    ) -> None:
        self.path, self.busy_timeout, self._setup = path, busy_timeout, setup
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._free: list[sqlite3.Connection] = []
        self._pid = os.getpid()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row ``sql`` selects (autocommit: no snapshot is kept between two calls)."""
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """An autocommit connection for this thread alone until the block ends; a transaction
        the block leaves open is rolled back (a connection that cannot roll back is dropped)."""
        with self._slots:
            with self._lock:
                if os.getpid() != self._pid:  # inherited through a fork: never share the parent's
                    self._free, self._pid = [], os.getpid()
                conn = self._free.pop() if self._free else None
            if conn is None:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
                self._setup(conn)
            try:
                yield conn
            finally:
                if _usable(conn):
                    with self._lock:
                        self._free.append(conn)


def _usable(conn: sqlite3.Connection) -> bool:
    if not conn.in_transaction:
        return True
    try:
        conn.execute("ROLLBACK")
        return True
    except sqlite3.Error:
        conn.close()
        return False
