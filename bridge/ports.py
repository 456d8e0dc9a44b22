"""The small interfaces the core defines and connectors implement.

- ``Source``: verifies a webhook request against its raw body, parses it, names its
  idempotency key and flattens it for mapping.
- ``CRM``: creates or updates contacts and reads them (lists, so a backlog can go in one
  batch call each way).
- ``Notifier``: tells a person about a delivered lead, and updates that message later
  (the deal link is added once the deal exists); reminds a rep by DM (bridge/followups.py).

Connectors are found by "module:Class" strings (``connectors.SOURCE_TYPES``) and imported
only when used, so the core never imports a vendor SDK.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from .config import Settings, SourceSettings
from .errors import DeliveryError
from .lead import Lead

# What a delivery is: a lead to forward, an unfinished form to keep only, or a vendor's test.
Kind = Literal["lead", "partial", "test"]


@dataclass(frozen=True)
class Request:
    """What a source needs of an inbound webhook: the raw bytes and their envelope."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]
    query: Mapping[str, str]


class Source(Protocol):
    """One vendor's webhook format. Built once per configured source with its ``options``
    (the connector validates them and raises ConfigError naming what is wrong)."""

    # Headers worth keeping with a delivery (lowercase); never a secret or a signature.
    recorded_headers: ClassVar[tuple[str, ...]]

    def verify(self, request: Request, secrets: Sequence[str]) -> None:
        """Raise SignatureError unless one of ``secrets`` authenticates the request."""

    def parse(self, body: bytes, content_type: str) -> Any:
        """Raise PayloadError unless the body is a delivery this source understands."""

    def idempotency_key(self, payload: Any, received_at: float) -> str:
        """A key that is the same for every retry (or double click) of one submission."""

    def fields(self, payload: Any) -> dict[str, Any]:
        """Flatten a parsed payload into the keys a mapping file reads."""

    def kind(self, payload: Any) -> Kind:
        """Whether this is a lead, a partial (unfinished) form or a vendor's test."""

    def form_key(self, payload: Any) -> str | None:
        """Which form sent it, to pick a per-form mapping (``sources[].forms``); None if unknown."""

    def wire_request(self, values: Mapping[str, str], secret: str) -> Request:
        """A request as this vendor would send it for a submission with these flat values,
        signed with ``secret``: used by the staging form and by ``leadbridge try``."""


def content_key(values: Mapping[str, Any], received_at: float, window_seconds: float) -> str:
    """An idempotency key for senders without an entry id: a hash of the normalised content
    and a time bucket, so a double click is caught and a real resubmission days later is not."""
    normalised = {k: str(v).strip().lower() for k, v in values.items() if v not in (None, "", [], {})}
    digest = hashlib.sha256(json.dumps(normalised, sort_keys=True).encode()).hexdigest()[:32]
    return f"content:{digest}:{int(received_at // window_seconds)}"


def key_aliases(key: str) -> list[str]:
    """Other keys the same submission may have been stored under.

    A content key's time bucket has edges: a double click just across one must still be
    caught, so the previous bucket's key counts as the same submission.
    """
    kind, _, rest = key.partition(":")
    digest, _, bucket = rest.rpartition(":")
    if kind != "content" or not bucket.isdigit():
        return []
    return [f"content:{digest}:{int(bucket) - 1}"]


@dataclass(frozen=True)
class Snapshot:
    """A contact as the CRM has it now: its id (None: no such contact yet) and some properties."""

    contact_id: str | None
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """An association to create inline with a record (HubSpot type ids: hubspot.md §5)."""

    to_type: str
    to_id: str
    type_id: int


@dataclass(frozen=True)
class NewRecord:
    """A deal, lead, note or task to create, for batch creates."""

    properties: Mapping[str, str]
    links: Sequence[Link]


@dataclass(frozen=True)
class ContactWrite:
    """One contact to create or update; ``trace_id`` (the delivery id) matches results to inputs."""

    trace_id: str
    lead: Lead
    # A contact id the ledger already knows for this person (from an earlier delivery).
    known_contact_id: str | None = None
    # Merge policy ("set_if_empty", "append") by canonical field or custom property; others overwrite.
    merge: Mapping[str, str] = field(default_factory=dict)
    # What the CRM had, if the caller already looked (saves the connector a read).
    current: Snapshot | None = None
    # Properties decided by the relay itself (owner, score, routing reason), always written.
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContactResult:
    contact_id: str
    created: bool
    url: str
    # The remembered id this write was sent to, when the CRM answered for another record
    # (the survivor of a merge): the ledger then points that id's memory at ``contact_id``.
    merged_from: str | None = None


@dataclass(frozen=True)
class Found:
    """One record a search found: its id and the properties asked for."""

    record_id: str
    properties: dict[str, str]


@dataclass(frozen=True)
class FoundPage:
    """One page of search results; ``after`` names the next page (None: this was the last)."""

    records: list[Found]
    after: str | None


@dataclass(frozen=True)
class Alert:
    """Everything a notifier needs for one lead message."""

    lead: Lead
    source: str
    # None: a test lead that never reached the CRM.
    contact: ContactResult | None = None
    # None: the notifier's default channel.
    channel: str | None = None
    deal_url: str | None = None
    # Chat user id of the owner to mention, and the owner's display name.
    mention: str | None = None
    owner_name: str | None = None
    # A short prefix such as "HOT lead" or "Unassigned lead (triage)".
    headline: str | None = None
    # Why: score rules, routing reason. No personal data beyond the lead's own fields.
    details: tuple[str, ...] = ()
    # The delivery it is about, carried in the message's metadata so a retry can find it.
    delivery_id: str | None = None


@dataclass(frozen=True)
class Notice:
    channel: str
    ts: str


class CRM(Protocol):
    def upsert_contacts(self, writes: Sequence[ContactWrite]) -> dict[str, ContactResult | DeliveryError]:
        """Create or update each contact; results by trace_id, a failure as its DeliveryError."""

    def planned(self, write: ContactWrite) -> dict[str, tuple[str, str]]:
        """The properties it would write, with their merge policies, without calling anyone."""

    def lookup_contact(self, write: ContactWrite, properties: Sequence[str]) -> Snapshot:
        """Find the person's contact (known id, else email, else phone) and read some properties."""

    def lookup_contacts(self, writes: Sequence[ContactWrite], properties: Sequence[str]) -> dict[str, Snapshot | DeliveryError]:
        """``lookup_contact`` for many people in as few calls as the CRM allows; results by trace_id."""

    def create_record(self, object_type: str, properties: Mapping[str, str], links: Sequence[Link]) -> str:
        """Create a deal, lead, note or task with inline associations; returns its id."""

    def create_records(self, object_type: str, records: Sequence[NewRecord]) -> list[str | DeliveryError]:
        """Create many at once; one outcome per record, in order (an id, or that row's error)."""

    def owner_id_for_email(self, email: str) -> str | None:
        """The CRM owner id (never a user id) for an email, or None."""

    def owner_active(self, owner_id: str) -> bool:
        """Whether this owner exists and is not archived."""

    def record_url(self, object_type: str, record_id: str) -> str:
        """A link a person can open."""

    def forget_contact(self, email: str) -> None:
        """Permanently delete the person's contact (the CRM's GDPR delete)."""

    def pipeline_stages(self, object_type: str, pipeline_id: str) -> dict[str, bool] | None:
        """A pipeline's stage ids -> whether the stage is closed; None if no such pipeline."""

    def pipelines(self, object_type: str) -> dict[str, dict[str, bool]]:
        """Every pipeline of the object type: pipeline id -> stage id -> whether the stage is closed."""

    def search_modified(
        self,
        object_type: str,
        since_ms: int,
        properties: Sequence[str],
        *,
        among: Mapping[str, Sequence[str]] | None = None,
        after: str | None = None,
        limit: int = 200,
    ) -> FoundPage:
        """One page of the records modified at or after ``since_ms`` (epoch ms), oldest first,
        optionally only where each property of ``among`` has one of its values (search's rate limit)."""

    def property_names(self, object_type: str) -> set[str]:
        """The names of every property the object type has."""

    def create_property(self, object_type: str, name: str, *, unique: bool = False) -> None:
        """Create a single-line text property for values leadbridge writes (``unique``: hasUniqueValue)."""

    def find_record(self, object_type: str, contact_id: str, marker: str) -> str | None:
        """The note or task linked to this contact whose body carries ``marker``; None if none (no search lag)."""

    def read_record(self, object_type: str, record_id: str, properties: Sequence[str]) -> dict[str, str] | None:
        """Some properties of one record as HubSpot has them now (unset ones absent); None if it is gone."""

    def update_record(self, object_type: str, record_id: str, properties: Mapping[str, str]) -> None:
        """Set properties on one record (a follow-up's reassignment of its owner)."""

    def owner_email(self, owner_id: str) -> str | None:
        """The email of a CRM owner (to find their chat user), or None if there is no such owner."""


class Notifier(Protocol):
    def notify(self, alert: Alert) -> Notice:
        """Send one message about a lead; raise DeliveryError on failure (ThrottledError: not yet)."""

    def update(self, notice: Notice, alert: Alert) -> Notice:
        """Replace the message ``notice`` names with this alert (no new ping); PermanentError if it is gone."""

    def find_notice(self, alert: Alert, since: float) -> Notice | None:
        """The message ``notify(alert)`` posted at or after ``since`` (by its delivery id); None if none."""

    def post_digest(self, channel: str, title: str, lines: Sequence[str]) -> Notice:
        """Send one summary message covering many leads."""

    def user_id_for_email(self, email: str) -> str | None:
        """The chat user id for an email (cached), or None."""

    def channels(self) -> dict[str, bool]:
        """Every channel the bot can see, by name (no "#") and by id -> whether the bot is a member."""

    def post_ops(self, channel: str, text: str) -> Notice:
        """Send one plain-text operations message (an alert for admins, never lead data)."""

    def direct_message(self, user_id: str, text: str) -> Notice:
        """Send one follow-up reminder to a person's DM; ``text`` is mrkdwn the core built (lead values escaped)."""

    def post_reminder(self, channel: str, text: str) -> Notice:
        """Send one follow-up reminder (an escalation) to a channel; ``text`` as for ``direct_message``."""


def load(spec: str) -> Any:
    """Import "module:Class" lazily."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_source(spec: SourceSettings) -> Source:
    from connectors import SOURCE_TYPES

    source: Source = load(SOURCE_TYPES[spec.type])(spec.options)
    return source


def build_crm(settings: Settings) -> CRM:
    from connectors import CRM as spec

    from .ratelimit import CallPacer

    pacer = CallPacer(settings.ledger, settings.hubspot.rate_limit)
    return load(spec)(settings.hubspot, pacer)


def build_notifier(settings: Settings) -> Notifier:
    from connectors import NOTIFIER as spec

    return load(spec)(settings.slack)
