"""Helper workers: a backlog is drained by more worker processes, and nothing happens twice."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bridge.config import WorkerSettings, settings_from_dict
from bridge.helpers import Helpers
from bridge.ledger import Ledger, Status
from bridge.worker import Worker

from .conftest import ROOT, Sandbox, answer, post_typeform, typeform_payload
from .procs import alive, command_line, descendants, wait_until

LEADS = 24


@contextmanager
def slow_upstream(sandbox: Sandbox, latency_ms: float) -> Iterator[None]:
    limits = f"{sandbox.url}/__sandbox/limits"
    requests.post(limits, json={"latency_ms": latency_ms}, timeout=5).raise_for_status()
    try:
        yield
    finally:
        requests.post(limits, json={"latency_ms": 0}, timeout=5).raise_for_status()


def backlog(intake: str, tag: str) -> list[str]:
    """``LEADS`` deliveries from as many people, queued with no worker running."""
    ids = []
    for n in range(LEADS):
        payload = answer(typeform_payload(event_id=f"{tag}-{n}", token=f"{tag}-{n}"), "email", f"{tag}.{n}@acme-plumbing.com")
        sent = post_typeform(intake, answer(payload, "phone", None))
        assert sent.status_code == 200, sent.text
        ids.append(sent.json()["delivery_id"])
    return ids


def helpers_of(pid: int) -> set[int]:
    return {p for p in descendants(pid) if "--helper" in command_line(p)}


@contextmanager
def worker_process(tmp_path: Path, config_data: dict[str, Any]) -> Iterator[subprocess.Popen[bytes]]:
    config_data["worker"].update(concurrency=2, processes=3, scale_after_seconds=0.2, helper_idle_seconds=1.0)
    config_data["worker"].setdefault("lease_seconds", 60)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    log = (tmp_path / "worker.log").open("wb")
    argv = [sys.executable, "-m", "bridge", "worker", "--config", str(config)]
    proc = subprocess.Popen(argv, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        left = helpers_of(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        for pid in left:  # a test that failed half-way leaves none behind either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


def delivered(ledger: Ledger, ids: list[str]) -> bool:
    return all(ledger.get(i).status == Status.DELIVERED for i in ids)


def test_a_backlog_starts_helper_workers_that_deliver_once_and_stop_when_idle(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    ids = backlog(intake, "help")
    seen: set[int] = set()
    with slow_upstream(sandbox, 150), worker_process(tmp_path, config_data) as proc:

        def done() -> bool:
            seen.update(helpers_of(proc.pid))
            return delivered(ledger, ids)

        wait_until(done, time.monotonic() + 120, "the backlog delivered")
        # Two deliveries at a time with more due: the worker started the two helpers it may.
        assert len(seen) == 2
        assert ledger.db.execute("SELECT count(*) FROM heartbeats").fetchone()[0] == 3
        # Idle for helper_idle_seconds, they stop by themselves; the worker carries on.
        wait_until(lambda: not helpers_of(proc.pid), time.monotonic() + 60, "the helpers to stop when idle")
        assert proc.poll() is None
    state = sandbox.state()
    assert len(state["contacts"]) == LEADS
    assert len(state["messages"]) == LEADS  # one ping per lead, whoever delivered it
    assert len(state["objects"]["deals"]) == LEADS


def test_helpers_stop_with_their_worker_even_when_it_is_killed(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    ids = backlog(intake, "orphan")
    config_data["worker"]["lease_seconds"] = 5  # what the killed worker held comes back soon
    with slow_upstream(sandbox, 150), worker_process(tmp_path, config_data) as proc:
        wait_until(lambda: len(helpers_of(proc.pid)) == 2, time.monotonic() + 60, "two helpers")
        helpers = helpers_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Orphaned, each finishes what it holds and stops within a poll interval or so.
        wait_until(lambda: not any(alive(p) for p in helpers), time.monotonic() + 60, "the orphaned helpers to stop")
    # What the killed worker held comes back when its lease runs out: a fresh worker ends the job.
    Worker(settings_from_dict(config_data, ROOT), ledger).drain(timeout=60)
    assert delivered(ledger, ids)
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"]), len(state["objects"]["deals"])) == (LEADS, LEADS, LEADS)


def test_stopping_the_worker_stops_its_helpers_and_each_finishes_what_it_holds(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox, intake: str, ledger: Ledger
) -> None:
    ids = backlog(intake, "stop")
    with slow_upstream(sandbox, 150), worker_process(tmp_path, config_data) as proc:
        wait_until(lambda: len(helpers_of(proc.pid)) == 2, time.monotonic() + 60, "two helpers")
        helpers = helpers_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        # The worker waited for its helpers, which had the signal at once, not after it.
        assert not any(alive(p) for p in helpers)
    held = [i for i in ids if ledger.get(i).status == Status.PROCESSING]
    assert held == []  # every process finished its deliveries: no lease left to expire
    Worker(settings_from_dict(config_data, ROOT), ledger).drain(timeout=60)
    assert delivered(ledger, ids)
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"]), len(state["objects"]["deals"])) == (LEADS, LEADS, LEADS)


def test_a_helper_starts_only_after_a_lasting_backlog_and_never_past_the_process_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.helpers")
    helpers = Helpers(WorkerSettings(processes=3, scale_after_seconds=2), None)
    helpers.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    try:
        counts = []
        for now, backlog in [(0, True), (1.9, True), (2.0, True), (3.0, True), (3.5, False), (4.0, True), (5.9, True)]:
            helpers.tick(backlog, now)
            counts.append(len(helpers.running))
        assert counts == [0, 0, 1, 1, 1, 1, 1]  # a pause in the backlog starts the wait again
        helpers.tick(True, 6.0)
        helpers.tick(True, 9.0)
        assert len(helpers.running) == 2  # three processes in all, the worker included
        started = list(helpers.running)
    finally:
        helpers.stop()
    assert all(proc.returncode is not None for proc in started) and helpers.running == []

    helpers.argv = [sys.executable, "-c", "raise SystemExit(3)"]
    helpers.tick(False, 19.0)
    helpers.tick(True, 20.0)
    helpers.tick(True, 22.0)
    (failing,) = helpers.running
    failing.wait(30)
    helpers.tick(False, 23.0)
    assert helpers.running == []
    assert f"helper worker {failing.pid} exited with status 3" in caplog.text
