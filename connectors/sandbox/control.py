"""The ``/__sandbox/`` control API (no auth): the summary page, the state as JSON, reset, faults,
search lag, owners, Slack users and logged calls/emails/meetings; and :func:`seed_owners`, its client
for ``leadbridge run --sandbox``."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Response, jsonify, request
from flask.typing import ResponseReturnValue

from connectors.sandbox.state import Fault, state

CONTROL_PREFIX = "/__sandbox"


def control_summary() -> ResponseReturnValue:
    with state().lock:
        snapshot = state().snapshot()
    counts = ", ".join(
        [
            f"{len(snapshot['contacts'])} contacts",
            f"{len(snapshot['messages'])} Slack messages",
            f"{len(snapshot['requests'])} requests",
        ]
        + [f"{len(items)} {kind}" for kind, items in snapshot["objects"].items()]
    )
    contacts = "".join(
        f"<li><a href='contacts/{html.escape(c['id'])}'>{html.escape(c['id'])}</a>: "
        f"{html.escape(c['properties'].get('email', ''))} "
        f"{html.escape(c['properties'].get('firstname', ''))} "
        f"{html.escape(c['properties'].get('lastname', ''))}</li>"
        for c in snapshot["contacts"][-10:]
    )
    messages = "".join(
        f"<li>{html.escape(str(m['channel']))}: {html.escape(str(m['text']))}</li>" for m in snapshot["messages"][-10:]
    )
    page = (
        f"<!doctype html><title>leadbridge sandbox</title><h1>leadbridge sandbox</h1>"
        f"<p>{html.escape(counts)}. Full state as JSON: <a href='state'>state</a></p>"
        f"<h2>Latest contacts</h2><ul>{contacts}</ul>"
        f"<h2>Latest Slack messages</h2><ul>{messages}</ul>"
    )
    return Response(page, mimetype="text/html")


def control_state() -> ResponseReturnValue:
    with state().lock:
        return jsonify(state().snapshot())


def control_record(object_type: str, record_id: str) -> ResponseReturnValue:
    """One record (contact, deal, note...) with its associations; what a "view in CRM" link
    points at under ``make run``."""
    with state().lock:
        record = state().crm.objects(object_type).get(record_id)
        if record is None:
            return jsonify({"ok": False, "error": f"no {object_type} {record_id}"}), 404
        return jsonify({**record.to_json(), "associations": record.associations})


def control_reset() -> ResponseReturnValue:
    with state().lock:
        state().reset()
    return jsonify({"ok": True})


def _body() -> dict[str, Any]:
    """The request's JSON object, or {} when there is none; anything else is the caller's mistake."""
    body = request.get_json(silent=True)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _bad_input(exc: Exception) -> ResponseReturnValue:
    return jsonify({"ok": False, "error": f"bad input: {exc}"}), 400


def control_add_fault() -> ResponseReturnValue:
    try:
        body = _body()
        if body.get("status") is None and not body.get("delay"):
            return jsonify({"ok": False, "error": "a fault needs a status, a delay or both"}), 400
        fault = _fault(body)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        return _bad_input(exc)
    with state().lock:
        state().faults.append(fault)
    return jsonify({"ok": True}), 201


def _fault(body: dict[str, Any]) -> Fault:
    status = None if body.get("status") is None else int(body["status"])
    if status is not None and not 100 <= status <= 599:
        raise ValueError("status must be an HTTP status (100-599)")
    delay = float(body.get("delay") or 0.0)
    if not 0 <= delay <= 600:
        raise ValueError("delay must be 0-600 seconds")
    return Fault(
        path=str(body.get("path", "")),
        method=str(body["method"]).upper() if body.get("method") else None,
        status=status,
        remaining=None if body.get("times") is None else int(body["times"]),
        body=body.get("body"),
        headers={str(k): str(v) for k, v in (body.get("headers") or {}).items()},
        delay=delay,
        policy=body.get("policy"),
    )


def control_clear_faults() -> ResponseReturnValue:
    with state().lock:
        state().faults.clear()
    return jsonify({"ok": True})


def control_add_owner() -> ResponseReturnValue:
    try:
        body = _body()
        with state().lock:
            return jsonify(state().crm.add_owner(body)), 201
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return _bad_input(exc)


def control_add_slack_user() -> ResponseReturnValue:
    try:
        body = _body()
    except ValueError as exc:
        return _bad_input(exc)
    user = {"id": body.get("id"), "email": body.get("email"), "name": body.get("name")}
    with state().lock:
        state().slack_users.append(user)
    return jsonify(user), 201


def control_add_channel() -> ResponseReturnValue:
    """A Slack channel that conversations.list shows (posting works to any channel regardless)."""
    try:
        body = _body()
        name = str(body["name"]).lstrip("#")
    except (ValueError, TypeError, KeyError) as exc:
        return _bad_input(exc)
    with state().lock:
        channel = state().add_channel(name, bool(body.get("is_member", True)))
    return jsonify(channel), 201


def control_search_lag() -> ResponseReturnValue:
    try:
        seconds = float(_body().get("seconds", 0.0))
        if not 0 <= seconds <= 600:
            raise ValueError("seconds must be 0-600")
    except (ValueError, TypeError) as exc:
        return _bad_input(exc)
    with state().lock:
        state().search_lag = seconds
    return jsonify({"ok": True, "seconds": seconds})


# -- follow-ups: a rep logs a call, email or meeting (HubSpot then sets "Last Contacted") --

# Activity type -> (its title property, HubSpot's association type id to a contact).
ENGAGEMENT_TYPES = {"calls": ("hs_call_title", 194), "emails": ("hs_email_subject", 198), "meetings": ("hs_meeting_title", 200)}


def control_log_engagement() -> ResponseReturnValue:
    """``POST /__sandbox/engagements`` ``{type: calls|emails|meetings, contact_id, at?}``: the activity
    is recorded on the contact and, as HubSpot does, the contact's read-only ``notes_last_contacted``
    becomes its time (``at``: epoch seconds, default now)."""
    try:
        body = _body()
        kind, contact_id = str(body["type"]), str(body["contact_id"])
        at = float(body.get("at") or time.time())
        if kind not in ENGAGEMENT_TYPES:
            raise ValueError(f"type must be one of {', '.join(ENGAGEMENT_TYPES)}")
    except (ValueError, TypeError, KeyError) as exc:
        return _bad_input(exc)
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with state().lock:
        crm = state().crm
        contact = crm.objects("contacts").get(contact_id)
        if contact is None:
            return jsonify({"ok": False, "error": f"no contact {contact_id}"}), 404
        title, type_id = ENGAGEMENT_TYPES[kind]
        link = [{"to": {"id": contact_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}]
        properties = {title: f"logged {kind[:-1]}", "hs_timestamp": str(int(at * 1000))}
        record = crm.create(kind, {"properties": properties, "associations": link})
        # Not writable through the API (HubSpot calculates it), so set past the property checks.
        crm._write(contact, {"notes_last_contacted": stamp})
        return jsonify({"ok": True, "id": record.id, "notes_last_contacted": stamp}), 201


def seed_owners(
    base_url: str, owners: Mapping[str, Mapping[str, Any]], timeout: float = 15.0, channels: Sequence[str] = ()
) -> None:
    """Give a running sandbox the owners a config routes to, with Slack users to mention,
    and the Slack channels it posts to (so `leadbridge doctor` finds them).

    ``leadbridge run --sandbox`` calls this so the example config's routing works with no
    HubSpot account: owners given by id keep their id, owners given by email get one.
    """
    import requests  # the sandbox server itself never needs it

    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(f"{base_url}{CONTROL_PREFIX}/state", timeout=1).raise_for_status()
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    for name, spec in owners.items():
        email = spec.get("email") or f"{name}@sandbox.example"
        owner = {"id": spec.get("id"), "email": email, "firstName": name.title(), "lastName": "(sandbox)"}
        requests.post(f"{base_url}{CONTROL_PREFIX}/owners", json=owner, timeout=5).raise_for_status()
        slack_id = spec.get("slack") or "U" + re.sub(r"[^A-Z0-9]", "", name.upper())
        user = {"id": slack_id, "email": email, "name": name}
        requests.post(f"{base_url}{CONTROL_PREFIX}/slack_users", json=user, timeout=5).raise_for_status()
    for channel in channels:
        requests.post(f"{base_url}{CONTROL_PREFIX}/channels", json={"name": channel}, timeout=5).raise_for_status()
