"""`logging.format: json` (issue 11): a real worker process writes one JSON object per line,
with the delivery's fields, and still no personal data or secret."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bridge.config import settings_from_dict
from bridge.jsonlog import LeadbridgeJsonFormatter
from bridge.ledger import Status, open_ledger

from .conftest import ROOT, Sandbox, answer, post_typeform, served, typeform_payload
from .procs import BOOT_SECONDS, started, wait_until

EMAIL = "jane.doe@acme-plumbing.com"
QUOTED = {"status": "error", "category": "VALIDATION_ERROR", "message": f"Property values were not valid: {EMAIL}"}
PERSONAL = ("tf-test-secret", "test-hubspot-token", "xoxb-test", "Jane", "Doe", "acme-plumbing", "415", "94107")


def test_a_json_worker_writes_fields_and_no_personal_data(config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path) -> None:
    config_data["logging"] = {"format": "json"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    log_file = tmp_path / "worker.log"
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=400, times=1, body=QUOTED)
    argv = [sys.executable, "-m", "bridge", "worker", "--config", str(config)]
    second = answer(typeform_payload(event_id="json-2"), "email", "x" + EMAIL)
    with (
        served(settings) as url,
        log_file.open("ab") as out,
        started(argv, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=out) as proc,
    ):
        deadline = time.monotonic() + BOOT_SECONDS
        dead = post_typeform(url, typeform_payload()).json()["delivery_id"]
        wait_until(lambda: ledger.get(dead).status == Status.DEAD, deadline, "the first lead to die", proc)  # type: ignore[union-attr]
        delivered = post_typeform(url, second).json()["delivery_id"]
        wait_until(lambda: ledger.get(delivered).status == Status.DELIVERED, deadline, "the second lead", proc)  # type: ignore[union-attr]
    text = log_file.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    died = next(line for line in lines if line.get("outcome") == "dead" and "step" in line)
    assert {k: died[k] for k in ("delivery_id", "source", "step", "level")} == {
        "delivery_id": dead,
        "source": "typeform",
        "step": "contact",
        "level": "ERROR",
    }
    done = next(line for line in lines if line.get("outcome") == "delivered" and "duration_ms" in line)
    assert done["delivery_id"] == delivered and isinstance(done["duration_ms"], int) and done["duration_ms"] >= 0
    # Ids, times and durations are digits that can spell an area code by chance.
    checked = re.sub(r'dlv_[0-9a-f]{20}|"time": "[^"]*"|"duration_ms": \d+| in \d+ ms|:\d+:[0-9a-f]{6}', "", text)
    for secret in PERSONAL:
        assert secret.lower() not in checked.lower(), secret


def test_json_lines_redact_tracebacks_and_keep_only_known_fields() -> None:
    try:
        raise ValueError(f"cannot parse {EMAIL}")
    except ValueError:
        record = logging.getLogger("bridge.test").makeRecord(
            "bridge.test",
            logging.ERROR,
            __file__,
            1,
            "lead %s failed",
            ("dlv_0123456789abcdef0123",),
            sys.exc_info(),
            extra={"step": "contact", "email": EMAIL, "duration_ms": 12},
        )
    line = json.loads(LeadbridgeJsonFormatter().format(record))
    assert set(line) == {"time", "level", "logger", "message", "exc_info", "delivery_id", "step", "duration_ms"}
    assert line["delivery_id"] == "dlv_0123456789abcdef0123" and line["duration_ms"] == 12
    assert "ValueError: cannot parse [redacted]" in line["exc_info"] and EMAIL not in json.dumps(line)
