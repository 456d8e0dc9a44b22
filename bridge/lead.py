"""The canonical lead, and how raw mapped values become one.

A mapping produces plain values keyed by canonical field; ``build_lead`` strips control
characters from every one (``bridge.text``; the message keeps its lines), trims them,
normalises the email (email-validator, syntax only, no DNS) and the phone (E.164 with
phonenumbers and a default region), and reports what it had to drop. A lead needs at
least one way to reach the person: a valid email or a valid phone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict

from .text import clean_text

# Fields whose line breaks and tabs are the sender's own (custom properties may be textareas too).
MULTILINE = frozenset({"message", "custom"})


class Lead(BaseModel):
    """One person's inquiry, normalised. Empty values are None, never ""."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = None
    phone: str | None = None
    # An extension typed after the number ("ext. 22", "x22"): kept apart, since phone (E.164) is an identity.
    phone_extension: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    service: str | None = None
    message: str | None = None
    postal_code: str | None = None
    city: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    gclid: str | None = None
    fbclid: str | None = None
    landing_page: str | None = None
    referrer: str | None = None
    state: str | None = None
    country: str | None = None
    submitted_at: datetime | None = None
    # Extra CRM properties named by the mapping (property name -> value).
    custom: dict[str, str] = {}
    # Consent evidence (flags, policy version, IP, user agent), for the audit trail.
    consent: dict[str, str] = {}

    @property
    def name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p) or "(no name)"

    @property
    def identity_key(self) -> str | None:
        """The one identity that says which CRM contact this is: the email, else the phone.

        A phone alone never overrides an email: spouses and office lines share numbers.
        """
        keys = self.person_keys()
        return keys[0] if keys else None

    def person_keys(self) -> list[str]:
        """Identities that make two leads the same person; used to serialise their processing."""
        keys = []
        if self.email:
            keys.append(f"email:{self.email}")
        if self.phone:
            keys.append(f"phone:{self.phone}")
        return keys


@dataclass
class LeadResult:
    lead: Lead
    problems: list[str] = field(default_factory=list)

    @property
    def reachable(self) -> bool:
        return bool(self.lead.email or self.lead.phone)


def build_lead(values: dict[str, Any], default_region: str) -> LeadResult:
    """Normalise mapped values into a Lead; problems name fields, never their values."""
    problems: list[str] = []
    clean: dict[str, Any] = {}
    extras: dict[str, dict[str, str]] = {"custom": {}, "consent": {}}
    for key, value in values.items():
        multiline = key in MULTILINE
        text = _text(value, multiline)
        if text is None:
            continue
        if key in extras:
            pairs = value.items() if isinstance(value, dict) else ()
            extras[key] = {str(k): t for k, v in pairs if isinstance(t := _text(v, multiline), str)}
        elif isinstance(text, str):
            clean[key] = text
        else:
            # An object where a form sends text (a hostile or broken payload): dropped, named.
            problems.append(f"{key} is not text")
    if "email" in clean:
        clean["email"] = normalise_email(clean["email"], problems)
    if "phone" in clean:
        raw_phone = clean["phone"]
        clean["phone"] = normalise_phone(raw_phone, default_region, problems)
        if clean["phone"] and "phone_extension" not in clean:
            clean["phone_extension"] = phone_extension(raw_phone, default_region)
    if "submitted_at" in clean:
        clean["submitted_at"] = _timestamp(clean["submitted_at"], problems)
    lead = Lead(**{k: v for k, v in clean.items() if v is not None}, **extras)
    result = LeadResult(lead, problems)
    if not result.reachable:
        problems.append("no valid email or phone: nobody could call or write back")
    return result


# Placeholder data that vendors' "send test" buttons and people trying a form use.
TEST_EMAIL_DOMAINS = {"example.com", "example.org", "example.net", "test.com"}
TEST_NAMES = {("firstname", "lastname"), ("first name", "last name"), ("test", "test"), ("test", "user")}


def looks_like_test(lead: Lead) -> str | None:
    """Why a lead is obviously test data, or None."""
    if lead.email and lead.email.split("@")[-1] in TEST_EMAIL_DOMAINS:
        return "an example.* or test.com email address"
    if lead.email and lead.email.split("@")[0] in {"test", "testing", "asdf"}:
        return "a test email address"
    if (str(lead.first_name).lower(), str(lead.last_name).lower()) in TEST_NAMES:
        return "a placeholder name"
    return None


def normalise_email(raw: str, problems: list[str]) -> str | None:
    try:
        checked = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        problems.append(f"email is not valid ({_first_sentence(str(exc))})")
        return None
    # HubSpot treats emails case-insensitively and stores them lowercased; so do we.
    return checked.normalized.lower()


def normalise_phone(raw: str, region: str, problems: list[str]) -> str | None:
    e164, problem, _ = read_phone(raw, region)
    if problem:
        problems.append(problem)
    return e164


def phone_extension(raw: str, region: str) -> str | None:
    """The extension of a number as typed ("(415) 823-4419 ext. 22" -> "22"), or None."""
    return read_phone(raw, region)[2]


@lru_cache(maxsize=1024)
def parse_e164(e164: str) -> phonenumbers.PhoneNumber | None:
    """A normalised number, parsed once for every reader (scoring, the Slack message); None if
    it cannot be read. Callers must not change the object: it is shared."""
    try:
        return phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None


@lru_cache(maxsize=1024)
def read_phone(raw: str, region: str | None) -> tuple[str | None, str | None, str | None]:
    """(E.164 or None, the problem, the extension) of a number as typed, parsed once for every
    caller (the lead, its extension, the mapping's phone_e164): phonenumbers compiles its
    patterns again on every parse."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None, "phone is not a phone number", None
    extension = number.extension or None
    if not phonenumbers.is_valid_number(number):
        return None, f"phone is not a valid number for its region (default region {region})", extension
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None, extension


def _timestamp(raw: str, problems: list[str]) -> datetime | None:
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        problems.append("submitted_at is not an ISO-8601 time")
        return None


def _text(value: Any, multiline: bool = False) -> Any:
    if value is None or isinstance(value, dict):
        return value or None
    if isinstance(value, (list, tuple)):
        joined = ", ".join(t for v in value if (t := _text(v, multiline)) and isinstance(t, str))
        return joined or None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = clean_text(str(value), multiline=multiline).strip()
    return text or None


def _first_sentence(message: str) -> str:
    # email-validator's messages can quote the address; keep only its first clause.
    return message.split(".")[0].split(":")[0]
