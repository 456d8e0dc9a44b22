"""Typeform, complete: every answer type, hidden fields, partial responses, several forms on one source."""

from __future__ import annotations

import json
from typing import Any

from bridge.config import settings_from_dict
from bridge.ledger import Ledger, Status
from bridge.sources import load_sources
from bridge.worker import Worker
from connectors.typeform import TypeformSource

from .conftest import FIXTURES, ROOT, Sandbox, example_config, post_typeform


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "typeform" / name).read_text())


def test_every_answer_type_flattens_to_a_plain_value() -> None:
    flat = TypeformSource().fields(fixture("every-answer-type.json"))
    assert flat == {
        "form_id": "aBcD1234",
        "token": "every-type-token-1",
        "submitted_at": "2025-03-14T16:42:07Z",
        "landed_at": "2025-03-14T16:39:51Z",
        "event_type": "form_response",
        "first_name": "Jane",
        "last_name": "Doe",
        "email": "jane.doe@acme-plumbing.com",
        "phone": "+14155550132",
        "company": "Acme Plumbing LLC",
        "budget": "$10k–$50k",
        "services": ["Bathroom remodel", "Water heater", "Gas line check"],
        "team_size": 12,
        "start_date": "2025-04-01",
        "website": "https://acme-plumbing.example",
        "brief": "https://api.typeform.com/forms/aBcD1234/responses/every-type-token-1/fields/Fi1iJ2kL3mN4/files/brief.pdf",
        "consent": True,
        "deposit": "50",
        "hidden.utm_source": "google",
        "hidden.utm_medium": "cpc",
        "hidden.utm_campaign": "spring-remodel",
        "hidden.gclid": "Cj0KCQjw-example",
        "variables.score": 35,
        "variables.tier": "warm",
    }


def test_a_partial_response_is_kept_and_not_forwarded(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    response = post_typeform(intake, fixture("partial.json"))
    assert response.status_code == 200
    worker.drain()
    delivery = ledger.get(response.json()["delivery_id"])
    assert (delivery.status, delivery.reason) == (Status.PARTIAL, "partial response: kept, not forwarded")
    assert sandbox.state()["requests"] == []
    assert [d.id for d in ledger.deliveries(status="partial")] == [delivery.id]


def test_each_form_of_a_source_uses_its_own_mapping(intake: str, sandbox: Sandbox, worker: Worker) -> None:
    callback = {
        "event_id": "cb-1",
        "event_type": "form_response",
        "form_response": {
            "form_id": "cAlLbAcK",
            "token": "cb-token-1",
            "submitted_at": "2025-03-15T09:00:00-05:00",
            "answers": [
                {"type": "text", "text": "Mary Ann Smith", "field": {"id": "n1", "type": "short_text", "ref": "name"}},
                {
                    "type": "phone_number",
                    "phone_number": "(415) 555-0199",
                    "field": {"id": "p1", "type": "phone_number", "ref": "phone"},
                },
                {"type": "text", "text": "after 5pm", "field": {"id": "b1", "type": "short_text", "ref": "best_time"}},
            ],
        },
    }
    assert post_typeform(intake, callback).status_code == 200
    worker.drain()
    (contact,) = sandbox.state()["contacts"]
    props = {k: contact["properties"].get(k) for k in ("firstname", "lastname", "phone", "message", "service", "submitted_at")}
    assert props == {
        "firstname": "Mary",
        "lastname": "Ann Smith",
        "phone": "+14155550199",
        "message": "after 5pm",
        "service": "callback",
        "submitted_at": "2025-03-15T09:00:00-05:00",  # the sender's offset is kept
    }


def test_the_example_config_maps_forms_by_form_id() -> None:
    kit = load_sources(settings_from_dict(example_config(), ROOT))["typeform"]
    assert kit.mapping_for("cAlLbAcK").description.startswith("Short callback request")
    assert kit.mapping_for("aBcD1234").description.startswith("Free-quote form")
    assert kit.mapping_for(None) is kit.mapping_for("any-other-form")
