"""The ledger's side of retention and erasure (bridge/retention.py): emptying old deliveries of
personal data, and erasing one person, so the bytes are gone from the ledger file itself.

Both run with SQLite's ``secure_delete`` and then truncate the WAL, so the erased bytes are
overwritten in the file, not merely unlinked (SQLite otherwise leaves deleted rows in free
pages and old WAL frames). The event log is append-only by trigger; erasure is the one
exception, and drops and recreates the trigger inside its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from .ledger_base import EVENTS_APPEND_ONLY, LedgerBase, marks

# Truncating the WAL waits this long at most for other processes' readers.
_CHECKPOINT_BUSY_MS = 200


@dataclass
class Removed:
    """What a purge or forget removed, counted (never named)."""

    deliveries: int = 0
    bodies: int = 0
    steps: int = 0  # deleted, or for a purge emptied of the lead
    events: int = 0
    person_keys: int = 0
    identities: int = 0
    deals: int = 0
    contact_memory: int = 0  # what the relay remembers writing to their contacts
    digest_lines: int = 0
    # False when another process held the ledger open, so old copies may remain in the WAL
    # until its next checkpoint; run again when the relay is idle to be sure.
    file_clean: bool = True

    def summary(self) -> dict[str, int | bool]:
        return asdict(self)


class BusyPersonError(Exception):
    """The person has a delivery being processed right now; erasing it mid-flight could resurrect it."""


class RetentionLedger(LedgerBase):
    def _events_deletable(self, conn: sqlite3.Connection, deletable: bool) -> None:
        """Let this transaction delete events (an erasure), or make the log append-only again."""
        if deletable:
            conn.execute("DROP TRIGGER events_no_delete")
        else:
            conn.execute(f"CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN {EVENTS_APPEND_ONLY}; END")

    def purge_finished(self, before: float, personal_steps: Sequence[str], *, truncate_wal: bool = True) -> Removed:
        """Empty the bodies, headers, person keys, digest lines and ``personal_steps`` checkpoints of
        deliveries finished before ``before``, and drop identities not seen since, in one transaction.

        ``truncate_wal=False`` (the worker's daily run) never waits on readers at all.
        """
        from .ledger import FINAL  # ledger.py imports this module

        finished = ", ".join(f"'{s}'" for s in FINAL)
        old = f"SELECT id FROM deliveries WHERE status IN ({finished}) AND updated_at < :before"
        steps = {f"step{n}": step for n, step in enumerate(personal_steps)}
        removed = Removed(file_clean=truncate_wal)
        with self._erasing(removed, truncate_wal=truncate_wal) as conn:
            removed.bodies = conn.execute(
                f"UPDATE deliveries SET body = :empty, headers = '{{}}' WHERE id IN ({old}) AND length(body) > 0",
                {"before": before, "empty": b""},
            ).rowcount
            removed.steps = conn.execute(
                f"""UPDATE steps SET result = '{{"purged": true}}' WHERE delivery_id IN ({old})
                    AND step IN ({", ".join(f":{name}" for name in steps) or "NULL"}) AND result != '{{"purged": true}}'""",
                {"before": before, **steps},
            ).rowcount
            removed.person_keys = conn.execute(
                f"DELETE FROM person_keys WHERE delivery_id IN ({old})", {"before": before}
            ).rowcount
            removed.digest_lines = conn.execute(
                f"UPDATE digest_items SET line = '' WHERE delivery_id IN ({old}) AND digest_id IS NOT NULL AND line != ''",
                {"before": before},
            ).rowcount
            removed.identities = conn.execute("DELETE FROM identities WHERE updated_at < ?", (before,)).rowcount
        return removed

    def erase_person(self, keys: Sequence[str], body_needles: Iterable[str], now: float) -> Removed:
        """Erase, in one transaction, the deliveries keyed to the person (``email:…``/``phone:…``) or
        whose raw body, lower-cased, contains one of ``body_needles``, with their steps, events,
        person keys and digest lines, the person's identities, and the deals and contact memory of
        their contacts. Raises BusyPersonError, erasing nothing, while one is being processed."""
        from .ledger import Status  # ledger.py imports this module

        removed = Removed()
        with self._erasing(removed) as conn:
            ids = _deliveries_of(conn, keys, body_needles)
            busy = conn.execute(
                f"SELECT count(*) FROM deliveries WHERE id IN ({marks(ids)}) AND status = ? AND lease_until >= ?",
                (*ids, Status.PROCESSING, now),
            ).fetchone()[0]
            if busy:
                raise BusyPersonError(f"{busy} of this person's deliveries are being processed; try again in a minute")
            contacts = _contacts_of(conn, keys, ids)
            removed.deals = _delete(conn, "deals", "contact_id", contacts)
            removed.contact_memory = _delete(conn, "contact_memory", "contact_id", contacts)
            removed.identities = _delete(conn, "identities", "contact_id", contacts)
            for key in keys:
                kind, _, value = key.partition(":")
                removed.identities += conn.execute("DELETE FROM identities WHERE kind = ? AND value = ?", (kind, value)).rowcount
            removed.steps = _delete(conn, "steps", "delivery_id", ids)
            removed.person_keys = _delete(conn, "person_keys", "delivery_id", ids)
            removed.digest_lines = _delete(conn, "digest_items", "delivery_id", ids)
            self._events_deletable(conn, True)
            removed.events = _delete(conn, "events", "delivery_id", ids)
            self._events_deletable(conn, False)
            removed.deliveries = removed.bodies = _delete(conn, "deliveries", "id", ids)
        return removed

    @contextmanager
    def _erasing(self, removed: Removed, *, truncate_wal: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction with deleted bytes overwritten, then the WAL emptied.

        Truncating the WAL waits for readers and holds back new writers while it waits, so it
        gets a short busy timeout: intake is never kept waiting long by an erasure. When it
        cannot finish, the old frames are overwritten by later commits instead.
        """
        conn = self.db.conn
        conn.execute("PRAGMA secure_delete = ON")
        try:
            with self._write():
                yield conn
            if truncate_wal:
                conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_BUSY_MS}")
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                removed.file_clean = not busy
        finally:
            conn.execute("PRAGMA secure_delete = OFF")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")


def _deliveries_of(conn: sqlite3.Connection, keys: Sequence[str], body_needles: Iterable[str]) -> list[str]:
    """Deliveries keyed to the person, and any whose raw body contains a needle (a delivery
    refused before its keys were recorded, or a form that sent the email in another field)."""
    ids = {row[0] for row in conn.execute(f"SELECT delivery_id FROM person_keys WHERE key IN ({marks(keys)})", keys)}
    for needle in body_needles:
        ids.update(
            # Both sides lower-cased: a URL-encoded needle has upper-case hex (%2B, %40).
            row[0]
            for row in conn.execute("SELECT id FROM deliveries WHERE instr(lower(CAST(body AS TEXT)), ?) > 0", (needle.lower(),))
        )
    return sorted(ids)


def _contacts_of(conn: sqlite3.Connection, keys: Sequence[str], ids: Sequence[str]) -> list[str]:
    contacts: set[str] = set()
    for key in keys:
        kind, _, value = key.partition(":")
        known = conn.execute("SELECT contact_id FROM identities WHERE kind = ? AND value = ?", (kind, value))
        contacts.update(r[0] for r in known)
    contacts.update(r[0] for r in conn.execute(f"SELECT contact_id FROM deals WHERE delivery_id IN ({marks(ids)})", ids))
    return sorted(contacts)


def _delete(conn: sqlite3.Connection, table: str, column: str, values: Sequence[str]) -> int:
    if not values:
        return 0
    return conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks(values)})", list(values)).rowcount
