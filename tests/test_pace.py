"""Intake never waits for the worker: a slow HubSpot reaches no sender.

Over real HTTP: the worker's owner lookup hangs in the sandbox while a webhook arrives;
the webhook is stored and answered before the hanging call has even been answered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bridge.config import Settings
from bridge.ledger import Ledger, Status
from bridge.worker import Worker

from .conftest import Sandbox, answer, post_typeform, served, typeform_payload
from .test_sales import roofing, sales_config, sales_settings  # noqa: F401  (fixtures)

HANG_SECONDS = 8.0


@pytest.fixture
def slow_intake(sales_settings: Settings) -> Iterator[str]:  # noqa: F811
    with served(sales_settings) as url:
        yield url


def test_a_hanging_owner_lookup_does_not_hold_up_intake(
    sales_settings: Settings,  # noqa: F811
    slow_intake: str,
    sandbox: Sandbox,
) -> None:
    ledger = Ledger(sales_settings.ledger.path)
    first = post_typeform(slow_intake, roofing(typeform_payload())).json()["delivery_id"]
    sandbox.fault(path="/crm/v3/owners", delay=HANG_SECONDS)  # every owner lookup hangs, then answers
    worker = Worker(sales_settings, ledger)
    draining = threading.Thread(target=worker.drain, kwargs={"timeout": 60})
    draining.start()
    try:
        # Wait until the worker is inside routing (it has scored the lead), so the lookup is in flight.
        while "score" not in ledger.steps(first):
            assert draining.is_alive()
            draining.join(0.02)
        second = answer(roofing(typeform_payload(event_id="second-webhook")), "email", "second.sender@example-roofing.com")
        answered = post_typeform(slow_intake, second)
        owner_answers_so_far = sandbox.calls("/crm/v3/owners")
    finally:
        sandbox.clear_faults()
        draining.join(120)
    assert answered.status_code == 200 and answered.json()["ok"] is True
    # The sender was answered while the worker's owner lookup was still unanswered.
    assert owner_answers_so_far == 0
    assert ledger.get(answered.json()["delivery_id"]) is not None
    assert ledger.get(first).status == Status.DELIVERED
