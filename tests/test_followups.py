"""Issue 10 follow-ups over real HTTP: speed-to-lead escalation and stage reminders.

The lead goes through the real intake and worker into the sandbox; the follow-up chore then
runs with its clock injected (minutes or days "later" without sleeping) and reads HubSpot's
truth from the sandbox at each deadline: the task's status, the contact's Last Contacted.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import Settings, settings_from_dict
from bridge.followups import FollowUps, followup_lines
from bridge.ledger import Status, open_ledger
from bridge.worker import Worker
from connectors.hubspot_events import signature_v3

from .conftest import ROOT, Sandbox, answer, post_typeform, served, typeform_payload

CLIENT_SECRET = "hubspot-app-client-secret"
MINUTE, HOUR = 60.0, 3600.0
OWNERS = [
    {"id": "501", "email": "alice@roofers.example", "firstName": "Alice", "lastName": "Ames"},
    {"id": "502", "email": "bob@roofers.example", "firstName": "Bob", "lastName": "Burns"},
]
ROUTING = {
    "owners": {"alice": {"id": "501", "slack": "UALICE01"}, "bob": {"email": "bob@roofers.example"}},
    "pools": {"crew": {"members": {"alice": 1, "bob": 1}}},
    "rules": [{"name": "roofing", "when": {"service_in": ["roofing"]}, "pool": "crew", "channel": "#leads-roofing"}],
    "triage": {"channel": "#leads-triage"},
}
SCORING = {
    "rules": [
        {"name": "urgent", "category": "intent", "points": 60, "message_matches": ["leak"]},
        {"name": "valid_phone", "category": "data_quality", "points": 20, "valid_phone": True},
    ],
    "actions": {"hot": {"mention_owner": True, "task_priority": "HIGH", "task_due": "15m"}},
}
SLA = {"hot": {"owner_after": "15m", "escalate_after": "45m", "escalate_to": "channel", "reassign": True}}
DM = {"alice": "DALICE01", "bob": "DBOB0001"}  # the sandbox's DM channel per Slack user


@pytest.fixture(autouse=True)
def client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)


@pytest.fixture
def sla_config(config_data: dict[str, Any], sandbox: Sandbox) -> dict[str, Any]:
    for owner in OWNERS:
        requests.post(f"{sandbox.url}/__sandbox/owners", json=owner, timeout=5).raise_for_status()
    bob = {"id": "UBOB0001", "email": "bob@roofers.example", "name": "bob"}
    requests.post(f"{sandbox.url}/__sandbox/slack_users", json=bob, timeout=5).raise_for_status()
    config_data.update(routing=copy.deepcopy(ROUTING), scoring=copy.deepcopy(SCORING), sla=copy.deepcopy(SLA))
    config_data["deals"]["follow_ups"] = [{"stage": "contractsent", "after": "72h", "task": "Chase the signed contract"}]
    return config_data


def settings_of(data: dict[str, Any]) -> Settings:
    return settings_from_dict(data, ROOT)


@pytest.fixture
def sla_settings(sla_config: dict[str, Any]) -> Settings:
    return settings_of(sla_config)


@pytest.fixture
def relay(sla_settings: Settings) -> Iterator[str]:
    with served(sla_settings) as url:
        yield url


class Clock:
    """The chore's clock: the real time plus however far a test has moved it."""

    def __init__(self, start: float) -> None:
        self.at = start

    def __call__(self) -> float:
        return self.at


def chore(settings: Settings, clock: Clock, name: str = "w1") -> FollowUps:
    """A worker's follow-up chore on its own ledger connection, as a separate process has."""
    worker = Worker(settings, open_ledger(settings.ledger))
    return FollowUps(settings, worker.ledger, worker.pipeline.crm, worker.pipeline.notifier, name, clock)


def deliver_hot_lead(relay: str, settings: Settings, n: int = 1) -> str:
    payload = answer(typeform_payload(event_id=f"sla-{n}", token=f"sla-{n}"), "message", "Roof leak over the kitchen")
    answer(payload, "email", f"lead{n}@roofing-customer.test-mail.net")
    for item in payload["form_response"]["answers"]:
        if item["type"] == "choices":
            item["choices"] = {"labels": ["Roofing"]}
    assert post_typeform(relay, payload).status_code == 200
    ledger = open_ledger(settings.ledger)
    Worker(settings, ledger).drain()
    (delivery,) = [d for d in ledger.deliveries(limit=100) if d.idem_key.endswith(f"sla-{n}")]
    assert delivery.status == Status.DELIVERED
    return delivery.id


def messages(sandbox: Sandbox, channel: str) -> list[str]:
    return [str(m["text"]) for m in sandbox.state()["messages"] if m["channel"] == channel]


def steps(settings: Settings, delivery_id: str) -> dict[str, dict[str, Any]]:
    return open_ledger(settings.ledger).steps(delivery_id)


def record(sandbox: Sandbox, kind: str, record_id: str) -> dict[str, Any]:
    found: dict[str, Any] = sandbox.hubspot("GET", f"/crm/v3/objects/{kind}/{record_id}?properties=hubspot_owner_id").json()
    return found


def received(settings: Settings, delivery_id: str) -> float:
    delivery = open_ledger(settings.ledger).get(delivery_id)
    assert delivery is not None
    return delivery.received_at


def test_an_untouched_hot_lead_pings_its_owner_once_then_the_channel_once_and_is_reassigned(
    relay: str, sandbox: Sandbox, sla_settings: Settings
) -> None:
    lead = deliver_hot_lead(relay, sla_settings)
    route = steps(sla_settings, lead)["route"]
    assert route["owner_name"] == "alice"
    start = received(sla_settings, lead)
    clock = Clock(start + 14 * MINUTE)
    worker = chore(sla_settings, clock)
    worker.run()
    assert messages(sandbox, DM["alice"]) == []  # not yet
    for minutes in (16, 20, 30):
        clock.at = start + minutes * MINUTE
        worker.run()
    (dm,) = messages(sandbox, DM["alice"])
    assert "waited 15m" in dm and "Open the contact in HubSpot" in dm
    before = len(messages(sandbox, "#leads-roofing"))
    for minutes in (46, 60, 180):
        clock.at = start + minutes * MINUTE
        worker.run()
    escalations = messages(sandbox, "#leads-roofing")[before:]
    assert len(escalations) == 1
    assert "owned by <@UALICE01> has waited 45m" in escalations[0] and "Reassigned to <@UBOB0001>" in escalations[0]
    assert len(messages(sandbox, DM["alice"])) == 1
    # Contact, deal and task now belong to bob (HubSpot owner 502), and the ledger says why.
    done = steps(sla_settings, lead)
    for kind, record_id in (
        ("contacts", done["contact"]["contact_id"]),
        ("deals", done["deal"]["record_id"]),
        ("tasks", done["task"]["task_id"]),
    ):
        assert record(sandbox, kind, record_id)["properties"]["hubspot_owner_id"] == "502"
    events = [(e["step"], e["outcome"], e["detail"]) for e in open_ledger(sla_settings.ledger).events(lead)]
    (reassigned,) = [e for e in events if e[1] == "reassigned"]
    assert reassigned[0] == "sla" and "from alice to bob" in reassigned[2] and "pool crew → bob" in reassigned[2]
    assert [e[1] for e in events if e[0] == "sla"] == ["owner_pinged", "reassigned", "escalated"]
    assert open_ledger(sla_settings.ledger).assigned_counts("crew") == {"alice": 1, "bob": 1}


def test_a_completed_task_cancels_the_escalation(relay: str, sandbox: Sandbox, sla_settings: Settings) -> None:
    lead = deliver_hot_lead(relay, sla_settings)
    task_id = steps(sla_settings, lead)["task"]["task_id"]
    done = sandbox.hubspot("PATCH", f"/crm/v3/objects/tasks/{task_id}", json={"properties": {"hs_task_status": "COMPLETED"}})
    done.raise_for_status()
    start, posted = received(sla_settings, lead), len(sandbox.state()["messages"])
    clock = Clock(start + 16 * MINUTE)
    worker = chore(sla_settings, clock)
    worker.run()
    clock.at = start + 50 * MINUTE
    worker.run()
    assert len(sandbox.state()["messages"]) == posted
    (line,) = followup_lines(open_ledger(sla_settings.ledger), lead)
    assert line.startswith("speed to lead (hot): cancelled;")
    assert f"cancelled because task {task_id} was completed in HubSpot" in line


def test_a_call_logged_after_the_lead_cancels_it_but_one_from_before_does_not(
    relay: str, sandbox: Sandbox, sla_settings: Settings
) -> None:
    lead = deliver_hot_lead(relay, sla_settings)
    contact_id = steps(sla_settings, lead)["contact"]["contact_id"]
    start = received(sla_settings, lead)

    def log(kind: str, at: float) -> None:
        body = {"type": kind, "contact_id": contact_id, "at": at}
        requests.post(f"{sandbox.url}/__sandbox/engagements", json=body, timeout=5).raise_for_status()

    log("meetings", start - 2 * HOUR)  # last week's visit says nothing about this lead
    clock = Clock(start + 16 * MINUTE)
    worker = chore(sla_settings, clock)
    worker.run()
    assert len(messages(sandbox, DM["alice"])) == 1
    log("calls", start + 20 * MINUTE)
    posted = len(sandbox.state()["messages"])
    clock.at = start + 46 * MINUTE
    worker.run()
    assert len(sandbox.state()["messages"]) == posted  # no escalation
    (line,) = followup_lines(open_ledger(sla_settings.ledger), lead)
    assert "cancelled because a call, email or meeting was logged on the contact (notes_last_contacted" in line
    assert "owner pinged at" in line
    assert record(sandbox, "contacts", contact_id)["properties"]["hubspot_owner_id"] == "501"


def test_two_workers_running_the_chore_at_once_ping_exactly_once(relay: str, sandbox: Sandbox, sla_settings: Settings) -> None:
    leads = [deliver_hot_lead(relay, sla_settings, n) for n in (1, 2, 3)]
    owners = [steps(sla_settings, lead)["route"]["owner_name"] for lead in leads]
    clock = Clock(max(received(sla_settings, lead) for lead in leads) + 16 * MINUTE)
    workers = [chore(sla_settings, clock, f"w{n}") for n in range(2)]
    together = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(worker: FollowUps) -> None:
        try:
            together.wait(timeout=30)
            for _ in range(3):
                worker.run()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    for name in ("alice", "bob"):
        assert len(messages(sandbox, DM[name])) == owners.count(name)
    assert sorted(owners) == ["alice", "alice", "bob"]


def test_a_restart_between_the_deadlines_does_not_repeat_a_ping(relay: str, sandbox: Sandbox, sla_settings: Settings) -> None:
    lead = deliver_hot_lead(relay, sla_settings)
    start = received(sla_settings, lead)
    clock = Clock(start + 16 * MINUTE)
    chore(sla_settings, clock, "before-restart").run()
    assert len(messages(sandbox, DM["alice"])) == 1
    # A new process: new ledger connection, new CRM and notifier, a new worker id.
    clock.at = start + 30 * MINUTE
    after = chore(sla_settings, clock, "after-restart")
    after.run()
    clock.at = start + 46 * MINUTE
    after.run()
    chore(sla_settings, clock, "third").run()
    assert len(messages(sandbox, DM["alice"])) == 1
    assert len([m for m in messages(sandbox, "#leads-roofing") if "Speed to lead" in m]) == 1


def test_a_failed_ping_is_tried_again_and_sent_once(relay: str, sandbox: Sandbox, sla_settings: Settings) -> None:
    lead = deliver_hot_lead(relay, sla_settings)
    sandbox.fault(path="/api/chat.postMessage", status=500, times=1)
    clock = Clock(received(sla_settings, lead) + 16 * MINUTE)
    worker = chore(sla_settings, clock)
    worker.run()
    assert messages(sandbox, DM["alice"]) == []
    clock.at += 30  # before the retry is due
    worker.run()
    assert messages(sandbox, DM["alice"]) == []
    clock.at += 60
    worker.run()
    worker.run()
    assert len(messages(sandbox, DM["alice"])) == 1


def test_show_tells_the_sla_state(relay: str, sandbox: Sandbox, sla_config: dict[str, Any], tmp_path: Path) -> None:
    settings = settings_of(sla_config)
    lead = deliver_hot_lead(relay, settings)
    clock = Clock(received(settings, lead) + 16 * MINUTE)
    chore(settings, clock).run()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(sla_config))
    shown = CliRunner().invoke(main, ["show", lead, "--config", str(path)])
    assert shown.exit_code == 0, shown.output
    (line,) = [x for x in shown.output.splitlines() if "speed to lead" in x]
    assert "speed to lead (hot): waiting (escalate due" in line and "owner pinged at" in line and "escalate due" in line
    assert "sla       owner_pinged" in shown.output
    data = json.loads(CliRunner().invoke(main, ["show", lead, "--config", str(path), "--json"]).output)
    (row,) = data["followups"]
    assert (row["kind"], row["state"], row["phase"]) == ("sla", "waiting", "escalate")


# -- stage follow-ups ------------------------------------------------------------------


def stage_event(intake: str, deal_id: str, stage: str, event_id: int) -> None:
    url = f"{intake}/hubspot/webhooks"
    event = {
        "eventId": event_id,
        "subscriptionType": "deal.propertyChange",
        "objectId": int(deal_id),
        "propertyName": "dealstage",
        "propertyValue": stage,
        "portalId": 1,
        "attemptNumber": 0,
    }
    body = json.dumps([event]).encode()
    stamp = str(int(time.time() * 1000))
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": stamp,
        "X-HubSpot-Signature-v3": signature_v3(CLIENT_SECRET, "POST", url, body, stamp),
    }
    assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 200


def move(sandbox: Sandbox, deal_id: str, stage: str) -> None:
    sandbox.hubspot("PATCH", f"/crm/v3/objects/deals/{deal_id}", json={"properties": {"dealstage": stage}}).raise_for_status()


def tasks_on(sandbox: Sandbox, deal_id: str) -> list[dict[str, Any]]:
    tasks = sandbox.state()["objects"].get("tasks", [])
    return [t for t in tasks if any(a["toObjectId"] == deal_id and a["associationTypeId"] == 216 for a in t["associations"])]


def test_a_deal_left_in_contract_sent_for_72h_gets_one_task_and_one_reminder(
    relay: str, sandbox: Sandbox, sla_config: dict[str, Any]
) -> None:
    sla_config["sla"] = {}
    settings = settings_of(sla_config)
    lead = deliver_hot_lead(relay, settings)
    deal_id = steps(settings, lead)["deal"]["record_id"]
    move(sandbox, deal_id, "contractsent")
    stage_event(relay, deal_id, "contractsent", 7001)
    entered = time.time()
    assert len(tasks_on(sandbox, deal_id)) == 1  # the lead's own call task
    clock = Clock(entered + 71 * HOUR)
    worker = chore(settings, clock)
    worker.run()
    assert len(tasks_on(sandbox, deal_id)) == 1 and messages(sandbox, DM["alice"]) == []
    for hours in (73, 74, 200):
        clock.at = entered + hours * HOUR
        worker.run()
    chore(settings, clock, "another").run()
    follow_up = [t for t in tasks_on(sandbox, deal_id) if t["properties"]["hs_task_subject"] == "Chase the signed contract"]
    assert len(follow_up) == 1
    assert follow_up[0]["properties"]["hubspot_owner_id"] == "501"
    (reminder,) = messages(sandbox, DM["alice"])
    assert "Chase the signed contract: your deal has been in contractsent for 3d" in reminder
    (line,) = followup_lines(open_ledger(settings.ledger), lead)
    assert line.startswith(f"stage follow-up (deal {deal_id} in contractsent): done;") and "reminded at" in line


def test_a_deal_that_moved_on_gets_no_reminder(relay: str, sandbox: Sandbox, sla_config: dict[str, Any]) -> None:
    sla_config["sla"] = {}
    settings = settings_of(sla_config)
    lead = deliver_hot_lead(relay, settings)
    deal_id = steps(settings, lead)["deal"]["record_id"]
    posted = len(sandbox.state()["messages"])
    # Moved in HubSpot with no webhook heard: the stage read at the due time cancels it.
    move(sandbox, deal_id, "contractsent")
    stage_event(relay, deal_id, "contractsent", 7101)
    move(sandbox, deal_id, "closedwon")
    clock = Clock(time.time() + 73 * HOUR)
    chore(settings, clock).run()
    # Moved with the webhook heard: cancelled at once, nothing even read at the due time.
    move(sandbox, deal_id, "contractsent")
    stage_event(relay, deal_id, "contractsent", 7102)
    stage_event(relay, deal_id, "closedlost", 7103)
    clock.at = time.time() + 80 * HOUR
    chore(settings, clock).run()
    assert len(tasks_on(sandbox, deal_id)) == 1  # only the lead's own task
    assert len(sandbox.state()["messages"]) == posted
    lines = list(followup_lines(open_ledger(settings.ledger), lead))
    assert len(lines) == 2
    assert any(f"cancelled because deal {deal_id} moved to closedwon" in line for line in lines)
    assert any("cancelled because the deal moved from contractsent to closedlost" in line for line in lines)


class Died(BaseException):
    """The worker process ending right after Slack took the message, before its checkpoint."""


class DiesAfterSending:
    """The real notifier (over HTTP to the sandbox), whose process dies once a DM went out."""

    def __init__(self, notifier: Any) -> None:
        self.notifier = notifier

    def __getattr__(self, name: str) -> Any:
        return getattr(self.notifier, name)

    def direct_message(self, user_id: str, text: str) -> Any:
        self.notifier.direct_message(user_id, text)
        raise Died


def test_a_worker_that_died_while_sending_is_not_followed_by_a_second_ping(
    relay: str, sandbox: Sandbox, sla_settings: Settings
) -> None:
    lead = deliver_hot_lead(relay, sla_settings)
    start = received(sla_settings, lead)
    clock = Clock(start + 16 * MINUTE)
    dying = chore(sla_settings, clock, "dies")
    dying.notifier = DiesAfterSending(dying.notifier)
    with pytest.raises(Died):
        dying.run()
    clock.at += sla_settings.worker.lease_seconds + 1  # its lease runs out; another worker takes the row over
    chore(sla_settings, clock, "takes-over").run()
    assert len(messages(sandbox, DM["alice"])) == 1
    events = [(e["step"], e["outcome"]) for e in open_ledger(sla_settings.ledger).events(lead)]
    assert ("sla", "owner_dm_unknown") in events and ("sla", "owner_pinged") in events


def commented_block(text: str, head: str) -> str:
    """The commented-out YAML block of config.example.yaml that starts at ``head``, uncommented."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"# {head}")
    indent = lines[start].index("#")
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#") or (block and not line[indent + 2 :].startswith(" ")):
            break
        block.append(line[indent + 2 :])
    return "\n".join(block)


def test_the_example_configs_commented_follow_ups_are_valid() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    sla = yaml.safe_load(commented_block(text, "sla:"))
    follow_ups = yaml.safe_load(commented_block(text, "follow_ups:"))
    settings = Settings(**sla, deals=follow_ups)
    assert (settings.sla["hot"].owner_after, settings.sla["hot"].escalate_after, settings.sla["hot"].reassign) == (
        900,
        2700,
        True,
    )
    assert settings.sla["warm"].escalate_to == "manager@acme-roofing.example"
    assert [(r.stage, r.after) for r in settings.deals.follow_ups] == [("contractsent", 72 * HOUR)]


@pytest.mark.parametrize(
    ("sla", "message"),
    [
        ({"hot": {"owner_after": 15}}, 'write the duration with its unit, like "15m"'),
        ({"hot": {"owner_after": "soon"}}, '"soon" is not a duration'),
        ({"hot": {"owner_after": "1h", "escalate_after": "30m"}}, "escalate_after must be later than owner_after"),
        ({"hot": {"owner_after": "1h", "reassign": True}}, "give escalate_after too"),
        ({"hot": {"owner_after": "1h", "escalate_after": "2h", "escalate_to": "bob"}}, '"bob" is not "channel"'),
        ({"scorching": {"owner_after": "1h"}}, "'scorching' is not a score segment"),
        ({"hot": {"owner_after": "1h", "escalate_afer": "2h"}}, "escalate_afer"),
    ],
)
def test_sla_config_mistakes_are_named(sla: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings(sla=sla)
