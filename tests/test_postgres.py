"""The ledger on PostgreSQL: what only a shared database has to prove.

The rest of the suite runs on both backends (tests/conftest.py); here are the parts SQLite
has no counterpart for: several processes on one database, wake-ups by NOTIFY, the call
budget shared through the database, migrations raced by processes starting together, and
moving a SQLite ledger over with `leadbridge copy-ledger`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import CallBudget, settings_from_dict
from bridge.ledger import FINAL, Status, open_ledger
from bridge.ledger_pg import PostgresLedger, migration_state
from bridge.ratelimit import CallPacer
from bridge.worker import Worker

from . import postgres
from .conftest import ROOT, SECRET, Sandbox, answer, post_typeform, served, typeform_payload
from .procs import BOOT_SECONDS, free_port, started, wait_for, wait_until

pytestmark = pytest.mark.postgres_only


def accept(ledger: Any, key: str, keys: tuple[str, ...] = ()) -> str:
    delivery_id, _ = ledger.accept(
        source="s", idem_key=key, body=b"{}", content_type="", headers={}, config_version="v", person_keys=keys
    )
    return str(delivery_id)


@pytest.fixture
def empty_url(postgres_server: postgres.PostgresServer) -> Iterator[str]:
    """A database with no migration applied (each test's ``ledger_url`` comes migrated)."""
    url = postgres_server.create_database("e_" + uuid.uuid4().hex[:16])
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


def test_processes_starting_together_apply_each_migration_once(empty_url: str) -> None:
    assert migration_state(empty_url)[0] == []
    with ThreadPoolExecutor(6) as pool:
        ledgers = list(pool.map(lambda _: PostgresLedger(empty_url), range(6)))
    applied, pending = migration_state(empty_url)
    assert pending == [] and len(applied) == len(set(applied)) and applied[0] == "m001_initial"
    assert all(ledger.counts() == {} for ledger in ledgers)


def test_the_migrate_command_reports_then_applies(config_data: dict[str, Any], tmp_path: Path, empty_url: str) -> None:
    config_data["ledger"]["url"] = empty_url
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    runner = CliRunner()
    check = runner.invoke(main, ["migrate", "--check", "--json", "--config", str(config)])
    assert check.exit_code == 1 and json.loads(check.output)["applied"] == []
    done = runner.invoke(main, ["migrate", "--json", "--config", str(config)])
    report = json.loads(done.output)
    assert done.exit_code == 0 and report["pending"] == [] and report["ran"] == report["applied"]


def test_a_new_delivery_wakes_a_listening_worker_and_a_claim_skips_rows_another_holds(ledger_url: str) -> None:
    intake, first, second = (PostgresLedger(ledger_url) for _ in range(3))
    assert first.written_since_last_look()  # the first look starts listening
    assert not first.written_since_last_look()
    one, two = accept(intake, "k1"), accept(intake, "k2")
    wait_until(first.written_since_last_look, time.monotonic() + 10, "the NOTIFY of a new delivery")
    # While one worker's claim transaction holds a row, another's claim takes the next instead.
    with first._transaction(lock=False) as db:
        held = [row[0] for row in db.execute(first._CLAIM_QUERIES[1], {"now": time.time(), "limit": 1})]
        taken = [d.id for d in second.claim("second", 10, 30)]
    assert held == [one] and taken == [two]


def test_the_same_delivery_sent_to_several_intakes_at_once_is_stored_once(ledger_url: str) -> None:
    intakes = [PostgresLedger(ledger_url) for _ in range(4)]

    def send(n: int) -> tuple[str, bool]:
        # Every copy carries the same key; half of them also an alias, as a double click across a window edge would.
        aliases = ["window-before"] if n % 2 else []
        return intakes[n % 4].accept(
            source="s", idem_key="same", body=b"{}", content_type="", headers={}, config_version="v", aliases=aliases
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert len({delivery_id for delivery_id, _ in answers}) == 1
    assert [created for _, created in answers].count(True) == 1
    assert intakes[0].counts() == {"received": 1}
    assert [(e["step"], e["outcome"]) for e in intakes[0].events(answers[0][0])] == [("intake", "received")]


def test_one_persons_deliveries_wait_for_each_other_across_ledgers(ledger_url: str) -> None:
    a, b = PostgresLedger(ledger_url), PostgresLedger(ledger_url)
    first = accept(a, "k1", ("email:a@b.co",))
    second = accept(b, "k2", ("email:a@b.co",))
    with ThreadPoolExecutor(2) as pool:
        claims = list(pool.map(lambda pair: [d.id for d in pair[0].claim(pair[1], 10, 30)], [(a, "wa"), (b, "wb")]))
    assert sorted(claims) == [[], [first]]
    owner = "wa" if claims[0] else "wb"
    a.finish(first, owner, Status.DELIVERED)
    assert [d.id for d in b.claim("wb", 10, 30)] == [second]


def test_the_hubspot_call_budget_is_one_across_processes(config_data: dict[str, Any]) -> None:
    settings = settings_from_dict(config_data, ROOT)
    budget = CallBudget(requests=5, per_seconds=10, search_requests=0, max_wait_seconds=0)
    pacers = [CallPacer(settings.ledger, budget) for _ in range(3)]
    granted = 0
    for n in range(9):
        try:
            pacers[n % 3].acquire()
            granted += 1
        except Exception as exc:
            assert type(exc).__name__ == "ThrottledError"
    assert granted == 5 and pacers[0].free_share() == 0.0


def test_copy_ledger_moves_a_sqlite_ledger_once_however_often_it_runs(
    config_data: dict[str, Any], tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    # A SQLite ledger written by the real pipeline: delivered leads, a retry, events, memory.
    sqlite_data = {**config_data, "ledger": {**config_data["ledger"], "url": ""}}
    sqlite_settings = settings_from_dict(sqlite_data, ROOT)
    source = open_ledger(sqlite_settings.ledger)
    with served(sqlite_settings) as url:
        for n in range(3):
            post_typeform(url, answer(typeform_payload(event_id=f"c{n}"), "email", f"c{n}@roofing-co.com"))
        post_typeform(url, typeform_payload(event_id="c0"))  # a sender's retry: no new delivery
    Worker(sqlite_settings, source).drain(timeout=60)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(sqlite_data))

    runner = CliRunner()
    first = runner.invoke(main, ["copy-ledger", "--to", ledger_url, "--json", "--config", str(config)])
    again = runner.invoke(main, ["copy-ledger", "--to", ledger_url, "--json", "--config", str(config)])
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    copied = json.loads(first.output)["copied"]
    assert copied["deliveries"] == 3 and copied["events"] > 3 and copied == json.loads(again.output)["copied"]

    target = PostgresLedger(ledger_url)
    assert target.counts() == source.counts() == {"delivered": 3}
    for delivery in source.deliveries():
        assert target.get(delivery.id) == delivery
        assert target.steps(delivery.id) == source.steps(delivery.id)
        assert target.events(delivery.id) == source.events(delivery.id)
    # New ids continue past the copied ones, and arrival order (SQLite's rowid) came along.
    newer = accept(target, "after-copy")
    assert target.deliveries()[0].id == newer or target.deliveries()[-1].id == newer
    assert (
        target.db.execute("SELECT max(id) FROM events").fetchone()[0]
        > source.db.execute("SELECT max(id) FROM events").fetchone()[0]
    )


# -- many processes on one database ----------------------------------------------------------


def _intake_config(config_data: dict[str, Any], tmp_path: Path, name: str) -> tuple[Path, str]:
    port = free_port()
    data = json.loads(json.dumps(config_data))
    data["server"].update(port=port, gunicorn_workers=1, threads=8)
    data["server"]["rate_limit"] = {"per_client_ip": 0, "per_source": 0}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, f"http://127.0.0.1:{port}"


def _send(url: str, payload: dict[str, Any]) -> str:
    """Post like a sender that retries on anything but a 2xx (and sometimes twice anyway)."""
    for _ in range(20):
        try:
            response = post_typeform(url, payload)
            if response.status_code == 200:
                return str(response.json()["delivery_id"])
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("a delivery was never accepted")


def test_two_intakes_and_three_workers_on_one_database_deliver_each_lead_once(
    config_data: dict[str, Any], tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    # Three explicit workers, no helpers (tests/test_helpers.py has those).
    config_data["worker"].update(concurrency=8, lease_seconds=3, poll_seconds=0.2, processes=1)
    # The shared call budget has its own test; here 100 calls / 10 s would make this one minutes long.
    config_data["hubspot"]["rate_limit"]["requests"] = 0
    worker_config = tmp_path / "worker.yaml"
    worker_config.write_text(yaml.safe_dump(config_data))
    intakes = [_intake_config(config_data, tmp_path, f"intake{n}") for n in range(2)]
    env = {**os.environ, "TYPEFORM_SECRET": SECRET}
    quiet: dict[str, Any] = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    people = [f"p{n}@roofing-co.com" for n in range(150)]
    rng = random.Random(12)
    payloads = [
        answer(typeform_payload(event_id=f"mp{n}", token=f"mp{n}"), "email", people[n % 150] if n < 300 else rng.choice(people))
        for n in range(500)
    ]
    ledger = PostgresLedger(ledger_url)  # migrated before the processes race to
    serve = [sys.executable, "-m", "bridge.cli", "serve", "--config"]
    work = [sys.executable, "-m", "bridge.cli", "worker", "--config", str(worker_config)]
    with (
        started([*serve, str(intakes[0][0])], **quiet) as one,
        started([*serve, str(intakes[1][0])], **quiet) as two,
    ):
        for (_, url), proc in zip(intakes, (one, two), strict=True):
            wait_for(url + "/healthz", time.monotonic() + BOOT_SECONDS, proc)
        workers = [started(work, **quiet) for _ in range(3)]
        procs = [w.__enter__() for w in workers]
        try:
            with ThreadPoolExecutor(12) as pool:
                # Each lead to one intake, every fifth sent again to the other (a sender's retry).
                sent = list(pool.map(lambda n: _send(intakes[n % 2][1], payloads[n]), range(500)))
                again = list(pool.map(lambda n: _send(intakes[(n + 1) % 2][1], payloads[n]), range(0, 500, 5)))
            assert again == sent[::5] and len(set(sent)) == 500
            wait_until(lambda: ledger.counts().get("delivered", 0) >= 100, time.monotonic() + 120, "100 delivered")
            for proc in procs[:2]:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            restarted = [started(work, **quiet) for _ in range(2)]
            procs += [w.__enter__() for w in restarted]
            workers += restarted

            def finished() -> bool:
                counts = ledger.counts()
                return sum(counts.get(str(s), 0) for s in FINAL) == 500

            wait_until(finished, time.monotonic() + 240, "every delivery finished")
        finally:
            for w in reversed(workers):
                w.__exit__(None, None, None)

    assert ledger.counts() == {"delivered": 500}
    state = sandbox.state()
    emails = [c["properties"]["email"] for c in state["contacts"]]
    assert sorted(emails) == sorted(people)  # one contact per person
    open_deals: dict[str, int] = {}
    for deal in state["objects"].get("deals", []):
        for association in deal["associations"]:
            if association["toObjectType"] == "contacts":
                open_deals[str(association["toObjectId"])] = open_deals.get(str(association["toObjectId"]), 0) + 1
    assert open_deals and max(open_deals.values()) == 1  # at most one deal per person
    # One Slack message per alerted delivery: as many messages as alerts, each its own.
    posts = [ledger.steps(d).get("notify", {}).get("ts") for d in sent]
    alerted = [ts for ts in posts if ts]
    assert alerted and len(state["messages"]) == len(alerted) == len(set(alerted))
