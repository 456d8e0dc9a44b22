"""Issue 4 acceptance over real HTTP: deals, tasks (the form's answers folded in), routing, scoring, routed Slack and digests."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from werkzeug.test import Client

from bridge.app import create_app
from bridge.config import Settings, settings_from_dict
from bridge.digest import send_due_digests
from bridge.ledger import Ledger, Status, open_ledger
from bridge.ports import build_notifier
from bridge.worker import Worker
from connectors.typeform import typeform_signature

from .conftest import ROOT, Sandbox, answer, post_typeform, served, typeform_payload

OWNERS = [
    {"id": "501", "email": "alice@roofers.example", "firstName": "Alice", "lastName": "Ames"},
    {"id": "502", "email": "bob@roofers.example", "firstName": "Bob", "lastName": "Burns"},
]
ROUTING = {
    "owners": {
        "alice": {"id": "501", "slack": "UALICE01"},
        "bob": {"email": "bob@roofers.example"},
    },
    "pools": {"crew": {"members": {"alice": 1, "bob": 1}}},
    "rules": [
        {
            "name": "sf-plumbing",
            "when": {"postal_prefix": ["941"], "service_in": ["water heater"]},
            "owner": "alice",
            "channel": "#leads-plumbing",
        },
        {"name": "roofing", "when": {"service_in": ["roofing"]}, "pool": "crew"},
    ],
    "triage": {"channel": "#leads-triage"},
}
SCORING = {
    "rules": [
        {"name": "urgent", "category": "intent", "points": 60, "message_matches": ["leak", "urgent", "water heater"]},
        {"name": "valid_phone", "category": "data_quality", "points": 20, "valid_phone": True},
    ],
    "actions": {
        "hot": {"channel": "#leads-hot", "mention_owner": True, "task_priority": "HIGH", "task_due": "15m"},
        "warm": {"task_priority": "MEDIUM", "task_due": "2h"},
        "cold": {"digest": True, "task_priority": "LOW", "task_due": "next_business_morning"},
    },
}


@pytest.fixture
def sales_config(config_data: dict[str, Any], sandbox: Sandbox) -> dict[str, Any]:
    for owner in OWNERS:
        requests.post(f"{sandbox.url}/__sandbox/owners", json=owner, timeout=5).raise_for_status()
    requests.post(
        f"{sandbox.url}/__sandbox/slack_users", json={"id": "UBOB0001", "email": "bob@roofers.example", "name": "bob"}, timeout=5
    ).raise_for_status()
    config_data["routing"] = copy.deepcopy(ROUTING)
    config_data["scoring"] = copy.deepcopy(SCORING)
    config_data["deals"] = {
        "object": "deal",
        "pipeline": "default",
        "stage": "appointmentscheduled",
        "name_template": "{service} — {last_name}, {city}",
        "amount_field": "budget",
    }
    return config_data


@pytest.fixture
def sales_settings(sales_config: dict[str, Any]) -> Settings:
    return settings_from_dict(sales_config, ROOT)


@pytest.fixture
def relay(sales_settings: Settings) -> Iterator[str]:
    with served(sales_settings) as url:
        yield url


@pytest.fixture
def sales_worker(sales_settings: Settings) -> Worker:
    return Worker(sales_settings, open_ledger(sales_settings.ledger))


def objects(sandbox: Sandbox, kind: str) -> list[dict[str, Any]]:
    return list(sandbox.state()["objects"].get(kind, []))


def links(record: dict[str, Any]) -> set[tuple[str, int]]:
    return {(a["toObjectId"], a["associationTypeId"]) for a in record["associations"]}


def crm_calls(sandbox: Sandbox, since: int = 0) -> list[str]:
    """CRM calls made for leads; owner lookups are cached per worker and counted apart."""
    calls = [f"{r['method']} {r['path']}" for r in sandbox.state()["requests"][since:] if r["path"].startswith("/crm/")]
    return [c for c in calls if "/owners" not in c]


def roofing(payload: dict[str, Any], message: str = "Roof leak over the kitchen") -> dict[str, Any]:
    answer(payload, "message", message)
    for a in payload["form_response"]["answers"]:
        if a["type"] == "choices":
            a["choices"] = {"labels": ["Roofing"]}
    return payload


def test_a_new_person_gets_contact_deal_and_task_all_associated(
    relay: str, sandbox: Sandbox, sales_worker: Worker, ledger: Ledger
) -> None:
    delivery_id = post_typeform(relay, roofing(typeform_payload())).json()["delivery_id"]
    sales_worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    (contact,) = sandbox.state()["contacts"]
    (deal,) = objects(sandbox, "deals")
    (task,) = objects(sandbox, "tasks")
    assert objects(sandbox, "notes") == []  # the form's answers are in the task's body
    cid, did = contact["id"], deal["id"]
    assert {k: deal["properties"].get(k) for k in ("dealname", "pipeline", "dealstage", "amount")} == {
        "dealname": "Roofing — Doe, San Francisco",
        "pipeline": "default",
        "dealstage": "appointmentscheduled",
        "amount": "10000",
    }
    assert links(deal) == {(cid, 3)}
    assert links(task) == {(cid, 204), (did, 216)}
    assert "Roof leak over the kitchen" in task["properties"]["hs_task_body"]
    assert task["properties"]["hs_task_subject"] == "Call Jane Doe — Roofing"
    assert task["properties"]["hs_task_priority"] == "HIGH"
    # The pool's first pick owns contact, deal and task, and the reason is on the contact.
    owner = contact["properties"]["hubspot_owner_id"]
    assert owner in ("501", "502") and deal["properties"]["hubspot_owner_id"] == owner == task["properties"]["hubspot_owner_id"]
    assert contact["properties"]["routing_reason"].startswith('rule "roofing"')
    assert contact["properties"]["lead_segment"] == "hot" and contact["properties"]["lead_score"] == "80"
    # Calls per new lead: upsert, deal, task (no read: the ledger has never seen this person).
    assert crm_calls(sandbox) == [
        "POST /crm/v3/objects/contacts/batch/upsert",
        "POST /crm/v3/objects/deals",
        "POST /crm/v3/objects/tasks",
    ]


def test_a_returning_person_gets_a_task_on_the_same_deal_and_keeps_the_owner(
    relay: str, sandbox: Sandbox, sales_worker: Worker
) -> None:
    post_typeform(relay, roofing(typeform_payload()))
    sales_worker.drain()
    first_owner = sandbox.state()["contacts"][0]["properties"]["hubspot_owner_id"]
    before = len(sandbox.state()["requests"])
    post_typeform(relay, roofing(typeform_payload(event_id="evt-2", token="tok-2"), "Still leaking, please call"))
    sales_worker.drain()
    (deal,) = objects(sandbox, "deals")
    tasks = objects(sandbox, "tasks")
    assert len(tasks) == 2 and all((deal["id"], 216) in links(t) for t in tasks)
    assert "Still leaking, please call" in tasks[1]["properties"]["hs_task_body"]
    (contact,) = sandbox.state()["contacts"]
    assert contact["properties"]["hubspot_owner_id"] == first_owner
    assert contact["properties"]["routing_reason"].startswith("returning contact keeps owner")
    # Calls per returning lead: update the contact (owner and first touch from the ledger's memory), task.
    assert [c.split(" ")[0] + " " + c.split("/")[4] for c in crm_calls(sandbox, before)] == [
        "PATCH contacts",
        "POST tasks",
    ]
    assert sum("/owners" in r["path"] for r in sandbox.state()["requests"][before:]) == 0  # cached per worker


def test_two_near_simultaneous_submissions_from_a_new_person_make_one_deal(
    relay: str, sandbox: Sandbox, sales_settings: Settings
) -> None:
    for n in (1, 2):
        post_typeform(relay, roofing(typeform_payload(event_id=f"dup-{n}", token=f"dup-{n}")))
    workers = [Worker(sales_settings, open_ledger(sales_settings.ledger)) for _ in range(2)]
    threads = [threading.Thread(target=w.drain) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sandbox.state()["contacts"]) == 1
    assert len(objects(sandbox, "deals")) == 1
    assert len(objects(sandbox, "tasks")) == 2


def test_a_hot_lead_mentions_its_owner_in_the_routed_channel(relay: str, sandbox: Sandbox, sales_worker: Worker) -> None:
    payload = answer(typeform_payload(), "message", "Water heater burst, urgent")
    post_typeform(relay, payload)
    sales_worker.drain()
    (message,) = sandbox.state()["messages"]
    assert message["channel"] == "#leads-plumbing"  # the rule's channel wins over the segment's
    assert "<@UALICE01>" in message["text"]
    rendered = json.dumps(message["blocks"])
    assert "HOT lead (80): Jane Doe" in rendered and "Open deal" in rendered and "Open contact in HubSpot" in rendered
    # Both links open the records (the sandbox serves them like HubSpot's record pages).
    links_in_message = re.findall(r"<(http[^|>]+)\|Open (?:deal|contact in HubSpot)>", rendered)
    assert len(links_in_message) == 2
    assert {requests.get(url, timeout=5).json()["id"] for url in links_in_message} == {
        sandbox.state()["contacts"][0]["id"],
        objects(sandbox, "deals")[0]["id"],
    }


def test_nobody_available_goes_to_triage_with_an_alert(sales_config: dict[str, Any], sandbox: Sandbox, tmp_path: Any) -> None:
    sales_config["routing"]["owners"]["alice"]["away"] = ["2000-01-01..2100-01-01"]
    sales_config["routing"]["owners"]["bob"]["away"] = ["2000-01-01..2100-01-01"]
    settings = settings_from_dict(sales_config, ROOT)
    body = json.dumps(roofing(typeform_payload())).encode()
    Client(create_app(settings)).post(
        "/hooks/typeform",
        data=body,
        content_type="application/json",
        headers={"Typeform-Signature": typeform_signature("tf-test-secret", body)},
    )
    Worker(settings, open_ledger(settings.ledger)).drain()
    (message,) = sandbox.state()["messages"]
    assert message["channel"] == "#leads-triage"
    assert "Unassigned lead (triage)" in json.dumps(message["blocks"])
    (contact,) = sandbox.state()["contacts"]
    assert "hubspot_owner_id" not in contact["properties"]
    assert "triage" in contact["properties"]["routing_reason"]


def test_a_cold_lead_pings_no_one_and_is_in_the_next_digest_exactly_once(
    relay: str, sandbox: Sandbox, sales_worker: Worker, sales_settings: Settings, ledger: Ledger
) -> None:
    cold = answer(answer(roofing(typeform_payload(), "just browsing"), "phone", None), "postal_code", "10001")
    delivery_id = post_typeform(relay, cold).json()["delivery_id"]
    sales_worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert sandbox.state()["messages"] == []
    assert ledger.steps(delivery_id)["notify"] == {"digest": "#leads"}

    local = ZoneInfo(sales_settings.digest.timezone)
    evening = datetime(2030, 1, 7, 17, 30, tzinfo=local)  # after the configured 17:00
    assert send_due_digests(sales_settings.digest, ledger, build_notifier(sales_settings), evening) == ["#leads"]
    # A restart (new ledger and notifier objects) and a later loop on the same day send nothing more.
    again = send_due_digests(sales_settings.digest, open_ledger(sales_settings.ledger), build_notifier(sales_settings), evening)
    assert again == []
    (digest,) = sandbox.state()["messages"]
    assert digest["channel"] == "#leads" and digest["text"] == f"{sales_settings.digest.title}: 1 lead"
    assert "Jane Doe (Roofing, San Francisco), score 0" in json.dumps(digest["blocks"])
    morning = datetime(2030, 1, 7, 9, 0, tzinfo=local)
    assert send_due_digests(sales_settings.digest, ledger, build_notifier(sales_settings), morning) == []


def test_a_portal_with_the_lead_object_gets_a_hubspot_lead_instead_of_a_deal(
    sales_config: dict[str, Any], sandbox: Sandbox
) -> None:
    sales_config["deals"]["object"] = "lead"
    settings = settings_from_dict(sales_config, ROOT)
    body = json.dumps(roofing(typeform_payload())).encode()
    headers = {"Typeform-Signature": typeform_signature("tf-test-secret", body)}
    Client(create_app(settings)).post("/hooks/typeform", data=body, content_type="application/json", headers=headers)
    Worker(settings, open_ledger(settings.ledger)).drain()
    (contact,) = sandbox.state()["contacts"]
    (lead,) = objects(sandbox, "leads")
    assert objects(sandbox, "deals") == []
    assert lead["properties"]["hs_lead_name"] == "Roofing — Doe, San Francisco"
    assert links(lead) == {(contact["id"], 578)}
    (task,) = objects(sandbox, "tasks")
    assert links(task) == {(contact["id"], 204), (lead["id"], 647)}


def test_the_round_robin_is_fair_over_100_leads_and_stays_fair_when_the_pool_changes(
    sales_config: dict[str, Any], sandbox: Sandbox
) -> None:
    requests.post(f"{sandbox.url}/__sandbox/owners", json={"id": "503", "email": "carol@roofers.example"}, timeout=5)
    sales_config["routing"]["owners"]["carol"] = {"id": "503"}
    sales_config["routing"]["pools"]["crew"]["members"] = {"alice": 2, "bob": 1}

    def send(settings: Settings, first: int, count: int) -> dict[str, int]:
        client = Client(create_app(settings))
        for n in range(first, first + count):
            payload = roofing(
                answer(
                    answer(typeform_payload(event_id=f"rr-{n}", token=f"rr-{n}"), "email", f"p{n}@roofing-co.com"),
                    "phone",
                    f"(650) 253-{n:04d}",
                )
            )
            body = json.dumps(payload).encode()
            headers = {"Typeform-Signature": typeform_signature("tf-test-secret", body)}
            assert client.post("/hooks/typeform", data=body, content_type="application/json", headers=headers).status_code == 200
        Worker(settings, open_ledger(settings.ledger)).drain(timeout=120)
        owners = [c["properties"].get("hubspot_owner_id") for c in sandbox.state()["contacts"]]
        return {owner: owners.count(owner) for owner in ("501", "502", "503")}

    before = send(settings_from_dict(sales_config, ROOT), 0, 40)
    assert before == {"501": 27, "502": 13, "503": 0} or before == {"501": 26, "502": 14, "503": 0}
    # Carol joins mid-stream with weight 1 and alice's weight rises to 2:1:1 overall: carol is
    # started at the pool's pace, so she gets her quarter of what follows, not a flood.
    sales_config["routing"]["pools"]["crew"]["members"] = {"alice": 2, "bob": 1, "carol": 1}
    after = send(settings_from_dict(sales_config, ROOT), 40, 60)
    gained = {owner: after[owner] - before[owner] for owner in after}
    assert abs(gained["501"] - 30) <= 1 and abs(gained["502"] - 15) <= 1 and abs(gained["503"] - 15) <= 1, gained
