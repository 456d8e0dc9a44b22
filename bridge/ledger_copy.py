"""``leadbridge copy-ledger``: a SQLite ledger's rows into a PostgreSQL one, so a user who outgrows
SQLite keeps every delivery, step, event and memory (README, "The ledger on PostgreSQL")."""

from __future__ import annotations

from .ledger import Ledger
from .ledger_pg import PostgresLedger

# Parents before children (foreign keys); the rest in any order.
_COPY_FIRST = ("deliveries", "digests")


def copy_sqlite_ledger(source: Ledger, target: PostgresLedger, batch: int = 1000) -> dict[str, int]:
    """Copy every row of a SQLite ledger into a PostgreSQL one; rows copied per table.

    Idempotent: a row already there (same primary key) is brought up to date, never doubled,
    and the event log's rows, append-only, are only ever added. Ids keep their values
    (SQLite's rowid becomes the deliveries' ``rowid``, so one person's order survives) and
    each id sequence moves past the largest copied. Run it with the relay stopped, then
    switch ``ledger.url`` on; run it again to pick up what arrived in between.
    """
    sqlite = source.db.conn
    names = [
        str(r[0]) for r in sqlite.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '%migrations'")
    ]
    tables = [*[t for t in _COPY_FIRST if t in names], *sorted(t for t in names if t not in _COPY_FIRST)]
    copied: dict[str, int] = {}
    for table in tables:
        info = sqlite.execute(f"PRAGMA table_info({table})").fetchall()
        columns = [str(c[1]) for c in info]
        keys = [str(c[1]) for c in sorted(info, key=lambda c: c[5]) if c[5]]
        if table == "deliveries":
            columns = ["rowid", *columns]  # SQLite's implicit arrival order, a column on PostgreSQL
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        conflict = "DO NOTHING" if table == "events" or not updates else f"DO UPDATE SET {updates}"
        insert = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT ({', '.join(keys)}) {conflict}"
        )
        rows = sqlite.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")
        copied[table] = 0
        while chunk := rows.fetchmany(batch):
            with target._transaction(lock=False) as db:
                db.executemany(insert, chunk)
            copied[table] += len(chunk)
    with target._transaction(lock=True) as db:
        for table, column in (("deliveries", "rowid"), ("events", "id"), ("digests", "id"), ("incidents", "id")):
            sequence = f"pg_get_serial_sequence('{table}', '{column}')"
            db.execute(f"SELECT setval({sequence}, COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)")
    return copied
