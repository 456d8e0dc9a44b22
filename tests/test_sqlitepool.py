"""The few SQLite connections a process's threads share (bridge/sqlitepool.py): many threads
reading at once never open more than the pool's size, and a block that fails inside a write
transaction never leaves the file locked."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bridge.sqlitepool import SqlitePool


def test_many_threads_reading_at_once_share_at_most_size_connections(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (n INTEGER)")
        setup.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(10)])
    opened: list[sqlite3.Connection] = []
    pool = SqlitePool(path, 5.0, size=3, setup=opened.append)
    start = threading.Barrier(40)

    def read(_: int) -> int:
        start.wait()
        return int(pool.rows("SELECT sum(n) FROM t")[0][0])

    with ThreadPoolExecutor(40) as threads:
        assert set(threads.map(read, range(40))) == {45}
    assert 1 <= len(opened) <= 3


def test_a_block_that_fails_inside_a_write_transaction_leaves_nothing_locked(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    sqlite3.connect(path).execute("CREATE TABLE t (n INTEGER)").connection.close()
    pool = SqlitePool(path, 5.0, size=1)
    with pytest.raises(RuntimeError), pool.connection() as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the caller failed halfway")
    # Rolled back, and the write lock is free: another connection writes at once.
    other = sqlite3.connect(path, timeout=0)
    other.execute("INSERT INTO t VALUES (2)")
    other.commit()
    assert [r[0] for r in pool.rows("SELECT n FROM t")] == [2]
    other.close()
