"""Dead-letter alerts (issue 11): one ops message per dead delivery, with the exact replay command."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.alerts import reason_class
from bridge.cli import main
from bridge.config import settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker

from .conftest import ROOT, Sandbox, answer, post_typeform, served, typeform_payload

OPS = "#leads-ops"
EMAIL = "jane.roofer@example-roofing.com"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
# HubSpot's real 400 quotes the value it refused: the ops message must not.
REFUSAL = {"status": "error", "category": "VALIDATION_ERROR", "message": f"Property values were not valid: {EMAIL}"}


def ops_messages(sandbox: Sandbox) -> list[str]:
    return [m["text"] for m in sandbox.state()["messages"] if m["channel"] == OPS]


def dying_lead(url: str, n: int) -> str:
    payload = answer(typeform_payload(event_id=f"dies-{n}"), "email", f"dies{n}.{EMAIL}")
    response = post_typeform(url, payload)
    assert response.status_code == 200
    return str(response.json()["delivery_id"])


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (f"contact: HubSpot 400 VALIDATION_ERROR: Property values were not valid: {EMAIL}", "HubSpot 400 VALIDATION_ERROR"),
        ("notify: Slack 200 channel_not_found", "Slack 200 channel_not_found"),
        ("contact: HubSpot 503: Jane Doe (gave up after 4 attempts)", "HubSpot 503; gave up after 4 attempts"),
        ("crashed the worker 3 times (last: KeyError at sales.py:12)", "crashed the worker 3 times"),
        ("cannot be mapped: field 'Jane' unknown", "cannot be mapped"),
        ("something nobody foresaw for Jane Doe", "unclassified (see leadbridge show)"),
    ],
)
def test_a_reason_class_keeps_vendor_codes_and_drops_free_text(reason: str, kind: str) -> None:
    assert reason_class(reason) == kind


def test_a_dead_delivery_posts_one_ops_message_and_a_dead_replay_another(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    config_data["alerts"] = {"slack_channel": OPS}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    sandbox.fault(path=UPSERT, status=400, body=REFUSAL)
    with served(settings) as url:
        delivery_id = dying_lead(url, 1)
        worker = Worker(settings, ledger)
        worker.drain()
        worker.drain()  # another sweep (a restart, a second worker) finds nothing new to say
    assert ledger.get(delivery_id).status == Status.DEAD  # type: ignore[union-attr]
    (first,) = ops_messages(sandbox)
    assert first == (
        f"Dead letter: delivery {delivery_id} from source typeform died at step contact: HubSpot 400 VALIDATION_ERROR. "
        f"Fix the cause, then replay it: `leadbridge replay {delivery_id}`"
    )
    assert "@" not in first and "Jane" not in first

    # The exact command from the message, run as the admin would; the fault is still there.
    command = re.search(r"`leadbridge (replay dlv_\w+)`", first).group(1).split()  # type: ignore[union-attr]
    result = CliRunner().invoke(main, [*command, "--config", str(config)])
    assert result.exit_code == 1 and f"{delivery_id}  dead" in result.output
    Worker(settings, ledger).drain()
    assert ops_messages(sandbox) == [first, first]  # a new incident, announced once more
    alerts = [e["outcome"] for e in ledger.events(delivery_id) if e["step"] == "alert"]
    assert alerts == ["sending", "sent", "sending", "sent"]


def test_many_dead_letters_at_once_become_one_summary(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["alerts"] = {"slack_channel": OPS, "max_per_sweep": 2}
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    sandbox.fault(path=UPSERT, status=400, body=REFUSAL)
    with served(settings) as url:
        ids = [dying_lead(url, n) for n in range(3)]
        Worker(settings, ledger).drain()
    assert [ledger.get(i).status for i in ids] == [Status.DEAD] * 3  # type: ignore[union-attr]
    assert ops_messages(sandbox) == [
        "3 deliveries went dead (sources: typeform; steps: contact). See `leadbridge deliveries --status dead`, "
        "fix the cause, then replay them all: `leadbridge replay --status dead`"
    ]


def test_without_an_ops_channel_the_alert_goes_to_the_log_once(
    settings: Any, ledger: Ledger, intake: str, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.alerts.slack_channel is None
    sandbox.fault(path=UPSERT, status=400, body=REFUSAL)
    delivery_id = dying_lead(intake, 1)
    worker = Worker(settings, ledger)
    with caplog.at_level(logging.ERROR, logger="bridge.alerts"):
        worker.drain()
        worker.drain()
    logged = [r.getMessage() for r in caplog.records if r.name == "bridge.alerts"]
    assert logged == [
        f"alert: Dead letter: delivery {delivery_id} from source typeform died at step contact: "
        f"HubSpot 400 VALIDATION_ERROR. Fix the cause, then replay it: `leadbridge replay {delivery_id}`"
    ]
    assert sandbox.state()["messages"] == []
    assert [e["outcome"] for e in ledger.events(delivery_id) if e["step"] == "alert"] == ["sending", "logged"]
