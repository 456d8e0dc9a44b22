"""Acceptance: WordPress form plugins (CF7, Gravity, WPForms, Elementor, Fluent, Ninja).

Recorded-shape deliveries in tests/fixtures/wordpress (<case>.json|.form bodies exactly as
sent, <case>.meta.json with their headers and golden lead) go through the real parsing and
mapping path, and through intake + worker + sandbox over HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import Settings
from bridge.errors import ConfigError, PayloadError, SignatureError
from bridge.ledger import Ledger, Status
from bridge.ports import Request
from bridge.sources import interpret_body, load_sources
from bridge.worker import Worker
from connectors.formdata import build_php_query, flatten_dotted, nest_dotted, parse_body
from connectors.wordpress import WordPressSource, verify_wpforms, wpforms_signature

from .conftest import FIXTURES, ROOT, Sandbox

WP = FIXTURES / "wordpress"
SECRET = "wp-relay-7f3b9c2e4d1a"
PREVIOUS_SECRET = "wp-relay-previous-0c9e1d"
CASES = sorted(p.name.removesuffix(".meta.json") for p in WP.glob("*.meta.json"))
# The WPForms vector from the research notes, recomputed here: secret, t, body, header.
VECTOR_SECRET, VECTOR_T = "wpf-demo-secret", 1741970527
VECTOR_SIGNATURE = "t=1741970527,v=30840e8da01c4b8ef1060798cc3c6ca5a05e6a035a446593dffa05b3b3fa2e73"
FORM = "application/x-www-form-urlencoded; charset=UTF-8"
JANE = {"email": "jane.doe@acme-plumbing.com", "phone": "+14155550132", "firstname": "Jane", "lastname": "Doe"}


def case(name: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((WP / f"{name}.meta.json").read_text())
    meta["bytes"] = (WP / meta["body"]).read_bytes()
    return meta


def wp_sources() -> list[dict[str, Any]]:
    """One source per fixture, named wp-<case>; the CF7 one has a honeypot."""
    sources = []
    for name in CASES:
        meta = case(name)
        sources.append(
            {
                "name": f"wp-{name}",
                "type": "wordpress",
                "secret_env": ["WP_SECRET", "WP_SECRET_PREVIOUS"],
                "mapping": str(ROOT / "mappings" / meta["mapping"]),
                "options": {"plugin": meta["plugin"]},
                "honeypot": ["website"] if name == "cf7" else [],
            }
        )
    return sources


@pytest.fixture
def config_data(config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("WP_SECRET", SECRET)
    monkeypatch.setenv("WP_SECRET_PREVIOUS", PREVIOUS_SECRET)
    config_data["sources"].extend(wp_sources())
    # These tests are about reading each plugin; a cold lead's digest is tested in test_sales.
    config_data["scoring"]["actions"]["cold"]["digest"] = False
    return config_data


def post(url: str, source: str, body: bytes, headers: dict[str, str], query: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{url}/hooks/{source}", data=body, headers=headers, params=query or {}, timeout=10)


def post_case(url: str, name: str, source: str | None = None, body: bytes | None = None) -> requests.Response:
    meta = case(name)
    headers = dict(meta["headers"])
    payload = meta["bytes"] if body is None else body
    if meta["plugin"] == "wpforms":
        headers["X-WPForms-Webhook-Signature"] = wpforms_signature(SECRET, payload, int(time.time()))
    return post(url, source or f"wp-{name}", payload, headers, meta["query"])


def wordpress(**options: Any) -> WordPressSource:
    return WordPressSource(options)


# -- body parsing (connectors.formdata) ------------------------------------------------

PARSE_CASES = [
    ("json with charset", b'{"a":"1","b":["x","y"]}', "application/json; charset=UTF-8", {"a": "1", "b": ["x", "y"]}),
    ("php escaped slashes", b'{"u":"https:\\/\\/x.example\\/"}', "application/json", {"u": "https://x.example/"}),
    (
        "form keeps blanks and dotted keys",
        b"1.3=Jane&2.3=&6.1=Roof",
        "application/x-www-form-urlencoded",
        {"1.3": "Jane", "2.3": "", "6.1": "Roof"},
    ),
    (
        "form nests brackets",
        b"a%5Bb%5D%5Bc%5D=v&a%5Bb%5D%5Bd%5D=w",
        "application/x-www-form-urlencoded",
        {"a": {"b": {"c": "v", "d": "w"}}},
    ),
    ("form [][key] starts an item each time", b"r%5B%5D%5Bq%5D=1&r%5B%5D%5Bq%5D=2", FORM, {"r": [{"q": "1"}, {"q": "2"}]}),
    ("form [] appends", b"s%5B%5D=x&s%5B%5D=y", "application/x-www-form-urlencoded; charset=UTF-8", {"s": ["x", "y"]}),
    (
        "form indexed list",
        b"s%5B0%5D=x&s%5B1%5D=y&t%5B1%5D=z",
        "application/x-www-form-urlencoded",
        {"s": ["x", "y"], "t": {"1": "z"}},
    ),
    ("form later value wins", b"a=1&a=2", "application/x-www-form-urlencoded", {"a": "2"}),
    ("form odd brackets stay literal", b"a%5Bb=1&%5Bc%5D=2", "application/x-www-form-urlencoded", {"a[b": "1", "[c]": "2"}),
    ("form latin-1 charset", b"city=M%FCnchen", "application/x-www-form-urlencoded; charset=ISO-8859-1", {"city": "München"}),
    ("text/plain holding json", b'{"your-name":"Jane"}', "text/plain; charset=UTF-8", {"your-name": "Jane"}),
    ("no content type, form", b"a=1", "", {"a": "1"}),
    (
        "multipart, file ignored",
        b'--XyZ\r\nContent-Disposition: form-data; name="your-name"\r\n\r\nJane Doe\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="s[]"\r\n\r\nx\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="brief"; filename="brief.pdf"\r\n'
        b"Content-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--XyZ--\r\n",
        "multipart/form-data; boundary=XyZ",
        {"your-name": "Jane Doe", "s": ["x"]},
    ),
]


@pytest.mark.parametrize(("body", "content_type", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_bodies_are_read_by_content_type(body: bytes, content_type: str, expected: dict[str, Any]) -> None:
    assert parse_body(body, content_type) == expected


BAD_BODIES = [
    ("text/plain not json", b"Name: Jane", "text/plain", "body is not valid JSON"),
    ("broken json", b'{"a":', "application/json", "body is not valid JSON"),
    ("json array", b'["a"]', "application/json", "body is JSON but not an object"),
    ("not utf-8", b'{"a":"\xff"}', "application/json", "body is not valid JSON"),
    ("bad form bytes", b"a=%FF", "application/x-www-form-urlencoded", "body is not a valid form-encoded body"),
    ("multipart without boundary", b"--x\r\n", "multipart/form-data", "body is not a valid multipart form"),
    ("xml", b"<a/>", "application/xml; charset=UTF-8", "content type 'application/xml' is not JSON, a form or text"),
]


@pytest.mark.parametrize(("body", "content_type", "message"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_unreadable_bodies_are_payload_errors(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_body(body, content_type)
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["elementor", "elementor-advanced", "gravity-form", "ninja"])
def test_php_form_bodies_rebuild_byte_for_byte(name: str) -> None:
    body = case(name)["bytes"]
    assert build_php_query(parse_body(body, "application/x-www-form-urlencoded")).encode() == body


def test_php_query_encodes_like_http_build_query() -> None:
    data = {"a": {"b": [True, False, None, 3]}, "c d": "e/f"}
    assert build_php_query(data) == "a%5Bb%5D%5B0%5D=1&a%5Bb%5D%5B1%5D=0&a%5Bb%5D%5B3%5D=3&c+d=e%2Ff"


def test_dotted_keys_flatten_and_nest_back() -> None:
    nested = {"names": {"first_name": "Jane", "last_name": "Doe"}, "s": ["x"], "__submission": {"id": 5}}
    flat = flatten_dotted(nested)
    assert flat == {"names.first_name": "Jane", "names.last_name": "Doe", "s": ["x"], "__submission.id": 5}
    assert nest_dotted(flat) == nested


# -- golden fixtures through the real pure path -----------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_each_fixture_becomes_its_golden_lead(name: str, settings: Settings) -> None:
    meta = case(name)
    kit = load_sources(settings)[f"wp-{name}"]
    seen = interpret_body(kit, meta["bytes"], meta["headers"]["Content-Type"], "US")
    assert seen.lead.model_dump(mode="json", exclude_defaults=True) == meta["lead"]
    assert (seen.kind, seen.spam, seen.result.problems) == ("lead", None, [])
    payload = kit.source.parse(meta["bytes"], meta["headers"]["Content-Type"])
    assert kit.source.form_key(payload) == meta["form_key"]
    key = kit.source.idempotency_key(payload, 1_741_970_527.0)
    assert key == meta["idempotency_key"] or (meta["idempotency_key"] is None and key.startswith("content:"))


FLAT_CASES = {
    "elementor-advanced": {
        "name": "Jane Doe",
        "email": "jane.doe@acme-plumbing.com",
        "phone": "(415) 555-0132",
        "message": "Need a quote for 3 bathrooms",
        "meta.page_url": "https://www.example-plumbing.com/contact/",
        "meta.remote_ip": "203.0.113.24",
        "form_name": "Contact Form",
        "form_id": "3c2e8f1",
    },
    "gravity-form": {
        "1": ["Jane", "Doe"],
        "id": "1187",
        "status": "active",
        "form_id": "4",
        "ip": "203.0.113.24",
        "source_url": "https://www.example-plumbing.com/get-a-quote/",
        "currency": "USD",
        "date_created": "2025-03-14 16:42:07",
        "date_updated": "2025-03-14 16:42:07",
        "is_starred": "0",
        "is_read": "0",
        "user_agent": "Mozilla/5.0",
        "1.3": "Jane",
        "1.6": "Doe",
        "2": "jane.doe@acme-plumbing.com",
        "3": "(415) 555-0132",
        "5": "Need a quote for 3 bathrooms",
    },
}


@pytest.mark.parametrize("name", sorted(FLAT_CASES))
def test_flattened_keys_are_the_ones_a_mapping_names(name: str) -> None:
    meta = case(name)
    source = wordpress(plugin=meta["plugin"])
    assert source.fields(source.parse(meta["bytes"], meta["headers"]["Content-Type"])) == FLAT_CASES[name]


def test_fluent_and_gravity_json_flatten_nested_and_multi_input_fields() -> None:
    fluent = wordpress(plugin="fluent")
    flat = fluent.fields(fluent.parse(case("fluent")["bytes"], "application/json"))
    assert {k: flat[k] for k in ("names.first_name", "__submission.id", "__submission.created_at", "form_id")} == {
        "names.first_name": "Jane",
        "__submission.id": 512,
        "__submission.created_at": "2025-03-14 16:42:07",
        "form_id": "3",
    }
    gravity = wordpress(plugin="gravity")
    flat = gravity.fields(gravity.parse(case("gravity")["bytes"], "application/json"))
    assert (flat["4"], flat["6"]) == (
        ["500 Howard St", "San Francisco", "California", "94105", "United States"],
        ["Bathroom remodel", "Water heater"],
    )


def test_fluent_form_format_reads_like_its_json_format(settings: Settings) -> None:
    kit = load_sources(settings)["wp-fluent"]
    json_body = case("fluent")["bytes"]
    form_body = build_php_query(json.loads(json_body)).encode()
    assert form_body.startswith(b"names%5Bfirst_name%5D=Jane&")
    seen = [interpret_body(kit, body, kind, "US").lead for body, kind in ((json_body, "application/json"), (form_body, FORM))]
    assert seen[0] == seen[1]
    keys = [
        kit.source.idempotency_key(kit.source.parse(body, kind), 0.0)
        for body, kind in ((json_body, "application/json"), (form_body, FORM))
    ]
    assert keys == ["fluent:512", "fluent:512"]


NINJA_BODIES = [
    ("args", b"first_name=Jane&email=jane%40acme-plumbing.com", "application/x-www-form-urlencoded"),
    ("json body", b'{"first_name":"Jane","email":"jane@acme-plumbing.com"}', "application/json"),
    (
        "json arg",
        b"json=%7B%22first_name%22%3A%22Jane%22%2C%22email%22%3A%22jane%40acme-plumbing.com%22%7D",
        "application/x-www-form-urlencoded",
    ),
]


@pytest.mark.parametrize(("body", "content_type"), [c[1:] for c in NINJA_BODIES], ids=[c[0] for c in NINJA_BODIES])
def test_ninja_args_arrive_as_form_json_or_one_json_param(body: bytes, content_type: str) -> None:
    source = wordpress(plugin="ninja")
    assert source.fields(source.parse(body, content_type)) == {"first_name": "Jane", "email": "jane@acme-plumbing.com"}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "application/x-www-form-urlencoded", "body has no fields"),
        (b"json=%7Bnope", "application/x-www-form-urlencoded", "body is not valid JSON"),
    ],
)
def test_empty_or_broken_ninja_bodies_are_refused(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        wordpress(plugin="ninja").parse(body, content_type)
    assert str(err.value) == message


def test_content_key_ignores_volatile_metadata_and_keeps_to_its_window() -> None:
    source = wordpress(plugin="elementor")
    first = source.parse(case("elementor")["bytes"], "application/x-www-form-urlencoded")
    second_click = first | {"Date": "March 14, 2025", "Time": "4:43 pm", "User Agent": "Mozilla/5.0 (iPhone)"}
    edited = first | {"Message": "Need a quote for 4 bathrooms"}
    now = 1_741_970_400.0
    keys = [
        source.idempotency_key(p, at) for p, at in ((first, now), (second_click, now + 30), (edited, now), (first, now + 600))
    ]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin", "auth"),
    [
        ("cf7", "header"),
        ("gravity", "header"),
        ("wpforms", "hmac"),
        ("elementor", "query"),
        ("fluent", "header"),
        ("ninja", "query"),
    ],
)
def test_each_plugin_gets_the_auth_it_can_send(plugin: str, auth: str) -> None:
    assert wordpress(plugin=plugin).options.auth_mode == auth


BAD_OPTIONS = [
    ({}, ["plugin: Field required"]),
    ({"plugin": "formidable"}, ["plugin: Input should be 'cf7', 'gravity', 'wpforms', 'elementor', 'fluent' or 'ninja'"]),
    ({"plugin": "cf7", "secret": "x"}, ["secret: unknown key"]),
    (
        {"plugin": "cf7", "auth": "hmac"},
        ["(top level): Value error, auth: hmac: only WPForms signs its webhooks; use auth: header or auth: query"],
    ),
    (
        {"plugin": "elementor", "auth": "header"},
        ["(top level): Value error, auth: header: Elementor Pro cannot send custom headers; use auth: query"],
    ),
    (
        {"plugin": "gravity", "header": "User-Agent"},
        ["(top level): Value error, header: User-Agent is stored with every delivery; pick a header of its own"],
    ),
    ({"plugin": "cf7", "dedupe_window_seconds": 0}, ["dedupe_window_seconds: Input should be greater than 0"]),
]


@pytest.mark.parametrize(("options", "problems"), BAD_OPTIONS)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        WordPressSource(options)
    assert err.value.problems == problems


# -- signatures and shared secrets ------------------------------------------------------


def test_wpforms_signature_matches_the_known_vector() -> None:
    body = case("wpforms")["bytes"]
    assert wpforms_signature(VECTOR_SECRET, body, VECTOR_T) == VECTOR_SIGNATURE
    assert case("wpforms")["headers"]["X-WPForms-Webhook-Signature"] == VECTOR_SIGNATURE
    verify_wpforms(body, VECTOR_SIGNATURE, ["rotated-out", VECTOR_SECRET], 300, VECTOR_T + 299)


WPFORMS_REFUSALS = [
    ("wrong secret", b"", VECTOR_SIGNATURE, ["not-the-secret"], VECTOR_T, "does not match the body"),
    ("tampered body", b" ", VECTOR_SIGNATURE, [VECTOR_SECRET], VECTOR_T, "does not match the body"),
    ("stale", b"", VECTOR_SIGNATURE, [VECTOR_SECRET], VECTOR_T + 301, "more than 300 s away from now"),
    ("far future", b"", VECTOR_SIGNATURE, [VECTOR_SECRET], VECTOR_T - 301, "more than 300 s away from now"),
    ("missing", b"", "", [VECTOR_SECRET], VECTOR_T, "missing X-WPForms-Webhook-Signature header"),
    ("no timestamp", b"", "v=30840e8d", [VECTOR_SECRET], VECTOR_T, "has no t=<unix time>"),
]


@pytest.mark.parametrize(
    ("extra", "header", "secrets", "now", "message"), [c[1:] for c in WPFORMS_REFUSALS], ids=[c[0] for c in WPFORMS_REFUSALS]
)
def test_wpforms_signature_refusals(extra: bytes, header: str, secrets: list[str], now: int, message: str) -> None:
    with pytest.raises(SignatureError) as err:
        verify_wpforms(case("wpforms")["bytes"] + extra, header, secrets, 300, now)
    assert message in str(err.value)


@dataclass(frozen=True)
class Signed:
    """WPForms headers signed when the request is sent: a signature made at import would age."""

    secret: str = SECRET
    skew: int = 0
    # Sign other bytes than the ones sent, as a tampered body would be.
    over: bytes | None = None
    content_type: str = "application/json; charset=utf-8"

    def headers(self, body: bytes) -> dict[str, str]:
        signature = wpforms_signature(self.secret, self.over or body, int(time.time()) + self.skew)
        return {"Content-Type": self.content_type, "X-WPForms-Webhook-Signature": signature}


def send(url: str, source: str, body: bytes, headers: dict[str, str] | Signed, query: dict[str, str]) -> requests.Response:
    return post(url, source, body, headers.headers(body) if isinstance(headers, Signed) else headers, query)


WPFORMS_BODY = case("wpforms")["bytes"]
REFUSED = [
    ("wpforms wrong secret", "wp-wpforms", WPFORMS_BODY, Signed("not-the-secret"), {}),
    ("wpforms stale", "wp-wpforms", WPFORMS_BODY, Signed(skew=-301), {}),
    # A minute past the 300 s tolerance, not one second: the timestamp is whole seconds (up to
    # 1 s behind the clock) and the request takes time to arrive, so 301 was accepted at times.
    ("wpforms from the future", "wp-wpforms", WPFORMS_BODY, Signed(skew=360), {}),
    ("wpforms tampered", "wp-wpforms", WPFORMS_BODY.replace(b"Jane", b"Joan"), Signed(over=WPFORMS_BODY), {}),
    ("wpforms unsigned", "wp-wpforms", WPFORMS_BODY, {"Content-Type": "application/json"}, {}),
    (
        "wpforms form format",
        "wp-wpforms",
        b"email=j%40acme-plumbing.com",
        Signed(content_type="application/x-www-form-urlencoded"),
        {},
    ),
    ("header wrong", "wp-cf7", case("cf7")["bytes"], {"Content-Type": "application/json", "X-Leadbridge-Token": "nope"}, {}),
    ("header missing", "wp-cf7", case("cf7")["bytes"], {"Content-Type": "application/json"}, {}),
    (
        "bearer wrong",
        "wp-gravity",
        case("gravity")["bytes"],
        {"Content-Type": "application/json", "Authorization": "Bearer nope"},
        {},
    ),
    ("token in query, header expected", "wp-cf7", case("cf7")["bytes"], {"Content-Type": "application/json"}, {"token": SECRET}),
    (
        "query wrong",
        "wp-elementor",
        case("elementor")["bytes"],
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"token": "nope"},
    ),
    ("query missing", "wp-elementor", case("elementor")["bytes"], {"Content-Type": "application/x-www-form-urlencoded"}, {}),
    (
        "token in header, query expected",
        "wp-ninja",
        case("ninja")["bytes"],
        {"Content-Type": "application/x-www-form-urlencoded", "X-Leadbridge-Token": SECRET},
        {},
    ),
]


@pytest.mark.parametrize(("source", "body", "headers", "query"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_unauthenticated_deliveries_get_401_and_store_nothing(
    intake: str, ledger: Ledger, source: str, body: bytes, headers: dict[str, str] | Signed, query: dict[str, str]
) -> None:
    response = send(intake, source, body, headers, query)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "bad_signature")
    assert ledger.deliveries() == []


ACCEPTED = [
    ("wpforms signed now", "wp-wpforms", WPFORMS_BODY, Signed(), {}),
    ("wpforms signed a minute ago", "wp-wpforms", WPFORMS_BODY, Signed(skew=-60), {}),
    ("wpforms signed with the previous secret", "wp-wpforms", WPFORMS_BODY, Signed(PREVIOUS_SECRET), {}),
    ("header", "wp-cf7", case("cf7")["bytes"], {"Content-Type": "application/json", "X-Leadbridge-Token": SECRET}, {}),
    (
        "header, previous secret",
        "wp-cf7",
        case("cf7")["bytes"],
        {"Content-Type": "application/json", "x-leadbridge-token": PREVIOUS_SECRET},
        {},
    ),
    (
        "bearer",
        "wp-fluent",
        case("fluent")["bytes"],
        {"Content-Type": "application/json", "Authorization": f"bearer {SECRET}"},
        {},
    ),
    ("query", "wp-ninja", case("ninja")["bytes"], {"Content-Type": "application/x-www-form-urlencoded"}, {"token": SECRET}),
]


@pytest.mark.parametrize(("source", "body", "headers", "query"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_authenticated_deliveries_are_stored(
    intake: str, ledger: Ledger, source: str, body: bytes, headers: dict[str, str] | Signed, query: dict[str, str]
) -> None:
    response = send(intake, source, body, headers, query)
    assert response.status_code == 200
    assert [d.id for d in ledger.deliveries()] == [response.json()["delivery_id"]]


def test_only_harmless_headers_are_recorded(intake: str, ledger: Ledger) -> None:
    headers = {"X-Forwarded-For": "203.0.113.24"} | case("cf7")["headers"]
    response = post(intake, "wp-cf7", case("cf7")["bytes"], headers)
    wp_response = post_case(intake, "wpforms")
    assert ledger.get(response.json()["delivery_id"]).headers == {
        "content-type": "application/json; charset=UTF-8",
        "user-agent": "WordPress/6.7; https://www.example-plumbing.com",
        "x-forwarded-for": "203.0.113.24",
    }
    assert ledger.get(wp_response.json()["delivery_id"]).headers == {
        "content-type": "application/json; charset=utf-8",
        "user-agent": "wpforms-webhooks/1.x",
    }


# -- end to end through intake, worker and sandbox -------------------------------------

FULL_PROPERTIES = {
    "gravity-form": JANE
    | {
        "message": "Need a quote for 3 bathrooms",
        "landing_page": "https://www.example-plumbing.com/get-a-quote/",
    },
    "elementor-advanced": JANE
    | {
        "message": "Need a quote for 3 bathrooms",
        "landing_page": "https://www.example-plumbing.com/contact/",
    },
}


@pytest.mark.parametrize("name", CASES)
def test_each_fixture_as_sent_makes_one_contact_and_one_message(
    name: str, intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    response = post_case(intake, name)
    # Elementor shows the visitor an error for anything but exactly 200.
    assert response.status_code == 200
    assert worker.drain() == 1
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"])) == (1, 1)
    props = state["contacts"][0]["properties"]
    expected = FULL_PROPERTIES.get(name, JANE)
    assert {k: props.get(k) for k in expected} == expected
    # The rep's message names the person and their number (its wording is the notifier's).
    assert "Jane Doe" in state["messages"][0]["text"] and "415-555-0132" in state["messages"][0]["text"]
    assert ledger.get(response.json()["delivery_id"]).status == Status.DELIVERED


def test_one_gravity_entry_posted_twice_in_either_format_is_one_delivery(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    answers = [
        post_case(intake, "gravity-form"),
        post_case(intake, "gravity-form"),
        post_case(intake, "gravity", "wp-gravity-form"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert len({r.json()["delivery_id"] for r in answers}) == 1
    assert [r.json()["duplicate"] for r in answers] == [False, True, True]
    worker.drain()
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"])) == (1, 1)


def test_cf7_double_click_is_one_delivery_and_a_changed_message_is_another(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    body = case("cf7")["bytes"]
    answers = [post_case(intake, "cf7"), post_case(intake, "cf7")]
    edited = post_case(intake, "cf7", body=body.replace(b"3 bathrooms", b"4 bathrooms"))
    assert [r.status_code for r in [*answers, edited]] == [200, 200, 200]
    assert answers[0].json()["delivery_id"] == answers[1].json()["delivery_id"]
    assert edited.json()["delivery_id"] != answers[0].json()["delivery_id"]
    worker.drain()
    state = sandbox.state()
    assert (len(state["contacts"]), len(state["messages"])) == (1, 2)


def test_a_filled_honeypot_is_answered_200_and_kept_as_spam(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    body = case("cf7")["bytes"].replace(b'"_url"', b'"website":"http://cheap-pills.example","_url"')
    response = post_case(intake, "cf7", body=body)
    assert response.status_code == 200
    worker.drain()
    delivery = ledger.get(response.json()["delivery_id"])
    assert (delivery.status, delivery.reason) == (Status.SPAM, "honeypot field 'website' was filled")
    assert sandbox.state()["requests"] == []


@pytest.mark.sqlite_only  # reads the ledger's files byte by byte; what is stored is intake's choice, not the backend's
def test_a_query_token_is_never_stored_shown_or_logged(
    intake: str, worker: Worker, settings: Settings, config_data: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for logger in ("bridge", "connectors", "werkzeug"):
        caplog.set_level(logging.DEBUG, logger=logger)
    response = post_case(intake, "elementor-advanced")
    assert response.status_code == 200
    delivery_id = response.json()["delivery_id"]
    assert worker.drain() == 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    runner = CliRunner()
    shown = [runner.invoke(main, ["show", "--config", str(config), delivery_id, *flags]) for flags in (["--json"], ["--body"])]
    assert [r.exit_code for r in shown] == [0, 0]
    assert json.loads(shown[0].output)["status"] == Status.DELIVERED

    stored = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    assert b"jane.doe%40acme-plumbing.com" in stored  # the body is there, as received, so a token in it would be found
    assert SECRET.encode() not in stored
    assert all(SECRET not in r.output for r in shown)
    logged = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    assert "accepted from wp-elementor-advanced" in logged and '"POST /hooks/wp-elementor-advanced"' in logged
    assert SECRET not in logged


# -- wire_request: what the staging form and `leadbridge try` send -----------------------

WIRE_VALUES = [
    ("cf7", {}, {"your-name": "Jane Doe", "your-email": "jane@acme-plumbing.com", "form_id": "12"}),
    ("gravity", {}, {"1.3": "Jane", "2": "jane@acme-plumbing.com", "form_id": "4"}),
    ("wpforms", {}, {"first_name": "Jane", "email": "jane@acme-plumbing.com"}),
    ("wpforms", {"auth": "header"}, {"first_name": "Jane", "email": "jane@acme-plumbing.com"}),
    ("elementor", {}, {"Name": "Jane Doe", "Email": "jane@acme-plumbing.com", "form_id": "3c2e8f1"}),
    (
        "elementor",
        {},
        {"name": "Jane Doe", "email": "jane@acme-plumbing.com", "meta.page_url": "https://x.example/", "form_id": "3c"},
    ),
    ("fluent", {"header": "X-Relay-Token"}, {"names.first_name": "Jane", "email": "jane@acme-plumbing.com", "form_id": "3"}),
    ("ninja", {"query_param": "relay"}, {"first_name": "Jane", "email": "jane@acme-plumbing.com"}),
]


@pytest.mark.parametrize(("plugin", "options", "values"), WIRE_VALUES)
def test_wire_requests_verify_parse_and_flatten_back(plugin: str, options: dict[str, Any], values: dict[str, str]) -> None:
    source = wordpress(plugin=plugin, **options)
    wire = source.wire_request(values, SECRET)
    source.verify(wire, [SECRET])
    with pytest.raises(SignatureError):
        source.verify(wire, ["another-secret"])
    payload = source.parse(wire.body, wire.content_type)
    flat = source.fields(payload)
    assert {key: flat.get(key) for key in values} == values
    assert source.form_key(payload) == values.get("form_id")


def test_wire_requests_look_like_the_plugins_own() -> None:
    values = {"Name": "Jane Doe", "Email": "jane@acme-plumbing.com"}
    elementor = wordpress(plugin="elementor").wire_request(values, SECRET)
    assert (elementor.content_type, elementor.query) == ("application/x-www-form-urlencoded; charset=UTF-8", {"token": SECRET})
    assert elementor.body == b"Name=Jane+Doe&Email=jane%40acme-plumbing.com&form_id=staging&form_name=Staging+form"
    wpforms = wordpress(plugin="wpforms").wire_request(values, SECRET)
    assert wpforms.body == b'{"Name":"Jane Doe","Email":"jane@acme-plumbing.com"}'
    assert wpforms.headers["x-wpforms-webhook-signature"].startswith("t=")
    gravity = wordpress(plugin="gravity").wire_request({"2": "jane@acme-plumbing.com"}, SECRET)
    assert gravity.headers["x-leadbridge-token"] == SECRET and json.loads(gravity.body)["id"].isdigit()


def test_wire_request_goes_through_intake(intake: str, ledger: Ledger) -> None:
    wire = wordpress(plugin="elementor").wire_request(
        {"name": "Jane Doe", "email": "jane@acme-plumbing.com", "meta.page_url": "https://x.example/"}, SECRET
    )
    response = requests.post(
        f"{intake}/hooks/wp-elementor-advanced", data=wire.body, headers=wire.headers, params=dict(wire.query), timeout=10
    )
    assert response.status_code == 200
    assert ledger.get(response.json()["delivery_id"]).body == wire.body


def test_a_request_object_without_a_token_header_is_refused() -> None:
    request = Request(body=b"{}", content_type="application/json", headers={}, query={})
    with pytest.raises(SignatureError) as err:
        wordpress(plugin="gravity").verify(request, [SECRET])
    assert str(err.value) == "missing shared secret (X-Leadbridge-Token header or Authorization: Bearer)"


def test_wpforms_checkbox_choices_become_a_list_a_rule_can_match(settings: Settings) -> None:
    meta = case("wpforms")
    payload = {**json.loads(meta["bytes"]), "service": "Water heater||Drain cleaning"}
    kit = load_sources(settings)["wp-wpforms"]
    seen = interpret_body(kit, json.dumps(payload).encode(), "application/json", "US")
    assert seen.lead.service == "Water heater, Drain cleaning"
    assert kit.source.fields(payload)["service"] == ["Water heater", "Drain cleaning"]
    # Other plugins keep "||" as typed unless told otherwise.
    assert wordpress(plugin="cf7").fields({"service": "a||b"})["service"] == "a||b"
    assert wordpress(plugin="cf7", multi_value_separator="||").fields({"service": "a||b"})["service"] == ["a", "b"]
    assert wordpress(plugin="wpforms", auth="query", multi_value_separator="").fields({"service": "a||b"})["service"] == "a||b"
