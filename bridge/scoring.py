"""Explainable lead scoring: rules from config add or subtract points, thresholds pick a segment.

Pure: no I/O and no clock. ``score_lead`` reads a canonical lead and a little context
(when this person last sent something, and now) and returns the points, the segment,
every rule that fired with a short reason a rep can read, and the segment's action
(Slack channel, owner mention, daily digest, HubSpot task priority and due time).
``due_at`` turns that due time into a moment in the owner's time zone.

Each rule holds exactly one condition from a small closed vocabulary (``CONDITIONS``) so a
marketer can read and change scoring in YAML. Reasons quote the config, never the lead's
email address or phone number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from decimal import Decimal
from itertools import pairwise
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import phonenumbers
from pydantic import BeforeValidator, Field, StringConstraints, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .lead import Lead, parse_e164
from .model import Model

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
NEXT_BUSINESS_MORNING = "next_business_morning"
# HubSpot contact properties the score is written to (they exist in the sandbox).
SCORE_PROPERTY, SEGMENT_PROPERTY, RULES_PROPERTY = "lead_score", "lead_segment", "lead_score_rules"

# Consumer mailbox providers: an address here says nothing about a company.
FREE_EMAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "hotmail.com", "outlook.com",
        "aol.com", "icloud.com", "me.com", "mac.com", "live.com", "msn.com", "proton.me",
        "protonmail.com", "pm.me", "gmx.com", "mail.com", "yandex.com",
    }
)  # fmt: skip

Category = Literal["fit", "intent", "behaviour", "data_quality"]
Priority = Literal["LOW", "MEDIUM", "HIGH"]
Word = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def _quoted_codes(value: Any) -> Any:
    # YAML reads 02134 as a number (octal, even) and drops the zero: insist on quotes.
    if isinstance(value, list) and any(not isinstance(v, str) for v in value):
        raise PydanticCustomError(
            "postal_not_quoted", 'write postal codes as quoted strings, e.g. ["02134", "941"]: YAML drops leading zeros'
        )
    return value


Words = Annotated[list[Word], Field(min_length=1)]
Codes = Annotated[list[Word], Field(min_length=1), BeforeValidator(_quoted_codes)]


class ScoreRule(Model):
    # Shown in HubSpot (lead_score_rules) and Slack, so short snake_case.
    name: str = Field(pattern=NAME_PATTERN)
    # Added when the condition holds; negative to penalise.
    points: int
    category: Category
    # The conditions: a rule gives exactly one (README "Scoring" explains each).
    service_in: Words | None = None
    postal_prefix: Codes | None = None
    postal_in: Codes | None = None
    city_in: Words | None = None
    state_in: Words | None = None
    budget_at_least: int | None = Field(None, ge=0)
    message_matches: Words | None = None
    quote_requested: bool | None = None
    returning_within_days: int | None = Field(None, ge=1)
    pages_visited_at_least: int | None = Field(None, ge=1)
    valid_phone: bool | None = None
    business_email: bool | None = None
    free_email: bool | None = None
    spam_signals: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(key) for key in data if key not in cls.model_fields]
            if unknown:
                raise PydanticCustomError(
                    "unknown_condition",
                    "unknown condition {unknown} (a rule has name, points, category and one of: {known})",
                    {"unknown": ", ".join(repr(k) for k in unknown), "known": ", ".join(CONDITIONS)},
                )
        return data

    @field_validator("budget_at_least", mode="before")
    @classmethod
    def _budget_text(cls, value: Any) -> Any:
        # Lets a marketer write "$10k" as well as 10000; text without an amount fails as usual.
        amount = parse_budget(value) if isinstance(value, str) else None
        return value if amount is None else amount

    @model_validator(mode="after")
    def _one_condition(self) -> ScoreRule:
        given = [name for name in CONDITIONS if getattr(self, name) is not None]
        if not given:
            raise PydanticCustomError("no_condition", "rule '{rule}' has no condition", {"rule": self.name})
        if len(given) > 1:
            raise PydanticCustomError(
                "many_conditions",
                "rule '{rule}' has {count} conditions ({given}); a rule takes exactly one, so split it",
                {"rule": self.name, "count": len(given), "given": ", ".join(given)},
            )
        return self

    @property
    def condition(self) -> tuple[str, Any]:
        name = next(name for name in CONDITIONS if getattr(self, name) is not None)
        return name, getattr(self, name)


CONDITIONS = tuple(name for name in ScoreRule.model_fields if name not in {"name", "points", "category"})

_DURATION = re.compile(r"(\d+)\s*([dhm])")


def parse_duration(text: str) -> timedelta | None:
    """ "15m", "2h", "1d", "1h30m" as a timedelta; None for anything else."""
    compact = text.strip().lower()
    if not re.fullmatch(r"(?:\d+\s*[dhm]\s*)+", compact):
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    return sum((timedelta(**{units[unit]: int(n)}) for n, unit in _DURATION.findall(compact)), timedelta())


class SegmentAction(Model):
    # Slack channel for this segment's lead messages; None = slack.channel.
    channel: str | None = None
    # @-mention the lead's owner in the message.
    mention_owner: bool = False
    # No message per lead: the lead waits for the daily digest.
    digest: bool = False
    # The HubSpot follow-up task's priority (hs_task_priority) and due time:
    # a duration ("15m", "2h", "1d", "1h30m") or next_business_morning (owner's time zone).
    task_priority: Priority = "MEDIUM"
    task_due: str = "2h"

    @field_validator("task_priority", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("task_due")
    @classmethod
    def _due(cls, value: str) -> str:
        if value != NEXT_BUSINESS_MORNING and parse_duration(value) is None:
            raise PydanticCustomError(
                "bad_due",
                "task_due '{value}' is not a duration (15m, 2h, 1d, 1h30m) or next_business_morning",
                {"value": value},
            )
        return value


# What each segment does unless configured; a segment you configure starts from its
# entry here (if any) and your keys override it.
DEFAULT_SEGMENTS = {"cold": 0, "warm": 40, "hot": 70}
DEFAULT_ACTIONS = {
    "hot": SegmentAction(mention_owner=True, task_priority="HIGH", task_due="15m"),
    "warm": SegmentAction(mention_owner=False, task_priority="MEDIUM", task_due="2h"),
    "cold": SegmentAction(digest=True, task_priority="LOW", task_due=NEXT_BUSINESS_MORNING),
}
# The starter rules, used when `scoring:` has no `rules`. They need no knowledge of the
# business, so fit by service and area is left to the config (service_in, postal_prefix).
# Calibrated so that a reachable lead asking for a quote is cold-to-warm (phone + quote
# = 35, + company email = 45), urgency makes it warm (phone + urgent + quote = 60), and
# urgency with solid contact data or a real budget is hot (60 + company email or budget).
DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "valid_phone", "category": "data_quality", "points": 20, "valid_phone": True},
    {"name": "business_email", "category": "data_quality", "points": 10, "business_email": True},
    # 0 points: it explains the score without changing it.
    {"name": "free_email", "category": "data_quality", "points": 0, "free_email": True},
    {"name": "spam_signals", "category": "data_quality", "points": -50, "spam_signals": True},
    {"name": "quote_requested", "category": "intent", "points": 15, "quote_requested": True},
    {
        "name": "urgent_words",
        "category": "intent",
        "points": 25,
        "message_matches": ["urgent", "asap", "emergency", "leak*", "flood*", "burst", "today", "no heat", "no hot water"],
    },
    {"name": "budget_10k", "category": "fit", "points": 10, "budget_at_least": 10000},
    {"name": "returning_7d", "category": "behaviour", "points": 10, "returning_within_days": 7},
    {"name": "engaged_visitor", "category": "behaviour", "points": 5, "pages_visited_at_least": 3},
]


def default_rules() -> list[ScoreRule]:
    return [ScoreRule.model_validate(rule) for rule in DEFAULT_RULES]


class ScoringSettings(Model):
    # Evaluated in order; every rule whose condition holds adds its points.
    rules: list[ScoreRule] = Field(default_factory=default_rules)
    # Segment name -> lowest score in it, rising; lower scores (negative too) go to the first.
    segments: dict[Name, int] = Field(default_factory=lambda: dict(DEFAULT_SEGMENTS))
    # Segment name -> action; filled in for every segment after loading (see DEFAULT_ACTIONS).
    actions: dict[str, SegmentAction] = Field(default_factory=dict)
    # lead.custom keys (CRM property names set by the mapping) holding the budget and page count.
    budget_field: str = "budget"
    pages_field: str = "pages_visited"

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        # A bare `scoring:` in YAML is None: the defaults.
        return {} if data is None else data

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[ScoreRule]) -> list[ScoreRule]:
        names = [rule.name for rule in rules]
        dups = sorted({name for name in names if names.count(name) > 1})
        if dups:
            raise PydanticCustomError(
                "duplicate_rule", "rule name {names} is used more than once", {"names": ", ".join(map(repr, dups))}
            )
        return rules

    @field_validator("segments")
    @classmethod
    def _rising(cls, segments: dict[str, int]) -> dict[str, int]:
        if not segments:
            raise PydanticCustomError("no_segments", "give at least one segment")
        # Kept in score order whatever order the YAML (or a tool that sorts keys) lists them in.
        ordered = dict(sorted(segments.items(), key=lambda item: item[1]))
        for (low, low_min), (high, high_min) in pairwise(ordered.items()):
            if high_min == low_min:
                raise PydanticCustomError(
                    "segments_tied",
                    "segments '{low}' and '{high}' both start at {low_min}; each needs its own lowest score",
                    {"high": high, "low": low, "low_min": low_min},
                )
        return ordered

    @field_validator("actions")
    @classmethod
    def _known_segments(cls, actions: dict[str, SegmentAction], info: ValidationInfo) -> dict[str, SegmentAction]:
        segments = info.data.get("segments")
        unknown = [name for name in actions if segments is not None and name not in segments]
        if unknown:
            raise PydanticCustomError(
                "unknown_segment",
                "{unknown} is not a segment (segments: {known})",
                {"unknown": ", ".join(map(repr, unknown)), "known": ", ".join(segments or {})},
            )
        return actions

    @model_validator(mode="after")
    def _action_per_segment(self) -> ScoringSettings:
        resolved = {}
        for name in self.segments:
            base = DEFAULT_ACTIONS.get(name, SegmentAction())
            given = self.actions.get(name)
            update = {key: getattr(given, key) for key in given.model_fields_set} if given else {}
            action = SegmentAction.model_validate(base.model_dump() | update)
            if action.digest and action.mention_owner:
                raise PydanticCustomError(
                    "digest_mention", "actions.{name}: a digest segment cannot mention the owner", {"name": name}
                )
            resolved[name] = action
        self.actions = resolved
        return self

    def segment_for(self, points: int) -> str:
        """The highest segment whose minimum the points reach; else the lowest."""
        names = list(self.segments)
        return next((n for n in reversed(names) if points >= self.segments[n]), names[0])


@dataclass(frozen=True, kw_only=True)
class ScoreContext:
    # When this person's previous delivery arrived (from the ledger), None for a first contact.
    previous_delivery_at: datetime | None = None
    now: datetime


@dataclass(frozen=True)
class Fired:
    rule: str
    category: str
    points: int
    # A short sentence for a rep; quotes the config, never the email address or phone.
    why: str

    def label(self) -> str:
        return f"{self.rule} {self.points:+d}"


@dataclass(frozen=True)
class Score:
    points: int
    segment: str
    fired: tuple[Fired, ...]
    action: SegmentAction

    def summary(self) -> str:
        """``hot (75): urgent_words +25, valid_phone +20``"""
        rules = ", ".join(f.label() for f in self.fired) or "no rules fired"
        return f"{self.segment} ({self.points}): {rules}"

    def as_properties(self) -> dict[str, str]:
        # "none" rather than "": the CRM skips empty values, which would keep stale rules.
        rules = "; ".join(f.label() for f in self.fired) or "none"
        return {SCORE_PROPERTY: str(self.points), SEGMENT_PROPERTY: self.segment, RULES_PROPERTY: rules}

    def as_record(self) -> dict[str, Any]:
        """Plain JSON-able data for the ledger."""
        fired = [{"rule": f.rule, "category": f.category, "points": f.points, "why": f.why} for f in self.fired]
        return {"points": self.points, "segment": self.segment, "fired": fired}


def score_lead(lead: Lead, settings: ScoringSettings, context: ScoreContext) -> Score:
    """Every rule whose condition holds, their points, and the segment and action they give."""
    subject = _Subject(lead, settings, context)
    fired = []
    for rule in settings.rules:
        condition, value = rule.condition
        why = CHECKS[condition](value, subject)
        if why is not None:
            fired.append(Fired(rule.name, rule.category, rule.points, why))
    points = sum(f.points for f in fired)
    segment = settings.segment_for(points)
    return Score(points, segment, tuple(fired), settings.actions[segment])


WORKDAYS = frozenset(range(5))  # Monday..Friday, as datetime.weekday()


def due_at(
    action: SegmentAction,
    now: datetime,
    owner_tz: str | None,
    working_hours: tuple[time, time] = (time(8), time(18)),
    workdays: Collection[int] = WORKDAYS,
) -> datetime:
    """When the follow-up task is due: ``now`` plus the duration, or the start of the next
    working day in the owner's time zone (UTC if unknown), strictly after ``now``.

    ``working_hours`` is the owner's whole working day so callers can pass it as they hold
    it; only its start matters here. Raises ``ZoneInfoNotFoundError`` for an unknown zone.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    start, end = working_hours
    if not start < end or not workdays or not set(workdays) <= set(range(7)):
        raise ValueError("working hours must start before they end, on workdays among 0 (Monday) .. 6")
    delay = parse_duration(action.task_due)
    if delay is not None:
        # Elapsed time: adding in UTC keeps "2h" two real hours across a DST change.
        return (now.astimezone(UTC) + delay).astimezone(now.tzinfo)
    zone: tzinfo = ZoneInfo(owner_tz) if owner_tz else UTC
    day = now.astimezone(zone).date()
    while True:
        morning = datetime.combine(day, start, tzinfo=zone)
        if morning > now and day.weekday() in workdays:
            return morning
        day += timedelta(days=1)


# ---- budget and spam: shared by the checks, public for the CLI and tests ----

_AMOUNT = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?\s*(k|m|thousand|million)?\b", re.IGNORECASE)
_UNIT = {"": 1, "k": 1_000, "thousand": 1_000, "m": 1_000_000, "million": 1_000_000}
_UPPER_BOUND_ONLY = re.compile(r"^\W*(<|≤|under\b|below\b|less than\b|up to\b|max(imum)?\b|no more than\b)", re.IGNORECASE)


def parse_budget(text: str | None) -> int | None:
    """The lower bound of a budget a person typed or picked, in whole units; None if unreadable.

    "$10k-$50k" → 10000, "< $10k" → 0, "$5,000" → 5000, "$50k+" → 50000, "10-20k" → 10000.
    """
    amounts = [
        (Decimal(f"{whole.replace(',', '')}.{frac or 0}"), _UNIT[unit.lower()])
        for whole, frac, unit in _AMOUNT.findall(text or "")
    ]
    if not amounts:
        return None
    if _UPPER_BOUND_ONLY.match(text or ""):
        return 0
    low, unit = amounts[0]
    if unit == 1 and len(amounts) > 1:
        # "10-20k": a unit written once applies to both ends, unless that would put
        # the lower end above the upper ("500-1k" is 500, not 500k).
        high, high_unit = amounts[1]
        if low <= high:
            unit = high_unit
    return int(low * unit)


_URL = re.compile(r"https?://|www\.|\b[\w-]+\.(?:com|net|org|info|biz|ru|xyz|top|io|co|us)\b", re.IGNORECASE)
_HTML = re.compile(r"<\s*/?\s*[a-z!][^>]*>", re.IGNORECASE)


def spam_signals(lead: Lead) -> list[str]:
    """Named signs that a human did not fill the form in, in a fixed order."""
    names = [v for v in (lead.first_name, lead.last_name) if v]
    typed = [_fold(v) for v in (lead.first_name, lead.last_name, lead.company, lead.city, lead.message) if v]
    message = (lead.message or "").strip()
    letters = [c for c in message if c.isalpha()]
    checks = {
        "url_in_name": any(_URL.search(v) for v in names),
        "html_in_name": any(_HTML.search(v) for v in names),
        # Three or more fields so a person called "Lee Lee" is not caught.
        "same_text_everywhere": len(typed) >= 3 and len(set(typed)) == 1,
        # Ten letters or more: "ASAP" or "NO HEAT" alone is a person in a hurry.
        "all_caps_message": len(letters) >= 10 and all(c.isupper() for c in letters),
        "short_message": lead.message is not None and len(message) < 3,
    }
    return [name for name, hit in checks.items() if hit]


# ---- the checks: one per condition; each returns the reason it holds, or None ----


@dataclass(frozen=True)
class _Subject:
    lead: Lead
    settings: ScoringSettings
    context: ScoreContext


Check = Callable[[Any, _Subject], str | None]


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _service_in(wanted: list[str], s: _Subject) -> str | None:
    parts = {_fold(part) for part in re.split(r"[,;]", s.lead.service or "")}
    hit = next((w for w in wanted if _fold(w) in parts), None)
    return f"service includes '{hit}'" if hit else None


def _postal(code: str) -> str:
    return code.replace(" ", "").upper()


def _postal_prefix(prefixes: list[str], s: _Subject) -> str | None:
    code = _postal(s.lead.postal_code or "")
    hit = next((p for p in prefixes if code and code.startswith(_postal(p))), None)
    return f"postal code starts with '{hit}'" if hit else None


def _postal_in(codes: list[str], s: _Subject) -> str | None:
    code = _postal(s.lead.postal_code or "")
    # A ZIP+4 ("94107-1234") is in the area of its ZIP.
    hit = next((c for c in codes if code and _postal(c) in {code, code.split("-")[0]}), None)
    return f"postal code '{hit}' is in the service area" if hit else None


def _one_of(field: str) -> Check:
    def check(wanted: list[str], s: _Subject) -> str | None:
        value = _fold(getattr(s.lead, field) or "")
        hit = next((w for w in wanted if value and _fold(w) == value), None)
        return f"{field} is '{hit}'" if hit else None

    return check


def _budget_at_least(minimum: int, s: _Subject) -> str | None:
    amount = parse_budget(s.lead.custom.get(s.settings.budget_field))
    if amount is None or amount < minimum:
        return None
    return f"budget starts at ${amount:,} (at least ${minimum:,})"


def _word_pattern(word: str) -> str:
    # "leak*" also matches leaks and leaking; spaces in a phrase match any whitespace.
    stem = word.removesuffix("*")
    body = r"\s+".join(re.escape(part) for part in stem.split())
    return rf"\b{body}\w*" if word.endswith("*") else rf"\b{body}\b"


def _message_matches(words: list[str], s: _Subject) -> str | None:
    message = s.lead.message or ""
    hits = [w for w in words if re.search(_word_pattern(w), message, re.IGNORECASE)]
    return "message mentions " + ", ".join(f"'{w.removesuffix('*')}'" for w in hits) if hits else None


def _returning_within_days(days: int, s: _Subject) -> str | None:
    previous = s.context.previous_delivery_at
    if previous is None:
        return None
    gap = s.context.now - previous
    if not timedelta(0) <= gap <= timedelta(days=days):
        return None
    ago = f"{gap.days} day{'s' * (gap.days > 1)}" if gap.days else "the same day"
    return f"came back {ago} after an earlier inquiry (within {days} days)"


def _pages_visited_at_least(minimum: int, s: _Subject) -> str | None:
    found = re.search(r"\d+", s.lead.custom.get(s.settings.pages_field, ""))
    pages = int(found.group()) if found else 0
    return f"visited {pages} pages (at least {minimum})" if found and pages >= minimum else None


def _flag(test: Callable[[_Subject], tuple[bool, str]]) -> Check:
    """A yes/no condition: ``valid_phone: false`` fires when the phone is not valid."""

    def check(expected: bool, s: _Subject) -> str | None:
        result, why = test(s)
        return why if result == expected else None

    return check


def _phone(s: _Subject) -> tuple[bool, str]:
    number = parse_e164(s.lead.phone) if s.lead.phone is not None else None
    valid = number is not None and bool(phonenumbers.is_valid_number(number))
    return valid, "phone number is valid" if valid else "no valid phone number"


def _email_kind(lead: Lead) -> tuple[str, str]:
    if not lead.email or "@" not in lead.email:
        return "none", "no email address"
    domain = lead.email.rsplit("@", 1)[1].lower()
    if domain in FREE_EMAIL_DOMAINS:
        return "free", f"email is on a free mail domain ({domain})"
    return "business", "email is on a company domain"


def _business_email(s: _Subject) -> tuple[bool, str]:
    kind, why = _email_kind(s.lead)
    return kind == "business", why


def _free_email(s: _Subject) -> tuple[bool, str]:
    kind, why = _email_kind(s.lead)
    return kind == "free", why


def _quote(s: _Subject) -> tuple[bool, str]:
    for field in ("message", "service"):
        found = re.search(r"\b(quot(?:e|es|ed|ation)|estimates?)\b", getattr(s.lead, field) or "", re.IGNORECASE)
        if found:
            return True, f"{field} mentions '{found.group().lower()}'"
    return False, "no quote or estimate asked for"


def _spam(s: _Subject) -> tuple[bool, str]:
    signals = spam_signals(s.lead)
    return bool(signals), ("spam signals: " + ", ".join(signals)) if signals else "no spam signals"


CHECKS: dict[str, Check] = {
    "service_in": _service_in,
    "postal_prefix": _postal_prefix,
    "postal_in": _postal_in,
    "city_in": _one_of("city"),
    "state_in": _one_of("state"),
    "budget_at_least": _budget_at_least,
    "message_matches": _message_matches,
    "quote_requested": _flag(_quote),
    "returning_within_days": _returning_within_days,
    "pages_visited_at_least": _pages_visited_at_least,
    "valid_phone": _flag(_phone),
    "business_email": _flag(_business_email),
    "free_email": _flag(_free_email),
    "spam_signals": _flag(_spam),
}
