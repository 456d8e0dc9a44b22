"""The admin CLI over a real ledger file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main, parse_since
from bridge.ledger import Ledger
from bridge.worker import Worker

from .conftest import ENV, ROOT, post_typeform, typeform_payload, with_absolute_mappings


@pytest.fixture
def config(tmp_path: Path, config_data: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_data))
    return str(path)


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_check_config_passes_on_the_example() -> None:
    result = run("check-config", "--config", str(ROOT / "config.example.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")
    assert "warning" not in result.output  # every shipped mapping is used by the example


def test_check_config_lists_every_problem_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    data["sources"] = [{**data["sources"][0], "mapping": str(ROOT / "mappings/typeform.yaml"), "forms": {}}]
    data["slack"]["chanel"] = "#typo"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    result = run("check-config", "--config", str(tmp_path / "c.yaml"))
    assert result.exit_code == 1
    assert "problem: slack.chanel: unknown key" in result.output
    del data["slack"]["chanel"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    result = run("check-config", "--config", str(tmp_path / "c.yaml"), "--show")
    assert result.exit_code == 1
    assert "problem: slack.token_env: environment variable SLACK_BOT_TOKEN is not set" in result.output
    assert '"SLACK_BOT_TOKEN (unset)"' in result.output
    for secret in ENV.values():
        assert secret not in result.output


def test_deliveries_and_show_tell_an_admin_what_happened(config: str, intake: str, worker: Worker, ledger: Ledger) -> None:
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    listed = run("deliveries", "--config", config, "--json", "--since", "1h")
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [(delivery_id, "delivered", 1)]
    assert run("deliveries", "--config", config, "--status", "dead").output.count("dlv_") == 0

    shown = run("show", delivery_id, "--config", config)
    assert shown.exit_code == 0
    assert "status: delivered" in shown.output
    assert "contact   ok             created contact" in shown.output
    assert "notify    ok             posted to #leads-hot" in shown.output
    for secret in ENV.values():
        assert secret not in shown.output
    assert "typeform-signature" not in shown.output.lower()
    data = json.loads(run("show", delivery_id, "--config", config, "--json").output)
    assert set(data["steps"]) == {"map", "validate", "score", "route", "contact", "deal", "task", "notify", "notify_update"}


def test_replay_misuse_exits_2(config: str) -> None:
    assert run("replay", "--config", config).exit_code == 2
    assert run("replay", "dlv_x", "--status", "dead", "--config", config).exit_code == 2
    assert run("show", "dlv_missing", "--config", config).exit_code == 1


@pytest.mark.parametrize(("text", "expected"), [("90s", 910.0), ("15m", 100.0), ("2h", -6200.0), ("1970-01-01T00:00:10Z", 10.0)])
def test_since_accepts_durations_and_times(text: str, expected: float) -> None:
    assert parse_since(text, now=1000.0) == expected


def test_try_shows_lead_properties_and_outcome_and_touches_nothing(config: str, sandbox: Any, tmp_path: Path) -> None:
    result = run("try", "typeform", str(ROOT / "tests/fixtures/typeform/quote.json"), "--config", config, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["validation"] == {"outcome": "deliver", "kind": "lead", "reasons": [], "problems": []}
    assert report["lead"]["email"] == "jane.doe@acme-plumbing.com"
    assert report["hubspot_properties"]["first_utm_source"] == {"value": "google", "merge": "set_if_empty"}
    assert report["hubspot_properties"]["zip"] == {"value": "94107", "merge": "overwrite"}
    assert sandbox.state()["requests"] == []
    assert not (tmp_path / "ledger.db").exists()


def test_try_names_why_a_lead_would_not_be_delivered(config: str, tmp_path: Path) -> None:
    sample = json.loads((ROOT / "tests/fixtures/typeform/quote.json").read_text())
    sample["form_response"]["answers"] = [
        a for a in sample["form_response"]["answers"] if a["type"] not in ("email", "phone_number")
    ]
    (tmp_path / "nobody.json").write_text(json.dumps(sample))
    result = run("try", "typeform", str(tmp_path / "nobody.json"), "--config", config)
    assert result.exit_code == 1
    assert "Outcome: rejected (no valid email or phone: nobody could call or write back)" in result.stdout
    assert run("try", "nope", str(tmp_path / "nobody.json"), "--config", config).exit_code == 2


def test_check_config_reports_mapping_problems(tmp_path: Path, config_data: dict[str, Any]) -> None:
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "bad.yaml").write_text(
        "source_type: typeform\nfields:\n  emial: email\n  phone: {from: phone, transform: [phone_e165]}\n"
    )
    (tmp_path / "mappings" / "orphan.yaml").write_text("source_type: typeform\nfields:\n  email: email\n")
    config_data["sources"] = config_data["sources"][:1]
    config_data["sources"][0]["mapping"] = "mappings/bad.yaml"
    config_data["sources"][0]["forms"] = {}
    config_data["sources"].append({"name": "second", "type": "typeform", "secret_env": "TYPEFORM_SECRET"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config_data))
    result = run("check-config", "--config", str(tmp_path / "c.yaml"))
    assert result.exit_code == 1
    assert "problem: sources[second]: no mapping (set mapping or forms)" in result.output
    config_data["sources"].pop()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config_data))
    result = run("check-config", "--config", str(tmp_path / "c.yaml"))
    assert result.exit_code == 1
    assert "problem: bad.yaml: fields.emial.[key]: Value error, unknown canonical field 'emial'; known: city," in result.output
    assert "problem: bad.yaml: fields.phone.transform: Value error, unknown transform 'phone_e165';" in result.output
    assert "warning: orphan.yaml: no source uses this mapping" in result.output


def test_route_explains_the_rule_the_pick_and_why_and_records_nothing(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    data["ledger"]["path"] = str(tmp_path / "ledger.db")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(with_absolute_mappings(data)))
    sample = json.loads((ROOT / "tests/fixtures/typeform/quote.json").read_text())
    for a in sample["form_response"]["answers"]:
        if a["type"] == "choices":
            a["choices"] = {"labels": ["Roof repair"]}
    (tmp_path / "roof.json").write_text(json.dumps(sample))
    tuesday_10am = ("--at", "2026-11-24T10:00:00-08:00")  # inside the crew's working hours
    first = run("route", "typeform", str(tmp_path / "roof.json"), "--config", str(config), "--json", *tuesday_10am)
    assert first.exit_code == 0, first.output
    decision = json.loads(first.stdout)["decision"]
    assert (decision["rule"], decision["pool"], decision["channel"]) == ("sf-roofing", "roofing_crew", "#leads-roofing")
    assert decision["reason"].startswith('rule "sf-roofing" (postal prefix 941, service roof repair) → pool roofing_crew → ')
    again = json.loads(
        run("route", "typeform", str(tmp_path / "roof.json"), "--config", str(config), "--json", *tuesday_10am).stdout
    )
    assert again["decision"]["owner_name"] == decision["owner_name"]  # a dry run takes no turn
    text = run("route", "typeform", str(tmp_path / "roof.json"), "--config", str(config), *tuesday_10am).stdout
    assert 'rule "sf-roofing": matches (postal prefix 941, service roof repair)' in text
    assert text.splitlines()[0].startswith("Score: hot (")


def test_try_reads_a_json_sample_by_content_and_names_what_the_sample_lacks(config: str, tmp_path: Path) -> None:
    sample = json.loads((ROOT / "tests/fixtures/typeform/quote.json").read_text())
    sample["form_response"]["hidden"].pop("utm_campaign")
    (tmp_path / "saved-from-the-browser.txt").write_text(json.dumps(sample))  # the name says nothing
    result = run("try", "typeform", str(tmp_path / "saved-from-the-browser.txt"), "--config", config, "--json")
    assert result.exit_code == 0, result.output
    absent = json.loads(result.stdout)["absent_from_sample"]
    assert "utm_campaign: the sample has no hidden.utm_campaign" in absent
    assert "custom.first_utm_campaign: the sample has no hidden.utm_campaign" in absent
    assert not any(line.startswith("email:") for line in absent)


@pytest.mark.sqlite_only  # the file it must not create; PostgreSQL's: tests/test_postgres.py
def test_migrate_check_names_what_is_pending_and_migrate_applies_it(config: str, config_data: dict[str, Any]) -> None:
    path = Path(config_data["ledger"]["path"])
    assert not path.exists()
    pending = run("migrate", "--config", config, "--check", "--json")
    assert pending.exit_code == 1
    names = json.loads(pending.output)["pending"]
    assert names and json.loads(pending.output)["applied"] == [] and not path.exists()  # --check writes nothing

    done = run("migrate", "--config", config, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"applied": names, "pending": [], "ran": names}
    again = run("migrate", "--config", config, "--check")
    assert again.exit_code == 0 and again.output.strip() == f"up to date ({len(names)} migrations)"
    Ledger(path).counts()  # a ledger opened after migrate finds nothing left to do
    assert run("migrate", "--config", config, "--json").output.strip().endswith('"ran": []}')
