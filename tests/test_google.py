"""Google Ads lead form webhooks: the google_key check, golden deliveries, test leads and
64-bit ids, through intake over HTTP, the worker and the sandbox."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.ledger import Ledger, Status
from bridge.sources import interpret_body, load_sources
from bridge.worker import Worker
from connectors.google import GoogleAdsSource

from .conftest import FIXTURES, ROOT, Sandbox

GOLDEN = FIXTURES / "google"
KEY = "configured-secret-7f3c2a"  # the key in the golden bodies
NEXT_KEY = "rotated-key-2025"
FORM_KEY, CAMPAIGN_KEY = "form-only-key", "campaign-only-key"
# Ids that have their own key, both above 2**53 so they also prove the lookup is exact.
KEYED_FORM, KEYED_CAMPAIGN = "9007199254741001", "9007199254741003"
ENV = {"GOOGLE_KEY": KEY, "GOOGLE_KEY_NEXT": NEXT_KEY, "GOOGLE_KEY_FORM": FORM_KEY, "GOOGLE_KEY_CAMPAIGN": CAMPAIGN_KEY}
SOURCE = {
    "type": "google",
    "secret_env": ["GOOGLE_KEY", "GOOGLE_KEY_NEXT"],
    "mapping": str(ROOT / "mappings" / "google.yaml"),
    "options": {"keys": {KEYED_FORM: "GOOGLE_KEY_FORM", int(KEYED_CAMPAIGN): "GOOGLE_KEY_CAMPAIGN"}},
}
# Ids above 2**53: a float would turn each into a neighbour.
BIG_IDS = {
    "form_id": 9007199254740993,
    "campaign_id": 9223372036854775807,
    "adgroup_id": 9007199254740997,
    "creative_id": 18014398509481985,
    "asset_group_id": 36028797018963969,
}


@pytest.fixture
def config_data(config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The shared test config plus two Google sources: one recording test leads, one posting them."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    others = [s for s in config_data["sources"] if s["name"] != "google"]
    config_data["sources"] = [
        *others,
        {"name": "google", **SOURCE},
        {"name": "google-tests", **SOURCE, "test_channel": "#lead-tests"},
    ]
    return config_data


@pytest.fixture
def google_properties(sandbox: Sandbox) -> None:
    """Create the mapping's custom properties, as the setup docs tell a HubSpot admin to."""
    for name in ("google_campaign_id", "google_form_id"):
        response = sandbox.hubspot("POST", "/crm/v3/properties/contacts", json={"name": name, "type": "string"})
        assert response.status_code in (201, 409), response.text


def golden(name: str) -> tuple[bytes, dict[str, Any]]:
    return (GOLDEN / f"{name}.json").read_bytes(), json.loads((GOLDEN / f"{name}.expected.json").read_text())


def lead_body(**changes: Any) -> bytes:
    """The golden lead with top-level fields replaced (None removes one)."""
    payload = json.loads((GOLDEN / "lead.json").read_text())
    payload.update(changes)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


def post(url: str, body: bytes, source: str = "google") -> requests.Response:
    return requests.post(f"{url}/hooks/{source}", data=body, headers={"Content-Type": "application/json"}, timeout=10)


@pytest.mark.parametrize("name", ["lead", "test_lead"])
def test_golden_delivery_interprets_to_its_expected_lead(settings: Settings, name: str) -> None:
    body, expected = golden(name)
    kit = load_sources(settings)["google"]
    seen = interpret_body(kit, body, expected["headers"]["Content-Type"], "US")
    payload = kit.source.parse(body, "application/json")
    assert seen.result.problems == []
    assert (seen.kind, kit.source.form_key(payload)) == (expected["kind"], expected["form_key"])
    assert seen.lead.model_dump(mode="json", exclude_defaults=True) == expected["lead"]
    assert kit.source.idempotency_key(payload, 0.0) == json.loads(body)["lead_id"]
    assert "google_key" not in seen.flat and KEY not in seen.flat.values()


def test_unknown_top_level_fields_are_ignored(settings: Settings) -> None:
    kit = load_sources(settings)["google"]
    body = lead_body(payload_schema_version="2.0", lead_quality={"score": 0.9})
    seen = interpret_body(kit, body, "application/json", "US")
    assert seen.lead.model_dump(mode="json", exclude_defaults=True) == golden("lead")[1]["lead"]


def test_golden_lead_becomes_one_contact_and_one_message_and_a_repeat_changes_nothing(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, google_properties: None
) -> None:
    body, expected = golden("lead")
    envelope = {"User-Agent": "Google-Lead-Forms", "X-Forwarded-For": "203.0.113.9", "X-Debug": "not kept"}
    response = requests.post(f"{intake}/hooks/google", data=body, headers={**expected["headers"], **envelope}, timeout=10)
    assert response.status_code == 200
    delivery_id = response.json()["delivery_id"]
    assert worker.drain() == 1

    contacts = sandbox.state()["contacts"]
    assert len(contacts) == 1
    props = contacts[0]["properties"]
    wanted = {
        "email": "jane.doe@acme-plumbing.com",
        "phone": "+14155550132",
        "firstname": "Jane",
        "lastname": "Doe",
        "company": "Acme Plumbing LLC",
        "zip": "94107",
        "city": "San Francisco",
        "utm_source": "google",
        "utm_medium": "cpc",
        "gclid": "Cj0KCQjw-example",
        "submitted_at": "2025-03-14T16:42:07+00:00",
        "google_campaign_id": "21234567890",
        "google_form_id": "40000000001",
        "budget": "$10k-$50k",
    }
    assert {k: props.get(k) for k in wanted} == wanted
    messages = sandbox.state()["messages"]
    assert [(m["channel"], m["text"].split(" +1")[0]) for m in messages] == [("#leads", "WARM lead (50): Jane Doe")]
    delivery = ledger.get(delivery_id)
    assert (delivery.status, delivery.idem_key, delivery.headers) == (
        Status.DELIVERED,
        "CiQADm3ZceLBnPn5Rr_dKMu8DE-example",
        {"content-type": "application/json", "user-agent": "Google-Lead-Forms", "x-forwarded-for": "203.0.113.9"},
    )

    again = post(intake, body)
    assert (again.status_code, again.json()["delivery_id"], again.json()["duplicate"]) == (200, delivery_id, True)
    assert worker.drain() == 0
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"])) == (1, 1)


@pytest.mark.parametrize(
    ("case", "changes", "status"),
    [
        ("the source key", {}, 200),
        ("the next key during rotation", {"google_key": NEXT_KEY}, 200),
        ("the field as the Samples page spells it", {"google_key": None, "Google_key": KEY}, 200),
        ("a wrong key", {"google_key": "guessed"}, 401),
        ("the key in another case", {"google_key": KEY.upper()}, 401),
        ("no key", {"google_key": None}, 401),
        ("an empty key", {"google_key": ""}, 401),
        ("a key of the wrong type", {"google_key": 12345}, 401),
        ("a form's own key on its form", {"form_id": int(KEYED_FORM), "google_key": FORM_KEY}, 200),
        ("the source key on a form that has its own", {"form_id": int(KEYED_FORM)}, 401),
        ("a key valid only for another form", {"google_key": FORM_KEY}, 401),
        ("a campaign's own key on its campaign", {"campaign_id": int(KEYED_CAMPAIGN), "google_key": CAMPAIGN_KEY}, 200),
        ("the source key on a campaign that has its own", {"campaign_id": int(KEYED_CAMPAIGN)}, 401),
        ("a campaign key on another campaign", {"google_key": CAMPAIGN_KEY}, 401),
    ],
)
def test_google_key_check(intake: str, sandbox: Sandbox, ledger: Ledger, case: str, changes: dict[str, Any], status: int) -> None:
    response = post(intake, lead_body(**changes))
    assert response.status_code == status, case
    stored = ledger.deliveries()
    if status == 200:
        assert [d.id for d in stored] == [response.json()["delivery_id"]]
    else:
        assert response.json()["error"]["code"] == "bad_signature"
        assert stored == []
        for secret in (*ENV.values(), "guessed"):
            assert secret not in response.text
    assert sandbox.state()["requests"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"lead_id=1&google_key=" + KEY.encode(), 401, "bad_signature"),  # not JSON: nothing carries a key
        (json.dumps({"google_key": KEY, "user_column_data": []}).encode(), 400, "malformed_body"),
        (lead_body(user_column_data={"EMAIL": "jane@example.org"}), 400, "malformed_body"),
        (lead_body(lead_id="  "), 400, "malformed_body"),
    ],
)
def test_unreadable_bodies_are_refused_and_not_stored(intake: str, ledger: Ledger, body: bytes, status: int, code: str) -> None:
    response = post(intake, body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert ledger.deliveries() == []


def test_a_form_key_whose_variable_is_unset_fails_closed_with_a_retriable_status(
    intake: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_KEY_FORM")
    response = post(intake, lead_body(form_id=int(KEYED_FORM), google_key=FORM_KEY))
    assert (response.status_code, response.json()["error"]["code"]) == (503, "source_not_configured")
    assert ledger.deliveries() == []


@pytest.mark.parametrize(("source", "channels"), [("google", []), ("google-tests", ["#lead-tests"])])
def test_a_test_lead_is_recorded_and_never_reaches_hubspot_or_reps(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger, source: str, channels: list[str]
) -> None:
    body, expected = golden("test_lead")
    response = requests.post(f"{intake}/hooks/{source}", data=body, headers=expected["headers"], timeout=10)
    assert response.status_code == 200
    assert worker.drain() == 1
    assert ledger.get(response.json()["delivery_id"]).status == Status.TEST
    state = sandbox.state()
    assert state["contacts"] == []
    assert [m["channel"] for m in state["messages"]] == channels
    assert sandbox.calls("/crm/") == 0


def test_64_bit_ids_survive_exactly_into_fields_and_hubspot(
    intake: str, sandbox: Sandbox, worker: Worker, settings: Settings, google_properties: None
) -> None:
    exact = {name: str(value) for name, value in BIG_IDS.items()}
    # The values are only a test if a float would change them.
    assert all(str(int(float(text))) != text for text in exact.values())
    body = lead_body(**BIG_IDS)
    assert all(text.encode() in body for text in exact.values())

    source = load_sources(settings)["google"].source
    payload = source.parse(body, "application/json")
    assert {k: v for k, v in source.fields(payload).items() if k in BIG_IDS} == exact
    assert source.form_key(payload) == exact["form_id"]

    assert post(intake, body).status_code == 200
    assert worker.drain() == 1
    props = sandbox.state()["contacts"][0]["properties"]
    assert (props["google_form_id"], props["google_campaign_id"]) == (exact["form_id"], exact["campaign_id"])


def test_ids_that_are_not_integers_are_dropped_not_rounded() -> None:
    source = GoogleAdsSource()
    body = lead_body(form_id=9007199254740993.0, campaign_id="21234567890", adgroup_id=True, creative_id="12ab")
    flat = source.fields(source.parse(body, "application/json"))
    assert {k: flat[k] for k in BIG_IDS} == {
        "form_id": None,
        "campaign_id": "21234567890",
        "adgroup_id": None,
        "creative_id": None,
        "asset_group_id": "0",
    }


def test_flat_fields_by_column_id_and_by_column_name() -> None:
    source = GoogleAdsSource()
    body = lead_body(
        user_column_data=[
            {"column_name": "User Email", "string_value": "jane@acme.example", "column_id": "EMAIL"},
            {"column_name": "Preferred visit day", "string_value": "Tuesday"},
            {"column_name": "google_key", "string_value": "not a place for secrets"},
        ]
    )
    flat = source.fields(source.parse(body, "application/json"))
    assert flat == {
        "User Email": "jane@acme.example",
        "EMAIL": "jane@acme.example",
        "Preferred visit day": "Tuesday",
        "lead_id": "CiQADm3ZceLBnPn5Rr_dKMu8DE-example",
        "gcl_id": "Cj0KCQjw-example",
        "lead_stage": "SUBMITTED",
        "lead_submit_time": "2025-03-14T16:42:07Z",
        "api_version": "1.0",
        "form_id": "40000000001",
        "campaign_id": "21234567890",
        "adgroup_id": "151234567890",
        "creative_id": "701234567890",
        "asset_group_id": "0",
        "is_test": False,
    }


@pytest.mark.parametrize("is_test", ["false", "true"])
def test_wire_request_is_a_delivery_intake_accepts(intake: str, ledger: Ledger, settings: Settings, is_test: str) -> None:
    source = load_sources(settings)["google"].source
    values = {
        "FULL_NAME": "Jane Doe",
        "EMAIL": "jane.doe@acme-plumbing.com",
        "What is your budget?": "$10k-$50k",
        "form_id": KEYED_FORM,
        "gcl_id": "Cj0-wire",
        "is_test": is_test,
    }
    request = source.wire_request(values, NEXT_KEY)
    sent = json.loads(request.body)
    assert sent["user_column_data"] == [
        {"column_name": "Full Name", "string_value": "Jane Doe", "column_id": "FULL_NAME"},
        {"column_name": "Email", "string_value": "jane.doe@acme-plumbing.com", "column_id": "EMAIL"},
        {"column_name": "What is your budget?", "string_value": "$10k-$50k"},
    ]
    assert (sent["form_id"], sent["google_key"], sent["is_test"], sent["gcl_id"]) == (
        int(KEYED_FORM),
        NEXT_KEY,
        is_test == "true",
        "Cj0-wire",
    )
    assert source.wire_request(values, NEXT_KEY).body != request.body  # a fresh lead_id each time
    # The per-form key applies to wire requests too: this form only accepts its own key.
    assert post(intake, request.body).status_code == 401
    response = post(intake, source.wire_request(values, FORM_KEY).body)
    assert response.status_code == 200
    assert ledger.get(response.json()["delivery_id"]).status == Status.RECEIVED


@pytest.mark.parametrize(
    ("options", "problems"),
    [
        ({"keys": {"my-form": "GOOGLE_KEY_FORM"}}, ["keys: Value error, not a form or campaign id (digits only): my-form"]),
        ({"keys": {"40000000001": []}}, ["keys: Value error, no environment variable named for: 40000000001"]),
        ({"key": {"40000000001": "GOOGLE_KEY_FORM"}}, ["key: unknown key"]),
    ],
)
def test_bad_options_are_refused_with_their_path(options: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        GoogleAdsSource(options)
    assert caught.value.problems == problems


def test_every_golden_body_has_its_sidecar() -> None:
    bodies = sorted(p.stem for p in GOLDEN.glob("*.json") if not p.name.endswith(".expected.json"))
    sidecars = sorted(p.name.removesuffix(".expected.json") for p in GOLDEN.glob("*.expected.json"))
    assert bodies == sidecars == ["lead", "test_lead"]
    assert (GOLDEN / "lead.json").read_bytes().count(b"column_id") == 6  # the budget question has none
