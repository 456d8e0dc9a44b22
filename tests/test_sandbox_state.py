"""The sandbox keeps its records across restarts (`leadbridge sandbox --state FILE`), so a kept
ledger and a restarted sandbox agree on contact ids; `--reset` starts clean and says so.

The sandbox runs as a real `leadbridge sandbox` process and is stopped with SIGKILL, the worst
case: only what it wrote before answering survives."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.cli import sandbox_command
from bridge.config import settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker
from connectors.sandbox import SandboxServer

from .conftest import ROOT, answer, example_config, post_typeform, served, typeform_payload, with_absolute_mappings
from .procs import free_port

BOOT_SECONDS = 60  # generous: the machine may be loaded


@contextmanager
def sandbox_process(port: int, state: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`leadbridge sandbox --state` on ``port``, up and answering; SIGKILLed on the way out. Its
    stderr goes to ``<state>.log`` (a pipe nobody reads could fill and stall it)."""
    argv = [sys.executable, "-m", "bridge.cli", "sandbox", "--port", str(port), "--search-lag", "0", "--state", str(state)]
    log = state.with_suffix(".log").open("wb")
    proc = subprocess.Popen([*argv, *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + BOOT_SECONDS
        while True:
            assert proc.poll() is None, state.with_suffix(".log").read_text()
            try:
                requests.get(f"http://127.0.0.1:{port}/__sandbox/state", timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "sandbox never came up"
                time.sleep(0.1)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def settings_for(port: int, tmp_path: Path) -> Any:
    data = copy.deepcopy(example_config())
    url = f"http://127.0.0.1:{port}"
    data["hubspot"].update(base_url=url, contact_url=url + "/__sandbox/contacts/{contact_id}")
    data["slack"].update(base_url=url + "/api/", min_seconds_between_posts=0)
    data["routing"] = {}
    data["ledger"]["path"] = str(tmp_path / "ledger.db")
    data["retry"] = {"schedule_seconds": [0.05] * 8, "jitter": 0}
    data["worker"].update(poll_seconds=0.05, person_busy_delay_seconds=0.05)
    return settings_from_dict(with_absolute_mappings(data), ROOT)


def lead(n: int, email: str) -> dict[str, Any]:
    """The recorded quote form as a distinct submission (its own event id and token)."""
    return answer(typeform_payload(event_id=f"evt-state-{n}", token=f"tok-state-{n}"), "email", email)


def deliver_all(worker: Worker, ledger: Ledger, ids: list[str]) -> dict[str, str]:
    """Drain until every delivery is delivered; their contact ids."""
    deadline = time.monotonic() + BOOT_SECONDS
    while any(ledger.get(i).status != Status.DELIVERED for i in ids):
        assert time.monotonic() < deadline, {i: ledger.get(i).status for i in ids}
        worker.drain()
        time.sleep(0.05)
    return {i: ledger.steps(i)["contact"]["contact_id"] for i in ids}


def contacts_by_id(port: int) -> dict[str, str]:
    contacts = requests.get(f"http://127.0.0.1:{port}/__sandbox/state", timeout=10).json()["contacts"]
    return {c["id"]: c["properties"]["email"] for c in contacts}


def test_a_restarted_sandbox_serves_the_contact_ids_the_ledger_remembers(tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "sandbox-state.json"
    settings = settings_for(port, tmp_path)
    ledger = open_ledger(settings.ledger)
    worker = Worker(settings, ledger)
    with served(settings) as intake:
        with sandbox_process(port, state):
            first = post_typeform(intake, lead(1, "jane@acme-plumbing.com")).json()["delivery_id"]
            jane = deliver_all(worker, ledger, [first])[first]
        # Killed with SIGKILL: no shutdown hook ran. Same state file, same port.
        with sandbox_process(port, state):
            assert contacts_by_id(port) == {jane: "jane@acme-plumbing.com"}
            newcomer = post_typeform(intake, lead(2, "omar@example-roofing.org")).json()["delivery_id"]
            returning = post_typeform(intake, lead(3, "jane@acme-plumbing.com")).json()["delivery_id"]
            ids = deliver_all(worker, ledger, [newcomer, returning])
            assert ids[returning] == jane
            assert ledger.steps(returning)["contact"]["created"] is False
            assert ids[newcomer] != jane and int(ids[newcomer]) > int(jane)
            assert ledger.steps(newcomer)["contact"]["created"] is True
            assert contacts_by_id(port) == {jane: "jane@acme-plumbing.com", ids[newcomer]: "omar@example-roofing.org"}
            deals = requests.get(f"http://127.0.0.1:{port}/__sandbox/state", timeout=10).json()["objects"]["deals"]
            # Each person's deal hangs on their own contact: no one was attached to another's record.
            owners_of_deals = sorted(a["toObjectId"] for d in deals for a in d["associations"] if a["toObjectType"] == "contacts")
            assert owners_of_deals == sorted([jane, ids[newcomer]])


def test_reset_starts_clean_and_says_so(tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "sandbox-state.json"
    headers = {"Authorization": "Bearer t"}
    with sandbox_process(port, state):
        created = requests.post(
            f"http://127.0.0.1:{port}/crm/v3/objects/contacts",
            json={"properties": {"email": "a@b.co"}},
            headers=headers,
            timeout=10,
        )
        assert created.status_code == 201
    assert json.loads(state.read_text())["crm"]["next_record_id"] == int(created.json()["id"]) + 1
    with sandbox_process(port, state, "--reset"):
        assert contacts_by_id(port) == {}
        again = requests.post(
            f"http://127.0.0.1:{port}/crm/v3/objects/contacts",
            json={"properties": {"email": "a@b.co"}},
            headers=headers,
            timeout=10,
        )
        assert again.json()["id"] == "1001"
    assert f"--reset: starting clean (deleted {state})" in state.with_suffix(".log").read_text()


def test_control_reset_keeps_the_id_counter_when_records_are_kept(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    headers = {"Authorization": "Bearer t"}
    with SandboxServer(state_file=state) as server:
        first = requests.post(f"{server.url}/crm/v3/objects/contacts", json={"properties": {}}, headers=headers, timeout=10)
        requests.post(f"{server.url}/__sandbox/reset", timeout=10).raise_for_status()
        second = requests.post(f"{server.url}/crm/v3/objects/contacts", json={"properties": {}}, headers=headers, timeout=10)
    assert (first.json()["id"], second.json()["id"]) == ("1001", "1002")


@pytest.mark.parametrize("content", ["{not json", '{"format": 99}'])
def test_an_unreadable_state_file_stops_the_sandbox_instead_of_reusing_ids(tmp_path: Path, content: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "sandbox", "--port", str(free_port()), "--state", str(state)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "use --reset to start clean" in result.stderr.decode()


def test_run_starts_the_sandbox_with_a_state_file_beside_the_ledger(tmp_path: Path) -> None:
    settings = settings_for(8025, tmp_path)
    argv = sandbox_command(settings)
    assert argv[1:] == [
        "-m",
        "bridge.cli",
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "8025",
        "--state",
        str(tmp_path / "sandbox-state.json"),
    ]
    assert sandbox_command(settings, tmp_path / "elsewhere.json")[-1] == str(tmp_path / "elsewhere.json")
