"""The answers a rep reads in HubSpot: labelled, line breaks kept, no plugin bookkeeping or IP."""

from __future__ import annotations

import copy
from typing import Any

from bridge.config import settings_from_dict
from bridge.ledger import open_ledger
from bridge.notes import note_html
from bridge.sources import interpret_body, load_sources
from bridge.worker import Worker

from .conftest import ROOT, Sandbox, answer, post_typeform, typeform_payload
from .test_wordpress import case, config_data, wp_sources  # noqa: F401  (fixture)


def note_for(config: dict[str, Any], name: str) -> str:
    settings = settings_from_dict(config, ROOT)
    kit = load_sources(settings)[f"wp-{name}"]
    meta = case(name)
    seen = interpret_body(kit, meta["bytes"], meta["headers"]["Content-Type"], "US")
    spec = settings.source(f"wp-{name}")
    assert spec is not None
    return note_html(seen.lead, seen.mapping, seen.flat, spec.name, "dlv_test", spec.note.include_meta)


def test_a_gravity_note_has_the_answers_under_labels_and_none_of_the_bookkeeping(config_data: dict[str, Any]) -> None:  # noqa: F811
    note = note_for(config_data, "gravity")
    assert "<b>Name</b>: Jane Doe" in note and "<b>Email</b>: jane.doe@acme-plumbing.com" in note
    assert "<b>Message</b>: Need a quote for 3 bathrooms" in note
    noise = ["is_starred", "is_read", "currency", "status", "user_agent", "203.0.113.24", "Mozilla", "1.3", "6.1"]
    assert [word for word in noise if word in note] == []
    assert note.count("Jane") == 1  # the name once (Gravity sends it whole and in parts)
    assert "<b>Street</b>: 500 Howard St" in note  # an unread answer, under the label the mapping gives it


def test_cf7_notes_never_carry_the_visitors_ip_unless_the_source_opts_in(config_data: dict[str, Any]) -> None:  # noqa: F811
    note = note_for(config_data, "cf7")
    assert "_remote_ip" not in note and "_user_agent" not in note and "_wpcf7" not in note
    opted = copy.deepcopy(config_data)
    for source in opted["sources"]:
        if source["name"] == "wp-cf7":
            source["note"] = {"include_meta": True}
    assert "_remote_ip" in note_for(opted, "cf7")


def test_line_breaks_in_a_message_reach_hubspot_as_line_breaks(intake: str, sandbox: Sandbox, settings: Any) -> None:
    post_typeform(intake, answer(typeform_payload(), "message", "Roof leaks.\r\nOver the kitchen.\nPlease call"))
    Worker(settings, open_ledger(settings.ledger)).drain()
    (task,) = sandbox.state()["objects"]["tasks"]
    body = task["properties"]["hs_task_body"]
    assert "Roof leaks.<br>Over the kitchen.<br>Please call" in body and "\r" not in body
