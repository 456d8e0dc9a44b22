"""The pure core: lead normalisation, mapping, retry schedule, signatures and config."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.config import RetrySettings, load_settings, settings_from_dict
from bridge.errors import ConfigError, SignatureError
from bridge.lead import build_lead
from bridge.mapping import load_mapping
from bridge.retry import next_attempt_at
from bridge.sources import interpret_body, load_sources
from connectors.typeform import typeform_signature, verify_typeform

from .conftest import ROOT, example_config, typeform_payload


@pytest.mark.parametrize(
    ("values", "expected", "problems"),
    [
        (
            {"email": " Jane.Doe@Example.COM ", "first_name": " Jane "},
            {"email": "jane.doe@example.com", "first_name": "Jane"},
            [],
        ),
        ({"phone": "(650) 253-0000"}, {"phone": "+16502530000"}, []),
        ({"phone": "011 44 20 8366 1177"}, {"phone": "+442083661177"}, []),
        (
            {"phone": "555-1234", "email": "a@b.co"},
            {"email": "a@b.co"},
            ["phone is not a valid number for its region (default region US)"],
        ),
        (
            {"email": "Jane <j@x.com>", "phone": "+1 650 253 0000"},
            {"phone": "+16502530000"},
            ["email is not valid (A display name and angle brackets around the email address are not permitted here)"],
        ),
        ({"email": "", "phone": "   ", "company": ""}, {}, ["no valid email or phone: nobody could call or write back"]),
        ({"email": "j@x.com", "service": ["Roofing", "", "Gutters"]}, {"email": "j@x.com", "service": "Roofing, Gutters"}, []),
    ],
)
def test_build_lead_normalises_and_names_its_problems(
    values: dict[str, Any], expected: dict[str, Any], problems: list[str]
) -> None:
    result = build_lead(values, "US")
    assert result.lead.model_dump(exclude_defaults=True) == expected
    assert result.problems == problems


def test_the_example_typeform_mapping_reads_every_field_of_the_recorded_payload() -> None:
    settings = settings_from_dict(example_config(), ROOT)
    kit = load_sources(settings)["typeform"]
    result = interpret_body(kit, json.dumps(typeform_payload()).encode(), "application/json", "US").result
    assert result.problems == []
    assert result.lead.model_dump(mode="json", exclude_defaults=True) == {
        "email": "jane.doe@acme-plumbing.com",
        "phone": "+14155550132",
        "first_name": "Jane",
        "last_name": "Doe",
        "company": "Acme Plumbing LLC",
        "service": "Bathroom remodel, Water heater, Gas line check",
        "message": "Need a quote for 3 bathrooms & a water heater <soon>",
        "postal_code": "94107",
        "city": "San Francisco",
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "spring-remodel",
        "gclid": "Cj0KCQjw-example",
        "landing_page": "https://acme-plumbing.example/quote",
        "submitted_at": "2025-03-14T16:42:07Z",
        "custom": {
            "budget": "$10k-$50k",
            "first_utm_source": "google",
            "first_utm_medium": "cpc",
            "first_utm_campaign": "spring-remodel",
            "first_gclid": "Cj0KCQjw-example",
            "first_landing_page": "https://acme-plumbing.example/quote",
        },
        "consent": {"contact_ok": "true", "privacy_policy_version": "2025-01"},
    }


@pytest.mark.parametrize("path", sorted((ROOT / "mappings").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_mapping_loads(path: Path) -> None:
    assert load_mapping(path).fields


def test_a_mapping_with_an_unknown_field_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("source_type: typeform\nfields:\n  emial: email\n")
    with pytest.raises(ConfigError) as caught:
        load_mapping(bad)
    assert caught.value.problems[0].startswith("bad.yaml: fields.emial.[key]: Value error, unknown canonical field 'emial';")


def test_typeform_signature_matches_the_published_vector() -> None:
    body = (
        b'{"event_id":"01J9ZQ3K7M2X8B4T6R0N5V1C9E","event_type":"form_response","form_response":'
        b'{"form_id":"aBcD1234","token":"k7q2r9x4m1p8s3t6","submitted_at":"2025-03-14T16:42:07Z","answers":[]}}'
    )
    header = "sha256=FULa60L1LVtuUBpXCYr5L9wnstuNjpzoYmnl49L6lPQ="
    assert typeform_signature("tf-demo-secret", body) == header
    verify_typeform(body, header, ["old-secret", "tf-demo-secret"])
    for secrets, tampered in ((["wrong"], body), (["tf-demo-secret"], body + b" ")):
        with pytest.raises(SignatureError):
            verify_typeform(tampered, header, secrets)
    with pytest.raises(SignatureError):  # a forged non-ASCII header is a 401, not a crash
        verify_typeform(body, "sha256=é", ["tf-demo-secret"])


def test_retry_schedule_is_the_configured_one_with_bounded_jitter() -> None:
    policy = RetrySettings()
    assert [next_attempt_at(n, 0.0, policy.model_copy(update={"jitter": 0})) for n in range(1, 10)] == [
        10,
        30,
        120,
        600,
        1800,
        7200,
        21600,
        43200,
        None,
    ]
    rng = random.Random(7)
    jittered = [next_attempt_at(1, 1000.0, policy, rng=rng) for _ in range(200)]
    assert min(jittered) >= 1008 and max(jittered) <= 1012 and len(set(jittered)) > 100
    # A server's Retry-After is a floor.
    assert next_attempt_at(1, 0.0, policy.model_copy(update={"jitter": 0}), retry_after=25) == 25


def test_config_rejects_unknown_keys_and_names_each_path(tmp_path: Path) -> None:
    data = example_config()
    data["hubspot"]["tokn_env"] = "X"
    data["worker"]["concurrency"] = 0
    data["sources"][0]["type"] = "jotform"
    data["sources"][1]["secret_env"] = []
    del data["sources"][2]["name"]
    data["sources"][2]["honeypot"] = "not-a-list"
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "c.yaml")
    # Sources are named by their name; one without a name can only be named by its index.
    assert caught.value.problems == [
        "hubspot.tokn_env: unknown key",
        "worker.concurrency: Input should be greater than or equal to 1",
        "sources[typeform].type: Value error, unknown source type 'jotform'; known: google, typeform, wordpress",
        "sources[google]: Value error, name where its secret lives: secret_env (a variable) or secret_file (a file)",
        "sources.2.name: Field required",
        "sources.2.honeypot: Input should be a valid list",
    ]


def test_config_problems_after_validation_name_sources_by_name(tmp_path: Path) -> None:
    data = example_config()
    data["sources"] = [{**data["sources"][0], "forms": {}, "mapping": "mappings/nope.yaml"}, data["sources"][0]]
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(data, ROOT)
    assert caught.value.problems == [
        "sources: name 'typeform' is used more than once",
        f"sources[typeform].mapping: file {ROOT / 'mappings/nope.yaml'} not found",
    ]


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.config import config_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEADBRIDGE_CONFIG", raising=False)
    (tmp_path / "config.example.yaml").write_text("{}")  # never read in its place
    with pytest.raises(ConfigError) as caught:
        config_path()
    assert caught.value.problems == [
        "no config file found; looked at: --config (not set), $LEADBRIDGE_CONFIG (not set), "
        f"./config.yaml ({tmp_path}/config.yaml: no such file)",
        "to start one here, run `leadbridge init .` (writes config.yaml, mappings/ and .env.example)",
    ]
    (tmp_path / "config.yaml").write_text("{}")
    assert config_path() == Path("config.yaml")
    (tmp_path / "elsewhere.yaml").write_text("{}")
    monkeypatch.setenv("LEADBRIDGE_CONFIG", "elsewhere.yaml")
    assert config_path() == Path("elsewhere.yaml")
    assert config_path("config.yaml") == Path("config.yaml")
    # A named file that is missing is reported, not replaced by ./config.yaml.
    with pytest.raises(ConfigError) as caught:
        config_path("given.yaml")
    assert caught.value.problems[0] == f"no config file found; looked at: --config ({tmp_path}/given.yaml: no such file)"
    monkeypatch.setenv("LEADBRIDGE_CONFIG", "/nowhere/leadbridge.yaml")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.problems[0] == (
        "no config file found; looked at: --config (not set), $LEADBRIDGE_CONFIG (/nowhere/leadbridge.yaml: no such file)"
    )


def test_redacted_config_shows_only_whether_secrets_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    shown = settings_from_dict(example_config(), ROOT).redacted()
    assert shown["hubspot"]["token_env"] == "HUBSPOT_TOKEN (set)"
    assert shown["slack"]["token_env"] == "SLACK_BOT_TOKEN (unset)"
    assert shown["sources"][0]["secret_env"] == ["TYPEFORM_SECRET (set)"]
    assert shown["sources"][0]["secret_file"] == []
    assert "test-hubspot-token" not in repr(shown) and "tf-test-secret" not in repr(shown)


@pytest.mark.parametrize(
    ("value", "specs", "expected"),
    [
        ("  Mary Ann Smith ", ["trim", "first_name"], "Mary"),
        ("Mary Ann Smith", ["last_name"], "Ann Smith"),
        ("Cher", ["last_name"], None),
        ("JANE", ["lower", "title"], "Jane"),
        ("(415) 555-0132 ext 4", ["digits"], "41555501324"),
        ("020 8366 1177", ["phone_e164:GB"], "+442083661177"),
        ("not a phone", ["phone_e164"], "not a phone"),
        ("March 14, 2025", ["date"], "2025-03-14T00:00:00"),
        ("2025-03-14 16:42:07", ["date:UTC"], "2025-03-14T16:42:07+00:00"),
        ("2025-03-14T09:42:07-07:00", ["date:UTC"], "2025-03-14T09:42:07-07:00"),
        (["roof", "gutter"], ["upper"], ["ROOF", "GUTTER"]),
    ],
)
def test_transforms(value: Any, specs: list[str], expected: Any) -> None:
    from bridge.mapping import apply_transforms

    assert apply_transforms(value, specs) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("titel", "unknown transform 'titel'; known: date, digits, first_name, last_name, lower, phone_e164, title, trim, upper"),
        ("date:Mars/Base", "date:Mars/Base: not a time zone name (e.g. date:UTC, date:America/Chicago)"),
        ("phone_e164:XX", "phone_e164:XX: not a region code (e.g. phone_e164:GB)"),
    ],
)
def test_bad_transforms_are_named(spec: str, message: str) -> None:
    from bridge.mapping import check_transform

    with pytest.raises(ValueError, match=re.escape(message)):
        check_transform(spec)


def test_a_slack_message_stays_inside_block_kit_limits() -> None:
    from bridge.lead import Lead
    from bridge.ports import Alert, ContactResult
    from connectors.slack import CUT, lead_message

    lead = Lead(email="a@b.co", first_name="A" * 400, message="leak " * 2000, service="x" * 2500, city="Springfield")
    contact = ContactResult("1", True, "https://crm.example/1")
    message = lead_message(Alert(lead=lead, source="typeform", contact=contact, details=("why " * 1000,)))
    blocks = message["blocks"]
    assert len(blocks) <= 50
    assert len(blocks[0]["text"]["text"]) <= 150
    sections = [b for b in blocks if b["type"] == "section"]
    assert all(len(b["text"]["text"]) <= 3000 for b in sections if "text" in b)
    assert all(len(f["text"]) <= 2000 for b in sections for f in b.get("fields", []))
    assert len(sections[0]["fields"]) <= 10
    assert sections[1]["text"]["text"].endswith(CUT)
