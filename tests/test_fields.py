"""Details a rep needs, kept: a phone extension reaches the rep's tap-to-call link."""

from __future__ import annotations

import json

from bridge.ledger import Ledger
from bridge.worker import Worker

from .conftest import Sandbox, answer, post_typeform, typeform_payload


def test_a_phone_extension_is_kept_and_dialled(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    delivery_id = post_typeform(intake, answer(typeform_payload(), "phone", "(415) 823-4419 ext. 22")).json()["delivery_id"]
    worker.drain()
    lead = ledger.steps(delivery_id)["map"]["lead"]
    assert (lead["phone"], lead["phone_extension"]) == ("+14158234419", "22")
    (message,) = sandbox.state()["messages"]
    blocks = json.dumps(message["blocks"])
    assert "tel:+14158234419;ext=22" in blocks and "ext. 22" in blocks
    assert "ext. 22" in message["text"]
    # The contact's phone stays the E.164 number HubSpot matches people by.
    (contact,) = sandbox.state()["contacts"]
    assert contact["properties"]["phone"] == "+14158234419"
