"""Readiness (issue 11): /readyz follows a real worker process and the ledger's write lock."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bridge.config import settings_from_dict

from .conftest import ROOT, Sandbox, post_typeform, served, typeform_payload
from .procs import BOOT_SECONDS, started, wait_until


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    answer = requests.get(f"{url}/readyz", timeout=5)
    return answer.status_code, answer.json()


def test_readyz_follows_the_worker_heartbeat_and_reports_the_backlog(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    config_data["worker"]["heartbeat_seconds"] = 0.5
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    settings = settings_from_dict(config_data, ROOT)
    with served(settings) as url:
        assert post_typeform(url, typeform_payload(event_id="ready-1")).status_code == 200
        status, report = readyz(url)
        assert status == 503
        assert report["ok"] is False and report["ledger"] == "writable"
        assert report["reasons"] == ["worker: no heartbeat recorded; is `leadbridge worker` running?"]
        assert report["backlog"]["queue_depth"] == 1 and report["backlog"]["dead"] == 0
        assert report["backlog"]["oldest_due_age_seconds"] >= 0

        log = (tmp_path / "worker.log").open("ab")
        argv = [sys.executable, "-m", "bridge", "worker", "--config", str(config)]
        with log, started(argv, cwd=ROOT, env=dict(os.environ), stdout=log, stderr=log) as proc:
            deadline = time.monotonic() + BOOT_SECONDS

            seen: list[dict[str, Any]] = []

            def ready_and_drained() -> bool:
                status, report = readyz(url)
                seen[:] = [report]
                return status == 200 and report["backlog"]["queue_depth"] == 0

            wait_until(ready_and_drained, deadline, "/readyz 200 with the lead delivered", proc)
            # The report of that 200 (asking again could catch a beat late on a busy machine).
            (report,) = seen
            assert report["ok"] is True and report["reasons"] == []
            assert report["worker"]["window_seconds"] == 1.5
            assert report["worker"]["last_heartbeat_age_seconds"] is not None

            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            wait_until(lambda: readyz(url)[0] == 503, time.monotonic() + BOOT_SECONDS, "/readyz 503 after the kill")
        status, report = readyz(url)
        assert status == 503 and report["ledger"] == "writable"
        (reason,) = report["reasons"]
        assert reason.startswith("worker: last heartbeat") and "the worker is down or stuck" in reason
    assert any(c["properties"].get("email") for c in sandbox.state()["contacts"])


@pytest.mark.sqlite_only  # PostgreSQL's read-only case: tests/test_postgres.py
def test_readyz_is_503_while_the_ledger_cannot_take_writes(config_data: dict[str, Any]) -> None:
    config_data["ledger"]["busy_timeout_seconds"] = 0.2
    settings = settings_from_dict(config_data, ROOT)
    with served(settings) as url:
        blocker = sqlite3.connect(settings.ledger.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            status, report = readyz(url)
        finally:
            blocker.close()
        assert status == 503 and report["ledger"] == "unavailable"
        assert "ledger: not writable (OperationalError)" in report["reasons"]
        # Reads still work under WAL, so the backlog is still reported.
        assert report["backlog"] == {"queue_depth": 0, "oldest_due_age_seconds": 0.0, "dead": 0}
        assert readyz(url)[1]["ledger"] == "writable"
