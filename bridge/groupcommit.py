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

Polling alone does not keep intake from waiting behind a worker batch already holding the
lock: 32 checkpoints and their fsync held it for up to 25 ms (p99) while a backlog drained.
So intake says, in a small shared file (``IntakeFirst``), that it is waiting; the worker's
leader looks between its writes, commits what it has and lets intake in, and does not take
the lock while intake waits. Intake then waits for at most one write and one commit.

A mark is only seen once intake is already waiting, and on a busy 2-core machine a worker's
leader, preempted or waiting for its own process's GIL, held the lock for 10-16 ms (p99)
over a batch of a few writes. So the worker's leader also commits once its transaction
has been open ``max_hold`` (2 ms): the lock is free between two such transactions whether
or not intake has said so yet, and on a quiet machine cheap writes still share a commit.
"""

from __future__ import annotations

import math
import mmap
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from .batching import Batcher, Failed

# Most writes in one transaction: bounds how long the lock is held for one batch.
MAX_BATCH = 200
POLL_SECONDS = 0.001
# A worker never defers to intake for longer than this in one go, so a flood cannot stop it.
MAX_DEFER_SECONDS = 0.1


class IntakeFirst:
    """Which intake processes are waiting for the write lock: one slot per process, shared by mmap.

    A slot holds the ``time.monotonic()`` (one clock for every process on the machine) at
    which its process began waiting, or 0. A slot older than a second is ignored, so an
    intake process killed while waiting cannot hold the worker back.
    """

    SLOTS = 64
    STALE_SECONDS = 1.0

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.SLOTS * 8:
                os.ftruncate(fd, self.SLOTS * 8)
            self._map = mmap.mmap(fd, self.SLOTS * 8)
        finally:
            os.close(fd)
        self._slot = (os.getpid() % self.SLOTS) * 8
        self._slots = struct.Struct(f"{self.SLOTS}d")

    @contextmanager
    def waiting(self) -> Iterator[None]:
        struct.pack_into("d", self._map, self._slot, time.monotonic())
        try:
            yield
        finally:
            struct.pack_into("d", self._map, self._slot, 0.0)

    def anyone_waiting(self) -> bool:
        # The newest mark decides; read after the slots, the clock is never behind any of them.
        # (A worker's leader asks between every two writes: one C call, not a Python loop of 64.)
        newest = max(self._slots.unpack_from(self._map))
        return 0 < time.monotonic() - newest < self.STALE_SECONDS


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
        intake_first: IntakeFirst | None = None,
        defers: bool = False,
        max_defer: float = MAX_DEFER_SECONDS,
        max_hold: float = math.inf,
    ) -> None:
        self.path, self.busy_timeout, self.poll = path, busy_timeout, poll
        self.autocheckpoint_pages = autocheckpoint_pages
        # Intake's group says when it waits; the worker's (``defers``) makes way for it.
        self.intake_first, self.defers, self.max_defer = intake_first, defers, max_defer
        self.max_hold = max_hold  # commit and begin again once a transaction is this old
        self._batcher: Batcher[Callable[[sqlite3.Connection], Any], Any] = Batcher(self._write, max_batch)
        self._conn: sqlite3.Connection | None = None

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` inside a committed write transaction; returns its result or raises its error."""
        return self._batcher.submit(work)

    def _write(self, batch: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        conn = self._connection()
        began = self._begin(conn)
        outcomes: list[Any] = []
        try:
            for n, work in enumerate(batch):
                if n and (self._intake_waits() or time.monotonic() - began > self.max_hold):
                    # Intake is waiting behind us, or may be soon: what is written so far
                    # commits now, and the rest of the batch goes on after intake's turn.
                    conn.execute("COMMIT")
                    try:
                        began = self._begin(conn)
                    except Exception as exc:  # the first n are committed: only the rest fail
                        return outcomes + [Failed(exc)] * (len(batch) - n)
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

    def _intake_waits(self) -> bool:
        return self.defers and self.intake_first is not None and self.intake_first.anyone_waiting()

    def _begin(self, conn: sqlite3.Connection) -> float:
        """Take the write lock (after intake, for the worker's group); returns when it was had."""
        if self.defers:
            deadline = time.monotonic() + self.max_defer
            while self._intake_waits() and time.monotonic() < deadline:
                time.sleep(self.poll)
        says = None if self.defers else self.intake_first  # intake's group says it waits
        with says.waiting() if says is not None else nullcontext():
            begin_immediate(conn, self.busy_timeout, self.poll)
        return time.monotonic()

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
