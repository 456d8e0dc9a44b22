"""Dead letters, replay and crashes: nothing is lost and nothing happens twice."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from werkzeug.test import Client

from bridge.app import create_app
from bridge.cli import main
from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker
from connectors.typeform import typeform_signature

from .conftest import ROOT, Sandbox, post_typeform, served, typeform_payload
from .procs import wait_until


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


@contextmanager
def ledger_outage(settings: Settings) -> Iterator[None]:
    """Writes fail meanwhile: SQLite's write lock held by another connection, or PostgreSQL
    refusing connections with every session to it ended (as a restart would)."""
    if not settings.ledger.url:
        blocker = sqlite3.connect(settings.ledger.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.close()
        return
    import psycopg

    name = settings.ledger.url.rsplit("/", 1)[1]
    admin = settings.ledger.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


def test_a_worker_rides_out_a_ledger_outage_and_delivers_once_it_is_back(
    config_data: dict[str, Any], sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.worker")
    config_data["ledger"]["busy_timeout_seconds"] = 0.2
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    worker = Worker(settings, open_ledger(settings.ledger))
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        with ledger_outage(settings):
            thread.start()
            wait_until(lambda: "cannot claim: the ledger is unavailable" in caplog.text, time.monotonic() + 60, "the outage")
            time.sleep(3 * settings.worker.poll_seconds)
            assert thread.is_alive()  # the loop carried on
        with served(settings) as url:
            delivery_id = post_typeform(url, typeform_payload()).json()["delivery_id"]

        def delivered() -> bool:
            try:
                return ledger.get(delivery_id).status == Status.DELIVERED
            except ledger.errors:  # this ledger's own connections were cut by the outage too
                return False

        wait_until(delivered, time.monotonic() + 60, "the delivery after the outage")
        assert "the ledger is back" in caplog.text
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
