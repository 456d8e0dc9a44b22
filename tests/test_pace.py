"""Intake never waits for the worker: a slow HubSpot reaches no sender.

Over real HTTP: the worker's owner lookup hangs in the sandbox while a webhook arrives;
the webhook is stored and answered before the hanging call has even been answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import CallBudget, LedgerSettings, Settings, settings_from_dict
from bridge.errors import ThrottledError
from bridge.ledger import Status, open_ledger
from bridge.ratelimit import WINDOW_MARGIN_SECONDS, CallPacer
from bridge.worker import Worker

from .conftest import ROOT, Sandbox, answer, post_typeform, served, typeform_payload
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
    ledger = open_ledger(sales_settings.ledger)
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


# -- the shared HubSpot call budget ---------------------------------------------


class Clock:
    """Time that moves only when the test says so; sleeping moves it too."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def pacers(tmp_path: Path, count: int, **budget: Any) -> tuple[Clock, list[CallPacer]]:
    clock = Clock()
    spec = CallBudget(**{"requests": 4, "per_seconds": 10, "max_wait_seconds": 0, **budget})
    ledger = LedgerSettings(path=tmp_path / "ledger.db")
    return clock, [CallPacer(ledger, spec, clock=clock, sleep=clock.sleep) for _ in range(count)]


def granted(pacer: CallPacer, **kwargs: Any) -> bool:
    try:
        pacer.acquire(**kwargs)
    except ThrottledError:
        return False
    return True


def test_two_processes_share_one_rolling_window(tmp_path: Path) -> None:
    clock, (one, two) = pacers(tmp_path, 2)
    # Alternating callers, as two worker processes would: four slots in the window, no more.
    answers = [granted(p) for p in (one, two) * 5]
    assert answers.count(True) == 4 and answers[:4] == [True] * 4
    clock.now += 9.9
    assert not granted(one)  # still inside the window of the first call
    clock.now += 0.5  # past it, and past the margin for HubSpot's clock seeing calls a little later
    assert [granted(p) for p in (two, one, two, one, two)] == [True] * 4 + [False]


def test_a_call_waits_for_a_slot_when_the_wait_is_short(tmp_path: Path) -> None:
    clock, (pacer,) = pacers(tmp_path, 1, max_wait_seconds=11)
    start = clock.now
    for _ in range(5):
        pacer.acquire()
    # The fifth call slept until the first call left the window (kept WINDOW_MARGIN_SECONDS longer).
    assert clock.now - start == pytest.approx(10.0 + WINDOW_MARGIN_SECONDS, abs=0.01)


def test_a_slot_taken_ahead_serves_the_next_call_on_its_thread_once(tmp_path: Path) -> None:
    clock, (pacer,) = pacers(tmp_path, 1)
    pacer.prepay()  # a batch leader, before it takes its batch
    assert [granted(pacer) for _ in range(4)] == [True] * 4  # the first of them used it
    assert not granted(pacer)  # four in the window: the slot was counted once, not twice
    clock.now += 10.5
    pacer.prepay()
    CallPacer.forget_prepaid()  # its batch made no call
    assert [granted(pacer) for _ in range(4)] == [True] * 3 + [False]
    # On another thread the slot is not there to use.
    clock.now += 10.5
    pacer.prepay()
    other: list[bool] = []
    thread = threading.Thread(target=lambda: other.extend(granted(pacer) for _ in range(4)))
    thread.start()
    thread.join(30)
    assert other == [True] * 3 + [False]
    CallPacer.forget_prepaid()


def test_hubspots_count_corrects_ours(tmp_path: Path) -> None:
    clock, (pacer,) = pacers(tmp_path, 1)
    assert granted(pacer)
    # Another process on the same token, or calls from before a restart: HubSpot counted more.
    pacer.observe({"X-HubSpot-RateLimit-Remaining": "1", "X-HubSpot-RateLimit-Max": "190"})
    assert [granted(pacer) for _ in range(3)] == [True, False, False]
    pacer.observe({"X-HubSpot-RateLimit-Max": "190"})  # no count (a search answer): nothing changes
    clock.now += 10.5
    assert granted(pacer)


def test_a_429_fills_only_the_window_it_names(tmp_path: Path) -> None:
    clock, (pacer,) = pacers(tmp_path, 1)
    pacer.spent(search=True)
    assert granted(pacer) and not granted(pacer, search=True)
    clock.now += 1.5
    assert granted(pacer, search=True)
    pacer.spent()
    assert not granted(pacer)


def test_a_spent_budget_defers_the_lead_without_using_an_attempt(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["hubspot"]["rate_limit"] = {"requests": 1, "per_seconds": 3600, "max_wait_seconds": 0}
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    with served(settings) as url:
        delivery_id = post_typeform(url, typeform_payload()).json()["delivery_id"]
    Worker(settings, ledger).drain(timeout=2)
    delivery = ledger.get(delivery_id)
    # One call went out (the contact), the next found the budget spent: deferred, attempt kept.
    assert sandbox.calls("/crm/") == 1
    assert (delivery.status, delivery.attempts) == (Status.RETRYING, 0)
    assert "call budget" in delivery.last_error
    # A bigger budget (the same limits file) lets it finish, and it is not written twice.
    config_data["hubspot"]["rate_limit"] = {"requests": 100, "per_seconds": 10}
    assert ledger.requeue(delivery_id) == "requeued"
    Worker(settings_from_dict(config_data, ROOT), ledger).drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert len(sandbox.state()["contacts"]) == 1


def test_owner_lookups_during_an_outage_use_the_last_answer(
    sales_config: dict[str, Any],  # noqa: F811
    sandbox: Sandbox,
) -> None:
    sales_config["hubspot"]["owner_cache_seconds"] = 0  # ask HubSpot every time
    settings = settings_from_dict(sales_config, ROOT)
    ledger = open_ledger(settings.ledger)
    worker = Worker(settings, ledger)
    with served(settings) as url:
        first = post_typeform(url, roofing(typeform_payload())).json()["delivery_id"]
        worker.drain()
        sandbox.fault(path="/crm/v3/owners", status=503, times=1000)
        second = answer(roofing(typeform_payload(event_id="during-outage")), "email", "outage.sender@example-roofing.com")
        later = post_typeform(url, second).json()["delivery_id"]
        worker.drain()
    assert ledger.get(first).status == Status.DELIVERED
    delivered = ledger.get(later)
    assert (delivered.status, delivered.attempts) == (Status.DELIVERED, 1)
    # HubSpot refused every owner lookup, and the lead was still routed to an active owner.
    refused = [r for r in sandbox.state()["requests"] if r["path"].startswith("/crm/v3/owners") and r["status"] == 503]
    assert refused
    assert ledger.steps(later)["route"]["owner_id"] in {"501", "502"}


def test_an_idle_worker_wakes_for_a_new_delivery_without_waiting_out_its_poll(
    config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    config_data["worker"]["poll_seconds"] = 300  # were it polling, the lead would wait five minutes
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    worker = Worker(settings, ledger)
    running = threading.Thread(target=worker.run)
    with served(settings) as url:
        running.start()
        try:
            delivery_id = post_typeform(url, typeform_payload()).json()["delivery_id"]
            deadline = time.monotonic() + 120
            while ledger.get(delivery_id).status != Status.DELIVERED and time.monotonic() < deadline:
                running.join(0.05)
        finally:
            worker.stop()
            running.join(60)
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert not running.is_alive()
