"""Retention and erasure: what the ledger keeps about people, and for how long.

- ``purge(before)`` empties the raw bodies, headers and person keys of deliveries that
  finished before a time, and drops identities not seen since; states, counts, steps'
  record ids and the event log stay, so `deliveries`, `show` and stats still add up.
  Unfinished deliveries are never touched: the worker still needs their bodies.
- ``forget(person)`` erases one person (by email or phone) entirely: their deliveries,
  steps, events, person keys, identities, and the deals and contact memory kept for their contacts.

The ledger makes sure the erased bytes are gone from its file itself, not merely unlinked
(bridge/ledger_retention.py). No personal data is logged: only counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from urllib.parse import quote

from .lead import normalise_email, normalise_phone
from .ledger import Ledger
from .ledger_retention import Removed

log = logging.getLogger(__name__)

# Steps whose checkpoint holds the lead itself (the others hold record ids, scores, routes).
PERSONAL_STEPS = ("map",)


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

    Identities hold emails and phones; one not seen since the cutoff is forgotten too (an
    email lead is still matched by HubSpot's upsert, a phone-only one by search). The
    worker's daily run passes ``truncate_wal=False``: it never waits on readers at all.
    """
    removed = ledger.purge_finished(before, PERSONAL_STEPS, truncate_wal=truncate_wal)
    log.info("purged deliveries finished before %s: %s", time.strftime("%Y-%m-%d", time.gmtime(before)), removed.summary())
    return removed


def forget(ledger: Ledger, keys: Sequence[str], now: float | None = None) -> Removed:
    """Erase everything the ledger holds about the person with these keys.

    Raises BusyPersonError (bridge/ledger_retention.py) while one of their deliveries is being processed.
    """
    now = time.time() if now is None else now
    removed = ledger.erase_person(keys, _body_needles(keys), now)
    log.info("forgot a person: %s", removed.summary())
    return removed


def _body_needles(keys: Sequence[str]) -> list[str]:
    """How the person's email may stand in a raw body: as is, or URL-encoded (a form post)."""
    needles: set[str] = set()
    for key in keys:
        kind, _, value = key.partition(":")
        if kind == "email":
            needles |= {value, quote(value, safe=""), quote(value, safe="@")}
    return sorted(needles)
