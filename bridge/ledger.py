"""The ledger: every delivery, its state, its step results and its event log, in SQLite.

It is the source of truth. Intake writes a delivery (unique per source and idempotency
key) before the sender gets its 200; workers claim due deliveries under a lease, record
each step's result before starting the next, and finish them in one of a closed set of
states. Everything SQL lives in the ledger modules (this one, ledger_base, ledger_crm,
ledger_followups, ledger_retention): the rest of the code calls named Ledger methods, so a
second backend (PostgreSQL) can replace them behind the same methods.

Writes use ``BEGIN IMMEDIATE`` so that two processes never both decide to claim the
same row; connections are per thread because sqlite3 connections are not shareable.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
from sqlite_utils.migrations import Migrations

from .config import LedgerSettings
from .errors import LeadbridgeError
from .groupcommit import GroupCommit, IntakeFirst, begin_immediate
from .ledger_base import EVENTS_APPEND_ONLY
from .ledger_crm import CrmLedger
from .ledger_followups import FollowUpLedger
from .ledger_retention import RetentionLedger
from .sqlitepool import SqlitePool


class Status(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"
    REJECTED = "rejected"  # failed validation: nobody to call back
    SPAM = "spam"  # a honeypot or spam rule fired; the sender was still told 200
    PARTIAL = "partial"  # an unfinished form (Typeform partial response): kept, not forwarded
    TEST = "test"  # a vendor's test lead: kept, never sent to the CRM or to reps


DUE = (Status.RECEIVED, Status.RETRYING)
FINAL = (Status.DELIVERED, Status.DEAD, Status.REJECTED, Status.SPAM, Status.PARTIAL, Status.TEST)

# The events that mean a delivery took a worker down with it (an exception escaped the
# pipeline, or the worker died and its lease expired), counted since the last replay.
_CRASHES = """
    SELECT COUNT(*) FROM events WHERE delivery_id = :id
      AND ((step = 'claim' AND outcome = 'lease_expired') OR (step = 'worker' AND outcome = 'crashed'))
      AND id > COALESCE((SELECT MAX(id) FROM events WHERE delivery_id = :id AND step = 'replay'), 0)"""


class LeaseLostError(LeadbridgeError):
    """This worker's claim expired and another took the delivery; stop touching it."""


@dataclass(frozen=True)
class Delivery:
    id: str
    source: str
    idem_key: str
    status: Status
    received_at: float
    content_type: str
    headers: dict[str, str]
    body: bytes
    config_version: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    reason: str | None
    lease_owner: str | None
    lease_until: float | None
    updated_at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        row = dict(row)
        row["status"] = Status(row["status"])
        row["headers"] = json.loads(row["headers"] or "{}")
        return cls(**row)

    def summary(self) -> dict[str, Any]:
        """The delivery without its body: safe to print."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("body", "lease_owner")}
        data["status"] = str(self.status)
        return data


@dataclass(frozen=True)
class Arrival:
    """A delivery as intake hands it to the ledger: stored once under any of ``keys`` (the
    first is its own idempotency key, the rest aliases); ``headers`` already as JSON."""

    id: str
    source: str
    keys: list[str]
    body: bytes
    content_type: str
    headers: str
    config_version: str
    person_keys: list[str]
    at: float


_DELIVERY_FIELDS = [f.name for f in fields(Delivery)]
_DELIVERY_COLUMNS = ", ".join(_DELIVERY_FIELDS)
migrations = Migrations("leadbridge")
# The same steps, in order, for a PostgreSQL ledger (bridge/ledger_pg.py), which gives each a
# ``PgSchema`` (``dialect = "postgresql"``) where SQLite's get a sqlite_utils Database.
MIGRATIONS: list[Callable[[Any], None]] = []


def migration(step: Callable[[Any], None]) -> Callable[[Any], None]:
    MIGRATIONS.append(step)
    migrations()(step)
    return step


def _postgres(db: Any) -> bool:
    return getattr(db, "dialect", "sqlite") == "postgresql"


# True when another delivery of the same person must go first or is running now:
# one received earlier that is not finished, or one under a live lease.
_PERSON_BUSY = f"""
    SELECT 1 FROM person_keys AS mine
    JOIN person_keys AS theirs ON theirs.key = mine.key AND theirs.delivery_id != mine.delivery_id
    JOIN deliveries AS other ON other.id = theirs.delivery_id
    WHERE mine.delivery_id = d.id AND (
        (other.status = '{Status.PROCESSING}' AND other.lease_until >= :now)
        OR (other.rowid < d.rowid AND other.status NOT IN ({", ".join(f"'{s}'" for s in FINAL)}))
    )"""


# What a claim takes: a delivery whose worker died (its lease ran out), or one that is due.
_LEASE_EXPIRED = f"status = '{Status.PROCESSING}' AND lease_until < :now"
_WAITING_DUE = f"status IN ('{Status.RECEIVED}', '{Status.RETRYING}') AND next_attempt_at <= :now"
_EXPIRED_LEASES = f"""
    SELECT id FROM deliveries AS d INDEXED BY deliveries_leased
    WHERE {_LEASE_EXPIRED} AND NOT EXISTS ({_PERSON_BUSY})
    ORDER BY lease_until LIMIT :limit"""
_DUE = f"""
    SELECT id FROM deliveries AS d INDEXED BY deliveries_waiting
    WHERE {_WAITING_DUE} AND NOT EXISTS ({_PERSON_BUSY})
    ORDER BY next_attempt_at LIMIT :limit"""
# Leads whose Slack message went out, with the seconds from receipt (speed to lead).
_POSTED = """
    SELECT d.source, COALESCE(json_extract(score.result, '$.segment'), '') AS segment, d.received_at,
           CASE WHEN n.done_at > d.received_at THEN n.done_at - d.received_at ELSE 0 END AS seconds
    FROM steps AS n JOIN deliveries AS d ON d.id = n.delivery_id
    LEFT JOIN steps AS score ON score.delivery_id = n.delivery_id AND score.step = 'score'
    WHERE n.step = 'notify' AND json_extract(n.result, '$.ts') IS NOT NULL"""


@migration
def m001_initial(db: Any) -> None:
    statuses = ", ".join(f"'{s}'" for s in Status)
    db.execute(
        f"""
        CREATE TABLE deliveries (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ({statuses})),
            received_at REAL NOT NULL,
            content_type TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            config_version TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error TEXT,
            reason TEXT,
            lease_owner TEXT,
            lease_until REAL,
            updated_at REAL NOT NULL,
            UNIQUE (source, idem_key)
        )"""
    )
    db.execute("CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)")
    db.execute("CREATE INDEX deliveries_received ON deliveries (received_at)")
    db.execute(
        """
        CREATE TABLE steps (
            delivery_id TEXT NOT NULL REFERENCES deliveries(id),
            step TEXT NOT NULL,
            result TEXT NOT NULL,
            done_at REAL NOT NULL,
            PRIMARY KEY (delivery_id, step)
        )"""
    )
    db.execute(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            delivery_id TEXT NOT NULL REFERENCES deliveries(id),
            at REAL NOT NULL,
            step TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )"""
    )
    db.execute("CREATE INDEX events_delivery ON events (delivery_id, id)")
    # Append-only: the event log is an audit trail.
    if _postgres(db):
        db.append_only("events")
        # SQLite's implicit rowid: arrival order, which one person's deliveries are run in.
        db.execute("ALTER TABLE deliveries ADD COLUMN rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE")
    else:
        db.execute(f"CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN {EVENTS_APPEND_ONLY}; END")
        db.execute(f"CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN {EVENTS_APPEND_ONLY}; END")
    db.execute(
        """
        CREATE TABLE identities (
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            contact_id TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, value)
        )"""
    )
    # Who each delivery is about (email:/phone: keys). A delivery is not claimed while an
    # earlier unfinished delivery, or one being processed, shares a key with it: one person's
    # submissions run one at a time and in the order they arrived.
    db.execute(
        """
        CREATE TABLE person_keys (
            delivery_id TEXT NOT NULL REFERENCES deliveries(id),
            key TEXT NOT NULL,
            PRIMARY KEY (delivery_id, key)
        )"""
    )
    db.execute("CREATE INDEX person_keys_key ON person_keys (key)")


@migration
def m002_sales_memory(db: sqlite_utils.Database) -> None:
    """What routing, deals and digests must remember across deliveries and restarts."""
    # How many leads each pool member was given: the weighted round robin's memory.
    db.execute(
        """
        CREATE TABLE pool_assignments (
            pool TEXT NOT NULL,
            member TEXT NOT NULL,
            assigned INTEGER NOT NULL DEFAULT 0,
            last_delivery_id TEXT,
            PRIMARY KEY (pool, member)
        )"""
    )
    # Deals (or HubSpot leads) leadbridge created, so a returning person gets a note, not a second deal.
    db.execute(
        """
        CREATE TABLE deals (
            contact_id TEXT NOT NULL,
            object_type TEXT NOT NULL,
            record_id TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            closed_at REAL,
            PRIMARY KEY (object_type, record_id)
        )"""
    )
    db.execute("CREATE INDEX deals_contact ON deals (contact_id, object_type)")
    # The digests sent (one per channel and day), and the cold leads waiting for their channel's.
    db.execute(
        """
        CREATE TABLE digests (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            day TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('sending', 'sent')),
            started_at REAL NOT NULL,
            ts TEXT,
            UNIQUE (channel, day)
        )"""
    )
    db.execute(
        """
        CREATE TABLE digest_items (
            delivery_id TEXT PRIMARY KEY REFERENCES deliveries(id),
            channel TEXT NOT NULL,
            line TEXT NOT NULL,
            queued_at REAL NOT NULL,
            digest_id INTEGER REFERENCES digests(id)
        )"""
    )


@migration
def m003_claim_indexes(db: sqlite_utils.Database) -> None:
    # The claim walks these in order and stops after a batch, so its cost does not grow
    # with the backlog: waiting deliveries by when they fall due, leases by when they run out.
    db.execute(
        f"""CREATE INDEX deliveries_waiting ON deliveries (next_attempt_at)
            WHERE status IN ('{Status.RECEIVED}', '{Status.RETRYING}')"""
    )
    db.execute(f"CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = '{Status.PROCESSING}'")


@migration
def m004_contact_memory(db: sqlite_utils.Database) -> None:
    # What the relay last wrote (or read) for a contact's careful properties (first touch,
    # append) and its owner, so a returning person's write needs no read of HubSpot first.
    db.execute(
        """
        CREATE TABLE contact_memory (
            contact_id TEXT PRIMARY KEY,
            properties TEXT NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )


@migration
def m005_heartbeats(db: sqlite_utils.Database) -> None:
    """Worker heartbeats (for /readyz) and intake outcomes the deliveries table cannot show."""
    # Independent of every other migration, so it applies whichever order they end up in:
    # sqlite-utils records each one by name and applies the missing ones.
    db.execute("CREATE TABLE IF NOT EXISTS heartbeats (worker TEXT PRIMARY KEY, started_at REAL NOT NULL, at REAL NOT NULL)")
    # Requests answered without creating a delivery (a sender's retry, a refusal), by source and status code.
    db.execute(
        """CREATE TABLE IF NOT EXISTS intake_counts (
            source TEXT NOT NULL,
            outcome TEXT NOT NULL,
            code INTEGER NOT NULL,
            n INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (source, outcome, code)
        )"""
    )


@migration
def m006_incidents(db: sqlite_utils.Database) -> None:
    """Condition alerts (backlog, auth, a quiet source): one open incident per key at a time."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS incidents (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            opened_at REAL NOT NULL,
            closed_at REAL,
            cleared_text TEXT NOT NULL
        )"""
    )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents (key) WHERE closed_at IS NULL")


@migration
def m007_hubspot_truth(db: Any) -> None:
    """HubSpot's webhooks applied once each, and the stage each remembered deal is in."""
    db.execute("CREATE TABLE IF NOT EXISTS crm_events (key TEXT PRIMARY KEY, at REAL NOT NULL)")
    columns = db.column_names("deals") if _postgres(db) else {c.name for c in db["deals"].columns}
    if "stage" not in columns:
        db.execute("ALTER TABLE deals ADD COLUMN stage TEXT")


@migration
def m008_followups(db: sqlite_utils.Database) -> None:
    """Speed-to-lead checks and stage reminders (bridge/followups.py): one row each, claimed under a lease."""
    # Its own table only, guarded, so it applies in any order relative to other new migrations.
    db.execute(
        """CREATE TABLE IF NOT EXISTS followups (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('sla', 'stage')),
            delivery_id TEXT NOT NULL,
            phase TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('waiting', 'done', 'cancelled')),
            due_at REAL NOT NULL,
            lease_owner TEXT,
            lease_until REAL,
            data TEXT NOT NULL,
            reason TEXT,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS followups_due ON followups (due_at) WHERE state = 'waiting'")
    db.execute("CREATE INDEX IF NOT EXISTS followups_delivery ON followups (delivery_id)")


@migration
def m010_crm_poll(db: sqlite_utils.Database) -> None:
    """The HubSpot poller's lease and high-water mark, deal stages from HubSpot's pipelines,
    the stages still to check, and the HubSpot time of each deal's remembered stage
    (bridge/crm_poll.py, bridge/stages.py). Own tables only, so it applies in any order."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS crm_poll (
            name TEXT PRIMARY KEY,
            high_water_ms INTEGER,
            owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0,
            last_run_at REAL NOT NULL DEFAULT 0
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS crm_stages (
            object_type TEXT NOT NULL, stage TEXT NOT NULL, pipeline TEXT NOT NULL,
            closed INTEGER NOT NULL, fetched_at REAL NOT NULL, PRIMARY KEY (object_type, stage)
        )"""
    )
    db.execute("CREATE TABLE IF NOT EXISTS crm_stage_checks (record_id TEXT PRIMARY KEY, stage TEXT NOT NULL, at REAL NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS crm_deal_versions (record_id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL)")


@migration
def m011_limits(db: Any) -> None:
    """PostgreSQL only: the rate limits' counters (bridge/ratelimit.py), which beside a SQLite
    ledger live in a file of their own, so limiter writes never take the ledger's one lock."""
    from .ratelimit import SCHEMA

    if _postgres(db):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)


@migration
def m012_postgres_accept(db: Any) -> None:
    """PostgreSQL only: intake's write as one server-side function (bridge/ledger_pg.py says why)."""
    if _postgres(db):
        from .ledger_pg import ACCEPT_FUNCTION

        db.execute(ACCEPT_FUNCTION)


def open_ledger(settings: LedgerSettings) -> Ledger:
    """The ledger the config names: SQLite at ``path``, or PostgreSQL when ``url`` is set."""
    if settings.url:
        from .ledger_pg import PostgresLedger  # psycopg is imported only when chosen

        return PostgresLedger(settings.url, settings.password(), settings.busy_timeout_seconds, settings.pool_size)
    return Ledger(settings.path, settings.busy_timeout_seconds)


def migration_state(settings: LedgerSettings) -> tuple[list[str], list[str]]:
    """(applied, pending) migration names of the configured ledger, in order, without writing
    anything (a missing file has every migration pending). Opening a ``Ledger`` applies them."""
    if settings.url:
        from .ledger_pg import migration_state as postgres_state

        return postgres_state(settings.url, settings.password())
    path = settings.path
    if not Path(path).exists():
        return [], [m.name for m in migrations.pending(sqlite_utils.Database(memory=True))]
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        db = sqlite_utils.Database(conn)
        return [m.name for m in migrations.applied(db)], [m.name for m in migrations.pending(db)]
    finally:
        conn.close()


WORKER_POLL_SECONDS = 0.003
WORKER_MAX_BATCH = 32
WORKER_MAX_HOLD_SECONDS = 0.002
T = TypeVar("T")


class Ledger(CrmLedger, FollowUpLedger, RetentionLedger):
    # What the PostgreSQL ledger (bridge/ledger_pg.py) changes: it has no single writer, so its
    # claims lock the rows they take and its lease checks lock the delivery until the commit.
    _CLAIM_QUERIES = (_EXPIRED_LEASES, _DUE)
    _ROW_LOCK = ""
    # What a failing ledger raises (locked, unreachable, read-only), for callers that answer 503 or carry on.
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._readers = SqlitePool(self.path, busy_timeout)
        # Writes share transactions (bridge/groupcommit.py): one fsync per burst. Intake's group
        # asks for the write lock every 1 ms, the worker's every few ms, so intake goes first.
        # Intake also says when it waits, and the worker's leader makes way (IntakeFirst).
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first = IntakeFirst(self.path.with_name(self.path.name + ".intake-first"))
        self._intake = GroupCommit(self.path, busy_timeout, intake_first=first)
        self._writes = GroupCommit(
            self.path,
            busy_timeout,
            poll=WORKER_POLL_SECONDS,
            max_batch=WORKER_MAX_BATCH,
            max_hold=WORKER_MAX_HOLD_SECONDS,
            autocheckpoint_pages=1000,
            intake_first=first,
            defers=True,
        )
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        # Several gunicorn workers open the ledger at once: take the write lock first so
        # exactly one of them applies pending migrations and the others see them applied.
        with self._write():
            migrations.apply(db)

    @property
    def db(self) -> sqlite_utils.Database:
        joined = getattr(self._local, "joined", None)
        if joined is not None:  # inside atomically(): read and write in its transaction
            return joined
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")
            # WAL + NORMAL is durable across a process crash (the case we promise); FULL also
            # survives power loss at the cost of an fsync per commit. We choose FULL: a 200
            # means on disk.
            conn.execute("PRAGMA synchronous=FULL")
            db = self._local.db = sqlite_utils.Database(conn)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self.db.conn
        if conn.in_transaction:
            # Inside exclusive(): part of the caller's transaction.
            yield conn
            return
        # Workers ask for the write lock every few ms rather than in SQLite's growing, unfair
        # sleeps; intake's group commit asks every 1 ms, so when both wait intake wins.
        conn.execute("PRAGMA busy_timeout = 2")
        try:
            begin_immediate(conn, self.busy_timeout, WORKER_POLL_SECONDS)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _in_transaction(self) -> bool:
        """Inside ``atomically()`` or ``exclusive()`` on this thread; asking opens no connection."""
        if getattr(self._local, "joined", None) is not None:
            return True
        db = getattr(self._local, "db", None)
        return db is not None and bool(db.conn.in_transaction)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A plain read: in this thread's transaction if one is open, else on a shared connection.

        A worker's pipeline threads read through this only, so they hold no connection each."""
        if self._in_transaction():
            return self.db.execute(sql, params).fetchall()
        return self._readers.rows(sql, params)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the write lock across several calls (reads included), across threads and processes.

        Routing takes a pool's turn this way: read the counts, pick, record, with no other
        worker picking in between.
        """
        with self._write():
            yield

    def _lock_keys(self, conn: sqlite3.Connection, keys: Sequence[str]) -> None:
        """Serialise transactions deciding about the same keys: SQLite's write lock already does."""

    def _notify(self, conn: sqlite3.Connection) -> None:
        """Wake waiting workers at commit: SQLite's ``data_version`` already moves on every commit."""

    # -- intake -------------------------------------------------------------------

    def accept(
        self,
        *,
        source: str,
        idem_key: str,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        config_version: str,
        person_keys: Sequence[str] = (),
        aliases: Sequence[str] = (),
        now: float | None = None,
    ) -> tuple[str, bool]:
        """Record a delivery once; returns (delivery id, whether this call created it).

        ``aliases`` are other keys under which the same submission counts as already stored.
        """
        arrival = Arrival(
            id="dlv_" + uuid.uuid4().hex[:20],
            source=source,
            keys=[idem_key, *aliases],
            body=body,
            content_type=content_type,
            headers=json.dumps(headers, sort_keys=True),
            config_version=config_version,
            person_keys=list(person_keys),
            at=time.time() if now is None else now,
        )
        return self._store(arrival)

    def _store(self, new: Arrival) -> tuple[str, bool]:
        """Write ``new`` unless one of its keys is stored already, in intake's group commit
        (PostgreSQL's ledger: in one server-side call)."""
        marks = ",".join("?" * len(new.keys))

        def write(conn: sqlite3.Connection) -> tuple[str, bool]:
            existing = conn.execute(
                f"SELECT id FROM deliveries WHERE source = ? AND idem_key IN ({marks}) ORDER BY rowid LIMIT 1",
                (new.source, *new.keys),
            ).fetchone()
            if existing:
                return existing[0], False
            conn.execute(
                """INSERT INTO deliveries (id, source, idem_key, status, received_at, content_type,
                   headers, body, config_version, next_attempt_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (new.id, new.source, new.keys[0], Status.RECEIVED, new.at, new.content_type, new.headers, new.body,
                 new.config_version, new.at, new.at),
            )  # fmt: skip
            conn.executemany("INSERT INTO person_keys (delivery_id, key) VALUES (?, ?)", [(new.id, k) for k in new.person_keys])
            self._event(conn, new.id, "intake", "received", f"{len(new.body)} bytes", new.at)
            return new.id, True

        result: tuple[str, bool] = self._grouped(write, self._intake)
        return result

    def _grouped(self, work: Callable[[sqlite3.Connection], Any], group: GroupCommit | None = None) -> Any:
        """Run ``work(conn)`` in a write transaction shared with the other threads' writes of this
        moment (bridge/groupcommit.py): committed, on disk, before this returns; one fsync for all.

        Intake's writes have their own group, which asks for the lock more often, so when intake
        and the worker wait at once, intake wins. Inside ``exclusive()`` the work simply joins
        the caller's transaction.
        """
        if self._in_transaction():
            return work(self.db.conn)
        return (group or self._writes).run(work)

    def atomically(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` as one transaction: every ledger call it makes, reads included, joins it.

        Like ``exclusive()`` (nobody else writes in between: routing reads the pool's counts,
        picks and records the turn), but grouped with the other threads' writes, so it costs no
        lock acquisition and no fsync of its own. ``fn`` may run on another thread (the
        group's leader) and must not call anything but the ledger and pure code.
        """
        if self._in_transaction():
            return fn()

        def work(conn: sqlite3.Connection) -> T:
            self._local.joined = sqlite_utils.Database(conn)
            try:
                return fn()
            finally:
                self._local.joined = None

        result: T = self._writes.run(work)
        return result

    # -- claiming -----------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None, crash_budget: int = 3
    ) -> list[Delivery]:
        """Take up to ``limit`` due deliveries (or ones whose lease expired) under a lease.

        A delivery whose lease expired for the ``crash_budget``-th time goes dead instead:
        whatever it does to workers, it must not take them down forever.
        """
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> list[Delivery]:
            # Expired leases first (their workers died), then what is due, most overdue first.
            # Each select walks a partial index and stops at ``limit``.
            ids = [row[0] for query in self._CLAIM_QUERIES for row in conn.execute(query, {"now": now, "limit": limit})][:limit]
            return self._take(conn, ids, owner, lease_seconds, now, crash_budget)

        claimed: list[Delivery] = self._grouped(work)
        return claimed

    def claim_ids(self, ids: Sequence[str], owner: str, lease_seconds: float, now: float | None = None) -> list[Delivery]:
        """Take these deliveries now if nobody holds a live lease on them (used by replay)."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(ids))
        with self._write() as conn:
            free = [
                row[0]
                for row in conn.execute(
                    f"""SELECT id FROM deliveries WHERE id IN ({marks})
                        AND (status != ? OR lease_until < ?)""",
                    (*ids, Status.PROCESSING, now),
                )
            ]
            return self._take(conn, free, owner, lease_seconds, now)

    def _take(
        self, conn: sqlite3.Connection, ids: list[str], owner: str, lease: float, now: float, crash_budget: int | None = None
    ) -> list[Delivery]:
        claimed = []
        for delivery_id in ids:
            before = conn.execute("SELECT status FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]
            if before == Status.PROCESSING:
                self._event(conn, delivery_id, "claim", "lease_expired", "previous worker stopped; taken over", now)
                crashes = conn.execute(_CRASHES, {"id": delivery_id}).fetchone()[0]
                if crash_budget is not None and crashes >= crash_budget:
                    self._bury(conn, delivery_id, f"its worker stopped {crashes} times while processing it", now)
                    continue
            conn.execute(
                """UPDATE deliveries SET status = ?, lease_owner = ?, lease_until = ?, updated_at = ?
                   WHERE id = ?""",
                (Status.PROCESSING, owner, now + lease, now, delivery_id),
            )
            claimed.append(self._load(conn, delivery_id))
        return claimed

    def lock_person(self, delivery_id: str, owner: str, keys: Sequence[str], now: float | None = None) -> bool:
        """Record who this delivery is about; False if that person is busy with another delivery.

        Intake already recorded the keys it could; the worker calls this after mapping, in
        case the keys changed, before any side effect.
        """
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> bool:
            self._check_lease(conn, delivery_id, owner, now)
            self._lock_keys(conn, keys)
            conn.execute("DELETE FROM person_keys WHERE delivery_id = ?", (delivery_id,))
            conn.executemany("INSERT INTO person_keys (delivery_id, key) VALUES (?, ?)", [(delivery_id, k) for k in keys])
            busy = conn.execute(
                f"SELECT EXISTS ({_PERSON_BUSY}) FROM deliveries AS d WHERE d.id = :id",
                {"now": now, "id": delivery_id},
            ).fetchone()[0]
            return not busy

        free: bool = self._grouped(work)
        return free

    def begin_attempt(self, delivery_id: str, owner: str, now: float | None = None) -> int:
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> int:
            self._check_lease(conn, delivery_id, owner, now)
            conn.execute("UPDATE deliveries SET attempts = attempts + 1, updated_at = ? WHERE id = ?", (now, delivery_id))
            attempts = conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]
            self._event(conn, delivery_id, "attempt", "started", f"attempt {attempts}", now)
            return int(attempts)

        attempts: int = self._grouped(work)
        return attempts

    def renew(self, delivery_id: str, owner: str, lease_seconds: float, now: float | None = None) -> None:
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> None:
            self._check_lease(conn, delivery_id, owner, now)
            conn.execute("UPDATE deliveries SET lease_until = ? WHERE id = ?", (now + lease_seconds, delivery_id))

        self._grouped(work)

    # -- steps and outcomes -------------------------------------------------------

    def steps(self, delivery_id: str) -> dict[str, dict[str, Any]]:
        rows = self._rows("SELECT step, result FROM steps WHERE delivery_id = ?", (delivery_id,))
        return {step: json.loads(result) for step, result in rows}

    def record_step(
        self, delivery_id: str, owner: str, step: str, result: dict[str, Any], detail: str = "", now: float | None = None
    ) -> None:
        """Checkpoint a finished step; only the lease holder may, so a stale worker cannot."""
        now = time.time() if now is None else now
        encoded = json.dumps(result, sort_keys=True, default=str)

        def work(conn: sqlite3.Connection) -> None:
            self._check_lease(conn, delivery_id, owner, now)
            conn.execute(
                """INSERT INTO steps (delivery_id, step, result, done_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (delivery_id, step) DO UPDATE SET result = excluded.result, done_at = excluded.done_at""",
                (delivery_id, step, encoded, now),
            )
            self._event(conn, delivery_id, step, "ok", detail, now)

        self._grouped(work)

    def note(self, delivery_id: str, step: str, outcome: str, detail: str = "", now: float | None = None) -> None:
        at = time.time() if now is None else now
        self._grouped(lambda conn: self._event(conn, delivery_id, step, outcome, detail, at))

    def finish(
        self,
        delivery_id: str,
        owner: str,
        status: Status,
        reason: str | None = None,
        step: str = "finish",
        now: float | None = None,
    ) -> None:
        """End a delivery as delivered, dead or rejected, and let go of its person."""
        assert status in FINAL
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> None:
            self._check_lease(conn, delivery_id, owner, now)
            conn.execute(
                """UPDATE deliveries SET status = ?, reason = ?, next_attempt_at = NULL, lease_owner = NULL,
                   lease_until = NULL, updated_at = ?,
                   last_error = CASE WHEN ? = 'delivered' THEN last_error ELSE COALESCE(?, last_error) END
                   WHERE id = ?""",
                (status, reason, now, status, reason, delivery_id),
            )
            self._event(conn, delivery_id, step, str(status), reason or "", now)

        self._grouped(work)

    def record_crash(
        self, delivery_id: str, owner: str, detail: str, budget: int, retry_at: float, now: float | None = None
    ) -> Status:
        """An exception escaped the pipeline: count it; dead once ``budget`` is spent, else retry at ``retry_at``."""
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> Status:
            self._check_lease(conn, delivery_id, owner, now)
            self._event(conn, delivery_id, "worker", "crashed", detail, now)
            crashes = conn.execute(_CRASHES, {"id": delivery_id}).fetchone()[0]
            if crashes >= budget:
                self._bury(conn, delivery_id, f"crashed the worker {crashes} times (last: {detail})", now)
                return Status.DEAD
            conn.execute(
                """UPDATE deliveries SET status = ?, next_attempt_at = ?, last_error = ?, lease_owner = NULL,
                   lease_until = NULL, updated_at = ? WHERE id = ?""",
                (Status.RETRYING, retry_at, f"crashed the worker: {detail}", now, delivery_id),
            )
            return Status.RETRYING

        outcome: Status = self._grouped(work)
        return outcome

    def _bury(self, conn: sqlite3.Connection, delivery_id: str, reason: str, now: float) -> None:
        conn.execute(
            """UPDATE deliveries SET status = ?, reason = ?, last_error = ?, next_attempt_at = NULL,
               lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?""",
            (Status.DEAD, reason, reason, now, delivery_id),
        )
        self._event(conn, delivery_id, "worker", str(Status.DEAD), reason, now)

    def retry_later(self, delivery_id: str, owner: str, at: float, error: str, step: str, now: float | None = None) -> None:
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> None:
            self._check_lease(conn, delivery_id, owner, now)
            conn.execute(
                """UPDATE deliveries SET status = ?, next_attempt_at = ?, last_error = ?, lease_owner = NULL,
                   lease_until = NULL, updated_at = ? WHERE id = ?""",
                (Status.RETRYING, at, error, now, delivery_id),
            )
            self._event(conn, delivery_id, step, "retrying", f"{error} (next attempt in {at - now:.0f}s)", now)

        self._grouped(work)

    def defer(
        self, delivery_id: str, owner: str, at: float, why: str, *, refund_attempt: bool = False, now: float | None = None
    ) -> None:
        """Put a claimed delivery back without counting an attempt (refund one already begun)."""
        now = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> None:
            self._check_lease(conn, delivery_id, owner, now)
            if refund_attempt:
                conn.execute(
                    "UPDATE deliveries SET attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE id = ?",
                    (delivery_id,),
                )
            attempts = conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]
            # A throttled attempt (refunded) stays visible as retrying, with what throttled it.
            conn.execute(
                """UPDATE deliveries SET status = ?, next_attempt_at = ?, lease_owner = NULL, lease_until = NULL,
                   last_error = CASE WHEN ? THEN ? ELSE last_error END, updated_at = ? WHERE id = ?""",
                (Status.RETRYING if attempts or refund_attempt else Status.RECEIVED, at, refund_attempt, why, now, delivery_id),
            )
            self._event(conn, delivery_id, "claim", "deferred", why, now)

        self._grouped(work)

    def requeue(self, delivery_id: str, now: float | None = None) -> str:
        """Make a delivery due again for replay; returns what happened ("requeued", "skipped: ...")."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(
                "SELECT status, lease_until, attempts, length(body) FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                return "skipped: no such delivery"
            status, lease_until, attempts, size = row
            if status == Status.DELIVERED:
                return "skipped: already delivered"
            if status == Status.PROCESSING and lease_until >= now:
                return "skipped: being processed"
            if not size:
                return "skipped: its body was purged"
            conn.execute(
                """UPDATE deliveries SET status = ?, next_attempt_at = ?, attempts = 0, reason = NULL,
                   lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?""",
                (Status.RETRYING, now, now, delivery_id),
            )
            self._event(conn, delivery_id, "replay", "requeued", f"was {status} after {attempts} attempt(s)", now)
            self._notify(conn)
        return "requeued"

    # -- identities ---------------------------------------------------------------

    def contact_for(self, key: str) -> str | None:
        """The CRM contact id already known for one identity ("email:…" or "phone:…")."""
        kind, _, value = key.partition(":")
        rows = self._rows("SELECT contact_id FROM identities WHERE kind = ? AND value = ?", (kind, value))
        return str(rows[0][0]) if rows else None

    def remember_contact(self, keys: Sequence[str], contact_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        rows = [(*key.split(":", 1), contact_id, now) for key in keys]
        self._grouped(
            lambda conn: conn.executemany(
                """INSERT INTO identities (kind, value, contact_id, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (kind, value) DO UPDATE SET contact_id = excluded.contact_id, updated_at = excluded.updated_at""",
                rows,
            )
        )

    # -- sales memory -------------------------------------------------------------

    def assigned_counts(self, pool: str) -> dict[str, int]:
        rows = self.db.execute("SELECT member, assigned FROM pool_assignments WHERE pool = ?", (pool,)).fetchall()
        return {member: int(n) for member, n in rows}

    def record_assignment(self, pool: str, member: str, delivery_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                """INSERT INTO pool_assignments (pool, member, assigned, last_delivery_id) VALUES (?, ?, 1, ?)
                   ON CONFLICT (pool, member)
                   DO UPDATE SET assigned = pool_assignments.assigned + 1, last_delivery_id = excluded.last_delivery_id""",
                (pool, member, delivery_id),
            )

    def raise_count(self, pool: str, member: str, count: int) -> None:
        """Start a newly added pool member at the pool's fair share, so they are not flooded."""
        with self._write() as conn:
            conn.execute(
                """INSERT INTO pool_assignments (pool, member, assigned) VALUES (?, ?, ?)
                   ON CONFLICT (pool, member) DO UPDATE SET assigned = CASE WHEN pool_assignments.assigned > excluded.assigned
                   THEN pool_assignments.assigned ELSE excluded.assigned END""",
                (pool, member, count),
            )

    def open_deal(self, contact_id: str, object_type: str) -> str | None:
        """The newest open deal (or lead) leadbridge created for this contact."""
        rows = self._rows(
            """SELECT record_id FROM deals WHERE contact_id = ? AND object_type = ? AND closed_at IS NULL
               ORDER BY created_at DESC LIMIT 1""",
            (contact_id, object_type),
        )
        return str(rows[0][0]) if rows else None

    def remember_deal(
        self, contact_id: str, object_type: str, record_id: str, delivery_id: str, now: float | None = None
    ) -> None:
        row = (contact_id, object_type, record_id, delivery_id, time.time() if now is None else now)
        self._grouped(
            lambda conn: conn.execute(
                """INSERT INTO deals (contact_id, object_type, record_id, delivery_id, created_at)
                   VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                row,
            )
        )

    def previous_delivery_at(self, delivery_id: str) -> float | None:
        """When this person's previous delivered lead arrived (for 'returning within N days')."""
        rows = self._rows(
            f"""SELECT max(other.received_at) FROM person_keys AS mine
                JOIN person_keys AS theirs ON theirs.key = mine.key AND theirs.delivery_id != mine.delivery_id
                JOIN deliveries AS other ON other.id = theirs.delivery_id
                JOIN deliveries AS d ON d.id = mine.delivery_id
                WHERE mine.delivery_id = ? AND other.rowid < d.rowid AND other.status = '{Status.DELIVERED}'""",
            (delivery_id,),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def queue_digest(self, delivery_id: str, channel: str, line: str, now: float | None = None) -> None:
        row = (delivery_id, channel, line, time.time() if now is None else now)
        self._grouped(
            lambda conn: conn.execute(
                "INSERT INTO digest_items (delivery_id, channel, line, queued_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                row,
            )
        )

    def digest_channels_waiting(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT channel FROM digest_items WHERE digest_id IS NULL ORDER BY channel").fetchall()
        return [str(r[0]) for r in rows]

    def start_digest(self, channel: str, day: str, now: float | None = None) -> tuple[int, list[str]] | None:
        """Claim the one digest of this channel and day, with the lines it covers; None if already claimed.

        The claim is written before anything is posted, so a restart never sends a day's
        digest twice (a crash between claim and post loses that digest instead; it shows
        as status 'sending' in the ledger).
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM digests WHERE channel = ? AND day = ?", (channel, day)).fetchone():
                return None
            digest_id = int(
                conn.execute(
                    "INSERT INTO digests (channel, day, status, started_at) VALUES (?, ?, 'sending', ?) RETURNING id",
                    (channel, day, now),
                ).fetchone()[0]
            )
            conn.execute("UPDATE digest_items SET digest_id = ? WHERE channel = ? AND digest_id IS NULL", (digest_id, channel))
            lines = [
                r[0] for r in conn.execute("SELECT line FROM digest_items WHERE digest_id = ? ORDER BY queued_at", (digest_id,))
            ]
        return digest_id, lines

    def abandon_digest(self, digest_id: int) -> None:
        """The post failed: release the claim and its leads so a later loop sends them."""
        with self._write() as conn:
            conn.execute("UPDATE digest_items SET digest_id = NULL WHERE digest_id = ?", (digest_id,))
            conn.execute("DELETE FROM digests WHERE id = ? AND status = 'sending'", (digest_id,))

    def finish_digest(self, digest_id: int, ts: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE digests SET status = 'sent', ts = ? WHERE id = ?", (ts, digest_id))

    def digests(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT id, channel, day, status, ts FROM digests ORDER BY id"))

    # -- reading ------------------------------------------------------------------

    def get(self, delivery_id: str) -> Delivery | None:
        return self._get(self.db.conn, delivery_id)

    def events(self, delivery_id: str) -> list[dict[str, Any]]:
        return list(
            self.db.query("SELECT at, step, outcome, detail FROM events WHERE delivery_id = ? ORDER BY id", [delivery_id])
        )

    def deliveries(
        self,
        *,
        status: str | None = None,
        source: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("status", status), ("source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE {' AND '.join(where)} ORDER BY received_at DESC LIMIT ?"
        return [Delivery.from_row(row) for row in self.db.query(sql, [*params, limit])]

    def written_since_last_look(self) -> bool:
        """Whether another connection committed since this thread last asked (SQLite's data_version)."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != getattr(self._local, "data_version", version)
        self._local.data_version = version
        return bool(changed)

    def due_now(self, now: float | None = None) -> bool:
        """Whether anything can be claimed now: a cheap read, two index probes."""
        now = time.time() if now is None else now
        row = self.db.execute(
            f"""SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_waiting WHERE {_WAITING_DUE})
                OR EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_leased WHERE {_LEASE_EXPIRED})""",
            {"now": now},
        ).fetchone()
        return bool(row[0])

    def next_due_at(self) -> float | None:
        """When the earliest waiting delivery falls due (an expired lease counts as due now)."""
        row = self.db.execute(
            """SELECT min(CASE WHEN status = ? THEN lease_until ELSE next_attempt_at END)
               FROM deliveries WHERE status IN (?, ?, ?)""",
            (Status.PROCESSING, *DUE, Status.PROCESSING),
        ).fetchone()
        return float(row[0]) if row[0] is not None else None

    def counts(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in self.db.query("SELECT status, count(*) AS n FROM deliveries GROUP BY status")}

    # -- internals ----------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, delivery_id: str) -> Delivery | None:
        row = conn.execute(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        if row is None:
            return None
        return Delivery.from_row(dict(zip(_DELIVERY_FIELDS, row, strict=True)))

    def _load(self, conn: sqlite3.Connection, delivery_id: str) -> Delivery:
        delivery = self._get(conn, delivery_id)
        if delivery is None:
            raise LookupError(f"delivery {delivery_id} vanished inside a transaction")
        return delivery

    def _check_lease(self, conn: sqlite3.Connection, delivery_id: str, owner: str, now: float) -> None:
        row = conn.execute(
            f"SELECT lease_owner, lease_until FROM deliveries WHERE id = ?{self._ROW_LOCK}", (delivery_id,)
        ).fetchone()
        if row is None or row[0] != owner or row[1] is None or row[1] < now:
            raise LeaseLostError(f"lease on {delivery_id} is no longer held by this worker")

    @staticmethod
    def _event(conn: sqlite3.Connection, delivery_id: str, step: str, outcome: str, detail: str, now: float) -> None:
        conn.execute(
            "INSERT INTO events (delivery_id, at, step, outcome, detail) VALUES (?, ?, ?, ?, ?)",
            (delivery_id, now, step, outcome, detail),
        )

    # -- heartbeats ---------------------------------------------------------------

    def beat(self, worker: str, started_at: float, now: float | None = None) -> None:
        """Record that this worker's loop is alive; forget workers silent for a day."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                """INSERT INTO heartbeats (worker, started_at, at) VALUES (?, ?, ?)
                   ON CONFLICT (worker) DO UPDATE SET at = excluded.at""",
                (worker, started_at, now),
            )
            conn.execute("DELETE FROM heartbeats WHERE at < ?", (now - 86400,))

    def last_heartbeat(self) -> float | None:
        """When any worker last showed it was alive."""
        row = self.db.execute("SELECT max(at) FROM heartbeats").fetchone()
        return float(row[0]) if row[0] is not None else None

    def probe_write(self) -> None:
        """Take the write lock and let go, writing nothing: raises one of ``errors`` if writes would fail."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")

    def backlog(self, now: float | None = None) -> dict[str, float | int]:
        """What waits: unfinished deliveries, how overdue the oldest due one is, dead letters."""
        now = time.time() if now is None else now
        # Three index lookups, not a scan of every delivery ever received: this runs on every
        # heartbeat, /readyz and /metrics scrape.
        row = self.db.execute(
            f"""SELECT
                  (SELECT count(*) FROM deliveries
                   WHERE status IN ('{Status.RECEIVED}', '{Status.RETRYING}', '{Status.PROCESSING}')),
                  (SELECT min(next_attempt_at) FROM deliveries INDEXED BY deliveries_waiting WHERE {_WAITING_DUE}),
                  (SELECT count(*) FROM deliveries WHERE status = '{Status.DEAD}')""",
            {"now": now},
        ).fetchone()
        oldest = max(0.0, now - row[1]) if row[1] is not None else 0.0
        return {"queue_depth": int(row[0]), "oldest_due_age_seconds": round(oldest, 3), "dead": int(row[2])}

    def count_intake(self, source: str, outcome: str, code: int) -> None:
        """Count a request that made no new delivery (a duplicate, a refusal)."""
        self._grouped(
            lambda conn: conn.execute(
                """INSERT INTO intake_counts (source, outcome, code, n) VALUES (?, ?, ?, 1)
                   ON CONFLICT (source, outcome, code) DO UPDATE SET n = intake_counts.n + 1""",
                (source, outcome, code),
            ),
            self._intake,
        )

    def intake_counts(self) -> list[tuple[str, str, int, int]]:
        rows = self.db.execute("SELECT source, outcome, code, n FROM intake_counts ORDER BY source, outcome, code")
        return [(str(s), str(o), int(c), int(n)) for s, o, c, n in rows]

    # The dead letters nobody was told about yet: the newest 'dead' event has no alert after
    # it, or only a failed one. A replay that dies again writes a new 'dead' event: a new incident.
    _UNALERTED = f"""
        SELECT d.id, d.source, d.reason, e.step FROM deliveries AS d
        JOIN events AS e ON e.id = (SELECT max(id) FROM events WHERE delivery_id = d.id AND outcome = '{Status.DEAD}')
        WHERE d.status = '{Status.DEAD}' AND COALESCE((
            SELECT a.outcome FROM events AS a WHERE a.delivery_id = d.id AND a.step = 'alert' AND a.id > e.id
            ORDER BY a.id DESC LIMIT 1), 'failed') = 'failed'
        ORDER BY e.id LIMIT :limit"""

    def claim_dead_letters(self, limit: int = 1000, now: float | None = None) -> list[dict[str, Any]]:
        """Take the dead letters not yet alerted (id, source, reason, step), marking each 'sending'.

        Marked in the same transaction that found them, so two workers never alert one twice.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(self._UNALERTED, {"limit": limit})
            rows = [dict(zip([c[0] for c in cursor.description], row, strict=True)) for row in cursor.fetchall()]
            for row in rows:
                self._event(conn, row["id"], "alert", "sending", "", now)
        return rows

    # -- metrics (read at scrape time, so every process reports the same numbers) ---

    def counts_by_source(self) -> list[tuple[str, str, int]]:
        rows = self.db.execute("SELECT source, status, count(*) FROM deliveries GROUP BY source, status ORDER BY 1, 2")
        return [(str(s), str(st), int(n)) for s, st, n in rows]

    def returning_contacts(self, since: float = 0.0) -> list[tuple[str, int]]:
        """Per source, deliveries received since ``since`` that updated a contact the CRM already
        had (a person's duplicate prevented)."""
        rows = self.db.execute(
            """SELECT d.source, count(*) FROM steps AS s JOIN deliveries AS d ON d.id = s.delivery_id
               WHERE s.step = 'contact' AND d.received_at >= ?
               AND CAST(json_extract(s.result, '$.created') AS TEXT) IN ('0', 'false')
               GROUP BY d.source ORDER BY 1""",
            (since,),
        )
        return [(str(s), int(n)) for s, n in rows]

    def speed_to_lead(self, bounds: Sequence[float]) -> list[tuple[str, str, list[int], int, float]]:
        """Seconds from receipt to the Slack message, per source and segment: a cumulative count
        at or under each bound, the total count and the sum (a Prometheus histogram's parts)."""
        under = ", ".join(f"sum(CASE WHEN seconds <= {float(b)!r} THEN 1 ELSE 0 END)" for b in bounds)
        rows = self.db.execute(
            f"""WITH posted AS ({_POSTED})
                SELECT source, segment, count(*), sum(seconds), {under} FROM posted GROUP BY 1, 2 ORDER BY 1, 2"""
        ).fetchall()
        return [(str(r[0]), str(r[1]), [int(v) for v in r[4:]], int(r[2]), float(r[3])) for r in rows]

    def volume_by_day(self, since: float) -> list[tuple[str, str, str, int]]:
        """(UTC day, source, status, count) of deliveries received since ``since``."""
        rows = self.db.execute(
            """SELECT date(received_at, 'unixepoch'), source, status, count(*) FROM deliveries
               WHERE received_at >= ? GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
            (since,),
        )
        return [(str(d), str(s), str(st), int(n)) for d, s, st, n in rows]

    def speed_to_lead_seconds(self, since: float) -> list[float]:
        """Receipt to Slack message, for each lead received since ``since`` that got one."""
        rows = self.db.execute(f"SELECT seconds FROM ({_POSTED}) AS posted WHERE received_at >= ? ORDER BY 1", (since,))
        return [float(r[0]) for r in rows]

    # -- incidents ----------------------------------------------------------------

    def open_incident(self, key: str, cleared_text: str, now: float | None = None) -> bool:
        """Open an incident unless one with this key is open; True for the caller that opened it."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO incidents (key, opened_at, cleared_text) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (key, time.time() if now is None else now, cleared_text),
            )
        return cursor.rowcount == 1

    def close_incident(self, key: str, now: float | None = None) -> bool:
        """Close the open incident with this key; True for the caller that closed it."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE incidents SET closed_at = ? WHERE key = ? AND closed_at IS NULL",
                (time.time() if now is None else now, key),
            )
        return cursor.rowcount == 1

    def open_incidents(self) -> dict[str, str]:
        """Open incidents: key -> the message that will announce their end."""
        return dict(self.db.execute("SELECT key, cleared_text FROM incidents WHERE closed_at IS NULL").fetchall())

    def recent_errors(self, since: float) -> list[str]:
        """Last errors of deliveries waiting to retry or dead, touched since then (for condition
        alerts; never shown as is). Looked up by status: a delivered lead's old error says nothing now."""
        rows = self.db.execute(
            f"""SELECT last_error FROM deliveries WHERE status IN ('{Status.RETRYING}', '{Status.DEAD}')
                AND updated_at >= ? AND last_error IS NOT NULL""",
            (since,),
        )
        return [str(r[0]) for r in rows]

    def last_received(self, source: str, since: float) -> float | None:
        """When the source's newest delivery since ``since`` arrived (the received_at index, newest first)."""
        row = self.db.execute(
            "SELECT received_at FROM deliveries WHERE source = ? AND received_at >= ? ORDER BY received_at DESC LIMIT 1",
            (source, since),
        ).fetchone()
        return float(row[0]) if row else None

    def received_times(self, source: str, since: float) -> list[float]:
        rows = self.db.execute(
            "SELECT received_at FROM deliveries WHERE source = ? AND received_at >= ? ORDER BY received_at", (source, since)
        )
        return [float(r[0]) for r in rows]

    # -- contact memory -----------------------------------------------------------

    def contact_memory(self, contact_id: str) -> dict[str, str] | None:
        """What HubSpot holds for this contact's remembered properties, as far as the relay knows;
        None when the relay has never written (or read) the contact since it kept memory."""
        row = self.db.execute("SELECT properties FROM contact_memory WHERE contact_id = ?", (contact_id,)).fetchone()
        return dict(json.loads(row[0])) if row else None

    def remember_contact_state(self, contact_id: str, properties: dict[str, str], now: float | None = None) -> None:
        """Replace the memory of one contact with what a write just left in HubSpot."""
        row = (contact_id, json.dumps(properties, sort_keys=True), time.time() if now is None else now)
        self._grouped(
            lambda conn: conn.execute(
                """INSERT INTO contact_memory (contact_id, properties, updated_at) VALUES (?, ?, ?)
                   ON CONFLICT (contact_id) DO UPDATE SET properties = excluded.properties, updated_at = excluded.updated_at""",
                row,
            )
        )

    # -- HubSpot truth (bridge/crm_events.py; call inside exclusive()) -------------

    def first_time_crm_event(self, key: str, now: float) -> bool:
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO crm_events (key, at) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, now))
            conn.execute("DELETE FROM crm_events WHERE at < ?", (now - 30 * 86400,))  # HubSpot retries for 24 h
        return cursor.rowcount == 1

    def forget_contact_id(self, contact_id: str, now: float) -> None:
        """A contact deleted in HubSpot: no identity points at it, its deals are closed."""
        with self._write() as conn:
            conn.execute("DELETE FROM identities WHERE contact_id = ?", (contact_id,))
            conn.execute("DELETE FROM contact_memory WHERE contact_id = ?", (contact_id,))
            conn.execute("UPDATE deals SET closed_at = ? WHERE contact_id = ? AND closed_at IS NULL", (now, contact_id))

    def merge_contact_ids(self, merged: Sequence[str], survivor: str) -> None:
        """Contacts merged in HubSpot: what pointed at a merged-away id points at the survivor."""
        with self._write() as conn:
            for old in merged:
                conn.execute("UPDATE identities SET contact_id = ? WHERE contact_id = ?", (survivor, old))
                conn.execute("UPDATE deals SET contact_id = ? WHERE contact_id = ?", (survivor, old))
                # What was written to the merged-away contact says nothing sure about the survivor.
                conn.execute("DELETE FROM contact_memory WHERE contact_id IN (?, ?)", (old, survivor))

    def set_deal_stage(self, record_id: str, stage: str, *, closed: bool, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                """UPDATE deals SET stage = CASE WHEN ? = '' THEN stage ELSE ? END,
                   closed_at = CASE WHEN ? THEN COALESCE(closed_at, ?) ELSE NULL END WHERE record_id = ?""",
                (stage, stage, closed, now, record_id),
            )
