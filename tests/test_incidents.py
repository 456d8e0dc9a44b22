"""Condition alerts over the sandbox: a backlog, a refused token, a source gone quiet.

Each is announced once when it starts and once when it clears, however many workers check.
"""

from __future__ import annotations

import time
from typing import Any

from bridge.config import settings_from_dict
from bridge.incidents import check_incidents, learn_rhythm
from bridge.ledger import Ledger, open_ledger
from bridge.ports import build_notifier
from bridge.worker import Worker

from .conftest import ROOT, Sandbox, post_typeform, typeform_payload

OPS = "#ops-leadbridge"


def setup(config_data: dict[str, Any], **alerts: Any) -> tuple[Any, Ledger]:
    config_data["alerts"] = {"slack_channel": OPS, **alerts}
    settings = settings_from_dict(config_data, ROOT)
    return settings, open_ledger(settings.ledger)


def ops(sandbox: Sandbox) -> list[str]:
    return [m["text"] for m in sandbox.state()["messages"] if m["channel"] == OPS]


def accept(ledger: Ledger, n: int, at: float, source: str = "typeform") -> str:
    delivery_id, _ = ledger.accept(
        source=source, idem_key=f"k{n}", body=b"{}", content_type="application/json", headers={}, config_version="v", now=at
    )
    return delivery_id


def test_a_backlog_is_announced_once_and_its_recovery_once(config_data: dict[str, Any], sandbox: Sandbox, intake: str) -> None:
    settings, ledger = setup(config_data, backlog_after_seconds=60)
    notifier = build_notifier(settings)
    post_typeform(intake, typeform_payload())
    later = time.time() + 120  # two minutes on, nothing has been delivered
    assert len(check_incidents(settings, ledger, notifier, now=later)) == 1
    assert check_incidents(settings, ledger, notifier, now=later + 10) == []  # a second worker, or the next beat
    assert len(ops(sandbox)) == 1 and "oldest due delivery has waited 2 min" in ops(sandbox)[0]

    Worker(settings, ledger).drain()  # delivers it, then checks (as every heartbeat does): cleared
    assert check_incidents(settings, ledger, notifier, now=later + 30) == []
    assert len(ops(sandbox)) == 2 and "moving again" in ops(sandbox)[1]


def test_a_refused_token_is_one_incident_not_one_message_per_lead(
    config_data: dict[str, Any], sandbox: Sandbox, intake: str
) -> None:
    settings, ledger = setup(config_data)
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=401, times=10)
    for n in range(3):
        post_typeform(intake, typeform_payload(event_id=f"auth-{n}", token=f"auth-{n}"))
    Worker(settings, ledger).drain()  # three dead letters, each announced on its own, then the incident
    assert check_incidents(settings, ledger, build_notifier(settings)) == []
    incident = [text for text in ops(sandbox) if "refusing" in text]
    assert len(incident) == 1 and "HubSpot is refusing leadbridge's token" in incident[0]
    assert len([text for text in ops(sandbox) if "Dead letter" in text]) == 3
    assert "@" not in incident[0]  # names and counts only, never lead data


def test_a_quiet_source_with_an_override_raises_one_alert_and_one_recovery(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    for source in config_data["sources"]:
        if source["name"] == "typeform":
            source["quiet_after"] = "2h"
    settings, ledger = setup(config_data, backlog_after_seconds=0)
    notifier = build_notifier(settings)
    now = time.time()
    accept(ledger, 1, now - 5 * 3600)
    sent = check_incidents(settings, ledger, notifier, now=now)
    assert len(sent) == 1 and "Source typeform has sent nothing for 5 h" in sent[0]
    accept(ledger, 2, now + 1)
    sent = check_incidents(settings, ledger, notifier, now=now + 2)
    assert sent == ["Source typeform is sending again."]
    # Other sources have no history and no override: never judged quiet.
    assert len(ops(sandbox)) == 2


def test_a_sources_rhythm_is_learned_from_its_history() -> None:
    from zoneinfo import ZoneInfo

    now = time.time()
    every_half_hour = [now - 8 * 86400 + i * 1800 for i in range(8 * 48)]
    rhythm = learn_rhythm(every_half_hour, ZoneInfo("UTC"))
    assert rhythm is not None and rhythm.quiet_after == 5400  # 3 x the usual 30 min gap
    assert len(rhythm.hours) == 7 * 24
    assert learn_rhythm(every_half_hour[:5], ZoneInfo("UTC")) is None  # too little history to judge
    # Only office hours: nights are off hours, so a quiet night raises nothing.
    office = [t for t in every_half_hour if 9 <= time.gmtime(t).tm_hour < 17]
    learned = learn_rhythm(office, ZoneInfo("UTC"))
    assert learned is not None and len(learned.hours) == 8 * 7
