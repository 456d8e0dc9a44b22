"""Slack through ``slack_sdk.WebClient``: one Block Kit message per lead, daily digests and follow-up DMs.

The message goes out as soon as the contact exists and is updated in place
(``chat.update``) once the deal does, so the rep is pinged first and the link follows.
It has what a rep needs to call back at once: name, phone as a ``tel:`` link,
email, service, location, source and campaign, links to the HubSpot contact and deal,
and the owner mentioned, with a plain-text fallback. Lead text is escaped, so a form
cannot inject ``<!channel>`` or a fake link, and clipped to Block Kit's limits.
Posting is paced to one message per second per channel (Slack's posting limit): a post
that comes too soon raises ThrottledError and the ledger puts the delivery back for a
moment, so one busy channel never holds a worker thread or delays the others. A 429
becomes a RetriableError carrying Slack's Retry-After.
A lead message carries its delivery id in Slack's message metadata, so a post whose answer was
lost can be found in the channel's history and not posted twice (bridge/norepeat.py); the SDK's
own connection retry is kept away from posts that may have arrived.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.error import URLError
from urllib.parse import quote

import phonenumbers
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import ConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from bridge.config import SlackSettings
from bridge.errors import UNKNOWN_OUTCOME_STATUSES, PermanentError, RetriableError, ThrottledError, UnansweredError
from bridge.lead import parse_e164
from bridge.ports import Alert, Notice
from bridge.text import escape_mrkdwn
from bridge.workermetrics import record_rate_limited

# Errors that retrying may fix; anything else (bad channel, bad token) needs a person.
TRANSIENT = {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
# Of those, the ones after which Slack says "it's possible some aspect of the operation
# succeeded" (its method docs): like an unknown-outcome status, the post may exist, so a
# retry looks for it before posting again.
MAYBE_APPLIED = {"internal_error", "fatal_error"}
# Block Kit limits (sources.md §4.2).
SECTION_LIMIT, HEADER_LIMIT, MAX_FIELDS, MAX_BLOCKS = 3000, 150, 10, 50
# Below Block Kit's own 2,000 per field: all blocks together must stay under ~12,000
# characters (msg_blocks_too_long, sources.md §4.2), and the text fallback under 40,000.
FIELD_LIMIT, DETAILS_LIMIT, TEXT_LIMIT = 1000, 1500, 3000
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")
CUT = "… (cut; full text in HubSpot)"
# Message metadata naming the delivery (Slack's event_type: lowercase letters and underscores).
METADATA_EVENT = "leadbridge_lead"
# conversations.history wants a channel id; a config may name the channel instead.
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")
# How far back a retried post looks: 10 pages of 200, and a minute of clock difference.
HISTORY_PAGES, HISTORY_PAGE, CLOCK_SLACK_SECONDS = 10, 200, 60.0
POSTING_METHODS = ("chat.postMessage",)


class UnsentOnlyRetryHandler(ConnectionErrorRetryHandler):
    """slack_sdk's one quick retry on a connection error, except for a post that may have
    arrived: a reset or an answer that never came after the request went out is left to the
    ledger's retry, which first looks for the message (sending it again here would post twice)."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        refused = isinstance(error, URLError) and isinstance(error.reason, ConnectionRefusedError)
        if request.url.rstrip("/").endswith(POSTING_METHODS) and not refused:
            return False
        return super()._can_retry(state=state, request=request, response=response, error=error)


class SlackNotifier:
    def __init__(self, settings: SlackSettings) -> None:
        self.settings = settings
        # slack_sdk logs whole request bodies (lead data) at DEBUG: give it a logger that doesn't.
        quiet = logging.getLogger("leadbridge.vendor.slack_sdk")
        quiet.setLevel(logging.WARNING)
        self.client = WebClient(
            token=settings.token() or "",
            base_url=settings.base_url,
            timeout=int(settings.timeout_seconds),
            logger=quiet,
            retry_handlers=[UnsentOnlyRetryHandler()],
        )
        self._last_post: dict[str, float] = {}
        self._pace = threading.Lock()
        self._users: dict[str, str | None] = {}
        self._channel_ids: dict[str, str] = {}

    def notify(self, alert: Alert) -> Notice:
        channel = alert.channel or self.settings.channel
        return self._post(channel, _with_metadata(lead_message(alert), alert))

    def find_notice(self, alert: Alert, since: float) -> Notice | None:
        """conversations.history from ``since`` on (with metadata), newest first: the message whose
        metadata names this alert's delivery, or None. Needs ``channels:history`` (``groups:history``
        for a private channel)."""
        if not alert.delivery_id:
            return None
        channel = self._channel_id(alert.channel or self.settings.channel)
        cursor = None
        with _calling_slack():
            for _ in range(HISTORY_PAGES):
                page = self.client.conversations_history(
                    channel=channel,
                    oldest=f"{since - CLOCK_SLACK_SECONDS:.6f}",
                    include_all_metadata=True,
                    limit=HISTORY_PAGE,
                    cursor=cursor,
                )
                for message in page.get("messages") or []:
                    if _delivery_of(message) == alert.delivery_id:
                        return Notice(channel=channel, ts=str(message["ts"]))
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
        return None

    def _channel_id(self, channel: str) -> str:
        """The id for a channel name (conversations.list, cached); the name itself if not listed."""
        name = channel.lstrip("#")
        if CHANNEL_ID.match(name):
            return name
        if name not in self._channel_ids:
            with _calling_slack():
                cursor = None
                while True:
                    page = self.client.conversations_list(
                        types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
                    )
                    for listed in page.get("channels") or []:
                        self._channel_ids[str(listed.get("name"))] = str(listed.get("id"))
                    cursor = (page.get("response_metadata") or {}).get("next_cursor")
                    if not cursor:
                        break
        return self._channel_ids.get(name, channel)

    def update(self, notice: Notice, alert: Alert) -> Notice:
        """chat.update with the alert as it is now (its deal link added): same ts, no second ping.

        Not paced: the one-per-second limit is chat.postMessage's; chat.update has its own tier.
        """
        with _calling_slack():
            response = self.client.chat_update(channel=notice.channel, ts=notice.ts, **_with_metadata(lead_message(alert), alert))
        return Notice(channel=str(response.get("channel") or notice.channel), ts=str(response.get("ts") or notice.ts))

    def post_digest(self, channel: str, title: str, lines: Sequence[str]) -> Notice:
        return self._post(channel, digest_message(title, lines))

    def post_ops(self, channel: str, text: str) -> Notice:
        """An alert for admins; escaped like lead text, so it can never mention or link anything."""
        return self._post(channel, {"text": _escape(text) or "-"})

    def direct_message(self, user_id: str, text: str) -> Notice:
        """conversations.open for the user's DM (the bot needs ``im:write``), then one paced post there."""
        with _calling_slack():
            opened = self.client.conversations_open(users=user_id)
        channel = str((opened.get("channel") or {}).get("id") or "")
        if not channel:
            raise PermanentError("Slack conversations.open answered without a channel")
        return self.post_reminder(channel, text)

    def post_reminder(self, channel: str, text: str) -> Notice:
        """A follow-up reminder: mrkdwn the core built, its lead values already escaped."""
        return self._post(channel, {"text": _cut(text, TEXT_LIMIT) or "-"})

    def user_id_for_email(self, email: str) -> str | None:
        """users.lookupByEmail, cached per process including misses (Tier 3: ~50 a minute)."""
        key = email.strip().lower()
        if key not in self._users:
            try:
                response = self.client.users_lookupByEmail(email=key)
                user = response.get("user") or {}
                self._users[key] = None if user.get("deleted") else str(user.get("id") or "") or None
            except SlackApiError as exc:
                if exc.response.get("error") not in ("users_not_found", "user_not_found"):
                    raise _translate(exc) from exc
                self._users[key] = None
        return self._users[key]

    def channels(self) -> dict[str, bool]:
        """conversations.list, every page (public and private the bot can see); by name and id."""
        seen: dict[str, bool] = {}
        cursor = None
        with _calling_slack():
            while True:
                page = self.client.conversations_list(
                    types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
                )
                for channel in page.get("channels") or []:
                    member = bool(channel.get("is_member"))
                    seen[str(channel.get("name"))] = seen[str(channel.get("id"))] = member
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return seen

    def _post(self, channel: str, message: dict[str, Any]) -> Notice:
        self._take_turn(channel)
        with _calling_slack():
            response = self.client.chat_postMessage(channel=channel, unfurl_links=False, **message)
        return Notice(channel=str(response.get("channel") or channel), ts=str(response["ts"]))

    def _take_turn(self, channel: str) -> None:
        gap = self.settings.min_seconds_between_posts
        with self._pace:
            now = time.monotonic()
            wait = self._last_post.get(channel, -gap) + gap - now
            if wait > 0:
                raise ThrottledError(f"Slack channel {channel} paced", retry_after=wait)
            self._last_post[channel] = now


@contextmanager
def _calling_slack() -> Iterator[None]:
    """Slack's errors as the core's: an API error by its code, a transport failure retriable."""
    try:
        yield
    except SlackApiError as exc:
        raise _translate(exc) from exc
    except (SlackClientError, OSError) as exc:
        refused = isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, URLError) and isinstance(exc.reason, ConnectionRefusedError)
        )
        if refused:
            raise RetriableError(f"Slack unreachable ({type(exc).__name__})") from exc
        # Sent, then no answer (a reset, a dropped connection, a timeout): it may have been posted.
        raise UnansweredError(f"Slack did not answer ({type(exc).__name__})") from exc


def _translate(exc: SlackApiError) -> RetriableError | PermanentError:
    status = exc.response.status_code
    error = str(exc.response.get("error", "")) if isinstance(exc.response.data, dict) else ""
    retry_after = float(exc.response.headers.get("Retry-After", 1) or 1)
    if status == 429 or error == "ratelimited":
        record_rate_limited("slack", error or "429")
        # Throttled, not failed: the delivery waits and keeps its attempt.
        return ThrottledError(f"Slack {status} {error}".strip(), retry_after=retry_after)
    if error in MAYBE_APPLIED or status in UNKNOWN_OUTCOME_STATUSES:
        return UnansweredError(f"Slack {status} {error} (may have been applied)".strip(), retry_after=retry_after)
    if status >= 500 or error in TRANSIENT:
        return RetriableError(f"Slack {status} {error}".strip(), retry_after=retry_after)
    return PermanentError(f"Slack {status} {error}".strip())


def _with_metadata(message: dict[str, Any], alert: Alert) -> dict[str, Any]:
    """The message with its delivery id in Slack's message metadata (kept by chat.update too)."""
    if not alert.delivery_id:
        return message
    return {**message, "metadata": {"event_type": METADATA_EVENT, "event_payload": {"delivery_id": alert.delivery_id}}}


def _delivery_of(message: dict[str, Any]) -> str | None:
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != METADATA_EVENT:
        return None
    return str((metadata.get("event_payload") or {}).get("delivery_id") or "") or None


def lead_message(alert: Alert) -> dict[str, Any]:
    """chat.postMessage arguments (text fallback and blocks) for one lead.

    Every lead value goes through ``_escape`` and every string through ``_cut``, so a
    hostile value can neither ping the channel nor grow the message past Slack's limits.
    """
    lead = alert.lead
    campaign = " / ".join(p for p in (lead.utm_source, lead.utm_medium, lead.utm_campaign) if p)
    location = " ".join(p for p in (lead.city, lead.postal_code) if p)
    owner = f"<@{alert.mention}>" if alert.mention else _escape(alert.owner_name)
    fields = [
        ("Phone", _phone_link(lead.phone, lead.phone_extension) if lead.phone else None),
        ("Email", f"<mailto:{quote(lead.email, safe='@')}|{_escape(lead.email)}>" if lead.email else None),
        ("Service", _escape(lead.service)),
        ("Location", _escape(location)),
        ("Company", _escape(lead.company)),
        ("Source", _escape(f"{alert.source}" + (f" · {campaign}" if campaign else ""))),
        ("Owner", owner),
    ]
    headline = _escape(f"{alert.headline}: {lead.name}" if alert.headline else f"New lead: {lead.name}") or ""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(headline, HEADER_LIMIT)}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", FIELD_LIMIT)} for label, value in fields if value][
                :MAX_FIELDS
            ],
        },
    ]
    if lead.message:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"*Message*\n{_escape(lead.message)}", SECTION_LIMIT)}}
        )
    if alert.details:
        context = "\n".join(_escape(d) or "" for d in alert.details)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(context, DETAILS_LIMIT)}})
    links = _links(alert)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(" · ".join(links), SECTION_LIMIT)}]})
    return {"text": _cut(_fallback(alert, headline, owner), TEXT_LIMIT), "blocks": blocks[:MAX_BLOCKS]}


def _fallback(alert: Alert, headline: str, owner: str | None) -> str:
    """The plain text notifications and screen readers show; escaped like the blocks."""
    lead = alert.lead
    ext = f" ext. {lead.phone_extension}" if lead.phone and lead.phone_extension else ""
    reach = _escape((lead.phone and _pretty_phone(lead.phone) + ext) or lead.email) or ""
    mention = f" {owner}" if alert.mention else ""
    service = _escape(lead.service) or "no service given"
    where = f"HubSpot: {alert.contact.url}" if alert.contact else "Test lead, not in HubSpot."
    return f"{headline} {reach} ({service}) from {_escape(alert.source)}.{mention} {where}"


def _links(alert: Alert) -> list[str]:
    if alert.contact is None:
        return ["TEST lead: not sent to HubSpot"]
    verb = "New contact" if alert.contact.created else "Updated contact"
    links = [f"{verb} · <{alert.contact.url}|Open contact in HubSpot>"]
    if alert.deal_url:
        links.append(f"<{alert.deal_url}|Open deal>")
    return links


def digest_message(title: str, lines: Sequence[str]) -> dict[str, Any]:
    """One message for many leads: a count, then one line each, packed into sections within Slack's limits."""
    header = f"{title}: {len(lines)} lead{'s' if len(lines) != 1 else ''}"
    sections: list[str] = []
    current = ""
    for line in lines:
        if current and len(current) + 1 + len(line) > SECTION_LIMIT:
            sections.append(current)
            current = ""
        current = f"{current}\n{line}" if current else _cut(line, SECTION_LIMIT)
    if current:
        sections.append(current)
    room = MAX_BLOCKS - 2
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": _cut(header, HEADER_LIMIT)}}]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": text}} for text in sections[:room]]
    if len(sections) > room:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "… and more: see HubSpot"}]})
    return {"text": header, "blocks": blocks}


def _escape(value: str | None) -> str | None:
    """Lead text for Slack, through the one escaper (``bridge.text``); None when empty."""
    return escape_mrkdwn(value) if value else None


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters; an entity (``&amp;``) is never split in two."""
    if len(text) <= limit:
        return text
    return _PARTIAL_ENTITY.sub("", text[: limit - len(CUT)]) + CUT


def _phone_link(e164: str, extension: str | None) -> str:
    """A tap-to-call link (RFC 3966: ``;ext=`` dials the extension) showing the number as read."""
    ext = "".join(ch for ch in extension or "" if ch.isdigit())
    shown = _pretty_phone(e164) + (f" ext. {ext}" if ext else "")
    return f"<tel:{e164}{f';ext={ext}' if ext else ''}|{_escape(shown)}>"


def _pretty_phone(e164: str) -> str:
    number = parse_e164(e164)
    if number is None:
        return e164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
