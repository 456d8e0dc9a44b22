"""The ledger on PostgreSQL (``ledger.url: postgresql://…``): the same ``Ledger``, other connections.

Every method's SQL is the ledger's own, written in what SQLite and PostgreSQL both speak
(``ON CONFLICT``, ``RETURNING``, ``CASE``); ``translate`` turns the few SQLite spellings left
(``?`` and ``:name`` placeholders, ``json_extract``, ``INDEXED BY`` hints) into PostgreSQL's.
What differs is how writers meet, and that is this module:

- **No single writer.** SQLite has one write lock, which the ledger shares out by group
  commit; PostgreSQL locks rows, so intake's inserts and the workers' checkpoints never wait
  for each other, and each write is its own short transaction from a pool (a commit still
  means the WAL is flushed: ``synchronous_commit`` stays on, so a 2xx still means on disk).
- **Claims** take due rows ``FOR UPDATE SKIP LOCKED``, so workers on any number of machines
  never take one delivery twice nor wait for each other's candidates.
- **One person at a time**: the same person-key rule as on SQLite (an earlier unfinished
  delivery, or one under a live lease, blocks a person's next); where two transactions could
  both decide in the gap SQLite's lock closed (two deliveries stored under the same key,
  two workers locking the same new person), each first takes a transaction advisory lock
  on the keys involved, in sorted order.
- **What SQLite ran under its write lock** (``exclusive()``, ``atomically()``: a routing
  turn read, picked and recorded; claiming dead letters, digests, incidents, polls) runs
  under one transaction advisory lock, so it stays one-at-a-time across every process.
- **Fencing**: a lease check locks its delivery's row (``FOR UPDATE``) until its write commits.
- **Wake-ups**: a new or replayed delivery sends ``NOTIFY``; a worker ``LISTEN``s, so it is
  woken in milliseconds instead of reading SQLite's ``data_version``.
- **Intake's write** is one server-side function (``ACCEPT_FUNCTION``): one round trip.
- **Migrations**: the same list as SQLite's, applied in one transaction under an advisory
  lock, so processes starting together apply each exactly once.
- **The rate limits' counters** (``PgLimitStore``) live in the same database, so every
  process on every machine spends one HubSpot call budget.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .ledger import _DUE, _EXPIRED_LEASES, MIGRATIONS, Arrival, Ledger, Status
from .ratelimit import LimitStore

T = TypeVar("T")

CHANNEL = "leadbridge_deliveries"
# Advisory lock ids (any constant both sides agree on): migrations, and SQLite's write lock's stand-in.
_MIGRATE_LOCK = 0x1EAD_0001
_WRITE_LOCK = 0x1EAD_0002
_LIMITS_LOCK = 0x1EAD_0003

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\s+INDEXED BY \w+"), ""),
    (re.compile(r"json_extract\(([\w.]+), '\$\.(\w+)'\)"), r"(\1::jsonb ->> '\2')"),
    (re.compile(r"json_each\((:\w+)\)"), r"jsonb_array_elements_text(CAST(\1 AS jsonb))"),
    (re.compile(r"\binstr\("), "strpos("),
    (re.compile(r"CAST\(body AS TEXT\)"), "encode(body, 'escape')"),
    (re.compile(r"date\(([\w.]+), 'unixepoch'\)"), r"to_char(to_timestamp(\1) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
]
# Intake's write, ``Ledger.accept`` on SQLite, as one function, so a webhook costs one round
# trip and one implicit transaction instead of eight (BEGIN, key locks, the duplicate check,
# the three inserts, NOTIFY, COMMIT): measured in-process, 5.0 ms of intake CPU a request
# against SQLite's 2.6. Keep it in step with ``Ledger._store``.
ACCEPT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION leadbridge_accept(
    new_id TEXT, src TEXT, keys TEXT[], raw BYTEA, kind TEXT, headers_json TEXT, version TEXT, at DOUBLE PRECISION,
    persons TEXT[], received TEXT
) RETURNS TABLE (delivery_id TEXT, created BOOLEAN) AS $$
DECLARE
    found TEXT;
    k TEXT;
BEGIN
    FOR k IN SELECT DISTINCT unnest(keys) ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('delivery:' || src || ':' || k, 0));
    END LOOP;
    SELECT d.id INTO found FROM deliveries AS d WHERE d.source = src AND d.idem_key = ANY(keys) ORDER BY d.rowid LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN QUERY SELECT found, false;
        RETURN;
    END IF;
    INSERT INTO deliveries (id, source, idem_key, status, received_at, content_type, headers, body, config_version,
                            next_attempt_at, updated_at)
        VALUES (new_id, src, keys[1], received, at, kind, headers_json, raw, version, at, at);
    INSERT INTO person_keys (delivery_id, key) SELECT new_id, p FROM unnest(persons) AS p;
    INSERT INTO events (delivery_id, at, step, outcome, detail)
        VALUES (new_id, at, 'intake', 'received', length(raw) || ' bytes');
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN QUERY SELECT new_id, true;
END $$ LANGUAGE plpgsql"""
_LITERAL = re.compile(r"('(?:[^']|'')*')")
_NAMED = re.compile(r"(?<!:):([A-Za-z_]\w*)")

_DDL_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """The ledger's SQL in PostgreSQL's spelling (placeholders as psycopg's ``%s``/``%(name)s``)."""
    for pattern, replacement in _RULES:
        sql = pattern.sub(replacement, sql)
    parts = _LITERAL.split(sql.replace("%", "%%"))
    for i in range(0, len(parts), 2):  # outside string literals
        parts[i] = _NAMED.sub(r"%(\1)s", parts[i].replace("?", "%s"))
    return "".join(parts)


class Result:
    """A statement's rows. Outside a transaction they are read at once, so the connection can
    go back to the pool; inside one (pipeline mode) only when asked for, so statements whose
    results nobody reads (the inserts and updates of a checkpoint) cost no round trip of
    their own: they travel with the next read, or with the COMMIT."""

    def __init__(self, cursor: psycopg.Cursor[Any], transaction: PgDatabase | None = None) -> None:
        self._cursor = cursor
        self._transaction = transaction
        self._rows: list[Any] | None = None
        self._next = 0
        if transaction is None:
            self._load()

    def _load(self) -> list[Any]:
        if self._rows is None:
            if self._transaction is not None:
                self._transaction.sync()
            cursor = self._cursor
            self._rowcount, self._description = cursor.rowcount, cursor.description
            self._rows = cursor.fetchall() if cursor.description is not None else []
        return self._rows

    @property
    def rowcount(self) -> int:
        self._load()
        return self._rowcount

    @property
    def description(self) -> Any:
        self._load()
        return self._description

    def fetchone(self) -> Any:
        rows = self._load()
        if self._next >= len(rows):
            return None
        self._next += 1
        return rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rows = self._load()
        rest, self._next = rows[self._next :], len(rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PgDatabase:
    """What the ledger's methods call as ``self.db`` (and ``conn`` inside a transaction): ``execute``,
    ``executemany`` and ``query``, on one connection (a transaction) or on any from the pool."""

    def __init__(
        self, pool: ConnectionPool[Any], conn: psycopg.Connection[Any] | None = None, pipeline: psycopg.Pipeline | None = None
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._pipeline = pipeline

    @property
    def conn(self) -> PgDatabase:
        return self

    def sync(self) -> None:
        """Wait for what this transaction sent so far; once it has ended, its results are all in."""
        if self._pipeline is not None:
            self._pipeline.sync()

    def commit(self) -> None:
        """Statements outside a transaction commit as they run (autocommit), as SQLite's do here."""

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._conn is not None:
            yield self._conn
        else:
            with self._pool.connection() as conn:
                yield conn

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Result:
        if self._conn is not None and self._pipeline is not None:
            cursor = self._conn.cursor()
            cursor.execute(translate(sql), params)
            return Result(cursor, self)
        with self._connection() as conn, conn.cursor() as cursor:
            cursor.execute(translate(sql), params)
            return Result(cursor)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Result:
        with self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(translate(sql), list(rows))
            return Result(cursor)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Iterator[dict[str, Any]]:
        result = self.execute(sql, params)
        names = [column.name for column in result.description or ()]
        for row in result:
            yield dict(zip(names, row, strict=True))


class PgSchema:
    """What a migration is given on PostgreSQL: ``execute`` with SQLite's column types translated."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str) -> None:
        for pattern, replacement in _DDL_RULES:
            sql = pattern.sub(replacement, sql)
        self._conn.execute(sql.encode())

    def column_names(self, table: str) -> set[str]:
        rows = self._conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = current_schema()",
            (table,),
        ).fetchall()
        return {str(r[0]) for r in rows}

    def append_only(self, table: str) -> None:
        """No UPDATE, and no DELETE but inside an erasure (``leadbridge.erasing`` set for its transaction)."""
        self._conn.execute(
            f"""CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger AS $$
                BEGIN
                    IF TG_OP = 'DELETE' AND current_setting('leadbridge.erasing', true) = 'on' THEN RETURN OLD; END IF;
                    RAISE EXCEPTION '{table} are append-only';
                END $$ LANGUAGE plpgsql""".encode()
        )
        self._conn.execute(
            f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {table}_append_only()""".encode()
        )


def _applied(conn: psycopg.Connection[Any]) -> list[str]:
    if conn.execute("SELECT to_regclass('_leadbridge_migrations')").fetchone() == (None,):
        return []
    return [str(r[0]) for r in conn.execute("SELECT name FROM _leadbridge_migrations ORDER BY seq")]


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the pending migrations in one transaction under an advisory lock; the names applied."""
    done: list[str] = []
    applied = set(_applied(conn))
    if all(step.__name__ in applied for step in MIGRATIONS):
        return done  # nothing to write: a read-only database still opens
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS _leadbridge_migrations (
                   seq BIGINT GENERATED ALWAYS AS IDENTITY, name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"""
        )
        applied = set(_applied(conn))
        for step in MIGRATIONS:
            if step.__name__ not in applied:
                step(PgSchema(conn))
                conn.execute("INSERT INTO _leadbridge_migrations (name, applied_at) VALUES (%s, now())", (step.__name__,))
                done.append(step.__name__)
    return done


def migration_state(url: str, password: str | None = None) -> tuple[list[str], list[str]]:
    """(applied, pending) migration names of the database at ``url``, in order, writing nothing."""
    with psycopg.connect(url, password=password, autocommit=True) as conn:
        applied = _applied(conn)
    return applied, [step.__name__ for step in MIGRATIONS if step.__name__ not in applied]


# Claims: the same queries as SQLite's, taking the rows they return (and skipping rows another
# worker's claim holds) instead of relying on one writer.
_SKIP_LOCKED = " FOR UPDATE OF d SKIP LOCKED"


# Held until closed: a pool dropped unclosed may be collected on one of its own threads, which
# cannot join itself.
_OPEN: set[PostgresLedger | PgLimitStore] = set()


def close_ledgers(url: str | None = None) -> None:
    """Close the pools of every ledger and limits store this process opened (on ``url``): a clean
    exit, or a test's end."""
    for opened in list(_OPEN):
        if url is None or opened.url == url:
            opened.close()


def _open_pool(owner: PostgresLedger | PgLimitStore, password: str | None, timeout: float, size: int) -> ConnectionPool[Any]:
    """``owner``'s pool on its database, migrated, and the owner kept until it is closed."""
    options = {"autocommit": True, "password": password}
    pool: ConnectionPool[Any] = ConnectionPool(owner.url, min_size=1, max_size=size, kwargs=options, timeout=timeout, open=True)
    _OPEN.add(owner)
    with pool.connection() as conn:
        migrate(conn)
    return pool


class PgLimitStore(LimitStore):
    """The rate limits' counters in the PostgreSQL ledger's database: one HubSpot call budget
    (and one set of intake limits) for every process on every machine. Each decision is one
    short transaction under an advisory lock, as SQLite's is under its write lock."""

    errors = (psycopg.Error, PoolTimeout)

    def __init__(self, url: str, password: str | None, busy_timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.timeout = busy_timeout_seconds
        self._pool = _open_pool(self, password, busy_timeout_seconds, 4)

    def close(self) -> None:
        _OPEN.discard(self)
        self._pool.close()

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return list(PgDatabase(self._pool).execute(sql, params).fetchall())

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LIMITS_LOCK,))
            yield PgDatabase(self._pool, conn)


class PostgresLedger(Ledger):
    errors = (psycopg.Error, PoolTimeout)
    _ROW_LOCK = " FOR UPDATE"
    _CLAIM_QUERIES = (_EXPIRED_LEASES + _SKIP_LOCKED, _DUE + _SKIP_LOCKED)

    def __init__(self, url: str, password: str | None = None, busy_timeout: float = 10.0, pool_size: int = 10) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        # No group commit: row locks, not one writer (``_grouped`` ignores the group it is given).
        self._intake = self._writes = cast(Any, None)
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        self._password = password
        self._pool = _open_pool(self, password, busy_timeout, pool_size)

    def close(self) -> None:
        _OPEN.discard(self)
        self._pool.close()
        if self._listener is not None:
            self._listener.close()

    @property
    def db(self) -> Any:
        joined = getattr(self._local, "joined", None)
        return joined if joined is not None else PgDatabase(self._pool)

    @contextmanager
    def _transaction(self, lock: bool) -> Iterator[PgDatabase]:
        """A transaction on one pooled connection, every ledger call on this thread joining it."""
        joined = getattr(self._local, "joined", None)
        if joined is not None:
            yield joined
            return
        db: PgDatabase | None = None
        try:
            with self._pool.connection() as conn, conn.pipeline() as pipeline, conn.transaction():
                if lock:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                db = self._local.joined = PgDatabase(self._pool, conn, pipeline)
                yield db
        finally:
            self._local.joined = None
            if db is not None:
                db._pipeline = None  # closing the pipeline received every result: nothing to wait for

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._transaction(lock=True) as db:
            yield db

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # The pool already shares connections between threads, in a transaction or not.
        return list(self.db.execute(sql, params).fetchall())

    def _grouped(self, work: Callable[[Any], Any], group: Any = None) -> Any:
        with self._transaction(lock=False) as db:
            return work(db)

    def atomically(self, fn: Callable[[], T]) -> T:
        with self._transaction(lock=True):
            return fn()

    def _store(self, new: Arrival) -> tuple[str, bool]:
        """One call of ``leadbridge_accept`` (ACCEPT_FUNCTION), its own transaction."""
        row = self.db.execute(
            "SELECT delivery_id, created FROM leadbridge_accept(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (new.id, new.source, new.keys, new.body, new.content_type, new.headers, new.config_version, new.at,
             new.person_keys, str(Status.RECEIVED)),
        ).fetchone()  # fmt: skip
        return str(row[0]), bool(row[1])

    def _lock_keys(self, conn: Any, keys: Sequence[str]) -> None:
        for key in sorted(set(keys)):
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    def _notify(self, conn: Any) -> None:
        conn.execute(f"SELECT pg_notify('{CHANNEL}', '')")

    def written_since_last_look(self) -> bool:
        """Whether a delivery was stored or replayed since the last call (``LISTEN``; the first call starts listening)."""
        with self._listen_lock:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = psycopg.connect(self.url, password=self._password, autocommit=True)
                    self._listener.execute(f"LISTEN {CHANNEL}")
                    return True
                return any(True for _ in self._listener.notifies(timeout=0))
            except psycopg.Error:
                # The server went away: listen again next time; meanwhile say yes, so the worker claims.
                if self._listener is not None:
                    self._listener.close()
                return True

    def probe_write(self) -> None:
        """Raise unless a transaction begun now could write (a standby, or a database set read-only, cannot)."""
        with self._pool.connection() as conn, conn.transaction():
            if conn.execute("SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery()").fetchone() != (
                False,
            ):
                raise psycopg.errors.ReadOnlySqlTransaction("the ledger's database takes no writes")

    def _events_deletable(self, conn: Any, deletable: bool) -> None:
        conn.execute("SELECT set_config('leadbridge.erasing', ?, true)", ("on" if deletable else "off",))

    @contextmanager
    def _erasing(self, removed: Any, *, truncate_wal: bool = True) -> Iterator[Any]:
        # Deleted rows stay in PostgreSQL's files until VACUUM reuses their space: not "file clean".
        removed.file_clean = False
        with self._write() as conn:
            yield conn
