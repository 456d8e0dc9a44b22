"""Acceptance: a signed Typeform webhook becomes one HubSpot contact and one Slack message."""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from werkzeug.test import Client

from bridge.app import create_app
from bridge.config import settings_from_dict
from bridge.jsonlog import LeadbridgeJsonFormatter
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker
from connectors.typeform import typeform_signature

from .conftest import ROOT, Sandbox, answer, post_typeform, typeform_payload


def only_contact(sandbox: Sandbox) -> dict[str, Any]:
    contacts = sandbox.state()["contacts"]
    assert len(contacts) == 1, contacts
    return contacts[0]


def test_signed_webhook_becomes_one_normalised_contact_and_one_message(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    response = post_typeform(intake, typeform_payload())
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["delivery_id"].startswith("dlv_") and body["duplicate"] is False
    # On disk before the 200, and nothing sent to HubSpot or Slack during the request.
    assert ledger.get(body["delivery_id"]).status == Status.RECEIVED
    assert sandbox.state()["requests"] == []

    assert worker.drain() == 1

    contact = only_contact(sandbox)
    props = contact["properties"]
    expected = {
        "email": "jane.doe@acme-plumbing.com",
        "phone": "+14155550132",
        "firstname": "Jane",
        "lastname": "Doe",
        "company": "Acme Plumbing LLC",
        "city": "San Francisco",
        "zip": "94107",
        "service": "Bathroom remodel, Water heater, Gas line check",
        "message": "Need a quote for 3 bathrooms & a water heater <soon>",
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "spring-remodel",
        "gclid": "Cj0KCQjw-example",
        "landing_page": "https://acme-plumbing.example/quote",
        "submitted_at": "2025-03-14T16:42:07+00:00",
        "budget": "$10k-$50k",
    }
    assert {k: props.get(k) for k in expected} == expected

    messages = sandbox.state()["messages"]
    assert len(messages) == 1
    message = messages[0]
    assert message["channel"] == "#leads-hot"  # the example config's scoring finds this lead hot
    rendered = json.dumps(message["blocks"])
    assert f"/__sandbox/contacts/{contact['id']}" in rendered
    assert "<tel:+14155550132|+1 415-555-0132>" in rendered
    # Lead text is escaped so a form cannot inject Slack markup.
    assert "&amp; a water heater &lt;soon&gt;" in rendered
    assert message["text"].startswith("HOT lead (80): Jane Doe")

    delivery = ledger.get(body["delivery_id"])
    assert (delivery.status, delivery.attempts) == (Status.DELIVERED, 1)
    steps = ledger.steps(delivery.id)
    assert steps["contact"] == {
        "contact_id": contact["id"],
        "created": True,
        "url": f"{sandbox.url}/__sandbox/contacts/{contact['id']}",
    }
    assert steps["notify"]["ts"] == message["ts"]


def test_the_same_webhook_five_times_in_a_row_and_at_once_makes_one_of_each(
    intake: str, sandbox: Sandbox, worker: Worker
) -> None:
    payload = typeform_payload()
    sequential = [post_typeform(intake, payload) for _ in range(5)]
    with ThreadPoolExecutor(5) as pool:
        concurrent = list(pool.map(lambda _: post_typeform(intake, payload), range(5)))
    answers = sequential + concurrent
    assert [r.status_code for r in answers] == [200] * 10
    assert len({r.json()["delivery_id"] for r in answers}) == 1
    assert [r.json()["duplicate"] for r in answers].count(False) == 1

    worker.drain()
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"])) == (1, 1)


def test_two_submissions_of_one_person_inside_search_lag_update_one_contact(
    intake: str, sandbox: Sandbox, worker: Worker
) -> None:
    sandbox.search_lag(30)
    first = typeform_payload(event_id="evt-1", token="tok-1")
    second = answer(typeform_payload(event_id="evt-2", token="tok-2"), "email", "JANE.DOE@acme-plumbing.COM")
    answer(second, "company", "Acme Plumbing & Heating")
    assert post_typeform(intake, first).status_code == 200
    assert post_typeform(intake, second).status_code == 200

    worker.drain()
    contact = only_contact(sandbox)
    assert contact["properties"]["email"] == "jane.doe@acme-plumbing.com"
    assert contact["properties"]["company"] == "Acme Plumbing & Heating"
    assert len(sandbox.state()["messages"]) == 2


def test_a_field_left_empty_never_blanks_hubspot(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    post_typeform(intake, typeform_payload())
    worker.drain()
    later = answer(answer(typeform_payload(event_id="evt-later", token="tok-later"), "company", None), "city", "  ")
    post_typeform(intake, later)
    worker.drain()
    props = only_contact(sandbox)["properties"]
    assert (props["company"], props["city"]) == ("Acme Plumbing LLC", "San Francisco")


def test_hubspot_503_three_times_is_retried_until_delivered(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=503, times=3)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    delivery = ledger.get(delivery_id)
    assert delivery.status == Status.DELIVERED
    assert delivery.attempts == 2  # two in-process tries per attempt: 503, 503 | 503, 200
    assert sandbox.calls("/batch/upsert") == 4
    assert len(only_contact(sandbox)) and len(sandbox.state()["messages"]) == 1
    outcomes = [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]
    assert ("contact", "retrying") in outcomes


def test_rate_limit_is_rescheduled_after_the_policy_window(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=429, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    before = time.time()
    worker.drain(timeout=1)
    delivery = ledger.get(delivery_id)
    assert delivery.status == Status.RETRYING
    assert "TEN_SECONDLY_ROLLING" in delivery.last_error
    assert delivery.next_attempt_at - before >= 9.9
    # A 429 is pacing, not failure: it never spends one of the delivery's attempts.
    assert delivery.attempts == 0


def test_429s_never_use_up_the_retry_schedule(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    tries = len(worker.settings.retry.schedule_seconds) + 3  # more 429s than the schedule has retries
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=429, policy="SECONDLY", times=tries)
    sandbox.fault(path="/api/chat.postMessage", status=429, times=tries, headers={"Retry-After": "0"})
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain(timeout=60)
    delivery = ledger.get(delivery_id)
    assert (delivery.status, delivery.attempts) == (Status.DELIVERED, 1)
    assert sandbox.calls("/batch/upsert") == tries + 1
    assert len(sandbox.state()["messages"]) == 1


def test_slack_failure_retries_only_the_message(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    sandbox.fault(path="/api/chat.postMessage", status=429, times=1, headers={"Retry-After": "0"})
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert sandbox.calls("/batch/upsert") == 1
    assert sandbox.calls("/api/chat.postMessage") == 2
    assert len(sandbox.state()["messages"]) == 1


def test_a_batch_upsert_409_ends_as_an_update_of_the_existing_contact(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    existing = sandbox.hubspot(
        "POST", "/crm/v3/objects/contacts", json={"properties": {"email": "someone@else.example", "firstname": "Old"}}
    ).json()
    conflict = {
        "status": "error",
        "message": f"Contact already exists. Existing ID: {existing['id']}",
        "correlationId": "c0ffee",
        "category": "CONFLICT",
    }
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=409, times=1, body=conflict)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    contact = only_contact(sandbox)
    assert contact["id"] == existing["id"]
    assert contact["properties"]["firstname"] == "Jane"
    assert ledger.steps(delivery_id)["contact"]["created"] is False


def test_phone_only_leads_find_the_same_contact_through_the_ledger(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    sandbox.search_lag(30)  # search cannot help: the ledger's identity table must
    for n in (1, 2):
        payload = answer(typeform_payload(event_id=f"evt-{n}", token=f"tok-{n}"), "email", None)
        post_typeform(intake, payload)
        worker.drain()
    contact = only_contact(sandbox)
    assert contact["properties"]["phone"] == "+14155550132" and "email" not in contact["properties"]


def test_a_phone_only_lead_matches_an_existing_contact_through_search(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    sandbox.search_lag(0)
    existing = sandbox.hubspot(
        "POST", "/crm/v3/objects/contacts", json={"properties": {"phone": "+1 415 555 0132", "lastname": "Doe"}}
    ).json()
    post_typeform(intake, answer(typeform_payload(), "email", None))
    worker.drain()
    contact = only_contact(sandbox)
    assert (contact["id"], contact["properties"]["firstname"]) == (existing["id"], "Jane")


def test_a_lead_nobody_can_reach_is_rejected_without_any_crm_call(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    payload = answer(answer(typeform_payload(), "email", "not-an-email"), "phone", "123")
    delivery_id = post_typeform(intake, payload).json()["delivery_id"]
    worker.drain()
    delivery = ledger.get(delivery_id)
    assert delivery.status == Status.REJECTED
    assert delivery.reason == (
        "email is not valid (An email address must have an @-sign); "
        "phone is not a valid number for its region (default region US); "
        "no valid email or phone: nobody could call or write back"
    )
    assert sandbox.state()["requests"] == []


@pytest.mark.parametrize(
    ("case", "make", "status", "code"),
    [
        ("bad signature", lambda url: post_typeform(url, typeform_payload(), secret="wrong"), 401, "bad_signature"),
        (
            "no signature",
            lambda url: requests.post(f"{url}/hooks/typeform", json=typeform_payload(), timeout=5),
            401,
            "bad_signature",
        ),
        ("malformed json", lambda url: post_typeform(url, b'{"event_id": "x", '), 400, "malformed_body"),
        ("not a typeform body", lambda url: post_typeform(url, b'{"hello": "world"}'), 400, "malformed_body"),
        ("oversized", lambda url: post_typeform(url, b" " * 262145), 413, "body_too_large"),
        (
            "unknown source",
            lambda url: requests.post(f"{url}/hooks/nope", data=b"{}", timeout=5),
            404,
            "unknown_source",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_store_nothing(
    intake: str, ledger: Ledger, case: str, make: Any, status: int, code: str
) -> None:
    response = make(intake)
    assert response.status_code == status, case
    assert response.json()["ok"] is False and response.json()["error"]["code"] == code
    assert ledger.deliveries() == []


def test_a_source_without_its_secret_refuses_with_a_retriable_503(
    intake: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TYPEFORM_SECRET")
    response = post_typeform(intake, typeform_payload())
    assert response.status_code == 503  # never 404/410: Typeform would switch the webhook off
    assert ledger.deliveries() == []


def test_rotated_secrets_are_both_accepted(
    config_data: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    monkeypatch.setenv("TYPEFORM_SECRET_NEXT", "the-new-one")
    config_data["sources"][0]["secret_env"] = ["TYPEFORM_SECRET", "TYPEFORM_SECRET_NEXT"]
    client = Client(create_app(settings_from_dict(config_data, ROOT)))
    for n, secret in enumerate(("tf-test-secret", "the-new-one", "neither")):
        body = json.dumps(typeform_payload(event_id=f"e{n}")).encode()
        response = client.post(
            "/hooks/typeform",
            data=body,
            headers={"Typeform-Signature": typeform_signature(secret, body)},
            content_type="application/json",
        )
        assert response.status_code == (401 if secret == "neither" else 200)


def test_two_people_sharing_a_phone_stay_two_contacts(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    post_typeform(intake, typeform_payload())
    worker.drain()
    spouse = answer(
        answer(typeform_payload(event_id="evt-spouse", token="tok-spouse"), "email", "john@acme-plumbing.com"),
        "first_name",
        "John",
    )
    post_typeform(intake, spouse)
    worker.drain()
    contacts = sorted((c["properties"]["email"], c["properties"]["firstname"]) for c in sandbox.state()["contacts"])
    assert contacts == [("jane.doe@acme-plumbing.com", "Jane"), ("john@acme-plumbing.com", "John")]


def test_logs_carry_no_secret_token_or_personal_data(
    intake: str, sandbox: Sandbox, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    post_typeform(intake, typeform_payload())
    post_typeform(intake, typeform_payload(), secret="wrong")
    sandbox.fault(path="/api/chat.postMessage", status=500, times=1)
    worker.drain()
    records = [r for r in caplog.records if not r.name.startswith("werkzeug")]
    logged = "\n".join(r.getMessage() for r in records)
    assert "delivered" in logged and "rejected request" in logged
    # The same records as `logging.format: json` writes them (the traceback rendered again included).
    logged += "\n".join(LeadbridgeJsonFormatter().format(r) for r in records)
    assert '"outcome": "delivered"' in logged
    # Ids, times and durations are digits that can spell the area code by chance.
    logged = re.sub(r'dlv_[0-9a-f]{20}|"time": "[^"]*"|"duration_ms": \d+| in \d+ ms|:\d+:[0-9a-f]{6}', "", logged)
    for secret in ("tf-test-secret", "test-hubspot-token", "xoxb-test", "Jane", "Doe", "acme-plumbing", "415", "94107"):
        assert secret.lower() not in logged.lower(), secret


def test_intake_rate_limits_per_client_and_never_touches_the_ledger(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["server"]["rate_limit"] = {"per_client_ip": 3, "per_source": 100}
    settings = settings_from_dict(config_data, ROOT)
    client = Client(create_app(settings))
    statuses = []
    for n in range(5):
        body = json.dumps(typeform_payload(event_id=f"rl-{n}")).encode()
        response = client.post(
            "/hooks/typeform",
            data=body,
            content_type="application/json",
            headers={"Typeform-Signature": typeform_signature("tf-test-secret", body)},
        )
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    assert response.headers["Retry-After"] == "20" and response.json["error"]["code"] == "rate_limited"
    assert len(open_ledger(settings.ledger).deliveries()) == 3


def test_slack_posts_are_paced_per_channel_without_counting_an_attempt(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    # Long enough that the second post lands inside it however slow a loaded machine is.
    config_data["slack"]["min_seconds_between_posts"] = 3
    settings = settings_from_dict(config_data, ROOT)
    client, ledger = Client(create_app(settings)), open_ledger(settings.ledger)
    ids = []
    for n in range(2):
        payload = answer(typeform_payload(event_id=f"pace-{n}", token=f"pace-{n}"), "email", f"person{n}@acme-plumbing.com")
        body = json.dumps(payload).encode()
        headers = {"Typeform-Signature": typeform_signature("tf-test-secret", body)}
        ids.append(
            client.post("/hooks/typeform", data=body, headers=headers, content_type="application/json").json["delivery_id"]
        )
    Worker(settings, ledger).drain()
    first, second = (ledger.get(i) for i in ids)
    assert (first.status, second.status) == (Status.DELIVERED, Status.DELIVERED)
    assert (first.attempts, second.attempts) == (1, 1)
    deferred = [e for i in ids for e in ledger.events(i) if e["outcome"] == "deferred"]
    assert len(deferred) == 1 and deferred[0]["detail"] == "Slack channel #leads-hot paced"
    times = sorted(float(m["ts"]) for m in sandbox.state()["messages"])
    assert times[1] - times[0] >= 2.9


def test_without_routing_a_cold_lead_still_waits_for_the_digest(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    cold = answer(answer(answer(typeform_payload(), "phone", None), "postal_code", "10001"), "message", "just looking")
    for a in cold["form_response"]["answers"]:
        if a["type"] == "choices":
            a["choices"] = {"labels": ["Painting"]}
    cold["form_response"]["answers"] = [a for a in cold["form_response"]["answers"] if a["field"].get("ref") != "budget"]
    delivery_id = post_typeform(intake, cold).json()["delivery_id"]
    worker.drain()
    assert ledger.steps(delivery_id)["score"]["segment"] == "cold"
    assert ledger.steps(delivery_id)["notify"] == {"digest": "#leads"}
    assert sandbox.state()["messages"] == []
