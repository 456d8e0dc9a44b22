"""`leadbridge doctor`: the config checked against live HubSpot and Slack (the sandbox, over HTTP).

Before go-live a marketer learns, one line each with the fix, what would otherwise kill
every lead later: a missing Slack channel, an owner HubSpot does not have, a stage that is
not in the pipeline, a property that does not exist.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import requests
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import settings_from_dict
from bridge.doctor import named_channels

from .conftest import ROOT, Sandbox
from .test_sales import OWNERS, ROUTING, SCORING


def configured(config_data: dict[str, Any], sandbox: Sandbox) -> dict[str, Any]:
    for owner in OWNERS:
        requests.post(f"{sandbox.url}/__sandbox/owners", json=owner, timeout=5).raise_for_status()
    data = copy.deepcopy(config_data)
    data["routing"], data["scoring"] = copy.deepcopy(ROUTING), copy.deepcopy(SCORING)
    for channel in named_channels(settings_from_dict(data, ROOT)):
        requests.post(f"{sandbox.url}/__sandbox/channels", json={"name": channel}, timeout=5).raise_for_status()
    return data


def doctor(tmp_path: Path, data: dict[str, Any], *args: str) -> Any:
    config = tmp_path / "doctor.yaml"
    config.write_text(yaml.safe_dump(data))
    return CliRunner().invoke(main, ["doctor", "--config", str(config), *args])


def test_a_config_that_matches_the_accounts_is_ok(config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path) -> None:
    result = doctor(tmp_path, configured(config_data, sandbox))
    assert result.exit_code == 0, result.output
    assert "ok: HubSpot and Slack match the config" in result.output


def test_doctor_names_a_missing_channel_owner_and_stage_with_the_fix(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    data = configured(config_data, sandbox)
    data["routing"]["rules"][0]["channel"] = "#leads-nowhere"
    data["routing"]["owners"]["carol"] = {"email": "carol@roofers.example"}
    data["routing"]["owners"]["dave"] = {"id": "999"}
    data["deals"] = {"pipeline": "default", "stage": "quotesent"}
    requests.post(f"{sandbox.url}/__sandbox/channels", json={"name": "leads-hot", "is_member": False}, timeout=5)

    result = doctor(tmp_path, data, "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    lines = {p["setting"]: p for p in report["problems"]}
    assert set(lines) == {
        "routing.rules[sf-plumbing].channel",
        "scoring.actions.hot.channel",
        "routing.owners.carol",
        "routing.owners.dave",
        "deals.stage",
    }
    assert "#leads-nowhere does not exist" in lines["routing.rules[sf-plumbing].channel"]["problem"]
    assert "not a member of #leads-hot" in lines["scoring.actions.hot.channel"]["problem"]
    assert "/invite" in lines["scoring.actions.hot.channel"]["fix"]
    assert "carol@roofers.example" in lines["routing.owners.carol"]["problem"]
    assert "999" in lines["routing.owners.dave"]["problem"]
    assert "contractsent" in lines["deals.stage"]["fix"]  # the stages it could be


def test_a_closed_stage_and_an_empty_portal_id_are_problems(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    data = configured(config_data, sandbox)
    data["deals"] = {"pipeline": "default", "stage": "closedwon"}
    data["hubspot"]["contact_url"] = "https://app.hubspot.com/contacts/{portal_id}/record/0-1/{contact_id}"
    text = doctor(tmp_path, data).output
    assert "deals.stage: stage 'closedwon' is a closed stage" in text
    assert "hubspot.portal_id: empty" in text


def test_missing_properties_are_named_then_created_on_request(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    data = configured(config_data, sandbox)
    data["hubspot"]["properties"] = {"email": "email", "service": "leadbridge_service_needed"}
    first = doctor(tmp_path, data)
    assert first.exit_code == 1
    assert "hubspot.properties.service: HubSpot has no contact property 'leadbridge_service_needed'" in first.output
    assert doctor(tmp_path, data, "--create-properties").exit_code == 0
    names = {p["name"] for p in sandbox.hubspot("GET", "/crm/v3/properties/contacts").json()["results"]}
    assert "leadbridge_service_needed" in names
    assert doctor(tmp_path, data).exit_code == 0


def test_an_unset_secret_and_a_failing_api_are_reported_not_raised(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path, monkeypatch: Any
) -> None:
    data = configured(config_data, sandbox)
    monkeypatch.delenv("TYPEFORM_SECRET")
    sandbox.fault(path="/crm/v3/pipelines/deals", status=403, times=5)
    result = doctor(tmp_path, data)
    assert result.exit_code == 1
    assert "TYPEFORM_SECRET" in result.output
    assert "deals: could not check: HubSpot 403" in result.output
    # The other checks still ran.
    assert "Traceback" not in result.output


def test_check_config_live_names_the_same_problems_in_json(config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path) -> None:
    data = configured(config_data, sandbox)
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(data))
    ok = CliRunner().invoke(main, ["check-config", "--config", str(config), "--live", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    data["routing"]["rules"][0]["channel"] = "#leads-nowhere"
    data["routing"]["owners"]["carol"] = {"email": "carol@roofers.example"}
    data["deals"] = {"pipeline": "default", "stage": "quotesent"}
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-config", "--config", str(config), "--live", "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert [p.split(":")[0] for p in problems] == ["routing.rules[sf-plumbing].channel", "routing.owners.carol", "deals.stage"]
    # Without --live nothing is called and these pass: the file itself is fine.
    assert CliRunner().invoke(main, ["check-config", "--config", str(config)]).exit_code == 0


def test_a_config_kept_among_its_mappings_is_not_an_unused_mapping(config_data: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "forms"
    folder.mkdir()
    (folder / "typeform.yaml").write_text((ROOT / config_data["sources"][0]["mapping"]).read_text())
    config_data["sources"][0]["mapping"] = str(folder / "typeform.yaml")
    config = folder / "config.yaml"  # beside the mapping it uses
    config.write_text(yaml.safe_dump(config_data))
    result = CliRunner().invoke(main, ["check-config", "--config", str(config), "--json"])
    assert "config.yaml" not in " ".join(json.loads(result.output)["warnings"])
