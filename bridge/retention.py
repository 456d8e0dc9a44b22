"""Retention and erasure: what the ledger keeps about people, and for how long.

- ``purge(before)`` empties the raw bodies, headers and person keys of deliveries that
  finished before a time, and drops identities not seen since; states, counts, steps'
  record ids and the event log stay, so `deliveries`, `show` and stats still add up.
  Unfinished deliveries are never touched: the worker still needs their bodies.
- ``forget(person)`` erases one person (by email or phone) entirely: their deliveries,
  steps, events, person keys, identities, and the deals and contact memory kept for their contacts.

Both run with ``secure_delete`` and then truncate the WAL, so the erased bytes are gone
from the ledger file itself, not merely unlinked (SQLite otherwise leaves deleted rows in
free pages and old WAL frames). No personal data is logged: only counts.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from urllib.parse import quote

from .lead import normalise_email, normalise_phone
from .ledger import FINAL, Ledger, Status

log = logging.getLogger(__name__)

_FINAL = ", ".join(f"'{s}'" for s in FINAL)
# Steps whose checkpoint holds the lead itself (the others hold record ids, scores, routes).
PERSONAL_STEPS = ("map",)


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


def person_keys(person: str, default_region: str) -> list[str]:
    """The ledger's keys for an email or a phone number, normalised as leads are."""
    problems: list[str] = []
    if "@" in person:
        email = normalise_email(person, problems)
        return [f"email:{email}"] if email else []
    phone = normalise_phone(person, default_region, problems)
    return [f"phone:{phone}"] if phone else []


def purge(ledger: Ledger, before: float, *, truncate_wal: bool = True) -> Removed:
    """Empty the personal data of deliveries finished before ``before`` (a Unix time).

    The worker's daily run passes ``truncate_wal=False``: it never waits on readers at all.
    """
    removed = Removed(file_clean=truncate_wal)
    with _erasing(ledger, removed, truncate_wal=truncate_wal) as conn:
        old = f"SELECT id FROM deliveries WHERE status IN ({_FINAL}) AND updated_at < :before"
        removed.bodies = conn.execute(
            f"UPDATE deliveries SET body = x'', headers = '{{}}' WHERE id IN ({old}) AND length(body) > 0",
            {"before": before},
        ).rowcount
        removed.steps = conn.execute(
            f"""UPDATE steps SET result = '{{"purged": true}}' WHERE delivery_id IN ({old})
                AND step IN ({", ".join(f"'{s}'" for s in PERSONAL_STEPS)}) AND result != '{{"purged": true}}'""",
            {"before": before},
        ).rowcount
        removed.person_keys = conn.execute(f"DELETE FROM person_keys WHERE delivery_id IN ({old})", {"before": before}).rowcount
        removed.digest_lines = conn.execute(
            f"UPDATE digest_items SET line = '' WHERE delivery_id IN ({old}) AND digest_id IS NOT NULL AND line != ''",
            {"before": before},
        ).rowcount
        # Identities hold emails and phones; one not seen since the cutoff is forgotten too
        # (an email lead is still matched by HubSpot's upsert, a phone-only one by search).
        removed.identities = conn.execute("DELETE FROM identities WHERE updated_at < ?", (before,)).rowcount
    log.info("purged deliveries finished before %s: %s", time.strftime("%Y-%m-%d", time.gmtime(before)), removed.summary())
    return removed


def forget(ledger: Ledger, keys: Sequence[str], now: float | None = None) -> Removed:
    """Erase everything the ledger holds about the person with these keys."""
    now = time.time() if now is None else now
    removed = Removed()
    with _erasing(ledger, removed) as conn:
        ids = _deliveries_of(conn, keys)
        busy = conn.execute(
            f"SELECT count(*) FROM deliveries WHERE id IN ({_marks(ids)}) AND status = ? AND lease_until >= ?",
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
        # The event log is append-only by trigger; erasure is the one exception.
        conn.execute("DROP TRIGGER events_no_delete")
        removed.events = _delete(conn, "events", "delivery_id", ids)
        conn.execute(
            "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END"
        )
        removed.deliveries = removed.bodies = _delete(conn, "deliveries", "id", ids)
    log.info("forgot a person: %s", removed.summary())
    return removed


def _deliveries_of(conn: sqlite3.Connection, keys: Sequence[str]) -> list[str]:
    """Deliveries keyed to the person, and any whose raw body names their email (a delivery
    refused before its keys were recorded, or a form that sent the email in another field)."""
    ids = {row[0] for row in conn.execute(f"SELECT delivery_id FROM person_keys WHERE key IN ({_marks(keys)})", keys)}
    for key in keys:
        kind, _, value = key.partition(":")
        if kind != "email":
            continue
        for needle in {value, quote(value, safe=""), quote(value, safe="@")}:
            ids.update(
                row[0]
                for row in conn.execute("SELECT id FROM deliveries WHERE instr(lower(CAST(body AS TEXT)), ?) > 0", (needle,))
            )
    return sorted(ids)


def _contacts_of(conn: sqlite3.Connection, keys: Sequence[str], ids: Sequence[str]) -> list[str]:
    contacts: set[str] = set()
    for key in keys:
        kind, _, value = key.partition(":")
        known = conn.execute("SELECT contact_id FROM identities WHERE kind = ? AND value = ?", (kind, value))
        contacts.update(r[0] for r in known)
    contacts.update(r[0] for r in conn.execute(f"SELECT contact_id FROM deals WHERE delivery_id IN ({_marks(ids)})", ids))
    return sorted(contacts)


def _delete(conn: sqlite3.Connection, table: str, column: str, values: Sequence[str]) -> int:
    if not values:
        return 0
    return conn.execute(f"DELETE FROM {table} WHERE {column} IN ({_marks(values)})", list(values)).rowcount


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values)) or "NULL"


@contextmanager
def _erasing(ledger: Ledger, removed: Removed, *, truncate_wal: bool = True) -> Iterator[sqlite3.Connection]:
    """One write transaction with deleted bytes overwritten, then the WAL emptied.

    Truncating the WAL waits for readers and holds back new writers while it waits, so it
    gets a short busy timeout: intake is never kept waiting long by an erasure. When it
    cannot finish, the old frames are overwritten by later commits instead.
    """
    conn = ledger.db.conn
    conn.execute("PRAGMA secure_delete = ON")
    try:
        with ledger.exclusive():
            yield conn
        if truncate_wal:
            conn.execute("PRAGMA busy_timeout = 200")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            removed.file_clean = not busy
    finally:
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute(f"PRAGMA busy_timeout = {int(ledger.busy_timeout * 1000)}")
