"""Operations hardening (issue 9): redacted logs, proxy hops and shared limits, staging CSRF,
and messages instead of tracebacks from the CLI, config loader and sandbox control API."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from werkzeug.test import Client

from bridge.app import create_app
from bridge.cli import main
from bridge.config import settings_from_dict
from bridge.errors import ConfigError
from bridge.ledger import open_ledger
from bridge.logs import redact
from bridge.mapping import load_mapping
from bridge.worker import Worker
from connectors.typeform import typeform_signature

from .conftest import ROOT, Sandbox, post_typeform, served, typeform_payload

EMAIL, PHONE = "jane.doe@acme-plumbing.com", "415 555 0187"
LEAKS = ("jane.doe", "acme-plumbing", "jane.doe%40", "555 0187", "5550187", "tf-test-secret", "test-hubspot-token", "xoxb-test")


def _leaks(text: str) -> list[str]:
    return [s for s in LEAKS if s.lower() in text.lower()]


# --- 1. personal data in logs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("PUT /crm/v3/objects/contacts/jane.doe%40acme-plumbing.com?idProperty=email", "/crm/v3/objects/contacts/"),
        ('{"message":"Email address jane.doe@acme-plumbing.com is invalid"}', "Email address"),
        ("call +1 415-555-0187 or (415) 555-0187", "call"),
        ("Authorization: Bearer pat-na1-1234abcd and xoxb-1-2-abc", "Authorization"),
        ("The domain name acme-plumbing.con does not exist.", "The domain name"),
        ("delivery dlv_01HX contact 123456789012 on 2026-12-03", "123456789012"),
    ],
    ids=["url-encoded-email", "quoted-email", "phones", "tokens", "email-validator-domain", "ids-kept"],
)
def test_redact_masks_personal_data_and_keeps_ids(text: str, kept: str) -> None:
    out = redact(text)
    assert _leaks(out) == [] and "pat-na1" not in out and "xoxb-1" not in out and "+1 415" not in out
    assert kept in out


def test_a_run_with_a_validation_error_and_a_dropped_connection_logs_no_personal_data(
    config_data: dict[str, Any], sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config_data["hubspot"]["timeout_seconds"] = 0.5
    # An owner known by email, so the worker makes a GET (the one call urllib3 itself retries).
    config_data["routing"] = {"owners": {"pat": {"email": "pat@acme-plumbing.com"}}, "rules": [{"name": "all", "owner": "pat"}]}
    owner = {"id": "601", "email": "pat@acme-plumbing.com"}
    requests.post(f"{sandbox.url}/__sandbox/owners", json=owner, timeout=5).raise_for_status()
    settings = settings_from_dict(config_data, ROOT)
    ledger = open_ledger(settings.ledger)
    # HubSpot quoting the email and phone back, as its VALIDATION_ERROR messages do.
    quoted = f"Property values were not valid: {EMAIL} / +1 {PHONE} is invalid"
    sandbox.fault(
        path="/crm/v3/objects/contacts",
        status=400,
        times=50,
        body={"status": "error", "category": "VALIDATION_ERROR", "message": quoted},
    )
    with served(settings) as url:
        first = post_typeform(url, typeform_payload())
        Worker(settings, ledger).drain()
        sandbox.clear_faults()
        # A connection that hangs past the timeout, then recovers (urllib3/tenacity retry it).
        sandbox.fault(path="/crm/v3/owners", delay=1.0, times=1)
        second = post_typeform(url, typeform_payload(event_id="evt-drop", token="tok-drop"))
        Worker(settings, ledger).drain()
    dead = ledger.get(first.json()["delivery_id"])
    assert dead.status == "dead" and "VALIDATION_ERROR" in (dead.reason or "")
    assert ledger.get(second.json()["delivery_id"]).status == "delivered"
    stored = json.dumps([ledger.events(first.json()["delivery_id"]), ledger.events(second.json()["delivery_id"])])
    stored += (dead.reason or "") + (dead.last_error or "")
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    # The real urllib3 retry warning happened, with the owner's email in its URL redacted.
    retried = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3") and "Retrying" in r.getMessage()]
    assert retried and all("/crm/v3/owners/[redacted]" in m for m in retried)
    assert _leaks(stored) == [] and _leaks(logged) == []


# --- 2. spoofable client address, shared limits ------------------------------------------------


def _post(client: Client, n: int, forwarded: str) -> int:
    body = json.dumps(typeform_payload(event_id=f"xff-{n}", token=f"tok-{n}")).encode()
    return client.post(
        "/hooks/typeform",
        data=body,
        content_type="application/json",
        headers={"Typeform-Signature": typeform_signature("tf-test-secret", body), "X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    ).status_code


def test_spoofed_forwarded_for_does_not_escape_the_limit(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["server"]["rate_limit"] = {"per_client_ip": 10, "per_source": 1000, "trusted_proxies": 1}
    settings = settings_from_dict(config_data, ROOT)
    client = Client(create_app(settings))
    # The client prepends a fresh address each time; our one proxy appends the real one.
    statuses = [_post(client, n, f"198.51.100.{n}, 203.0.113.7") for n in range(40)]
    assert statuses.count(200) == 10 and statuses.count(429) == 30
    assert len(open_ledger(settings.ledger).deliveries()) == 10


def test_two_app_instances_share_one_limit(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["server"]["rate_limit"] = {"per_client_ip": 4, "per_source": 1000}
    settings = settings_from_dict(config_data, ROOT)
    apps = [Client(create_app(settings)), Client(create_app(settings_from_dict(config_data, ROOT)))]
    statuses = [_post(apps[n % 2], n, "203.0.113.9") for n in range(8)]
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429]
    # Beside a SQLite ledger the counters have a file of their own; in PostgreSQL, tables.
    assert settings.ledger.url or Path(str(settings.ledger.path) + ".limits.db").exists()


def test_trust_forwarded_for_is_a_deprecated_alias_for_one_hop(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["server"]["rate_limit"] = {"trust_forwarded_for": True}
    assert settings_from_dict(config_data, ROOT).server.rate_limit.trusted_proxies == 1


# --- 3. staging refuses cross-site posts ---------------------------------------------------


@pytest.fixture
def staging_url(config_data: dict[str, Any], sandbox: Sandbox) -> Any:
    config_data["server"]["staging"] = True
    config_data["server"]["rate_limit"] = {"per_client_ip": 3, "per_source": 1000}
    settings = settings_from_dict(config_data, ROOT)
    with served(settings) as url:
        yield url, open_ledger(settings.ledger)


def _form_token(url: str) -> str:
    page = requests.get(f"{url}/staging/typeform", timeout=5).text
    return page.split('name="csrf_token" value="')[1].split('"')[0]


@pytest.mark.parametrize(
    ("origin", "token"),
    [("https://evil.example", "valid"), (None, None), (None, "forged.token.value")],
    ids=["foreign-origin", "no-token", "invalid-token"],
)
def test_staging_refuses_cross_site_posts(staging_url: Any, origin: str | None, token: str | None) -> None:
    url, ledger = staging_url
    data = {"email": EMAIL}
    if token:
        data["csrf_token"] = _form_token(url) if token == "valid" else token
    headers = {"Origin": origin} if origin else {}
    response = requests.post(f"{url}/staging/typeform", data=data, headers=headers, timeout=5)
    assert response.status_code == 403
    assert ledger.deliveries() == []
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def test_staging_counts_against_the_intake_limits(staging_url: Any) -> None:
    url, ledger = staging_url
    statuses = [
        requests.post(
            f"{url}/staging/typeform", data={"email": EMAIL, "csrf_token": _form_token(url)}, headers={"Origin": url}, timeout=5
        ).status_code
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    assert len(ledger.deliveries()) == 3


# --- 4. messages instead of tracebacks -------------------------------------------------------


def _write_config(tmp_path: Path, config_data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_data))
    return path


def test_deliveries_with_a_huge_limit_is_a_usage_message(config_data: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["deliveries", "--limit", "99999999999999999999", "--config", str(_write_config(tmp_path, config_data))]
    )
    assert result.exit_code == 2 and "Invalid value for '--limit'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'fields:\n  email: {from: "\xff\xfe"}\n', "not valid UTF-8"),
        (b"a: &a [x, x]\nb: [*a, *a]\n", "anchors and aliases"),
        (b"fields:\n  email: {from: email, transform: 'date:America'}\n", "not a time zone name"),
    ],
    ids=["invalid-utf8", "alias-bomb", "date-folder-zone"],
)
def test_bad_mapping_files_are_config_errors(tmp_path: Path, raw: bytes, says: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert says in "\n".join(caught.value.problems)


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        ({"digest": {"timezone": "Mars/Olympus"}}, 'unknown time zone "Mars/Olympus"'),
        ({"routing": {"owners": {"ana": {"id": "1", "timezone": "America"}}}}, 'unknown time zone "America"'),
    ],
    ids=["digest-zone", "owner-zone"],
)
def test_check_config_names_bad_time_zones(config_data: dict[str, Any], tmp_path: Path, patch: dict[str, Any], says: str) -> None:
    config_data.update(patch)
    result = CliRunner().invoke(main, ["check-config", "--config", str(_write_config(tmp_path, config_data))])
    assert result.exit_code == 1 and says in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_config_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    path = tmp_path / "config.yaml"
    path.write_text(bomb)
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 1 and "anchors and aliases" in result.output


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/__sandbox/faults", {"status": "five hundred"}),
        ("/__sandbox/faults", {"status": 500, "times": [1]}),
        ("/__sandbox/faults", [1, 2]),
        ("/__sandbox/search_lag", {"seconds": "soon"}),
        ("/__sandbox/owners", ["not", "an", "object"]),
        ("/__sandbox/slack_users", "text"),
    ],
    ids=["fault-status", "fault-times", "fault-list", "lag", "owner-list", "slack-user-text"],
)
def test_sandbox_control_routes_answer_400_to_bad_input(sandbox: Sandbox, route: str, body: Any) -> None:
    response = requests.post(f"{sandbox.url}{route}", json=body, timeout=5)
    assert response.status_code == 400 and response.json()["ok"] is False
    assert requests.get(f"{sandbox.url}/__sandbox/state", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("sample", "says"),
    [
        ("[" * 10_000 + "]" * 10_000, "the "),
        ('{"x": "' + "a" * 300_000 + '"}', "the relay would answer 413: body is over 262144 bytes"),
    ],
    ids=["deep", "huge"],
)
def test_try_on_a_deep_or_huge_sample_is_a_message(config_data: dict[str, Any], tmp_path: Path, sample: str, says: str) -> None:
    path = tmp_path / "sample.json"
    path.write_text(sample)
    config = _write_config(tmp_path, config_data)
    result = CliRunner().invoke(main, ["try", "typeform", str(path), "--config", str(config)])
    assert result.exit_code == 1 and says in result.output
    assert isinstance(result.exception, SystemExit)
