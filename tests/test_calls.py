"""Issue 8, the HubSpot side, over real HTTP: Slack first, then the deal link; calls per lead.

Every count here is read off the sandbox's request log, in the order the relay made them.
Owner lookups are left out (cached per worker, and reads that never touch a contact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bridge.coalesce import CoalescingCRM
from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.ports import build_crm
from bridge.ratelimit import CallPacer
from bridge.sources import interpret_body, load_sources
from bridge.worker import Worker

from .conftest import ROOT, Sandbox, answer, post_typeform, typeform_payload
from .procs import started, wait_until

UPSERT = "POST /crm/v3/objects/contacts/batch/upsert"
BATCH_READ = "POST /crm/v3/objects/contacts/batch/read"
SEARCH = "POST /crm/v3/objects/contacts/search"
DEAL, TASK = "POST /crm/v3/objects/deals", "POST /crm/v3/objects/tasks"
POST, UPDATE = "POST /api/chat.postMessage", "POST /api/chat.update"
READS = ("GET", BATCH_READ, SEARCH)


def calls(sandbox: Sandbox, since: int = 0) -> list[str]:
    """HubSpot and Slack calls in order, with PATCHes shortened to their object type."""
    made = []
    for r in sandbox.state()["requests"][since:]:
        if "/owners" in r["path"] or not r["path"].startswith(("/crm/", "/api/")):
            continue
        path = "/".join(r["path"].split("/")[:5]) if r["method"] == "PATCH" else r["path"]
        made.append(f"{r['method']} {path}")
    return made


def hubspot_only(made: list[str]) -> list[str]:
    return [c for c in made if " /crm/" in c]


def deal_link(message: dict[str, Any]) -> bool:
    return "Open deal" in json.dumps(message["blocks"])


def test_a_new_lead_pings_slack_after_one_contact_write_then_gains_its_deal_link(
    intake: str, sandbox: Sandbox, worker: Worker
) -> None:
    post_typeform(intake, typeform_payload())
    worker.drain()
    made = calls(sandbox)
    assert made == [UPSERT, POST, DEAL, TASK, UPDATE]
    before_post = made[: made.index(POST)]
    assert before_post == [UPSERT]  # exactly one HubSpot write, and no read, before the rep is pinged
    (message,) = sandbox.state()["messages"]
    assert message["edits"] == 1 and deal_link(message)
    (deal,) = sandbox.state()["objects"]["deals"]
    assert f"/__sandbox/deals/{deal['id']}" in json.dumps(message["blocks"])


def test_a_returning_lead_with_an_open_deal_costs_two_calls_and_links_the_deal_at_once(
    intake: str, sandbox: Sandbox, worker: Worker
) -> None:
    post_typeform(intake, typeform_payload())
    worker.drain()
    before = len(sandbox.state()["requests"])
    again = answer(typeform_payload(event_id="evt-2", token="tok-2"), "message", "Still leaking")
    post_typeform(intake, again)
    worker.drain()
    made = calls(sandbox, before)
    # No read (first touch comes from the ledger's memory), the open deal reused, one task.
    assert made == ["PATCH /crm/v3/objects/contacts", POST, TASK]
    second = sandbox.state()["messages"][1]
    assert deal_link(second) and "edits" not in second
    first_touch = sandbox.state()["contacts"][0]["properties"]["first_utm_source"]
    assert first_touch == "google"


def test_a_phone_only_lead_costs_a_search_when_new_and_two_calls_when_it_returns(
    intake: str, sandbox: Sandbox, worker: Worker
) -> None:
    post_typeform(intake, answer(typeform_payload(), "email", None))
    worker.drain()
    # A phone is no upsert key: the search is the only way not to duplicate a contact.
    assert hubspot_only(calls(sandbox)) == [SEARCH, "POST /crm/v3/objects/contacts", DEAL, TASK]
    before = len(sandbox.state()["requests"])
    post_typeform(intake, answer(typeform_payload(event_id="evt-2", token="tok-2"), "email", None))
    worker.drain()
    assert hubspot_only(calls(sandbox, before)) == ["PATCH /crm/v3/objects/contacts", TASK]
    assert len(sandbox.state()["contacts"]) == 1


def test_reading_unknown_contacts_first_costs_one_batch_read_and_keeps_what_hubspot_had(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str
) -> None:
    existing = {"email": "jane.doe@acme-plumbing.com", "first_utm_source": "bing", "hubspot_owner_id": "777"}
    sandbox.hubspot("POST", "/crm/v3/objects/contacts", json={"properties": existing}).raise_for_status()
    config_data["hubspot"]["read_unknown_contacts"] = True
    settings = settings_from_dict(config_data, ROOT)
    before = len(sandbox.state()["requests"])
    post_typeform(intake, typeform_payload())
    Worker(settings, open_ledger(settings.ledger)).drain()
    assert hubspot_only(calls(sandbox, before)) == [BATCH_READ, UPSERT, DEAL, TASK]
    (contact,) = sandbox.state()["contacts"]
    assert (contact["properties"]["first_utm_source"], contact["properties"]["hubspot_owner_id"]) == ("bing", "777")


def test_the_sandbox_batch_read_answers_207_naming_ids_it_does_not_have(sandbox: Sandbox) -> None:
    sandbox.hubspot("POST", "/crm/v3/objects/contacts", json={"properties": {"email": "a@x.example", "firstname": "A"}})
    body = {"idProperty": "email", "properties": ["firstname"], "inputs": [{"id": "A@x.example"}, {"id": "b@x.example"}]}
    read = sandbox.hubspot("POST", "/crm/v3/objects/contacts/batch/read", json=body)
    assert read.status_code == 207
    answer_ = read.json()
    assert [r["properties"]["firstname"] for r in answer_["results"]] == ["A"]
    assert [(e["category"], e["context"]) for e in answer_["errors"]] == [("OBJECT_NOT_FOUND", {"ids": ["b@x.example"]})]


def test_a_paced_channel_waits_for_the_deal_and_posts_once_with_its_link(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    sandbox.fault(path="/api/chat.postMessage", status=429, times=1, headers={"Retry-After": "0"})
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    # The throttled post does not hold up the CRM records; the post after them carries the link.
    assert calls(sandbox) == [UPSERT, POST, DEAL, TASK, POST]
    (message,) = sandbox.state()["messages"]
    assert deal_link(message) and "edits" not in message


def test_with_tasks_off_the_answers_go_in_a_note(config_data: dict[str, Any], sandbox: Sandbox, intake: str) -> None:
    config_data["tasks"] = {"enabled": False}
    settings = settings_from_dict(config_data, ROOT)
    post_typeform(intake, typeform_payload())
    Worker(settings, open_ledger(settings.ledger)).drain()
    assert hubspot_only(calls(sandbox)) == [UPSERT, DEAL, "POST /crm/v3/objects/notes"]
    (note,) = sandbox.state()["objects"]["notes"]
    assert "Need a quote for 3 bathrooms" in note["properties"]["hs_note_body"]


def test_a_message_deleted_before_its_update_still_delivers_the_lead(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    gone = {"ok": False, "error": "message_not_found"}
    sandbox.fault(path="/api/chat.update", status=200, body=gone, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert ledger.steps(delivery_id)["notify_update"]["deal_url"] is None
    assert ("notify_update", "skipped") in [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]


def test_a_worker_killed_between_post_and_update_updates_on_retry_and_never_posts_twice(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    # chat.update keeps failing, so the worker has posted, made the deal and the task, and is
    # waiting to retry the update when it is killed. (A failure, not a hang: a hanging request
    # would outlive this test and land in another test's request log.)
    config_data["retry"] = {"schedule_seconds": [2, 2, 2], "jitter": 0}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    sandbox.fault(path="/api/chat.update", status=503, times=1000)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]

    def update_failed() -> bool:
        return ("notify_update", "retrying") in [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]

    argv = [sys.executable, "-m", "bridge.cli", "worker", "--config", str(config)]
    with started(argv, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_until(update_failed, time.monotonic() + 60, "a failed chat.update", proc)
    assert {"notify", "deal", "task"} <= set(ledger.steps(delivery_id)) and "notify_update" not in ledger.steps(delivery_id)
    sandbox.clear_faults()
    settings = settings_from_dict(config_data, ROOT)
    Worker(settings, ledger).drain(timeout=30)

    assert ledger.get(delivery_id).status == Status.DELIVERED
    made = calls(sandbox)
    assert (made.count(POST), made.count(UPSERT), made.count(DEAL), made.count(TASK)) == (1, 1, 1, 1)
    (message,) = sandbox.state()["messages"]
    assert message["edits"] == 1 and deal_link(message)


# -- several deliveries at once: batches across deliveries (bridge/coalesce.py) -------------


def person(n: int) -> dict[str, Any]:
    return answer(answer(typeform_payload(event_id=f"p{n}", token=f"p{n}"), "email", f"p{n}@roofing-co.com"), "phone", None)


def batching(config_data: dict[str, Any], concurrency: int = 100) -> Settings:
    """A worker running many deliveries at once, whose writes always wait for company (as when
    the call budget is tight) until a batch is full: batches are what is measured here."""
    config_data["worker"].update(concurrency=concurrency, claim_batch=min(concurrency, 100))
    config_data["hubspot"]["batching"] = {
        "tight_below": 1.0,
        "contact_tight_below": 1.0,
        "contact_wait_seconds": 30,
        "record_wait_seconds": 30,
    }
    return settings_from_dict(config_data, ROOT)


def queued(settings: Settings, ledger: Ledger, payloads: list[dict[str, Any]]) -> list[str]:
    """Deliveries accepted as intake would, waiting for a worker."""
    kit = load_sources(settings)["typeform"]
    ids = []
    for payload in payloads:
        body = json.dumps(payload).encode()
        lead = interpret_body(kit, body, "application/json", "US").lead
        delivery_id, _ = ledger.accept(
            source="typeform",
            idem_key=f"batch-{payload['form_response']['token']}",
            body=body,
            content_type="application/json",
            headers={},
            config_version="v",
            person_keys=lead.person_keys(),
        )
        ids.append(delivery_id)
    return ids


def exact(sandbox: Sandbox, call: str) -> int:
    return sum(1 for c in calls(sandbox) if c == call)


def test_a_backlog_of_250_new_leads_is_written_with_three_contact_batch_calls(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    settings = batching(config_data)
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, [person(n) for n in range(250)])
    Worker(settings, ledger).drain(timeout=300)
    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    assert len(sandbox.state()["contacts"]) == 250 and len(sandbox.state()["messages"]) == 250
    # 100 + 100 + 50 per kind of write, each delivery still one lead through its own steps.
    assert exact(sandbox, UPSERT) <= 3
    assert exact(sandbox, DEAL + "/batch/create") <= 3 and exact(sandbox, TASK + "/batch/create") <= 3
    assert exact(sandbox, DEAL) == exact(sandbox, TASK) == 0  # no single creates
    assert len(sandbox.state()["objects"]["deals"]) == len(sandbox.state()["objects"]["tasks"]) == 250


def test_a_207_row_error_fails_only_its_own_delivery(config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path) -> None:
    mapping = yaml.safe_load((ROOT / "mappings/typeform.yaml").read_text())
    mapping["custom"]["roof_age"] = "hidden.utm_source"  # a property the portal does not have
    (tmp_path / "typeform.yaml").write_text(yaml.safe_dump(mapping))
    config_data["sources"][0]["mapping"] = str(tmp_path / "typeform.yaml")
    settings = batching(config_data, concurrency=3)
    ledger = open_ledger(settings.ledger)
    payloads = [person(n) for n in range(3)]
    for n in (0, 2):  # only the middle one carries the value that cannot be written
        payloads[n]["form_response"]["hidden"].pop("utm_source")
    ids = queued(settings, ledger, payloads)
    Worker(settings, ledger).drain(timeout=120)
    bad = ledger.get(ids[1])
    assert bad.status == Status.DEAD and "PROPERTY_DOESNT_EXIST" in (bad.reason or "")
    assert ledger.get(ids[0]).status == ledger.get(ids[2]).status == Status.DELIVERED
    assert exact(sandbox, UPSERT) == 1  # one call, answered 207
    assert sorted(c["properties"]["email"] for c in sandbox.state()["contacts"]) == ["p0@roofing-co.com", "p2@roofing-co.com"]


def test_a_batch_create_that_fails_is_retried_and_creates_nothing_twice(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    settings = batching(config_data, concurrency=3)
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, [person(n) for n in range(3)])
    sandbox.fault(path="/crm/v3/objects/deals/batch/create", status=503, times=1)
    Worker(settings, ledger).drain(timeout=120)
    # The failed batch is retried on each delivery's next attempt (contact and Slack steps kept).
    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    assert len(sandbox.state()["objects"]["deals"]) == 3
    assert exact(sandbox, UPSERT) == 1 and len(sandbox.state()["messages"]) == 3


def test_a_batch_hubspot_refuses_whole_is_written_row_by_row(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    settings = batching(config_data, concurrency=3)
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=400, times=1)
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, [person(n) for n in range(3)])
    Worker(settings, ledger).drain(timeout=120)
    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    assert exact(sandbox, UPSERT) == 4  # the refused batch, then one row each
    assert len(sandbox.state()["contacts"]) == 3


def test_with_budget_to_spare_a_contact_write_does_not_queue_behind_one_in_flight(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    # Every contact write hangs for HOLD seconds. One batch at a time would start the second
    # only after the first came back, so the two contacts would be created HOLD apart.
    hold = 5.0
    config_data["worker"].update(concurrency=2, claim_batch=2)
    settings = settings_from_dict(config_data, ROOT)  # default batching: budget to spare, no linger
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", delay=hold)
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, [person(n) for n in range(2)])
    Worker(settings, ledger).drain(timeout=120)
    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    assert exact(sandbox, UPSERT) == 2
    created = sorted(datetime.fromisoformat(c["createdAt"].replace("Z", "+00:00")) for c in sandbox.state()["contacts"])
    assert (created[1] - created[0]).total_seconds() < hold, "the second contact write waited for the first"


def test_with_budget_to_spare_deliveries_reaching_a_create_together_share_one_call(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    # Nothing lingers for a fixed time (a fresh budget), but the deals and tasks of twenty
    # deliveries run at once arrive a little apart (each thread posted its own Slack message
    # first): the first of them waits while the others keep coming, then all go in one call.
    config_data["worker"].update(concurrency=20, claim_batch=20)
    config_data["hubspot"]["batching"] = {"gather_gap_seconds": 0.5, "record_wait_seconds": 30}
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, [person(n) for n in range(20)])
    Worker(settings, ledger).drain(timeout=120)
    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    assert exact(sandbox, DEAL + "/batch/create") == exact(sandbox, TASK + "/batch/create") == 1
    assert len(sandbox.state()["objects"]["deals"]) == len(sandbox.state()["objects"]["tasks"]) == 20


DEAL_A = {"dealname": "A", "dealstage": "appointmentscheduled"}


def task(subject: str) -> dict[str, str]:
    return {"hs_task_subject": subject, "hs_timestamp": "0"}


def tight_crm(settings: Settings, in_flight: Callable[[], int], record_wait: float) -> CoalescingCRM:
    """The worker's coalescer over the real HubSpot connector, the budget always tight."""
    return CoalescingCRM(
        build_crm(settings),
        budget_tight=lambda: True,
        contacts_tight=lambda: True,
        contact_wait=record_wait,
        record_wait=record_wait,
        in_flight=in_flight,
        pacer=CallPacer(settings.ledger, settings.hubspot.rate_limit),
    )


def test_a_create_waits_for_deliveries_at_earlier_steps_but_not_for_those_at_later_ones(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    # Two deliveries in flight, the budget tight (a create lingers up to 60 s for company).
    # A is at its task: its batch waits, since B may still come to it. B, at its deal, goes
    # at once (A, at a later step, never comes to the deals), then joins A's task batch.
    crm = tight_crm(settings_from_dict(config_data, ROOT), lambda: 2, record_wait=60)
    done: dict[str, str] = {}
    a_task = threading.Thread(target=lambda: done.update(a=crm.create_record("tasks", task("A"), [])))
    a_task.start()
    try:
        b_deal = threading.Thread(target=lambda: done.update(deal=crm.create_record("deals", DEAL_A, [])))
        b_deal.start()
        b_deal.join(20)
        assert "deal" in done, "the deal lingered for a delivery already at its task"
        assert "a" not in done  # A's task is still waiting for company
        done["b"] = crm.create_record("tasks", task("B"), [])
    finally:
        a_task.join(20)
    assert "a" in done and done["a"] != done["b"]
    assert exact(sandbox, DEAL) == 1 and exact(sandbox, TASK + "/batch/create") == 1 and exact(sandbox, TASK) == 0


def test_a_batch_waiting_for_the_call_budget_takes_whoever_arrives_meanwhile(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    # One call per 4 s, spent: the first task's leader waits for the next slot before it takes
    # its batch, so the two tasks submitted while it waits go in the same call (taken at once,
    # the batch would have held one, and the others needed a second call after it).
    config_data["hubspot"]["rate_limit"] = {"requests": 1, "per_seconds": 4}
    settings = settings_from_dict(config_data, ROOT)
    CallPacer(settings.ledger, settings.hubspot.rate_limit).acquire()
    crm = tight_crm(settings, lambda: 3, record_wait=0)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(crm.create_record, "tasks", task("0"), [])
        time.sleep(0.5)  # its leader is waiting for the slot by now
        rest = [pool.submit(crm.create_record, "tasks", task(str(n)), []) for n in (1, 2)]
        created = {f.result(timeout=60) for f in (first, *rest)}
    assert len(created) == 3
    assert exact(sandbox, TASK + "/batch/create") == 1 and exact(sandbox, TASK) == 0  # one call, no single create
    assert len(sandbox.state()["objects"]["tasks"]) == 3


def test_people_a_batch_must_read_are_read_in_one_call(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["hubspot"]["read_unknown_contacts"] = True
    settings = batching(config_data, concurrency=3)
    sandbox.hubspot(
        "POST", "/crm/v3/objects/contacts", json={"properties": {"email": "p1@roofing-co.com", "first_utm_source": "x"}}
    )
    ledger = open_ledger(settings.ledger)
    ids = queued(settings, ledger, [person(n) for n in range(3)])
    Worker(settings, ledger).drain(timeout=120)
    assert {ledger.get(i).status for i in ids} == {Status.DELIVERED}
    assert hubspot_only(calls(sandbox))[:3] == ["POST /crm/v3/objects/contacts", BATCH_READ, UPSERT]
    kept = next(c for c in sandbox.state()["contacts"] if c["properties"]["email"] == "p1@roofing-co.com")
    assert kept["properties"]["first_utm_source"] == "x"


def test_a_failing_slack_does_not_hold_up_the_deal_and_task(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    sandbox.fault(path="/api/chat.postMessage", status=503, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    # Attempt 1: the post fails, the records are made anyway; attempt 2 only posts, with the link.
    assert calls(sandbox) == [UPSERT, POST, DEAL, TASK, POST]
    assert ledger.get(delivery_id).attempts == 2
    (message,) = sandbox.state()["messages"]
    assert deal_link(message) and "edits" not in message


def test_a_remembered_contact_that_hubspot_lost_gets_its_first_touch_on_the_next_lead(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    # The ledger remembers a contact HubSpot no longer has (deleted or merged away).
    ledger.remember_contact(["email:jane.doe@acme-plumbing.com"], "999999")
    ledger.remember_contact_state("999999", {"first_utm_source": "bing"})
    post_typeform(intake, typeform_payload())
    worker.drain()
    (contact,) = sandbox.state()["contacts"]
    assert "first_utm_source" not in contact["properties"]  # skipped: the memory said it was set
    assert ledger.contact_memory(contact["id"]) == {
        k: v for k, v in contact["properties"].items() if k.startswith("first_")
    }  # only what was sent
    post_typeform(intake, typeform_payload(event_id="evt-2", token="tok-2"))
    worker.drain()
    (contact,) = sandbox.state()["contacts"]
    assert contact["properties"]["first_utm_source"] == "google"


def test_a_create_whose_answer_timed_out_is_not_sent_again_within_the_attempt(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str
) -> None:
    config_data["hubspot"]["timeout_seconds"] = 0.5
    config_data["hubspot"]["inprocess_attempts"] = 3
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    sandbox.fault(path="/crm/v3/objects/deals", delay=1.5, times=1)  # applied, but answered too late
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    Worker(settings, ledger).drain(timeout=30)
    delivery = ledger.get(delivery_id)
    assert delivery.status == Status.DELIVERED
    # One create per attempt: the timed-out one was not re-sent at once (it may have landed).
    deadline = time.monotonic() + 20  # the late answer is logged by the sandbox when it is sent
    while exact(sandbox, DEAL) < delivery.attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # and nothing more arrives (an in-process retry would be a third create)
    assert exact(sandbox, DEAL) == delivery.attempts == 2
