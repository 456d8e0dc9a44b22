"""What the ledger's parts share: the few members of ``Ledger`` (bridge/ledger.py) they build on.

The ledger is one class put together from parts, one module each by what it holds (the CRM
memory in bridge/ledger_crm.py, follow-ups in bridge/ledger_followups.py, retention in
bridge/ledger_retention.py), so that the pipeline, worker, CLI and intake call named methods
and never write SQL. A part uses ``db`` (the thread's connection, or the transaction of
``atomically()`` it runs in), ``_write()`` (a write transaction, or the caller's when one is
open) and ``note()``; ``Ledger`` defines them, and this class declares them for mypy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils


class LedgerBase:
    busy_timeout: float

    if TYPE_CHECKING:

        @property
        def db(self) -> sqlite_utils.Database: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def note(self, delivery_id: str, step: str, outcome: str, detail: str = "", now: float | None = None) -> None: ...


# SQLite's trigger body that keeps the event log append-only (bridge/ledger_pg.py has PostgreSQL's).
EVENTS_APPEND_ONLY = "SELECT RAISE(ABORT, 'events are append-only')"


def marks(values: Sequence[object]) -> str:
    """Placeholders for ``IN (...)``; ``NULL`` for none, which matches nothing."""
    return ", ".join("?" * len(values)) or "NULL"
