"""HubSpot's own webhooks, as the relay hears them: the v3 signature and the event shapes.

Verified as hubspot.md §7 says: ``X-HubSpot-Request-Timestamp`` (milliseconds) no older
than 5 minutes; ``X-HubSpot-Signature-v3`` is the Base64 HMAC-SHA256, keyed with the app's
client secret, of method + full URI + raw body + timestamp, compared in constant time.
Each POST is a JSON array of events (``subscriptionType``, or ``eventType`` in older
deliveries); the ones that change what the ledger remembers become core ``CrmEvent``s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

from bridge.crm_events import CrmEvent
from bridge.errors import PayloadError, SignatureError

MAX_AGE_SECONDS = 300


def signature_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify(secrets: Sequence[str], method: str, uri: str, body: bytes, headers: dict[str, str], now: float | None = None) -> None:
    """Raise SignatureError unless one of ``secrets`` signed this request in the last 5 minutes."""
    timestamp = headers.get("x-hubspot-request-timestamp", "")
    given = headers.get("x-hubspot-signature-v3", "")
    if not (timestamp.isdigit() and len(timestamp) <= 15 and given):
        raise SignatureError("missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp")
    now = time.time() if now is None else now
    if abs(now - int(timestamp) / 1000) > MAX_AGE_SECONDS:
        raise SignatureError("X-HubSpot-Request-Timestamp is more than 5 minutes off")
    if not any(hmac.compare_digest(signature_v3(s, method, uri, body, timestamp), given) for s in secrets):
        raise SignatureError("X-HubSpot-Signature-v3 does not match")


def parse(body: bytes) -> list[CrmEvent]:
    """The events that matter to the ledger; others (and unknown types) are left out."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise PayloadError("HubSpot webhooks send a JSON array of events") from exc
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise PayloadError("HubSpot webhooks send a JSON array of events")
    return [event for raw in data if (event := _event(raw)) is not None]


def _event(raw: dict[str, Any]) -> CrmEvent | None:
    kind = str(raw.get("subscriptionType") or raw.get("eventType") or "")
    object_id = str(raw.get("objectId", ""))
    # eventId alone "is not guaranteed to be unique" (hubspot.md §7): keyed with the type and object.
    key = f"{raw.get('eventId')}:{kind}:{object_id}"
    if kind == "contact.deletion" or kind == "contact.privacyDeletion":
        return CrmEvent("contact_deleted", key, object_id)
    if kind == "contact.merge":
        survivor = str(raw.get("newObjectId") or raw.get("primaryObjectId") or object_id)
        merged = tuple(str(i) for i in raw.get("mergedObjectIds") or [] if str(i) != survivor)
        return CrmEvent("contact_merged", key, survivor, merged=merged)
    if kind == "deal.deletion":
        return CrmEvent("deal_deleted", key, object_id)
    if kind == "deal.propertyChange" and raw.get("propertyName") == "dealstage":
        at_ms = int(raw["occurredAt"]) if str(raw.get("occurredAt", "")).isdigit() else 0
        return CrmEvent("deal_stage", key, object_id, stage=str(raw.get("propertyValue", "")), at_ms=at_ms)
    return None
