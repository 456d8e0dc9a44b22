"""Slack through ``slack_sdk.WebClient``: one Block Kit message per delivered lead.

The message has what a rep needs to call back at once: name, phone as a ``tel:`` link,
email, service, location, source and campaign, and a link to the HubSpot contact, with
a plain-text fallback. Lead text is escaped, so a form cannot inject ``<!channel>`` or a
fake link. A 429 becomes a RetriableError carrying Slack's Retry-After, so the ledger
reschedules only this step instead of blocking a worker thread in a sleep.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import phonenumbers
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bridge.config import SlackSettings
from bridge.errors import PermanentError, RetriableError
from bridge.lead import Lead
from bridge.ports import ContactResult, Notice

# Errors that retrying may fix; anything else (bad channel, bad token) needs a person.
TRANSIENT = {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
SECTION_LIMIT = 3000


class SlackNotifier:
    def __init__(self, settings: SlackSettings) -> None:
        self.settings = settings
        # slack_sdk logs whole request bodies (lead data) at DEBUG: give it a logger that doesn't.
        quiet = logging.getLogger("leadbridge.vendor.slack_sdk")
        quiet.setLevel(logging.WARNING)
        self.client = WebClient(
            token=os.environ.get(settings.token_env, ""),
            base_url=settings.base_url,
            timeout=int(settings.timeout_seconds),
            logger=quiet,
        )

    def notify(self, lead: Lead, contact: ContactResult | None, source: str, channel: str | None = None) -> Notice:
        message = lead_message(lead, contact, source)
        channel = channel or self.settings.channel
        try:
            response = self.client.chat_postMessage(channel=channel, unfurl_links=False, **message)
        except SlackApiError as exc:
            status = exc.response.status_code
            error = str(exc.response.get("error", "")) if isinstance(exc.response.data, dict) else ""
            if status == 429 or status >= 500 or error in TRANSIENT:
                retry_after = float(exc.response.headers.get("Retry-After", 1) or 1)
                raise RetriableError(f"Slack {status} {error}".strip(), retry_after=retry_after) from exc
            raise PermanentError(f"Slack {status} {error}".strip()) from exc
        except (SlackClientError, OSError) as exc:
            raise RetriableError(f"Slack unreachable ({type(exc).__name__})") from exc
        return Notice(channel=str(response.get("channel") or channel), ts=str(response["ts"]))


def lead_message(lead: Lead, contact: ContactResult | None, source: str) -> dict[str, Any]:
    """chat.postMessage arguments (text fallback and blocks) for one lead."""
    name = lead.name
    campaign = " / ".join(p for p in (lead.utm_source, lead.utm_medium, lead.utm_campaign) if p)
    location = " ".join(p for p in (lead.city, lead.postal_code) if p)
    fields = [
        ("Phone", f"<tel:{lead.phone}|{_escape(_pretty_phone(lead.phone))}>" if lead.phone else None),
        ("Email", f"<mailto:{lead.email}|{_escape(lead.email)}>" if lead.email else None),
        ("Service", _escape(lead.service)),
        ("Location", _escape(location)),
        ("Company", _escape(lead.company)),
        ("Source", _escape(f"{source}" + (f" · {campaign}" if campaign else ""))),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"New lead: {name}"[:150]}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in fields if value],
        },
    ]
    if lead.message:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"*Message*\n{_escape(lead.message)}")}})
    if contact is None:
        footer, link = "TEST lead: not sent to HubSpot", "Test lead, not in HubSpot."
    else:
        footer = f"{'New contact' if contact.created else 'Updated contact'} · <{contact.url}|Open in HubSpot>"
        link = f"HubSpot: {contact.url}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    reach = (lead.phone and _pretty_phone(lead.phone)) or lead.email or ""
    text = f"New lead: {name} {reach} ({lead.service or 'no service given'}) from {source}. {link}"
    return {"text": text, "blocks": blocks}


def _escape(value: str | None) -> str | None:
    if not value:
        return None
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str) -> str:
    marker = "… (cut; full text in HubSpot)"
    return text if len(text) <= SECTION_LIMIT else text[: SECTION_LIMIT - len(marker)] + marker


def _pretty_phone(e164: str) -> str:
    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
