"""No repeat after a lost answer: every create a delivery makes happens once, even when HubSpot or
Slack applied it and the answer never came back (a dropped connection, a timeout), or the worker
died between the create and its checkpoint.

Two ways, by what the vendor offers (README "No repeat after a lost answer"):
- **A unique key.** Deals and phone-only contacts carry ``leadbridge_delivery_id``, a property
  created with ``hasUniqueValue``: a create sent again meets HubSpot's 409, which names the record
  the first one made, and the connector reuses it. No lookup, no intent: the create is its own check.
- **Intent, then a lookup on retry.** Notes, tasks and Slack messages have no unique key. Before
  the step's create goes out, the ledger's event log records ``sending`` for it, in the same
  transaction that renews the lease (no extra commit). A later attempt that finds ``sending`` as
  the step's last word, and no checkpoint, may have sent it: it first looks for the record by its
  delivery marker (the note's or task's body says ``(delivery ID)``; the Slack message carries the
  id in its metadata) and reuses what it finds. A throttled call provably sent nothing: it records
  ``not sent``, so pacing never costs a lookup. The happy path makes no extra call.
"""

from __future__ import annotations

from .errors import PermanentError
from .ledger import Ledger
from .ports import CRM, Alert, Notice, Notifier

# The custom property (hasUniqueValue) on deals and contacts naming the delivery that created them.
DELIVERY_ID_PROPERTY = "leadbridge_delivery_id"
SENDING, NOT_SENT, REUSED = "sending", "not sent", "reused"
# Steps whose create is looked up before it is sent again; the others need no look (see above).
LOOKED_UP_STEPS = frozenset({"notify", "note", "task"})


def marker(delivery_id: str) -> str:
    """The text every note and task body carries (bridge/notes.py writes it in the header line)."""
    return f"(delivery {delivery_id})"


def start_create(ledger: Ledger, delivery_id: str, owner: str, step: str, lease_seconds: float) -> bool:
    """Renew the lease and record that the step's create is about to go out, in one transaction.

    Returns whether an earlier attempt may already have sent it (its last word was ``sending``).
    """

    def mark() -> bool:
        unsure = may_have_sent(ledger, delivery_id, step)
        ledger.renew(delivery_id, owner, lease_seconds)
        ledger.note(delivery_id, step, SENDING, "create sent; a retry looks for it before sending it again")
        return unsure

    return ledger.atomically(mark)


def may_have_sent(ledger: Ledger, delivery_id: str, step: str) -> bool:
    return ledger.last_outcome(delivery_id, step, among=(SENDING, NOT_SENT)) == SENDING


def not_sent(ledger: Ledger, delivery_id: str, step: str, why: str) -> None:
    """The create provably did not go out (paced, or refused with a 429): no lookup next time."""
    ledger.note(delivery_id, step, NOT_SENT, why)


def reused(ledger: Ledger, delivery_id: str, step: str, what: str) -> None:
    ledger.note(delivery_id, step, REUSED, f"{what} from an earlier attempt whose answer was lost")


def find_record(ledger: Ledger, crm: CRM, delivery_id: str, step: str, contact_id: str) -> str | None:
    """The note or task (``step``) this delivery sent before, found by its marker; None if none."""
    found = crm.find_record(f"{step}s", contact_id, marker(delivery_id))
    if found:
        reused(ledger, delivery_id, step, f"{step} {found}")
    return found


def find_notice(ledger: Ledger, notifier: Notifier, alert: Alert, since: float) -> Notice | None:
    """The lead message this delivery posted before, found by its metadata; None if none."""
    delivery_id = alert.delivery_id
    if not delivery_id:
        return None
    try:
        found = notifier.find_notice(alert, since)
    except PermanentError as exc:
        # History unreadable (a missing scope): a possible second ping beats a lead nobody hears of.
        ledger.note(delivery_id, "notify", "lookup failed", f"{exc}; posting again")
        return None
    if found:
        reused(ledger, delivery_id, "notify", f"message {found.ts}")
    return found
