"""HubSpot stays the truth without webhooks: the poller, closed stages from pipeline metadata,
and merged contact ids read back from HubSpot's answer.

Over real HTTP: the relay's connector searches the sandbox, which keeps each record's
``hs_lastmodifieddate`` and answers a write to a merged-away contact with the survivor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bridge.config import Settings, settings_from_dict
from bridge.crm_poll import CrmPoller, PollResult
from bridge.ledger import Ledger, Status, open_ledger
from bridge.ports import build_crm
from bridge.worker import Worker
from connectors.sandbox import SandboxServer

from .conftest import ROOT, Sandbox, post_typeform, typeform_payload
from .procs import wait_until
from .test_hubspot_truth import CLIENT_SECRET, event, send

RENOVATIONS = {
    "id": "renovations",
    "label": "Renovations",
    "stages": [
        {"id": "reno-quoted", "label": "Quoted", "metadata": {"isClosed": "false", "probability": "0.5"}},
        {"id": "reno-signed", "label": "Signed", "metadata": {"isClosed": "true", "probability": "1.0"}},
    ],
}


@pytest.fixture(autouse=True)
def no_search_lag(sandbox: Sandbox) -> None:
    # The overlap covers search lag; these tests look at what the poller does with what it finds.
    sandbox.search_lag(0)


@pytest.fixture(autouse=True)
def client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)


@pytest.fixture
def config_data(config_data: dict[str, Any]) -> dict[str, Any]:
    config_data["hubspot"]["poll"] = {"enabled": True, "every": "5m", "overlap": "2m"}
    return config_data


def poller(settings: Settings, ledger: Ledger, owner: str = "worker-a") -> CrmPoller:
    return CrmPoller(settings, ledger, build_crm(settings), owner)


def lead(n: int) -> dict[str, Any]:
    return typeform_payload(event_id=f"poll-{n}", token=f"poll-{n}")


def deliver(intake: str, worker: Worker, n: int) -> str:
    delivery_id = str(post_typeform(intake, lead(n)).json()["delivery_id"])
    worker.drain()
    return delivery_id


def move(sandbox: Sandbox, deal_id: str, stage: str) -> None:
    sandbox.hubspot("PATCH", f"/crm/v3/objects/deals/{deal_id}", json={"properties": {"dealstage": stage}}).raise_for_status()


def pipeline_reads(sandbox: Sandbox) -> int:
    return sum(1 for r in sandbox.state()["requests"] if r["method"] == "GET" and r["path"].startswith("/crm/v3/pipelines"))


def searches(sandbox: Sandbox) -> int:
    return sandbox.calls("/crm/v3/objects/deals/search")


def test_a_deal_closed_in_hubspot_is_seen_by_the_next_poll_and_a_reopened_one_is_reused(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings
) -> None:
    first = deliver(intake, worker, 1)
    deal_a = ledger.steps(first)["deal"]["record_id"]
    polls = poller(settings, ledger)
    assert polls.poll().changes == [{"deal": deal_a, "stage": "appointmentscheduled", "closed": False}]
    move(sandbox, deal_a, "closedwon")  # in HubSpot, no webhook
    assert polls.poll(force=True).changes == [{"deal": deal_a, "stage": "closedwon", "closed": True}]
    second = deliver(intake, worker, 2)
    deal_b = ledger.steps(second)["deal"]
    assert deal_b["created"] is True and deal_b["record_id"] != deal_a
    # The rep reopens the old deal and closes the new one: the reopened deal is the one reused.
    move(sandbox, deal_a, "contractsent")
    move(sandbox, deal_b["record_id"], "closedlost")
    changes = polls.poll(force=True).changes
    assert sorted(changes, key=lambda c: str(c["deal"])) == sorted(
        [
            {"deal": deal_a, "stage": "contractsent", "closed": False},
            {"deal": deal_b["record_id"], "stage": "closedlost", "closed": True},
        ],
        key=lambda c: str(c["deal"]),
    )
    third = deliver(intake, worker, 3)
    assert ledger.get(third).status == Status.DELIVERED
    assert ledger.steps(third)["deal"] == {"object_type": "deals", "record_id": deal_a, "created": False}
    assert len(sandbox.state()["objects"]["deals"]) == 2
    # Polled again with nothing new: the overlap finds the same versions, applied once.
    again = polls.poll(force=True)
    assert (again.changes, again.applied) == ([], 0) and again.duplicates >= 2


def test_two_workers_polling_at_once_search_and_apply_once(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings
) -> None:
    deal_id = ledger.steps(deliver(intake, worker, 1))["deal"]["record_id"]
    move(sandbox, deal_id, "closedwon")
    # A slow search keeps the first poller inside its lease while the second one tries.
    sandbox.fault(path="/crm/v3/objects/deals/search", delay=1.0, times=1)
    before = searches(sandbox)
    results: dict[str, PollResult] = {}
    start = threading.Barrier(2)

    def run(owner: str) -> None:
        # Each its own ledger connection and CRM, as two worker processes have.
        mine = poller(settings, open_ledger(settings.ledger), owner)
        start.wait(timeout=30)
        results[owner] = mine.poll()

    threads = [threading.Thread(target=run, args=(owner,)) for owner in ("worker-a", "worker-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r.ran for r in results.values()) == [False, True]
    (skipped,) = [r for r in results.values() if not r.ran]
    assert skipped.reason in ("another worker is polling", "not due")
    (ran,) = [r for r in results.values() if r.ran]
    assert ran.changes == [{"deal": deal_id, "stage": "closedwon", "closed": True}]
    assert searches(sandbox) - before == 1
    assert ledger.open_deal(ledger.steps(ledger.deliveries()[0].id)["contact"]["contact_id"], "deals") is None


def test_a_poll_falls_due_every_interval_whichever_worker_ran_the_last(
    intake: str, worker: Worker, ledger: Ledger, settings: Settings
) -> None:
    deliver(intake, worker, 1)
    clock = [time.time()]
    first, second = (CrmPoller(settings, ledger, build_crm(settings), owner, clock=lambda: clock[0]) for owner in "ab")
    assert first.poll().ran
    clock[0] += 60
    assert (second.poll().ran, second.poll().reason) == (False, "not due")
    clock[0] += 241  # five minutes after the first poll
    assert second.poll().ran


def test_the_worker_loop_polls_as_a_chore(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings
) -> None:
    delivery_id = deliver(intake, worker, 1)
    deal_id = ledger.steps(delivery_id)["deal"]["record_id"]
    contact_id = ledger.steps(delivery_id)["contact"]["contact_id"]
    move(sandbox, deal_id, "closedwon")
    running = Worker(settings, ledger)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: ledger.open_deal(contact_id, "deals") is None, time.monotonic() + 60, "the poll closing the deal")
    finally:
        running.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()


def test_the_high_water_mark_survives_a_restart(
    tmp_path: Path, config_data: dict[str, Any], intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings
) -> None:
    deal_id = ledger.steps(deliver(intake, worker, 1))["deal"]["record_id"]
    first = poller(settings, ledger).poll()
    assert first.ran and first.high_water_ms
    move(sandbox, deal_id, "closedwon")
    # A new process (as after a restart): `leadbridge hubspot-poll` starts at the stored mark.
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    argv = [sys.executable, "-m", "bridge", "hubspot-poll", "--json", "--config", str(config)]
    done = subprocess.run(argv, env=dict(os.environ), cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert report["since_ms"] == first.high_water_ms - 120_000
    assert report["changes"] == [{"deal": deal_id, "stage": "closedwon", "closed": True}]
    assert report["high_water_ms"] > first.high_water_ms
    assert poller(settings, open_ledger(settings.ledger)).high_water() == report["high_water_ms"]


def test_polling_many_pages_stays_within_the_search_rate_limit(
    config_data: dict[str, Any], sandbox: Sandbox, ledger: Ledger
) -> None:
    for n in range(12):
        made = sandbox.hubspot(
            "POST", "/crm/v3/objects/deals", json={"properties": {"dealname": f"d{n}", "dealstage": "qualifiedtobuy"}}
        )
        made.raise_for_status()
    config_data["hubspot"]["poll"]["page_size"] = 1
    settings = settings_from_dict(config_data, ROOT)
    limits = f"{sandbox.url}/__sandbox/limits"
    requests.post(limits, json={"search_rate_limit": "5/1s"}, timeout=5).raise_for_status()
    try:
        before = requests.get(limits, timeout=5).json()["statuses"]
        result = poller(settings, ledger).poll()
        after = requests.get(limits, timeout=5).json()["statuses"]
    finally:
        requests.post(limits, json={"search_rate_limit": None}, timeout=5).raise_for_status()
    # 12 pages at 5 searches a second: the shared pacer spaced them, HubSpot refused none.
    assert (result.pages, result.found) == (12, 12)
    made = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in ("search 200", "search 429")}
    assert made == {"search 200": 12, "search 429": 0}
    assert result.changes == []  # none of them is a deal the ledger knows


def test_a_custom_pipelines_closed_stage_closes_the_deal_without_config(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.hubspot("POST", "/crm/v3/pipelines/deals", json=RENOVATIONS).raise_for_status()
    config_data["deals"].update(pipeline="renovations", stage="reno-quoted")
    config_data["hubspot"]["poll"]["enabled"] = False  # the webhook path first; polled by hand below
    settings = settings_from_dict(config_data, ROOT)
    assert "reno-signed" not in settings.deals.closed_stages
    ledger = open_ledger(settings.ledger)
    worker = Worker(settings, ledger)
    from .conftest import served

    with served(settings) as intake:
        first = deliver(intake, worker, 1)
        deal_a = ledger.steps(first)["deal"]["record_id"]
        # Through the webhook: the handler does not call HubSpot, so it cannot know yet.
        move(sandbox, deal_a, "reno-signed")
        signed = event("deal.propertyChange", deal_a, 40, propertyName="dealstage", propertyValue="reno-signed")
        assert send(intake, [signed]).json()["applied"] == 1
        assert pipeline_reads(sandbox) == 0
        contact_id = ledger.steps(first)["contact"]["contact_id"]
        assert ledger.open_deal(contact_id, "deals") == deal_a
        # The worker's chore reads the pipelines once and settles it: closed.
        worker.crm_poller.tick()
        assert pipeline_reads(sandbox) == 1
        assert ledger.open_deal(contact_id, "deals") is None
        second = deliver(intake, worker, 2)
        assert ledger.steps(second)["deal"]["created"] is True
        # Through the poller: the same stage on the new deal, judged from the cached pipeline.
        deal_b = ledger.steps(second)["deal"]["record_id"]
        move(sandbox, deal_b, "reno-signed")
        changes = worker.crm_poller.poll(force=True).changes
        assert {"deal": deal_b, "stage": "reno-signed", "closed": True} in changes
        assert ledger.open_deal(contact_id, "deals") is None
        assert pipeline_reads(sandbox) == 1  # the cache answered


def test_a_merged_contacts_next_lead_updates_the_survivor_and_the_ledger_remembers_it(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    first = deliver(intake, worker, 1)
    (merged,) = sandbox.state()["contacts"]
    deal_id = ledger.steps(first)["deal"]["record_id"]
    survivor = sandbox.hubspot("POST", "/crm/v3/objects/contacts", json={"properties": {"firstname": "Jane"}}).json()
    # Merged in HubSpot with no webhook: only HubSpot's answer to the next write says so.
    sandbox.hubspot(
        "POST", "/crm/v3/objects/contacts/merge", json={"primaryObjectId": survivor["id"], "objectIdToMerge": merged["id"]}
    ).raise_for_status()
    second = deliver(intake, worker, 2)
    assert ledger.get(second).status == Status.DELIVERED
    contact = ledger.steps(second)["contact"]
    assert (contact["contact_id"], contact["merged_from"]) == (survivor["id"], merged["id"])
    assert ledger.contact_for(f"email:{merged['properties']['email']}") == survivor["id"]
    # The deal moved with the contact: reused, not a second one.
    assert ledger.steps(second)["deal"] == {"object_type": "deals", "record_id": deal_id, "created": False}
    (task,) = [
        t for t in sandbox.state()["objects"]["tasks"] if any(a["toObjectId"] == survivor["id"] for a in t["associations"])
    ]
    assert task
    third = deliver(intake, worker, 3)
    patched = [r["path"] for r in sandbox.state()["requests"] if r["method"] == "PATCH"]
    assert patched[-1].endswith(f"/contacts/{survivor['id']}")  # the ledger's memory is the survivor now
    assert "merged_from" not in ledger.steps(third)["contact"]


def test_a_late_older_stage_change_does_not_undo_a_newer_one(intake: str, worker: Worker, ledger: Ledger) -> None:
    delivery_id = deliver(intake, worker, 1)
    deal_id = ledger.steps(delivery_id)["deal"]["record_id"]
    contact_id = ledger.steps(delivery_id)["contact"]["contact_id"]
    now_ms = int(time.time() * 1000)
    won = event("deal.propertyChange", deal_id, 50, propertyName="dealstage", propertyValue="closedwon", occurredAt=now_ms)
    earlier = event(
        "deal.propertyChange", deal_id, 49, propertyName="dealstage", propertyValue="contractsent", occurredAt=now_ms - 5000
    )
    assert send(intake, [won]).json()["applied"] == 1
    assert send(intake, [earlier]).json()["applied"] == 1  # a new event, but older than what the ledger holds
    assert ledger.open_deal(contact_id, "deals") is None


def test_the_sandbox_keeps_merges_and_pipelines_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    headers = {"Authorization": "Bearer t"}
    with SandboxServer(state_file=state) as server:
        crm = f"{server.url}/crm/v3"
        new = {"properties": {}}
        made = [requests.post(f"{crm}/objects/contacts", json=new, headers=headers, timeout=10).json() for _ in "ab"]
        merge = {"primaryObjectId": made[0]["id"], "objectIdToMerge": made[1]["id"]}
        requests.post(f"{crm}/objects/contacts/merge", json=merge, headers=headers, timeout=10).raise_for_status()
        requests.post(f"{crm}/pipelines/deals", json=RENOVATIONS, headers=headers, timeout=10).raise_for_status()
    with SandboxServer(state_file=state) as server:
        crm = f"{server.url}/crm/v3"
        patched = requests.patch(
            f"{crm}/objects/contacts/{made[1]['id']}", json={"properties": {"firstname": "Jo"}}, headers=headers, timeout=10
        )
        pipelines = requests.get(f"{crm}/pipelines/deals", headers=headers, timeout=10).json()["results"]
    assert (patched.status_code, patched.json()["id"]) == (200, made[0]["id"])
    assert [p["id"] for p in pipelines] == ["default", "renovations"]
    assert [s["metadata"]["isClosed"] for s in pipelines[1]["stages"]] == ["false", "true"]
