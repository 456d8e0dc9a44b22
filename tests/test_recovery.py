"""Dead letters, replay and crashes: nothing is lost and nothing happens twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from werkzeug.test import Client

from bridge.app import create_app
from bridge.cli import main
from bridge.config import settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker
from connectors.typeform import typeform_signature

from .conftest import ROOT, Sandbox, post_typeform, typeform_payload


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_permanent_400_goes_dead_with_hubspots_message_and_replay_delivers_once(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    mapping = yaml.safe_load((ROOT / "mappings/typeform.yaml").read_text())
    mapping["custom"]["roof_age"] = "hidden.utm_source"  # a property the portal does not have yet
    (tmp_path / "typeform.yaml").write_text(yaml.safe_dump(mapping))
    config_data["sources"][0]["mapping"] = str(tmp_path / "typeform.yaml")
    config = write_config(tmp_path, config_data)
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    body = json.dumps(typeform_payload()).encode()
    sent = Client(create_app(settings)).post(
        "/hooks/typeform",
        data=body,
        content_type="application/json",
        headers={"Typeform-Signature": typeform_signature("tf-test-secret", body)},
    )
    delivery_id = sent.get_json()["delivery_id"]
    Worker(settings, ledger).drain()

    dead = ledger.get(delivery_id)
    assert dead.status == Status.DEAD
    # With an objectWriteTraceId per input HubSpot answers 207 and names the failed row (hubspot.md §1).
    assert dead.reason.startswith("contact: HubSpot VALIDATION_ERROR: Property values were not valid")
    assert '"error":"PROPERTY_DOESNT_EXIST","name":"roof_age"' in dead.reason
    assert sandbox.state()["contacts"] == [] and sandbox.state()["messages"] == []

    listed = CliRunner().invoke(main, ["deliveries", "--status", "dead", "--config", str(config)])
    assert listed.exit_code == 0 and delivery_id in listed.output

    assert (
        sandbox.hubspot(
            "POST",
            "/crm/v3/properties/contacts",
            json={
                "name": "roof_age",
                "label": "Roof age",
                "type": "string",
                "fieldType": "text",
                "groupName": "contactinformation",
            },
        ).status_code
        == 201
    )
    dry = CliRunner().invoke(main, ["replay", "--status", "dead", "--dry-run", "--config", str(config)])
    assert dry.exit_code == 0 and dry.stdout.strip() == delivery_id
    assert ledger.get(delivery_id).status == Status.DEAD

    replayed = CliRunner().invoke(main, ["replay", delivery_id, "--config", str(config)])
    assert replayed.exit_code == 0, replayed.output
    assert f"{delivery_id}  delivered" in replayed.output and "summary: 1 delivered" in replayed.output
    again = CliRunner().invoke(main, ["replay", delivery_id, "--config", str(config)])
    assert "skipped: already delivered" in again.output

    state = sandbox.state()
    assert len(state["contacts"]) == 1 and len(state["messages"]) == 1
    assert state["contacts"][0]["properties"]["roof_age"] == "google"
    assert ledger.get(delivery_id).status == Status.DELIVERED


def test_a_worker_killed_between_contact_and_slack_resumes_without_repeating(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    config_data["worker"]["lease_seconds"] = 1.0
    config = write_config(tmp_path, config_data)
    # Slack hangs for a while (then fails), so the worker is caught between the two steps.
    sandbox.fault(path="/api/chat.postMessage", status=503, delay=3, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]

    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "worker", "--config", str(config)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while "contact" not in ledger.steps(delivery_id):
            assert time.monotonic() < deadline, "worker never finished the contact step"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert ledger.get(delivery_id).status == Status.PROCESSING

    sandbox.clear_faults()
    settings = settings_from_dict(config_data, ROOT)
    Worker(settings, ledger).drain(timeout=15)

    assert ledger.get(delivery_id).status == Status.DELIVERED
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"])) == (1, 1)
    assert sandbox.calls("/batch/upsert") == 1
    assert ("claim", "lease_expired") in [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]


def test_a_delivery_gives_up_after_the_schedule_and_says_why(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=502)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    dead = ledger.get(delivery_id)
    assert dead.status == Status.DEAD
    assert dead.attempts == 5  # the first try plus the four scheduled retries
    assert dead.reason.startswith("contact: HubSpot 502") and dead.reason.endswith("(gave up after 5 attempts)")


def test_a_failed_task_create_keeps_the_deals_checkpoint_written_before_the_task_went_out(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    # The deal's checkpoint commits with the task's intent (one transaction): it must be on
    # disk before the task create goes out, and a failed task must not cost a second deal.
    config_data["retry"]["schedule_seconds"] = [3600]
    sandbox.fault(path="/crm/v3/objects/tasks", method="POST", status=500, times=1)
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    Worker(settings_from_dict(config_data, ROOT), ledger).drain(timeout=15)

    assert ledger.get(delivery_id).status == Status.RETRYING
    steps = ledger.steps(delivery_id)
    assert {"contact", "notify", "deal"} <= set(steps) and "task" not in steps
    events = [(e["step"], e["outcome"]) for e in ledger.events(delivery_id)]
    assert events.index(("deal", "ok")) < events.index(("task", "sending")) < events.index(("task", "retrying"))
    assert len(sandbox.state()["objects"]["deals"]) == 1
