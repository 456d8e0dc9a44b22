"""Poison deliveries: one that takes the worker down is dead after its crash budget, and the
worker goes on delivering the others."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bridge.config import Settings
from bridge.ledger import Ledger, Status
from bridge.worker import Worker

from .conftest import Sandbox, answer, typeform_payload


def accepted(
    ledger: Ledger,
    payload: dict[str, object] | bytes | str,
    key: str,
    source: str = "typeform",
    content_type: str = "application/json",
) -> str:
    """Stored as intake stores it (an earlier intake, or a looser config, accepted it)."""
    # A str body is a row no intake writes (the crash case below); the ledger stores it as given.
    body: Any = payload if isinstance(payload, (bytes, str)) else json.dumps(payload).encode()
    delivery_id, created = ledger.accept(
        source=source,
        idem_key=key,
        body=body,
        content_type=content_type,
        headers={},
        config_version="t",
    )
    assert created
    return delivery_id


@pytest.mark.sqlite_only  # its poison is a SQLite row of the wrong type, which PostgreSQL's bytea refuses to hold
def test_a_delivery_that_crashes_the_worker_is_dead_after_its_budget(
    settings: Settings, ledger: Ledger, worker: Worker, sandbox: Sandbox
) -> None:
    # Hostile shapes are refused by the parser now (tests/test_hostile_input.py), so the crash
    # comes from a row no intake writes: a form body stored as text instead of bytes.
    poison_id = accepted(ledger, "your-email=a%40b.example", "poison", "cf7-contact", "application/x-www-form-urlencoded")
    fine_id = accepted(ledger, answer(typeform_payload(), "email", "next.in.line@example-roofing.com"), "fine")

    worker.drain(timeout=30)

    dead = ledger.get(poison_id)
    assert dead.status == Status.DEAD
    assert dead.reason.startswith(f"crashed the worker {settings.worker.crash_budget} times (last: TypeError at ")
    crashes = [e for e in ledger.events(poison_id) if (e["step"], e["outcome"]) == ("worker", "crashed")]
    assert len(crashes) == settings.worker.crash_budget
    assert ledger.get(fine_id).status == Status.DELIVERED
    assert "next.in.line@example-roofing.com" in {c["properties"]["email"] for c in sandbox.state()["contacts"]}


def test_a_delivery_whose_lease_keeps_expiring_is_dead_after_its_budget(settings: Settings, ledger: Ledger) -> None:
    delivery_id = accepted(ledger, typeform_payload(), "stuck")
    now = time.time()
    for n in range(settings.worker.crash_budget):
        # Each claim's worker "dies": nobody finishes, and the lease runs out.
        claimed = ledger.claim(f"w{n}", 10, lease_seconds=1, now=now + 2 * n)
        assert [d.id for d in claimed] == [delivery_id]
    assert ledger.claim("last", 10, lease_seconds=1, now=now + 2 * settings.worker.crash_budget) == []
    dead = ledger.get(delivery_id)
    assert dead.status == Status.DEAD
    assert dead.reason == f"its worker stopped {settings.worker.crash_budget} times while processing it"


def test_replay_gives_a_buried_delivery_a_fresh_budget(settings: Settings, ledger: Ledger) -> None:
    delivery_id = accepted(ledger, typeform_payload(), "again")
    now = time.time()
    for n in range(settings.worker.crash_budget + 1):
        ledger.claim(f"w{n}", 10, lease_seconds=1, now=now + 2 * n)
    assert ledger.get(delivery_id).status == Status.DEAD
    assert ledger.requeue(delivery_id) == "requeued"
    assert [d.id for d in ledger.claim("fresh", 10, lease_seconds=60)] == [delivery_id]
