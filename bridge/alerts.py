"""Dead-letter alerts: one ops message per delivery that went dead, with the command that replays it.

The worker sweeps the ledger on every heartbeat (and at the end of a drain) for dead
deliveries nobody was told about; the ledger marks each one in its event log in the same
transaction that finds it, so each dead letter is announced once across retries, restarts
and several workers. A replay that dies again is a new incident and is announced again.
More new dead letters than ``alerts.max_per_sweep`` at once become one summary message.

Messages name the delivery id, source, step and a reason *class* ("HubSpot 400
VALIDATION_ERROR", "gave up after 4 attempts"), never the reason's free text, which can
quote what a person typed. Without ``alerts.slack_channel`` they go to the log only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from .config import AlertsSettings
from .errors import PermanentError, RetriableError
from .ledger import Ledger
from .ports import Notifier

log = logging.getLogger(__name__)

# Fixed phrases and vendor codes only: nothing here can carry lead data.
_REASON_CLASSES = (
    re.compile(r"\b(?:HubSpot|Slack) \d{3}(?: (?:[A-Z][A-Z_]+|[a-z]+_[a-z_]+))?"),
    re.compile(r"\b(?:HubSpot|Slack) unreachable \(\w+\)"),
    re.compile(r"\bunexpected \w+"),
    re.compile(r"\bcannot be mapped"),
    re.compile(r"\bis no longer configured"),
    re.compile(r"\bcrashed the worker \d+ times"),
    re.compile(r"\bits worker stopped \d+ times while processing it"),
    re.compile(r"\bgave up after \d+ attempts"),
)


def reason_class(reason: str | None) -> str:
    """What kind of failure a dead letter's reason describes, without any of its free text."""
    found = [m.group(0) for pattern in _REASON_CLASSES for m in pattern.finditer(reason or "")]
    return "; ".join(dict.fromkeys(found)) or "unclassified (see leadbridge show)"


def dead_letter_text(row: dict[str, Any]) -> str:
    return (
        f"Dead letter: delivery {row['id']} from source {row['source']} died at step {row['step']}: "
        f"{reason_class(row['reason'])}. Fix the cause, then replay it: `leadbridge replay {row['id']}`"
    )


def summary_text(rows: Sequence[dict[str, Any]]) -> str:
    sources = ", ".join(sorted({str(r["source"]) for r in rows}))
    steps = ", ".join(sorted({str(r["step"]) for r in rows}))
    return (
        f"{len(rows)} deliveries went dead (sources: {sources}; steps: {steps}). "
        "See `leadbridge deliveries --status dead`, fix the cause, then replay them all: "
        "`leadbridge replay --status dead`"
    )


def send_dead_letter_alerts(settings: AlertsSettings, ledger: Ledger, notifier: Notifier) -> int:
    """Announce every dead letter not yet announced; returns how many were covered."""
    rows = ledger.claim_dead_letters()
    if not rows:
        return 0
    if len(rows) > settings.max_per_sweep:
        _send(settings, ledger, notifier, rows, summary_text(rows), "summary")
    else:
        for row in rows:
            _send(settings, ledger, notifier, [row], dead_letter_text(row), "")
    return len(rows)


def _send(
    settings: AlertsSettings, ledger: Ledger, notifier: Notifier, rows: Sequence[dict[str, Any]], text: str, kind: str
) -> None:
    """Post (or log) one message covering ``rows`` and record the outcome on each."""
    channel = settings.slack_channel
    if not channel:
        log.error("alert: %s", text)
        outcome, detail = "logged", kind
    else:
        try:
            notice = notifier.post_ops(channel, text)
            outcome, detail = "sent", f"{kind} {notice.channel} {notice.ts}".strip()
        except RetriableError as exc:  # Slack down or paced: the next sweep tries again
            log.warning("alert for %d dead letter(s) not sent yet: %s", len(rows), exc)
            outcome, detail = "failed", str(exc)
        except PermanentError as exc:  # a bad channel or token: retrying each sweep would not help
            log.error("alert for %d dead letter(s) cannot be sent (%s); check alerts.slack_channel: %s", len(rows), exc, text)
            outcome, detail = "gave_up", str(exc)
    for row in rows:
        ledger.note(row["id"], "alert", outcome, detail)
