"""The small interfaces the core defines and connectors implement.

- ``Source``: verifies a webhook request against its raw body, parses it, names its
  idempotency key and flattens it for mapping.
- ``CRM``: creates or updates contacts (a list, so a backlog can go in one batch call).
- ``Notifier``: tells a person about a delivered lead.

Connectors are found by "module:Class" strings (``connectors.SOURCE_TYPES``) and imported
only when used, so the core never imports a vendor SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from .config import Settings
from .errors import DeliveryError
from .lead import Lead


@dataclass(frozen=True)
class Request:
    """What a source needs of an inbound webhook: the raw bytes and their envelope."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]
    query: Mapping[str, str]


class Source(Protocol):
    # Headers worth keeping with a delivery (lowercase); never a secret or a signature.
    recorded_headers: ClassVar[tuple[str, ...]]

    def verify(self, request: Request, secrets: Sequence[str]) -> None:
        """Raise SignatureError unless one of ``secrets`` authenticates the request."""

    def parse(self, body: bytes, content_type: str) -> Any:
        """Raise PayloadError unless the body is a delivery this source understands."""

    def idempotency_key(self, payload: Any) -> str:
        """A key that is the same for every retry of one submission."""

    def fields(self, payload: Any) -> dict[str, Any]:
        """Flatten a parsed payload into the keys a mapping file reads."""


@dataclass(frozen=True)
class ContactWrite:
    """One contact to create or update; ``trace_id`` (the delivery id) matches results to inputs."""

    trace_id: str
    lead: Lead
    # A contact id the ledger already knows for this person (from an earlier delivery).
    known_contact_id: str | None = None


@dataclass(frozen=True)
class ContactResult:
    contact_id: str
    created: bool
    url: str


@dataclass(frozen=True)
class Notice:
    channel: str
    ts: str


class CRM(Protocol):
    def upsert_contacts(self, writes: Sequence[ContactWrite]) -> dict[str, ContactResult | DeliveryError]:
        """Create or update each contact; results by trace_id, a failure as its DeliveryError."""


class Notifier(Protocol):
    def notify(self, lead: Lead, contact: ContactResult, source: str) -> Notice:
        """Send one message about a delivered lead; raise DeliveryError on failure."""


def load(spec: str) -> Any:
    """Import "module:Class" lazily."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_source(type_name: str) -> Source:
    from connectors import SOURCE_TYPES

    return load(SOURCE_TYPES[type_name])()


def build_crm(settings: Settings) -> CRM:
    from connectors import CRM as spec

    return load(spec)(settings.hubspot)


def build_notifier(settings: Settings) -> Notifier:
    from connectors import NOTIFIER as spec

    return load(spec)(settings.slack)
