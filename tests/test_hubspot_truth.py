"""HubSpot stays the truth: signed HubSpot webhooks correct what the ledger remembers.

Over real HTTP: the relay's intake receives HubSpot-signed events (signed here exactly as
HubSpot signs them), and the next lead of the same person goes to the right records.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from bridge.ledger import Ledger, Status
from bridge.worker import Worker
from connectors.hubspot_events import signature_v3

from .conftest import Sandbox, post_typeform, typeform_payload

CLIENT_SECRET = "hubspot-app-client-secret"


@pytest.fixture(autouse=True)
def client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)


def send(intake: str, events: list[dict[str, Any]], secret: str = CLIENT_SECRET, age: float = 0) -> requests.Response:
    url = f"{intake}/hubspot/webhooks"
    body = json.dumps(events).encode()
    timestamp = str(int((time.time() - age) * 1000))
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": timestamp,
        "X-HubSpot-Signature-v3": signature_v3(secret, "POST", url, body, timestamp),
    }
    return requests.post(url, data=body, headers=headers, timeout=10)


def event(kind: str, object_id: str, event_id: int, **extra: Any) -> dict[str, Any]:
    return {"eventId": event_id, "subscriptionType": kind, "objectId": int(object_id), "portalId": 1, "attemptNumber": 0, **extra}


def lead(n: int) -> dict[str, Any]:
    return typeform_payload(event_id=f"truth-{n}", token=f"truth-{n}")


def patched(sandbox: Sandbox) -> list[str]:
    return [r["path"] for r in sandbox.state()["requests"] if r["method"] == "PATCH"]


def test_the_signature_is_hubspots_v3() -> None:
    # The HubSpot SDK's own test vector (hubspot.md §7).
    given = signature_v3(
        "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
        "POST",
        "https://www.example.com/webhook_uri",
        b"{'example_field':'example_value'}",
        "1693657560000",
    )
    assert given == "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="


def test_unsigned_stale_or_unconfigured_events_change_nothing(
    intake: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [event("contact.deletion", "1001", 1)]
    assert send(intake, events, secret="not-the-secret").status_code == 401
    assert send(intake, events, age=600).status_code == 401
    monkeypatch.delenv("HUBSPOT_CLIENT_SECRET")
    refused = send(intake, events)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "source_not_configured")
    garbled = requests.post(f"{intake}/hubspot/webhooks", data=b"[", timeout=10)
    assert garbled.status_code in (401, 503)


def test_a_contact_deleted_in_hubspot_is_not_written_to_again(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    post_typeform(intake, lead(1))
    worker.drain()
    (contact,) = sandbox.state()["contacts"]
    sandbox.hubspot("POST", "/crm/v3/objects/contacts/gdpr-delete", json={"objectId": contact["id"]})
    answer = send(intake, [event("contact.deletion", contact["id"], 10)])
    assert answer.json() == {"ok": True, "applied": 1, "duplicates": 0}
    again = post_typeform(intake, lead(2)).json()["delivery_id"]
    worker.drain()
    assert ledger.get(again).status == Status.DELIVERED
    (fresh,) = sandbox.state()["contacts"]
    assert fresh["id"] != contact["id"]
    assert not any(contact["id"] in path for path in patched(sandbox))  # never a write to the deleted id
    # The same event again (HubSpot retries) is applied once.
    assert send(intake, [event("contact.deletion", contact["id"], 10)]).json()["duplicates"] == 1


def test_after_a_merge_the_next_lead_updates_the_surviving_contact(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    post_typeform(intake, lead(1))
    worker.drain()
    (merged,) = sandbox.state()["contacts"]
    survivor = sandbox.hubspot("POST", "/crm/v3/objects/contacts", json={"properties": {"firstname": "Jane"}}).json()
    # Someone merges the two in HubSpot (the relay's contact into the other), and HubSpot says so.
    sandbox.hubspot(
        "POST", "/crm/v3/objects/contacts/merge", json={"primaryObjectId": survivor["id"], "objectIdToMerge": merged["id"]}
    ).raise_for_status()
    merge = event("contact.merge", survivor["id"], 20, primaryObjectId=int(survivor["id"]), mergedObjectIds=[int(merged["id"])])
    assert send(intake, [merge]).json()["applied"] == 1
    again = post_typeform(intake, lead(2)).json()["delivery_id"]
    worker.drain()
    assert ledger.get(again).status == Status.DELIVERED
    assert any(path.endswith(f"/contacts/{survivor['id']}") for path in patched(sandbox))
    assert not any(path.endswith(f"/contacts/{merged['id']}") for path in patched(sandbox))


def test_a_deal_closed_in_hubspot_is_not_reused_and_reopening_it_is_noticed(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    first = post_typeform(intake, lead(1)).json()["delivery_id"]
    worker.drain()
    deal_id = ledger.steps(first)["deal"]["record_id"]
    won = event("deal.propertyChange", deal_id, 30, propertyName="dealstage", propertyValue="closedwon")
    assert send(intake, [won]).json()["applied"] == 1
    second = post_typeform(intake, lead(2)).json()["delivery_id"]
    worker.drain()
    new_deal = ledger.steps(second)["deal"]
    assert new_deal["created"] is True and new_deal["record_id"] != deal_id
    assert len(sandbox.state()["objects"]["deals"]) == 2
    # Moved back to an open stage: the newest open deal is the one reused.
    back = event("deal.propertyChange", deal_id, 31, propertyName="dealstage", propertyValue="contractsent")
    assert send(intake, [back]).json()["applied"] == 1
    third = post_typeform(intake, lead(3)).json()["delivery_id"]
    worker.drain()
    assert ledger.steps(third)["deal"]["created"] is False
