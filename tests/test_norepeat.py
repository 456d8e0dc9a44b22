"""No repeat after a lost answer (issue 10), over real HTTP: the sandbox applies a write and then
drops its answer (or the worker dies before the checkpoint), and the retried delivery still ends
with exactly one record or message. Counts are read off the sandbox's state and request log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.sources import interpret_body, load_sources
from bridge.worker import Worker
from connectors.sandbox import SandboxServer
from connectors.sandbox.state import EXTENSION_KEY

from .conftest import ROOT, Sandbox, answer, post_typeform, typeform_payload
from .procs import started, wait_until
from .test_doctor import configured, doctor

ASSOCIATIONS = "/crm/v4/objects/contacts/"
HISTORY = "/api/conversations.history"


def drop_answer(
    sandbox: Sandbox, path: str, *, method: str = "POST", exact: bool = True, times: int = 1, instead: Any = None
) -> None:
    spec = {"path": path, "method": method, "exact": exact, "times": times, "instead": instead}
    requests.post(f"{sandbox.url}/__sandbox/drop_answers", json=spec, timeout=5).raise_for_status()


def requests_to(sandbox: Sandbox, path: str, method: str = "POST") -> list[int]:
    """The statuses the sandbox answered (or would have) for this exact path, in order."""
    return [r["status"] for r in sandbox.state()["requests"] if r["path"] == path and r["method"] == method]


def looked_up(sandbox: Sandbox) -> int:
    return sum(1 for r in sandbox.state()["requests"] if r["path"].startswith(ASSOCIATIONS) or r["path"] == HISTORY)


def records(sandbox: Sandbox) -> dict[str, int]:
    state = sandbox.state()
    counts = {kind: len(items) for kind, items in state["objects"].items()}
    return {"contacts": len(state["contacts"]), "messages": len(state["messages"]), **counts}


def phone_only(payload: dict[str, Any]) -> dict[str, Any]:
    return answer(payload, "email", None)


def test_the_sandbox_applies_the_write_then_closes_the_connection_once(sandbox: Sandbox) -> None:
    drop_answer(sandbox, "/crm/v3/objects/deals")
    deal = {"properties": {"dealname": "Roof", "dealstage": "appointmentscheduled"}}
    with pytest.raises(requests.ConnectionError, match="without response"):
        sandbox.hubspot("POST", "/crm/v3/objects/deals", json=deal)
    assert len(sandbox.state()["objects"]["deals"]) == 1  # applied, though nobody heard back
    assert sandbox.hubspot("POST", "/crm/v3/objects/deals", json=deal).status_code == 201  # the knob is used up


def test_a_second_deal_with_the_same_delivery_id_meets_hubspots_409(sandbox: Sandbox) -> None:
    deal = {"properties": {"dealname": "Roof", "dealstage": "appointmentscheduled", "leadbridge_delivery_id": "dlv_1"}}
    first = sandbox.hubspot("POST", "/crm/v3/objects/deals", json=deal).json()
    again = sandbox.hubspot("POST", "/crm/v3/objects/deals", json=deal)
    assert again.status_code == 409 and again.json()["category"] == "CONFLICT"
    assert again.json()["message"] == f"Deal already exists. Existing ID: {first['id']}"
    batch = sandbox.hubspot("POST", "/crm/v3/objects/deals/batch/create", json={"inputs": [deal, {**deal, "properties": {}}]})
    assert batch.status_code == 409 and f"Existing ID: {first['id']}" in batch.json()["message"]  # refused whole
    assert len(sandbox.state()["objects"]["deals"]) == 1


# One delivery; the create named by (method, path) is applied and its answer dropped once.
SINGLE_CASES = [
    pytest.param("/crm/v3/objects/deals", {}, False, "deals", id="deal"),
    pytest.param("/crm/v3/objects/tasks", {}, False, "tasks", id="task"),
    pytest.param("/crm/v3/objects/notes", {"tasks": {"enabled": False}}, False, "notes", id="note"),
    pytest.param("/crm/v3/objects/contacts", {}, True, "contacts", id="phone-only contact"),
    pytest.param("/crm/v3/objects/contacts/batch/upsert", {}, False, "contacts", id="contact upsert"),
    pytest.param("/api/chat.postMessage", {}, False, "messages", id="slack post"),
]


@pytest.mark.parametrize(("path", "overrides", "without_email", "kind"), SINGLE_CASES)
def test_a_create_whose_answer_was_dropped_ends_with_exactly_one(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    intake: str,
    path: str,
    overrides: dict[str, Any],
    without_email: bool,
    kind: str,
) -> None:
    for section, values in overrides.items():
        config_data[section].update(values)
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    payload = phone_only(typeform_payload()) if without_email else typeform_payload()
    drop_answer(sandbox, path)
    delivery_id = post_typeform(intake, payload).json()["delivery_id"]
    Worker(settings, ledger).drain(timeout=60)

    delivery = ledger.get(delivery_id)
    # The lost answer cost one retry; an upsert by email is sent again at once (it cannot duplicate).
    upsert = path.endswith("/upsert")
    assert delivery.status == Status.DELIVERED and delivery.attempts == (1 if upsert else 2)
    if upsert:
        assert requests_to(sandbox, path) == [200, 200]
    task_or_note = "tasks" if settings.tasks.enabled else "notes"
    assert records(sandbox) == {"contacts": 1, "messages": 1, "deals": 1, task_or_note: 1}
    (message,) = sandbox.state()["messages"]
    assert message["edits"] == 1 and "Open deal" in json.dumps(message["blocks"])
    # Notes, tasks and messages are looked up only on the retry of the one whose answer was lost.
    assert looked_up(sandbox) == (1 if kind in ("tasks", "notes", "messages") else 0)
    if kind in ("deals", "contacts") and path.endswith(kind):
        assert requests_to(sandbox, path) == [201, 409]  # the retry met its own first create
        assert "New contact" in json.dumps(message["blocks"])  # the phone-only contact is still new


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"status": 200, "body": {"ok": False, "error": "fatal_error"}}, id="fatal_error"),
        pytest.param({"status": 502, "body": {"ok": False, "error": "bad_gateway"}}, id="502"),
    ],
)
def test_a_slack_post_answered_with_an_error_that_may_have_posted_is_looked_up_not_repeated(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str, answer: dict[str, Any]
) -> None:
    # Slack: fatal_error means "it's possible some aspect of the operation succeeded".
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    drop_answer(sandbox, "/api/chat.postMessage", instead=answer)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    Worker(settings, ledger).drain(timeout=60)
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert len(requests_to(sandbox, "/api/chat.postMessage")) == 1  # never posted again
    assert requests_to(sandbox, HISTORY) == [200]  # found by its metadata instead
    (message,) = sandbox.state()["messages"]
    assert "Open deal" in json.dumps(message["blocks"])


def test_a_slack_error_that_posted_nothing_is_retried_without_a_lookup(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str
) -> None:
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    sandbox.fault(path="/api/chat.postMessage", status=200, body={"ok": False, "error": "service_unavailable"}, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    Worker(settings, ledger).drain(timeout=60)
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert requests_to(sandbox, HISTORY) == [] and len(sandbox.state()["messages"]) == 1


def test_a_worker_killed_after_sending_a_task_finds_that_task_on_retry(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    # The task create reaches the sandbox, which sits on it for 3 s; the worker is killed while it
    # waits, the sandbox then applies it: a create with no checkpoint and no answer, as in a crash.
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    sandbox.fault(path="/crm/v3/objects/tasks", delay=3, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]

    def sending_task() -> bool:
        # The intent is on disk before the create goes out: wait for the sandbox to hold the
        # create too (its delay taken), or the kill can land before the request is sent.
        sent = ("task", "sending") in [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]
        return sent and not sandbox.state()["faults"]

    argv = [sys.executable, "-m", "bridge.cli", "worker", "--config", str(config)]
    with started(argv, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_until(sending_task, time.monotonic() + 60, "the task create to be sent", proc)
    wait_until(lambda: len(sandbox.state()["objects"].get("tasks", [])) == 1, time.monotonic() + 30, "the task to land")
    assert "task" not in ledger.steps(delivery_id)
    # Take the dead worker's lease over at once rather than waiting out the lease.
    ledger.db.execute("UPDATE deliveries SET lease_until = 0 WHERE id = ?", [delivery_id])
    ledger.db.conn.commit()
    Worker(settings_from_dict(config_data, ROOT), ledger).drain(timeout=30)

    assert ledger.get(delivery_id).status == Status.DELIVERED
    (task,) = sandbox.state()["objects"]["tasks"]
    assert ledger.steps(delivery_id)["task"]["task_id"] == task["id"]
    assert ("task", "reused") in [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]


# -- several deliveries in flight: one batch call's answer dropped -------------------------


def batching(config_data: dict[str, Any], concurrency: int = 3) -> Settings:
    """Writes that wait for company until a batch holds every delivery in flight."""
    config_data["worker"].update(concurrency=concurrency, claim_batch=concurrency)
    config_data["hubspot"]["batching"] = {
        "tight_below": 1.0,
        "contact_tight_below": 1.0,
        "contact_wait_seconds": 30,
        "record_wait_seconds": 30,
    }
    return settings_from_dict(config_data, ROOT)


def queued(settings: Settings, ledger: Ledger, count: int) -> list[str]:
    kit = load_sources(settings)["typeform"]
    ids = []
    for n in range(count):
        payload = answer(typeform_payload(event_id=f"b{n}", token=f"b{n}"), "email", f"b{n}@roofing-co.com")
        payload = answer(payload, "phone", None)
        body = json.dumps(payload).encode()
        lead = interpret_body(kit, body, "application/json", "US").lead
        delivery_id, _ = ledger.accept(
            source="typeform",
            idem_key=f"norepeat-{n}",
            body=body,
            content_type="application/json",
            headers={},
            config_version="v",
            person_keys=lead.person_keys(),
        )
        ids.append(delivery_id)
    return ids


BATCH_CASES = [
    pytest.param("/crm/v3/objects/deals/batch/create", {}, id="deals"),
    pytest.param("/crm/v3/objects/tasks/batch/create", {}, id="tasks"),
    pytest.param("/crm/v3/objects/notes/batch/create", {"tasks": {"enabled": False}}, id="notes"),
    pytest.param("/crm/v3/objects/contacts/batch/upsert", {}, id="contact upsert"),
]


@pytest.mark.parametrize(("path", "overrides"), BATCH_CASES)
def test_a_batch_whose_answer_was_dropped_ends_with_one_record_per_delivery(
    config_data: dict[str, Any], sandbox: Sandbox, path: str, overrides: dict[str, Any]
) -> None:
    for section, values in overrides.items():
        config_data[section].update(values)
    settings = batching(config_data)
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, 3)
    drop_answer(sandbox, path)
    Worker(settings, ledger).drain(timeout=120)

    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    # Every row of the lost batch was retried (an upsert by email at once, in the same attempt).
    assert {ledger.get(i).attempts for i in ids} == {1 if path.endswith("/upsert") else 2}
    assert requests_to(sandbox, path)[0] in (200, 201)  # the dropped batch was applied whole
    task_or_note = "tasks" if settings.tasks.enabled else "notes"
    assert records(sandbox) == {"contacts": 3, "messages": 3, "deals": 3, task_or_note: 3}
    deals = sandbox.state()["objects"]["deals"]
    assert sorted(d["properties"]["leadbridge_delivery_id"] for d in deals) == sorted(ids)


# -- the unique property a real portal needs -------------------------------------------------


def test_doctor_names_the_missing_delivery_id_properties_and_creates_them_unique(
    config_data: dict[str, Any], sandbox: Sandbox, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    # A portal set up before this release: the sandbox's predefined markers taken away.
    crm = sandbox_server.app.extensions[EXTENSION_KEY].crm
    with sandbox_server.app.extensions[EXTENSION_KEY].lock:
        for object_type in ("deals", "contacts"):
            crm.property_definitions[object_type].pop("leadbridge_delivery_id")
    data = configured(config_data, sandbox)

    found = json.loads(doctor(tmp_path, data, "--json").output)
    mine = [p for p in found["problems"] if "leadbridge_delivery_id" in p["problem"]]
    assert [p["problem"] for p in mine] == [
        "HubSpot has no deal property 'leadbridge_delivery_id' (unique values)",
        "HubSpot has no contact property 'leadbridge_delivery_id' (unique values)",
    ]
    assert doctor(tmp_path, data, "--create-properties").exit_code == 0
    for object_type in ("deals", "contacts"):
        listed = sandbox.hubspot("GET", f"/crm/v3/properties/{object_type}").json()["results"]
        (made,) = [p for p in listed if p["name"] == "leadbridge_delivery_id"]
        assert made["hasUniqueValue"] is True


def test_a_409_that_names_no_record_is_answered_by_reading_the_deal_by_its_delivery_id(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    (delivery_id,) = queued(settings, ledger, 1)
    # The first create landed (its answer lost); HubSpot's 409 this time does not say which deal.
    first = {"dealname": "Roof", "dealstage": "appointmentscheduled", "leadbridge_delivery_id": delivery_id}
    made = sandbox.hubspot("POST", "/crm/v3/objects/deals", json={"properties": first}).json()
    conflict = {"status": "error", "message": "A record with this unique value exists.", "category": "CONFLICT"}
    sandbox.fault(path="/crm/v3/objects/deals", method="POST", status=409, body=conflict, times=1)
    Worker(settings, ledger).drain(timeout=60)

    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert ledger.steps(delivery_id)["deal"]["record_id"] == made["id"]
    assert len(sandbox.state()["objects"]["deals"]) == 1
    assert requests_to(sandbox, f"/crm/v3/objects/deals/{delivery_id}", method="GET") == [200]


@pytest.mark.parametrize(
    ("status", "lookups"),
    [
        pytest.param(503, 0, id="503: refused, so not applied: no lookup"),
        pytest.param(400, 0, id="400: refused: no lookup"),
        pytest.param(502, 1, id="502: a gateway's answer, maybe applied: looked up"),
    ],
)
def test_only_a_task_create_without_a_clear_answer_is_looked_up_on_retry(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str, status: int, lookups: int
) -> None:
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    sandbox.fault(path="/crm/v3/objects/tasks", method="POST", status=status, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    Worker(settings, ledger).drain(timeout=60)
    if status == 400:  # permanent: dead, and its replay needs no lookup either
        assert ledger.get(delivery_id).status == Status.DEAD
        ledger.requeue(delivery_id)
        Worker(settings, ledger).drain(timeout=60)
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert len(sandbox.state()["objects"]["tasks"]) == 1
    assert looked_up(sandbox) == lookups
