"""Merge policies in HubSpot: first touch is kept, last touch updates, append adds once; consent is audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from werkzeug.test import Client

from bridge.app import create_app
from bridge.config import settings_from_dict
from bridge.ledger import Ledger, open_ledger
from bridge.worker import Worker
from connectors.typeform import typeform_signature

from .conftest import ROOT, Sandbox, post_typeform, typeform_payload


def hidden(payload: dict[str, Any], **values: str) -> dict[str, Any]:
    payload["form_response"]["hidden"].update(values)
    return payload


def contact(sandbox: Sandbox) -> dict[str, Any]:
    (only,) = sandbox.state()["contacts"]
    return dict(only["properties"])


def visit(n: int, **utm: str) -> dict[str, Any]:
    """The same person's n-th submission, from a visit carrying exactly these UTMs / click ids."""
    payload = typeform_payload(event_id=f"visit-{n}", token=f"visit-{n}")
    payload["form_response"]["hidden"] = {"landing_page": "https://acme-plumbing.example/quote", **utm}
    return payload


def test_a_new_touch_replaces_the_last_touch_whole_and_the_first_touch_stays_whole(
    intake: str, sandbox: Sandbox, worker: Worker
) -> None:
    post_typeform(intake, visit(1, utm_source="yelp", utm_campaign="victorian-roofs", gclid="Cj0-ad-click"))
    worker.drain()
    post_typeform(intake, visit(2, utm_source="google", utm_medium="organic"))
    worker.drain()
    props = contact(sandbox)
    # Last touch is this visit's, whole: no campaign or click id carried over from the first.
    assert (props.get("utm_source"), props.get("utm_medium"), props.get("utm_campaign"), props.get("gclid")) == (
        "google",
        "organic",
        None,
        None,
    )
    # First touch is the first visit's, whole: the second visit's medium does not fill its gap.
    assert (props.get("first_utm_source"), props.get("first_utm_campaign"), props.get("first_gclid")) == (
        "yelp",
        "victorian-roofs",
        "Cj0-ad-click",
    )
    assert "first_utm_medium" not in props

    post_typeform(intake, visit(3))  # no UTM, no click id: the last touch is left alone
    worker.drain()
    after = contact(sandbox)
    assert (after.get("utm_source"), after.get("utm_medium")) == ("google", "organic")


def test_first_touch_fills_a_contact_that_hubspot_had_without_it(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    sandbox.hubspot("POST", "/crm/v3/objects/contacts", json={"properties": {"email": "jane.doe@acme-plumbing.com"}})
    sandbox.hubspot(
        "POST", "/crm/v3/objects/contacts", json={"properties": {"email": "other@acme-plumbing.com", "first_utm_source": "x"}}
    )
    post_typeform(intake, typeform_payload())
    worker.drain()
    jane = next(c for c in sandbox.state()["contacts"] if c["properties"]["email"] == "jane.doe@acme-plumbing.com")
    assert jane["properties"]["first_utm_source"] == "google"


def test_append_adds_each_new_value_once(tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox) -> None:
    mapping = yaml.safe_load((ROOT / "mappings/typeform.yaml").read_text())
    mapping["fields"]["message"] = {"from": "message", "merge": "append"}
    (tmp_path / "typeform.yaml").write_text(yaml.safe_dump(mapping))
    config_data["sources"][0]["mapping"] = str(tmp_path / "typeform.yaml")
    settings = settings_from_dict(config_data, ROOT)
    client, worker = Client(create_app(settings)), Worker(settings, open_ledger(settings.ledger))
    for n, text in enumerate(("Roof leaks", "Also gutters", "Roof leaks")):
        payload = typeform_payload(event_id=f"e{n}", token=f"t{n}")
        for answer in payload["form_response"]["answers"]:
            if answer["field"].get("ref") == "message":
                answer["text"] = text
        body = json.dumps(payload).encode()
        headers = {"Typeform-Signature": typeform_signature("tf-test-secret", body)}
        assert client.post("/hooks/typeform", data=body, headers=headers, content_type="application/json").status_code == 200
        worker.drain()
    assert contact(sandbox)["message"] == "Roof leaks\nAlso gutters"


def test_consent_evidence_is_kept_in_the_event_log(intake: str, worker: Worker, ledger: Ledger) -> None:
    delivery_id = post_typeform(intake, typeform_payload()).json()["delivery_id"]
    worker.drain()
    consent = [e for e in ledger.events(delivery_id) if e["step"] == "consent"]
    assert [(e["outcome"], json.loads(e["detail"])) for e in consent] == [
        ("recorded", {"contact_ok": "true", "privacy_policy_version": "2025-01"})
    ]
