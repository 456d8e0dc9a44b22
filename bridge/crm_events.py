"""HubSpot stays the truth: what people change in HubSpot corrects what the ledger remembers.

The ledger remembers, per person, the contact id it wrote and the deal it opened, so that a
returning lead updates the right contact and is noted on its open deal. People change
HubSpot behind its back: they delete test contacts, merge duplicates, close deals. HubSpot's
webhooks (``POST /hubspot/webhooks``, verified in connectors/hubspot_events.py) arrive here
as ``CrmEvent``s and are applied in one ledger transaction, each once (by event key):

- a contact deleted: the ledger forgets that contact id (identities, contact memory) and
  closes its deals, so the person's next lead makes a new contact and a new deal;
- contacts merged: the merged-away ids now point at the surviving contact;
- a deal moved to a closed stage (HubSpot's pipeline metadata, or ``deals.closed_stages``:
  bridge/stages.py), or deleted: closed, so the returning customer gets a new deal instead of
  a note on last year's closed-won one; moved back to an open stage: open again.

The poller (bridge/crm_poll.py), for portals that cannot send webhooks, makes the same events
from search results and applies them here too. A stage change carries HubSpot's time for it
(``occurredAt``, or the deal's ``hs_lastmodifieddate``), so an older change arriving after a
newer one (HubSpot does not keep webhooks in order; search lags) never undoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, jsonify, request

from .errors import SourceNotConfiguredError
from .followups import stage_entered
from .httpbody import read_body
from .ledger import Ledger
from .stages import ClosedStages, configured_closed

if TYPE_CHECKING:
    from .config import Settings


@dataclass(frozen=True)
class CrmEvent:
    kind: str  # contact_deleted, contact_merged, deal_stage, deal_deleted
    key: str  # unique per event, for applying it once
    object_id: str  # the contact (the survivor, for a merge) or the deal
    merged: tuple[str, ...] = ()
    stage: str = ""
    # HubSpot's time of the change (epoch ms; 0: unknown), so a late older change is ignored.
    at_ms: int = 0


def apply_events(
    ledger: Ledger,
    events: Sequence[CrmEvent],
    closed_stages: ClosedStages | Sequence[str],
    applied_events: list[CrmEvent] | None = None,
) -> tuple[int, int]:
    """Apply each new event; returns (applied, already seen). ``applied_events`` collects the
    events that changed something (for ``leadbridge hubspot-poll`` to show)."""
    stages = closed_stages if isinstance(closed_stages, ClosedStages) else ClosedStages(closed_stages, None)
    applied = seen = 0
    now = time.time()
    with ledger.exclusive():
        for event in events:
            if not ledger.first_time_crm_event(event.key, now):
                seen += 1
                continue
            applied += 1
            if _apply(ledger, event, stages, now) and applied_events is not None:
                applied_events.append(event)
    return applied, seen


def _apply(ledger: Ledger, event: CrmEvent, stages: ClosedStages, now: float) -> bool:
    if event.kind == "contact_deleted":
        ledger.forget_contact_id(event.object_id, now)
    elif event.kind == "contact_merged":
        ledger.merge_contact_ids(event.merged, event.object_id)
    elif event.kind == "deal_deleted":
        ledger.set_deal_stage(event.object_id, "", closed=True, now=now)
        ledger.drop_stage_check(event.object_id)  # a stage check still queued must not reopen a deleted deal
    elif event.kind == "deal_stage":
        return _deal_stage(ledger, event, stages, now)
    return True


def _deal_stage(ledger: Ledger, event: CrmEvent, stages: ClosedStages, now: float) -> bool:
    """Record a deal's new stage unless the ledger already holds a newer one; queue an unknown stage."""
    if not ledger.remembers_deal(event.object_id):
        return False  # not a deal leadbridge opened
    if event.at_ms and not ledger.advance_deal_version(event.object_id, event.at_ms):
        return False
    ledger.set_deal_stage(event.object_id, event.stage, closed=stages.closed(event.stage), now=now)
    stage_entered(ledger, event.object_id, event.stage, now)  # stage follow-ups (bridge/followups.py)
    if stages.knows(event.stage):
        ledger.drop_stage_check(event.object_id)
    else:
        ledger.queue_stage_check(event.object_id, event.stage, now)
    return True


def register_crm_webhook(app: Flask, settings: Settings, ledger: Ledger, over_limit: Callable[[str], Any]) -> None:
    """``POST /hubspot/webhooks``: HubSpot's events, verified, applied to the ledger at once.

    Answered within milliseconds (HubSpot retries anything slower than 5 s): applying an event
    is a few local writes, no call to HubSpot. A 401 for a bad signature, 503 while the
    client secret is unset, 400 for a body that is not HubSpot's array of events.
    """
    from connectors import hubspot_events  # the vendor edge, loaded like the others

    @app.post("/hubspot/webhooks")
    def crm_webhook() -> Any:
        refused = over_limit("hubspot")
        if refused:
            return refused
        secret = settings.hubspot.webhook_secret()
        if not secret:
            raise SourceNotConfiguredError("hubspot.webhook_secret_env is not set; retry later")
        body = read_body(request.environ, settings.server.max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        uri = settings.hubspot.webhook_url or request.url
        hubspot_events.verify([secret], request.method, uri, body, headers)
        # Judged from the ledger's copy of HubSpot's pipelines: no HubSpot call inside the request.
        stages = ClosedStages(configured_closed(settings), ledger.deal_stages())
        applied, seen = apply_events(ledger, hubspot_events.parse(body), stages)
        return jsonify(ok=True, applied=applied, duplicates=seen), 200
