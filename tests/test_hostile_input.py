"""Hostile and malformed input: refused with a 4xx in the usual JSON shape, never a 500,
never a partial lead, never personal data in a log line; what gets through is clean.

The corpus is a table per class (parsing limits, broken bodies, signature headers); each
case goes over a real socket to the served app and is followed by a normal request.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bridge.app import UNEXPECTED, create_app
from bridge.config import Settings, settings_from_dict
from bridge.errors import PayloadError
from bridge.lead import Lead, LeadResult
from bridge.ledger import Ledger, Status, open_ledger
from bridge.ports import ContactResult, build_notifier
from bridge.sales import Run, digest_line
from bridge.scoring import Score
from bridge.sources import Interpretation, interpret_body, load_sources
from bridge.text import clean_text
from bridge.worker import Worker
from connectors.bodies import MAX_DEPTH, MAX_FIELDS, NumberTooLongError, TooDeepError, TooManyFieldsError, load_json_object
from connectors.formdata import parse_body, unflatten_php
from connectors.hubspot import PROPERTY_LIMIT
from connectors.typeform import typeform_signature

from .conftest import ENV, FIXTURES, ROOT, Sandbox, answer, post_typeform, typeform_payload
from .procs import BOOT_SECONDS, free_port, started, wait_for

FORM = "application/x-www-form-urlencoded"

# -- the parser alone ---------------------------------------------------------------

PARSE_CASES = [
    ("json nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, "application/json", TooDeepError),
    ("json object past the limit", b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "application/json", TooDeepError),
    ("json 5,000-digit integer", b'{"n":' + b"7" * 5000 + b"}", "application/json", NumberTooLongError),
    ("json too many values", b'{"a":[' + b"0," * MAX_FIELDS + b"0]}", "application/json", TooManyFieldsError),
    ("json not an object", b"[1, 2]", "application/json", PayloadError),
    ("json invalid utf-8", b'{"a": "\xff"}', "application/json", PayloadError),
    ("php brackets 10,000 deep", b"a" + b"[x]" * 10_000 + b"=1", FORM, TooDeepError),
    ("10,000 empty appends", b"a[]=&" * 10_000, FORM, TooManyFieldsError),
    ("form invalid utf-8", b"a=%ff", FORM, PayloadError),
    ("multipart too many parts", None, "multipart/form-data; boundary=x", TooManyFieldsError),
]


def multipart(parts: int) -> bytes:
    one = b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    return one * parts + b"--x--\r\n"


@pytest.mark.parametrize(("body", "content_type", "error"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_hostile_bodies_are_refused_by_the_parser(body: bytes | None, content_type: str, error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        parse_body(multipart(MAX_FIELDS + 1) if body is None else body, content_type)
    assert raised.value.status == 400  # type: ignore[attr-defined]


def test_the_limits_leave_real_payloads_alone() -> None:
    deep = b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1)
    assert load_json_object(deep)["a"]["a"]["a"] is not None
    assert load_json_object(b'{"form_id": 4000000000000000001}') == {"form_id": 4000000000000000001}
    key = "a" + "[x]" * (MAX_DEPTH - 1)
    assert parse_body(f"{key}=1".encode(), FORM)["a"]["x"]["x"] is not None


def test_php_appends_are_linear_and_keep_php_order() -> None:
    pairs = [("a[]", "x"), ("a[5]", "y"), ("a[]", "z"), ("a[012]", "w"), ("b[2][]", "p"), ("b[2][]", "q")]
    assert unflatten_php(pairs) == {"a": {"0": "x", "5": "y", "6": "z", "012": "w"}, "b": {"2": ["p", "q"]}}
    # Thousands of appends make one list of that length (PHP's order), in one pass.
    many = unflatten_php([("a[]", str(i)) for i in range(MAX_FIELDS)])
    assert many["a"][:3] == ["0", "1", "2"] and len(many["a"]) == MAX_FIELDS


# -- the corpus, over a real socket -------------------------------------------------

EMAIL, PHONE = "mallory.hostile@corp-mail.net", "+1 415 555 0123"
GOOGLE_KEY, WP_SECRET = ENV["GOOGLE_ADS_KEY"], ENV["WORDPRESS_SECRET"]
JSON = "application/json"


@dataclass(frozen=True)
class Hostile:
    """One hostile request: where it goes, its body and how the body is framed on the wire."""

    source: str
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""
    # "length": a true Content-Length; "chunked"; "short": Content-Length promises more, then the
    # sender hangs up; "bad-chunk": a chunk size that is not hex; "none": neither header.
    framing: str = "length"


def nested(levels: int, inner: str = '"x"') -> str:
    return "[" * levels + inner + "]" * levels


def google_body(**extra: Any) -> bytes:
    lead = {"lead_id": "L-1", "google_key": GOOGLE_KEY, "user_column_data": [{"column_id": "EMAIL", "string_value": EMAIL}]}
    return json.dumps(lead | extra).encode()


def typeform_body(**overrides: Any) -> bytes:
    payload = answer(typeform_payload(), "email", EMAIL)
    payload["form_response"].update(overrides)
    return json.dumps(payload).encode()


def signed_typeform(body: bytes) -> Hostile:
    return Hostile("typeform", body, headers={"Typeform-Signature": typeform_signature(ENV["TYPEFORM_SECRET"], body)})


def cf7(body: bytes, content_type: str = FORM, framing: str = "length") -> Hostile:
    return Hostile("cf7-contact", body, content_type, {"X-Leadbridge-Token": WP_SECRET}, framing=framing)


LEAD_FORM = f"your-email={EMAIL}&your-phone={PHONE}&your-name=Mallory".encode()
BIG_FORM = LEAD_FORM + b"&filler=" + b"y" * 300_000
DEEP_GOOGLE = google_body().replace(b'"L-1"', b'"L-1", "extra": ' + nested(10_000).encode())
CORPUS: list[tuple[str, Hostile, int, str]] = [
    ("google nested 10,000 deep", Hostile("google", DEEP_GOOGLE), 400, "too_deep"),
    (
        "google 5,000-digit form_id",
        Hostile("google", google_body().replace(b"{", b'{"form_id": ' + b"9" * 5000 + b",", 1)),
        400,
        "number_too_long",
    ),
    (
        "google deep answer value",
        Hostile("google", google_body(user_column_data=[{"string_value": json.loads(nested(30))}])),
        400,
        "too_deep",
    ),
    ("google body that is not JSON", Hostile("google", b"google_key=" + GOOGLE_KEY.encode()), 401, "bad_signature"),
    ("google charset=idna", Hostile("google", google_body(), "application/json; charset=idna"), 200, ""),
    ("typeform nested past the limit", signed_typeform(typeform_body(hidden={"h": json.loads(nested(40))})), 400, "too_deep"),
    (
        "typeform 6,000 answers",
        signed_typeform(typeform_body(variables=[{"key": "k", "type": "number", "number": 1}] * 1500)),
        400,
        "too_many_fields",
    ),
    ("typeform answers that are not objects", signed_typeform(typeform_body(answers=[EMAIL, PHONE])), 400, "malformed_body"),
    ("cf7 a[]= 10,000 times", cf7(b"a[]=&" * 10_000), 400, "too_many_fields"),
    ("cf7 5,000-digit PHP index", cf7(LEAD_FORM + b"&a[" + b"1" * 5000 + b"]=x"), 200, ""),
    ("cf7 unicode digit index", cf7(LEAD_FORM + "&a[²]=x&a[]=y".encode()), 200, ""),
    ("cf7 JSON array", cf7(json.dumps([EMAIL, PHONE]).encode(), JSON), 400, "malformed_body"),
    ("cf7 invalid UTF-8", cf7(b'{"your-email": "' + EMAIL.encode() + b'\xff"}', JSON), 400, "malformed_body"),
    ("cf7 multipart without boundary", cf7(LEAD_FORM, "multipart/form-data"), 400, "malformed_body"),
    ("cf7 unknown charset", cf7(LEAD_FORM, FORM + "; charset=no-such-codec"), 400, "malformed_body"),
    ("cf7 chunked 300 KB", cf7(BIG_FORM, framing="chunked"), 413, "body_too_large"),
    ("cf7 300 KB with its length", cf7(BIG_FORM), 413, "body_too_large"),
    ("cf7 short body, sender hangs up", cf7(LEAD_FORM, framing="short"), 400, "malformed_body"),
    ("cf7 malformed chunk size", cf7(LEAD_FORM, framing="bad-chunk"), 400, "malformed_body"),
    ("cf7 neither length nor chunks", cf7(LEAD_FORM, framing="none"), 400, "malformed_body"),
    (
        "elementor brackets 10,000 deep",
        Hostile("elementor-landing", b"fields" + b"[a]" * 10_000 + b"=" + EMAIL.encode(), FORM, query=f"token={WP_SECRET}"),
        400,
        "too_deep",
    ),
    (
        "ninja JSON parameter too deep",
        Hostile("ninja-booking", b"json=" + nested(50).encode(), FORM, query=f"token={WP_SECRET}"),
        400,
        "too_deep",
    ),
    (
        "wpforms t= with 400 digits",
        Hostile(
            "wpforms-estimate",
            json.dumps({"email": EMAIL}).encode(),
            headers={"X-WPForms-Webhook-Signature": "t=" + "9" * 400 + ",v=00"},
        ),
        401,
        "bad_signature",
    ),
]


def wire(case: Hostile, port: int) -> bytes:
    path = f"/hooks/{case.source}" + (f"?{case.query}" if case.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Type: {case.content_type}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in case.headers.items()]
    body = case.body
    if case.framing in ("chunked", "bad-chunk"):
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]
        size = (lambda n: b"zz") if case.framing == "bad-chunk" else (lambda n: b"%x" % n)
        body = b"".join(size(len(p)) + b"\r\n" + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    elif case.framing != "none":
        head.append(f"Content-Length: {len(body) + (500 if case.framing == 'short' else 0)}")
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def send_raw(base: str, case: Hostile) -> tuple[int, dict[str, Any]]:
    """Send ``case`` over a plain socket; the status and JSON body of the answer."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(wire(case, port))
        if case.framing == "short":
            sock.shutdown(socket.SHUT_WR)  # the sender hangs up
        answer_bytes = b""
        while chunk := sock.recv(65536):
            answer_bytes += chunk
    head, _, body = answer_bytes.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.strip() else {}


def deliveries(settings: Settings) -> int:
    return sum(open_ledger(settings.ledger).counts().values())


def normal_request(base: str) -> requests.Response:
    body = json.dumps({"your-email": "jo@normal-lead.test", "your-name": "Jo", "nonce": time.time_ns()})
    headers = {"Content-Type": JSON, "X-Leadbridge-Token": WP_SECRET}
    return requests.post(f"{base}/hooks/cf7-contact", data=body, headers=headers, timeout=30)


def assert_no_personal_data(text: str) -> None:
    for secret in (EMAIL, PHONE, "555 0123", GOOGLE_KEY, WP_SECRET, ENV["TYPEFORM_SECRET"]):
        assert secret not in text


@pytest.mark.parametrize(("case", "status", "code"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_hostile_requests_get_a_4xx_and_leave_nothing_behind(
    settings: Settings, intake: str, caplog: pytest.LogCaptureFixture, case: Hostile, status: int, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    before = deliveries(settings)
    got, body = send_raw(intake, case)
    assert got == status, body
    if status == 200:
        # Odd but harmless: stored whole, once.
        assert deliveries(settings) == before + 1
    else:
        assert body["ok"] is False and body["error"]["code"] == code
        assert deliveries(settings) == before
    assert normal_request(intake).status_code == 200
    assert deliveries(settings) == before + (2 if status == 200 else 1)
    assert_no_personal_data(caplog.text)


def test_a_true_bug_answers_json_500_and_logs_only_its_type_and_place(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> str:
        raise ValueError(f"could not handle {EMAIL}")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"ok": False, "error": {"code": "internal_error", "message": UNEXPECTED}}
    assert "unexpected ValueError at test_hostile_input.py:" in caplog.text
    assert_no_personal_data(caplog.text)


# Bodies the way gunicorn frames them: `leadbridge serve`, the real path.
WIRE_CASES = [
    ("chunked 300 KB", cf7(BIG_FORM, framing="chunked"), 413),
    ("300 KB with its length", cf7(BIG_FORM), 413),
    ("short body, sender hangs up", cf7(LEAD_FORM, framing="short"), 400),
    ("malformed chunk size", cf7(LEAD_FORM, framing="bad-chunk"), 400),
    ("neither length nor chunks (no body, not a wait)", cf7(LEAD_FORM, framing="none"), 400),
    ("chunked lead", cf7(LEAD_FORM, framing="chunked"), 200),
]


def test_gunicorn_refuses_bodies_that_are_not_whole(config_data: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    config_data["server"].update(port=port, gunicorn_workers=1, threads=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bridge", "serve", "--config", str(config)]
    with (tmp_path / "serve.log").open("ab") as log, started(argv, cwd=ROOT, stdout=log, stderr=log) as proc:
        wait_for(f"{base}/healthz", time.monotonic() + BOOT_SECONDS, proc)
        settings = settings_from_dict(config_data, ROOT)
        for name, case, status in WIRE_CASES:
            before = deliveries(settings)
            got, body = send_raw(base, case)
            assert got == status, (name, body)
            assert deliveries(settings) == before + (status == 200), name
            assert normal_request(base).status_code == 200, name
    assert_no_personal_data((tmp_path / "serve.log").read_text(errors="replace"))


# -- what gets through is clean ----------------------------------------------------

SLACK_INJECTIONS = ("<!channel>", "<!here>", "<https://evil.example|Click here>")


def only_contact_properties(sandbox: Sandbox) -> dict[str, Any]:
    (contact,) = sandbox.state()["contacts"]
    return dict(contact["properties"])


def assert_inert(message: dict[str, Any]) -> None:
    """No injection arrives raw anywhere in what Slack was sent (text, blocks, every argument)."""
    sent = json.dumps(message["args"], ensure_ascii=False)
    for raw in SLACK_INJECTIONS:
        assert raw not in sent
    assert "&lt;!channel&gt;" in sent


def test_every_slack_string_escapes_lead_values(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    # Names with markup count as spam signals (a digest line, tested below): the rest are alerted.
    payload = typeform_payload()
    for ref, value in [("company", "<!channel> & co"), ("city", SLACK_INJECTIONS[2]), ("message", "water heater <!here>")]:
        answer(payload, ref, value)
    answer(payload, "services", None)
    field = {"id": "Se5kL6mN7oP8", "type": "short_text", "ref": "service"}
    payload["form_response"]["answers"].append({"type": "text", "text": "<!channel> water heater", "field": field})
    assert post_typeform(intake, payload).status_code == 200
    assert worker.drain() == 1
    (message,) = sandbox.state()["messages"]
    assert_inert(message)
    assert "(&lt;!channel&gt; water heater) from typeform" in message["text"]


def test_the_test_channel_message_is_escaped_too(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    lead = json.loads(google_body(is_test=True))
    lead["user_column_data"].append({"column_id": "FULL_NAME", "string_value": "<!channel> <!here>"})
    body = json.dumps(lead).encode()
    assert requests.post(f"{intake}/hooks/google", data=body, headers={"Content-Type": JSON}, timeout=30).status_code == 200
    worker.drain()
    (message,) = sandbox.state()["messages"]
    assert message["channel"] == "#lead-tests"
    assert_inert(message)


def test_the_digest_line_escapes_service_city_and_name(sandbox: Sandbox, settings: Settings) -> None:
    lead = Lead(first_name="<!channel>", service="<!here>", city=SLACK_INJECTIONS[2], email="jo@digest.test")
    run = Run(delivery=None, owner="", seen=Interpretation("lead", LeadResult(lead), None), done={})  # type: ignore[arg-type]
    line = digest_line(run, ContactResult("1", True, "https://app.example/c/1"), None, Score(0, "cold", (), None))  # type: ignore[arg-type]
    assert (
        line
        == "• &lt;!channel&gt; (&lt;!here&gt;, &lt;https://evil.example|Click here&gt;), score 0 · <https://app.example/c/1|contact>"
    )
    build_notifier(settings).post_digest("#leads", "Today", [line])
    (message,) = sandbox.state()["messages"]
    assert_inert(message)


def test_control_characters_never_reach_hubspot_or_slack(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    payload = answer(typeform_payload(), "first_name", "Ro\x00b\x07\x1b[31mert")
    answer(payload, "message", "Line one\r\nline\u202e two\x00\tend")
    assert post_typeform(intake, payload).status_code == 200
    assert worker.drain() == 1
    props = only_contact_properties(sandbox)
    assert (props["firstname"], props["message"]) == ("Robert", "Line one\nline two\tend")
    (message,) = sandbox.state()["messages"]
    assert ": Robert Doe +1 415-555-0132" in message["text"]
    # The task's body quotes the raw answers (no separate note): cleaned at the connector like every other record.
    (task,) = sandbox.state()["objects"]["tasks"]
    assert "\x00" not in task["properties"]["hs_task_body"] and "Robert" in task["properties"]["hs_task_body"]


@pytest.mark.parametrize(
    ("raw", "multiline", "clean"),
    [
        ("Ro\x00b\x07\x1b[31mert", False, "Robert"),
        ("Jane\r\nDoe\tJr", False, "Jane Doe Jr"),
        ("one\r\ntwo\rthree\tend\x7f", True, "one\ntwo\nthree\tend"),
        ("lone \ud800 surrogate, \u202eevil\u202c bidi", False, "lone  surrogate, evil bidi"),
        ("café 👩‍🔧 日本", False, "café 👩‍🔧 日本"),
    ],
)
def test_clean_text_strips_only_what_nobody_typed(raw: str, multiline: bool, clean: str) -> None:
    assert clean_text(raw, multiline=multiline) == clean


def test_a_100_kb_first_name_is_capped_and_still_alerts(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    payload = answer(typeform_payload(), "first_name", "A" * 100_000)
    answer(payload, "company", "&" * 100_000)
    delivery_id = post_typeform(intake, payload).json()["delivery_id"]
    assert worker.drain() == 1
    assert ledger.get(delivery_id).status == Status.DELIVERED
    props = only_contact_properties(sandbox)
    assert len(props["firstname"]) == PROPERTY_LIMIT and props["firstname"].endswith("… [truncated]")
    assert len(props["company"]) == PROPERTY_LIMIT
    (message,) = sandbox.state()["messages"]
    assert len(message["text"]) <= 3000
    header, fields, *_ = message["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert all(len(f["text"]) <= 2000 for f in fields["fields"])
    company = next(f["text"] for f in fields["fields"] if f["text"].startswith("*Company*"))
    assert company.endswith("&amp;… (cut; full text in HubSpot)")  # no entity cut in half
    assert len(json.dumps(message["blocks"])) < 13_000


def test_google_key_is_not_stored_and_the_stored_lead_still_delivers(
    intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger
) -> None:
    lead = json.loads(google_body(form_id=40000000000000001234))
    lead["user_column_data"].append({"column_name": "Google_key", "string_value": GOOGLE_KEY})
    lead["Google_key"] = lead.pop("google_key")
    body = json.dumps(lead).encode()
    response = requests.post(f"{intake}/hooks/google", data=body, headers={"Content-Type": JSON}, timeout=30)
    assert response.status_code == 200
    stored = ledger.get(response.json()["delivery_id"])
    assert GOOGLE_KEY.encode() not in stored.body and b"oogle_key" not in stored.body
    assert json.loads(stored.body)["form_id"] == 40000000000000001234  # int64 ids stay exact
    assert worker.drain() == 1
    assert ledger.get(stored.id).status == Status.DELIVERED
    assert only_contact_properties(sandbox)["email"] == EMAIL


# Each value of each recorded payload replaced by something of the wrong shape: the worker
# must still read the delivery (a lead or a PayloadError), never crash on it.
ODD_VALUES = [None, 1.5, True, {}, {"a": [1]}, [[{}]], "\ud800"]
RECORDED = {
    "typeform": "typeform/quote.json",
    "google": "google/lead.json",
    "cf7-contact": "wordpress/cf7.json",
    "gravity-quote": "wordpress/gravity.json",
    "fluent-callback": "wordpress/fluent.json",
    "wpforms-estimate": "wordpress/wpforms.json",
}


def value_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [path] + [p for key, child in children for p in value_paths(child, (*path, key))]


def replaced(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(node))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copy


@pytest.mark.parametrize("source", list(RECORDED))
def test_oddly_shaped_values_never_crash_interpretation(settings: Settings, source: str) -> None:
    kit = load_sources(settings)[source]
    payload = json.loads((FIXTURES / RECORDED[source]).read_text())
    read = 0
    for path in value_paths(payload)[1:]:
        for odd in ODD_VALUES:
            body = json.dumps(replaced(payload, path, odd)).encode()
            try:
                seen = interpret_body(kit, body, JSON, "US")
            except PayloadError:
                continue
            read += 1
            # What the CRM client will send must encode (a lone surrogate would not).
            json.dumps(seen.lead.model_dump(mode="json"), ensure_ascii=False).encode()
    assert read > len(value_paths(payload))


def test_a_stored_body_over_the_depth_limit_is_dead_at_once_not_a_crash_loop(ledger: Ledger, worker: Worker) -> None:
    # The poison: accepted by an earlier intake, a list nested 500 deep in one answer.
    poison = typeform_payload()
    poison["form_response"]["answers"][0]["text"] = "NESTED"
    body = json.dumps(poison).replace('"NESTED"', nested(500)).encode()
    delivery_id, _ = ledger.accept(
        source="typeform", idem_key="deep", body=body, content_type=JSON, headers={}, config_version="t"
    )
    worker.drain(timeout=30)
    dead = ledger.get(delivery_id)
    assert (dead.status, dead.attempts) == (Status.DEAD, 0)
    assert dead.reason == f"cannot be mapped: body is nested more than {MAX_DEPTH} levels deep"
