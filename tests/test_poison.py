"""Poison deliveries: one that takes the worker down is dead after its crash budget, and the
worker goes on delivering the others."""

from __future__ import annotations

import json
import time

from bridge.config import Settings
from bridge.ledger import Ledger, Status
from bridge.worker import Worker

from .conftest import Sandbox, answer, typeform_payload


def accepted(ledger: Ledger, payload: dict[str, object] | bytes, key: str) -> str:
    """Stored as intake stores it (an earlier intake, or a looser config, accepted it)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    delivery_id, created = ledger.accept(
        source="typeform", idem_key=key, body=body, content_type="application/json", headers={}, config_version="t"
    )
    assert created
    return delivery_id


def test_a_delivery_that_crashes_the_worker_is_dead_after_its_budget(
    settings: Settings, ledger: Ledger, worker: Worker, sandbox: Sandbox
) -> None:
    poison = typeform_payload()
    poison["form_response"]["answers"][0]["text"] = "NESTED"
    depth = 500  # a list nested this deep in one answer's value
    body = json.dumps(poison).replace('"NESTED"', "[" * depth + '"roof"' + "]" * depth).encode()
    poison_id = accepted(ledger, body, "poison")
    fine_id = accepted(ledger, answer(typeform_payload(), "email", "next.in.line@example-roofing.com"), "fine")

    worker.drain(timeout=30)

    dead = ledger.get(poison_id)
    assert dead.status == Status.DEAD
    assert dead.reason.startswith(f"crashed the worker {settings.worker.crash_budget} times (last: RecursionError at ")
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
