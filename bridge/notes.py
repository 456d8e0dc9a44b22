"""The answers a rep reads in HubSpot (the task's body, or the note): labelled, in order,
line breaks kept, and nothing a rep has no use for.

First the lead as the mapping read it (name, email, phone, service, message, place, the
visit's source, then the mapping's custom properties), each under a plain label. Then the
form's other answers, the ones the mapping did not read, under the label the mapping gives
them (``labels:``) or their own key. Plugin bookkeeping (Gravity's ``is_starred``,
``currency``, ``status``…, CF7's ``_remote_ip``, ``_user_agent``, ``_wpcf7``…) and the
visitor's IP address and user agent are left out, unless the source opts in with
``note: {include_meta: true}``; the consent evidence stays in the ledger's event log.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

from .lead import Lead
from .mapping import Mapping

LIMIT = 65_536
# The lead fields a rep reads first, in this order, under these labels.
LEAD_LABELS = {
    "name": "Name",
    "email": "Email",
    "phone": "Phone",
    "phone_extension": "Extension",
    "company": "Company",
    "service": "Service",
    "message": "Message",
    "postal_code": "Postal code",
    "city": "City",
    "state": "State",
    "country": "Country",
}
# Keys no rep needs: entry bookkeeping of the WordPress plugins, and the visitor's machine.
BOOKKEEPING = {
    "id", "form_id", "post_id", "entry_id", "form_name", "form_title", "is_starred", "is_read", "is_fulfilled",
    "currency", "status", "source_id", "source_url", "date_created", "date_updated", "created_by",
    "transaction_id", "transaction_type", "payment_status", "payment_date", "payment_amount", "payment_method",
    "ip", "user_agent", "user_ip", "remote_ip", "referer", "event_id", "event_type", "token", "landed_at",
    "submitted_at", "network_id", "response_type",
}  # fmt: skip
META_KEY = re.compile(r"^_|(^|[._])(ip|user_agent|useragent|remote_addr)$", re.IGNORECASE)


def note_html(lead: Lead, mapping: Mapping, flat: dict[str, Any], source: str, delivery_id: str, include_meta: bool) -> str:
    """The answers as HubSpot note/task HTML, within HubSpot's size limit."""
    rows = [_row(label, value) for label, value in _lead_rows(lead)]
    others = [_row(mapping.labels.get(key, key), value) for key, value in _other_answers(mapping, flat, include_meta)]
    body = f"<p>Form submission via {html.escape(source)} (delivery {delivery_id})</p><ul>{''.join(rows)}</ul>"
    if others:
        body += f"<p>Other answers</p><ul>{''.join(others)}</ul>"
    return fit(body)


def fit(body: str) -> str:
    """HTML within HubSpot's size limit for a note or task body, its list closed where cut."""
    return body if len(body) <= LIMIT else body[: LIMIT - 20] + "…</ul>"


def _lead_rows(lead: Lead) -> Iterable[tuple[str, Any]]:
    values = lead.model_dump(exclude={"custom", "consent"})
    values["name"] = lead.name if (lead.first_name or lead.last_name) else None
    for field, label in LEAD_LABELS.items():
        yield label, values.get(field)
    touch = " / ".join(str(v) for v in (lead.utm_source, lead.utm_medium, lead.utm_campaign) if v)
    yield "Came from", touch or None
    yield "Landing page", lead.landing_page
    for prop, value in lead.custom.items():
        yield prop.replace("_", " ").capitalize(), value


def _other_answers(mapping: Mapping, flat: dict[str, Any], include_meta: bool) -> Iterable[tuple[str, Any]]:
    read = mapping.read_keys()
    # Every "a" of a read key "a.b": a key among them has parts that were read.
    wholes = {other[:dot] for other in read for dot, ch in enumerate(other) if ch == "."}
    for key, value in flat.items():
        if key in read and key not in mapping.labels:
            continue
        if key in wholes or key.rpartition(".")[0] in read:
            continue  # the whole or the parts of a multi-input field already read (Gravity's "1", "6.1")
        if not include_meta and (key.lower() in BOOKKEEPING or META_KEY.search(key)):
            continue
        yield key, value


def _row(label: str, value: Any) -> str:
    if value in (None, "", [], {}):
        return ""
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    # Line breaks as a person typed them: HTML, not raw \r\n run together.
    shown = "<br>".join(html.escape(line) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return f"<li><b>{html.escape(label)}</b>: {shown}</li>"
