"""Retention and erasure over a real ledger file: `leadbridge purge` and `leadbridge forget`.

The proof is the file itself: after erasure, the person's email and phone appear nowhere in
the ledger's bytes (main file and WAL), while everyone else's deliveries are untouched.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker

from . import postgres
from .conftest import ROOT, Sandbox, answer, post_typeform, typeform_payload

JANE = ("jane.forgetme@acme-roofing.com", "(650) 253-0101", "+16502530101")
OMAR = ("omar.keepme@acme-roofing.com", "(650) 253-0202", "+16502530202")


def submit(intake: str, person: tuple[str, str, str], n: int) -> str:
    email, phone, _ = person
    token = f"{phone[-4:]}-{n}"
    payload = answer(answer(typeform_payload(event_id=token, token=token), "email", email), "phone", phone)
    response = post_typeform(intake, payload)
    assert response.status_code == 200
    return str(response.json()["delivery_id"])


def file_bytes(settings: Settings) -> bytes:
    """Everything the ledger holds: its SQLite files, or a dump of its PostgreSQL database's rows."""
    if settings.ledger.url:
        return postgres.dump(settings.ledger.url)
    path = Path(settings.ledger.path)
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def holds(data: bytes, person: tuple[str, str, str]) -> bool:
    email, _, e164 = person
    return email.encode() in data or e164.encode() in data


def cli(settings: Settings, tmp_path: Path, config_data: dict[str, Any], *args: str) -> Any:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    return CliRunner().invoke(main, [*args[:1], "--config", str(config), *args[1:]])


def test_forget_erases_a_person_from_the_ledger_file_and_keeps_everyone_else(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings, tmp_path: Path, config_data: dict[str, Any]
) -> None:
    jane = [submit(intake, JANE, n) for n in range(2)]
    omar = submit(intake, OMAR, 0)
    worker.drain()
    assert {ledger.get(i).status for i in [*jane, omar]} == {Status.DELIVERED}
    assert holds(file_bytes(settings), JANE)
    jane_contact, omar_contact = (ledger.steps(i)["contact"]["contact_id"] for i in (jane[0], omar))
    assert ledger.contact_memory(jane_contact) is not None

    result = cli(settings, tmp_path, config_data, "forget", JANE[0].upper(), "--hubspot")
    assert result.exit_code == 0, result.output
    assert "forgot: 2 deliveries" in result.output and "HubSpot: contact deleted" in result.output
    assert JANE[0] not in result.output  # the erasure names nobody
    data = file_bytes(settings)
    assert not holds(data, JANE)
    assert all(ledger.get(i) is None for i in jane)
    # Omar is untouched: his delivery, its steps and events, and his email in the file.
    assert ledger.get(omar).status == Status.DELIVERED and ledger.steps(omar) and ledger.events(omar)
    assert holds(data, OMAR)
    assert ledger.contact_memory(jane_contact) is None and ledger.contact_memory(omar_contact) is not None
    emails = {c["properties"].get("email") for c in sandbox.state()["contacts"]}
    assert emails == {OMAR[0]}

    again = cli(settings, tmp_path, config_data, "forget", JANE[1])
    assert again.exit_code == 0 and "nothing to remove" in again.output


def test_forget_finds_an_email_a_form_post_url_encoded_in_a_delivery_with_no_keys(
    ledger: Ledger, settings: Settings, tmp_path: Path, config_data: dict[str, Any]
) -> None:
    # As a browser encodes it: '+' and '@' become %2B and %40; a refused delivery has no keys.
    email = "jane+roofs@acme-roofing.com"
    body = b"your-name=Jane&your-email=jane%2Broofs%40acme-roofing.com&your-message=Leak"
    delivery_id, _ = ledger.accept(
        source="wordpress",
        idem_key="cf7-encoded-1",
        body=body,
        content_type="application/x-www-form-urlencoded",
        headers={},
        config_version="v",
        person_keys=[],
    )
    result = cli(settings, tmp_path, config_data, "forget", email)
    assert result.exit_code == 0, result.output
    assert "forgot: 1 deliver" in result.output
    assert ledger.get(delivery_id) is None
    assert b"jane%2Broofs%40acme-roofing.com" not in file_bytes(settings)


def test_purge_empties_finished_deliveries_and_never_touches_unfinished_ones(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings, tmp_path: Path, config_data: dict[str, Any]
) -> None:
    done = submit(intake, JANE, 0)
    worker.drain()
    waiting = submit(intake, OMAR, 0)  # received, not yet processed
    counts, events = ledger.counts(), len(ledger.events(done))

    result = cli(settings, tmp_path, config_data, "purge", "--older-than", "0s", "--json")
    assert result.exit_code == 0, result.output
    assert '"bodies": 1' in result.output
    data = file_bytes(settings)
    assert not holds(data, JANE)
    # What the admin counts on stays: states, counts, the event log.
    assert ledger.counts() == counts and len(ledger.events(done)) == events
    assert ledger.get(done).status == Status.DELIVERED and ledger.get(done).body == b""
    # The unfinished delivery keeps everything the worker needs, and is then delivered.
    assert ledger.get(waiting).body and holds(data, OMAR)
    worker.drain()
    assert ledger.get(waiting).status == Status.DELIVERED

    replayed = cli(settings, tmp_path, config_data, "replay", done)
    assert replayed.exit_code == 0 and "already delivered" in replayed.output


def test_a_purged_failure_cannot_be_replayed_into_a_broken_lead(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, settings: Settings, tmp_path: Path, config_data: dict[str, Any]
) -> None:
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=400, times=10)
    dead = submit(intake, JANE, 0)
    worker.drain()
    assert ledger.get(dead).status == Status.DEAD
    assert cli(settings, tmp_path, config_data, "purge", "--older-than", "0s").exit_code == 0
    replayed = cli(settings, tmp_path, config_data, "replay", dead, "--queue")
    assert replayed.exit_code == 1 and "its body was purged" in replayed.output
    assert ledger.get(dead).status == Status.DEAD


def test_the_worker_applies_the_retention_setting(intake: str, sandbox: Sandbox, config_data: dict[str, Any]) -> None:
    config_data["retention"] = {"days": 1 / 86400}  # one second
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    worker = Worker(settings, ledger)
    old = submit(intake, JANE, 0)
    worker.drain()
    time.sleep(1.1)  # let the delivery age past the window (not a timing assertion)
    running = threading.Thread(target=worker.run)
    running.start()
    try:
        deadline = time.monotonic() + 30
        while ledger.get(old).body and time.monotonic() < deadline:
            running.join(0.05)
    finally:
        worker.stop()
        running.join(30)
    assert ledger.get(old).body == b"" and ledger.get(old).status == Status.DELIVERED
    assert "map" in ledger.steps(old) and ledger.steps(old)["map"] == {"purged": True}
