"""Owner routing: which rep gets a lead, and one readable sentence saying why.

``route`` decides over three inputs: the ``routing:`` config, a ``PoolStore`` holding each
pool's counts (the ledger; ``MemoryPoolStore`` in tests and dry runs) and an
``OwnerDirectory`` that knows HubSpot's owners. The order:

1. Stability: a returning contact keeps its HubSpot owner while that owner is active, even
   outside hours or away (the customer knows their rep; the task waits for them). The
   triage owner is the exception: triage is a holding queue, not a relationship.
2. Rules, in order; the first match wins. A matched rule whose owner or pool has nobody
   available goes to triage, not to the next rule: later rules were written for other
   leads, and triage makes the gap visible to whoever fixes the config.
3. Triage: the triage owner (or nobody) and the triage channel. Never silence.

Pools are a weighted round robin over counts: the available member with the fewest leads
per unit of weight is next (ties: config order). A member who lags more than one lead
behind the others' pace (just added, back from time off, re-added, re-weighted) is first
credited up to it, so nobody gets a flood of catch-up leads and nobody is starved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from typing import Annotated, Any, Literal, Protocol
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field, PlainSerializer, PositiveInt, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .lead import Lead
from .model import Model
from .timezones import is_time_zone

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WORKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


def _invalid(problem: str) -> PydanticCustomError:
    # Passed as context, not as the template, so braces in a name cannot break formatting.
    return PydanticCustomError("routing", "{problem}", {"problem": problem})


def _quoted(value: Any) -> Any:
    """One text or a list of texts; YAML's unquoted numbers and yes/no words are refused."""
    items = [value] if isinstance(value, str) else value
    for item in items if isinstance(items, list) else []:
        if isinstance(item, bool):
            raise _invalid('quote it: YAML reads unquoted yes/no/on/off as true/false (write "ON" for Ontario)')
        if isinstance(item, int | float):
            raise _invalid(f'write it in quotes, like "02134": YAML read an unquoted number ({item}) and drops leading zeros')
    return items


def _clock(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # PyYAML reads an unquoted 18:00 as the base-60 number 1080; a bare 9 likely means 9 o'clock.
        whole = int(value)
        meant = f"{whole:02d}:00" if whole < 24 else f"{whole // 60:02d}:{whole % 60:02d}" if whole < 24 * 60 else "08:00"
        raise _invalid(f'write the time in quotes, like "{meant}": unquoted, YAML read it as the number {value}')
    if isinstance(value, str):
        match = re.fullmatch(r"(\d{1,2}):(\d\d)", value.strip())
        if not match or int(match[1]) > 23 or int(match[2]) > 59:
            raise _invalid(f'"{value}" is not a 24-hour time like "08:00"')
        return time(int(match[1]), int(match[2]))
    return value


def _away_span(value: Any) -> Any:
    if isinstance(value, datetime):
        raise _invalid(f"{value} has a time of day; give a date (2026-12-24) or a range (2026-12-26..2026-12-31)")
    if isinstance(value, date):
        return (value, value)
    if not isinstance(value, str):
        return value
    first, dots, last = value.partition("..")
    try:
        span = (date.fromisoformat(first.strip()), date.fromisoformat((last if dots else first).strip()))
    except ValueError:
        raise _invalid(f'"{value}" is not a date (2026-12-24) or an inclusive range (2026-12-26..2026-12-31)') from None
    if span[1] < span[0]:
        raise _invalid(f'"{value}" ends before it starts')
    return span


def _span_text(span: tuple[date, date]) -> str:
    return str(span[0]) if span[0] == span[1] else f"{span[0]}..{span[1]}"


def _weekday(value: Any) -> Any:
    key = value.strip().lower() if isinstance(value, str) else value
    return DAYS[_FULL_DAYS.index(key)] if key in _FULL_DAYS else key


Texts = Annotated[list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]], Field(min_length=1)]
Condition = Annotated[Texts, BeforeValidator(_quoted)]
Clock = Annotated[time, BeforeValidator(_clock), PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str)]
AwaySpan = Annotated[tuple[date, date], BeforeValidator(_away_span), PlainSerializer(_span_text, return_type=str)]


class Hours(Model):
    # Local times in the owner's time zone; an end at or before the start runs past midnight.
    start: Clock
    end: Clock
    # The days a shift starts on; Monday to Friday unless given.
    days: list[Annotated[Weekday, BeforeValidator(_weekday)]] = Field(default_factory=lambda: list(WORKDAYS), min_length=1)


class OwnerSpec(Model):
    # Exactly one of: HubSpot owner id (the owners API's `id`, never `userId`), or an email resolved through HubSpot.
    id: str | None = None
    email: str | None = None
    # Slack user id for mentions; else looked up by email.
    slack: str | None = Field(None, pattern=r"^[UW][A-Z0-9]{2,}$")
    # IANA zone that hours and away dates are read in.
    timezone: str = "UTC"
    # Working hours; always available when omitted.
    hours: Hours | None = None
    # Dates off, each a date or an inclusive range "2026-12-26..2026-12-31", in the owner's zone.
    away: list[AwaySpan] = Field(default_factory=list)

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else value
        if isinstance(text, str) and not text.isdigit():
            raise _invalid(f'"{text}" is not a HubSpot owner id (a number like "12345678": the owners API\'s id)')
        return text

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value.strip()):
            raise _invalid(f'"{value}" is not an email address')
        return value.strip().lower() if value else value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not is_time_zone(value):
            raise _invalid(f'unknown time zone "{value}": use an IANA name like "America/Chicago"')
        return value

    @model_validator(mode="after")
    def _one_identity(self) -> OwnerSpec:
        if (self.id is None) == (self.email is None):
            raise _invalid("give exactly one of id (HubSpot owner id) or email")
        return self


class PoolSpec(Model):
    # Owner name -> weight: a weight-2 member gets twice the leads of a weight-1 member.
    members: dict[str, PositiveInt] = Field(min_length=1)


class RuleWhen(Model):
    # Every condition given must hold; none given matches every lead. Texts compare
    # case-insensitively; postal codes ignore spaces.
    postal_prefix: Condition | None = None
    postal_in: Condition | None = None
    city_in: Condition | None = None
    state_in: Condition | None = None
    # A lead listing several services ("Roofing, Gutters") matches if any one does.
    service_in: Condition | None = None
    # Source names as configured under sources:.
    source_in: Condition | None = None
    # Score segments (scoring.segments), e.g. hot, warm, cold.
    segment_in: Condition | None = None


class RouteRule(Model):
    name: str = Field(min_length=1)
    when: RuleWhen = Field(default_factory=RuleWhen)
    # Exactly one target: an owner, a pool, or the triage queue.
    owner: str | None = None
    pool: str | None = None
    queue: Literal["triage"] | None = None
    # Slack channel for the leads this rule routes; None = the default.
    channel: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RouteRule:
        given = [key for key in ("owner", "pool", "queue") if getattr(self, key) is not None]
        if len(given) != 1:
            has = f"it has {' and '.join(given)}" if given else "it has none"
            raise _invalid(f'rule "{self.name}" needs exactly one of owner, pool or queue: triage ({has})')
        return self


class TriageSettings(Model):
    # Who owns leads nobody else could take; None leaves them unassigned (but announced).
    owner: str | None = None
    # Where triage leads are announced; None = slack.channel.
    channel: str | None = None


class RoutingSettings(Model):
    owners: dict[str, OwnerSpec] = Field(default_factory=dict)
    pools: dict[str, PoolSpec] = Field(default_factory=dict)
    rules: list[RouteRule] = Field(default_factory=list)
    triage: TriageSettings = Field(default_factory=TriageSettings)

    @model_validator(mode="after")
    def _references(self) -> RoutingSettings:
        problems = [
            f'pools.{pool}.members: no owner named "{member}"{_known(self.owners)}'
            for pool, spec in self.pools.items()
            for member in spec.members
            if member not in self.owners
        ]
        problems += self._rule_problems()
        if self.triage.owner is not None and self.triage.owner not in self.owners:
            problems.append(f'triage.owner: no owner named "{self.triage.owner}"{_known(self.owners)}')
        if problems:
            raise _invalid("; ".join(problems))
        return self

    def _rule_problems(self) -> list[str]:
        problems, names = [], set()
        catch_all: str | None = None
        for i, rule in enumerate(self.rules):
            where = f"rules.{i}"
            if rule.name in names:
                problems.append(f'{where}: rule name "{rule.name}" is used more than once')
            if catch_all is not None:
                problems.append(f'{where}: rule "{rule.name}" can never match: rule "{catch_all}" before it matches every lead')
            if rule.owner is not None and rule.owner not in self.owners:
                problems.append(f'{where}.owner: no owner named "{rule.owner}"{_known(self.owners)}')
            if rule.pool is not None and rule.pool not in self.pools:
                problems.append(f'{where}.pool: no pool named "{rule.pool}"{_known(self.pools)}')
            names.add(rule.name)
            if catch_all is None and rule.when == RuleWhen():
                catch_all = rule.name
        return problems


def _known(names: Mapping[str, Any]) -> str:
    return f" (defined: {', '.join(names)})" if names else " (none defined)"


# -- the interfaces the ledger and HubSpot implement -----------------------------------


class PoolStore(Protocol):
    """Each pool's round-robin counts, persisted across deliveries and restarts."""

    def assigned_counts(self, pool: str) -> dict[str, int]:
        """Member -> count in ``pool`` (leads given, plus catch-up credit); members never counted are absent."""

    def record_assignment(self, pool: str, member: str, delivery_id: str) -> None:
        """Add one to ``member``'s count: it was given the lead of ``delivery_id``."""

    def raise_count(self, pool: str, member: str, count: int) -> None:
        """Set ``member``'s count to ``count`` unless it is already higher (catch-up credit)."""


class OwnerDirectory(Protocol):
    """HubSpot's owners, as routing needs them. Errors (a HubSpot outage) propagate to the caller."""

    def owner_id(self, spec: OwnerSpec) -> str | None:
        """The HubSpot owner id: ``spec.id`` as is, or ``spec.email`` resolved; None if no owner has it."""

    def is_active(self, owner_id: str) -> bool:
        """Whether the owner can still be assigned records (not archived or deactivated)."""


class MemoryPoolStore:
    """A PoolStore in memory: for tests, and for explaining a route without touching the ledger."""

    def __init__(self, counts: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.counts: dict[str, dict[str, int]] = {pool: dict(c) for pool, c in (counts or {}).items()}

    def assigned_counts(self, pool: str) -> dict[str, int]:
        return dict(self.counts.get(pool, {}))

    def record_assignment(self, pool: str, member: str, delivery_id: str) -> None:
        counts = self.counts.setdefault(pool, {})
        counts[member] = counts.get(member, 0) + 1

    def raise_count(self, pool: str, member: str, count: int) -> None:
        counts = self.counts.setdefault(pool, {})
        counts[member] = max(counts.get(member, 0), count)


# -- deciding ---------------------------------------------------------------------------


@dataclass
class RouteContext:
    lead: Lead
    # The configured source name the lead came from (sources[].name).
    source: str
    # The score segment, if scored.
    segment: str | None
    # The contact's current HubSpot owner id, if the contact already exists.
    existing_owner_id: str | None
    # Timezone-aware; hours and away dates are judged at this instant.
    now: datetime
    # Recorded with a pool assignment; only a dry run may leave it out.
    delivery_id: str | None = None


@dataclass(frozen=True)
class Decision:
    owner_name: str | None
    owner_id: str | None
    rule: str | None
    pool: str | None
    # Slack channel chosen by the rule or triage; None = the default channel.
    channel: str | None
    triage: bool
    # The routing_reason: one sentence, never the lead's email or phone.
    reason: str
    # For `leadbridge route`: each rule checked and each pool member weighed, and why.
    considered: list[str] = field(default_factory=list)


def route(
    ctx: RouteContext, settings: RoutingSettings, store: PoolStore, directory: OwnerDirectory, *, dry_run: bool = False
) -> Decision:
    """Choose the lead's owner (see the module docstring); a dry run records nothing in ``store``."""
    if ctx.now.tzinfo is None or ctx.now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not dry_run and ctx.delivery_id is None:
        raise ValueError("route needs ctx.delivery_id to record a pool assignment (or dry_run=True to only explain)")
    notes: list[str] = []
    kept = _returning_owner(ctx, settings, directory, notes)
    rule, matched_on = _first_match(ctx, settings.rules, notes)
    if kept is not None:
        name, kept_id, label = kept
        channel = rule.channel if rule else None
        return Decision(name, kept_id, None, None, channel, False, f"returning contact keeps {label}", notes)
    if rule is None:
        return _triage("no rule matched", None, None, settings, directory, notes)
    head = f'rule "{rule.name}" ({", ".join(matched_on) or "every lead"})'
    if rule.queue is not None:
        return _triage(head, rule.name, None, settings, directory, notes, channel=rule.channel)
    if rule.owner is not None:
        owner_id, why = _check_owner(settings.owners[rule.owner], ctx.now, directory)
        notes.append(f"owner {rule.owner}: {why or 'available'}")
        if owner_id is None:
            return _triage(f"{head} → owner {rule.owner}: {why}", rule.name, None, settings, directory, notes)
        return Decision(rule.owner, owner_id, rule.name, None, rule.channel, False, f"{head} → owner {rule.owner}", notes)
    return _from_pool(ctx, head, rule, settings, store, directory, notes, dry_run)


def _returning_owner(
    ctx: RouteContext, settings: RoutingSettings, directory: OwnerDirectory, notes: list[str]
) -> tuple[str | None, str, str] | None:
    """The contact's current owner (configured name, id, label) if it keeps the contact."""
    owner_id = ctx.existing_owner_id
    if not owner_id:
        return None
    name = next((n for n, spec in settings.owners.items() if directory.owner_id(spec) == owner_id), None)
    label = f"owner {name} (HubSpot owner {owner_id})" if name else f"HubSpot owner {owner_id}"
    if name is not None and name == settings.triage.owner:
        notes.append(f"existing {label} is the triage owner: routed by rules")
        return None
    if not directory.is_active(owner_id):
        notes.append(f"existing {label} is inactive in HubSpot: routed by rules")
        return None
    notes.append(f"existing {label} is active: kept")
    return name, owner_id, label


def _first_match(ctx: RouteContext, rules: list[RouteRule], notes: list[str]) -> tuple[RouteRule | None, list[str]]:
    for i, rule in enumerate(rules):
        matched_on, miss = _check_when(rule.when, ctx)
        if miss is None:
            notes.append(f'rule "{rule.name}": matches ({", ".join(matched_on) or "every lead"})')
            notes.extend(f'rule "{later.name}": not reached' for later in rules[i + 1 :])
            return rule, matched_on
        notes.append(f'rule "{rule.name}": no match ({miss})')
    return None, []


def _postal(text: str) -> str:
    return text.replace(" ", "").upper()


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _same_postal(value: str, option: str) -> bool:
    # A ZIP+4 (94107-1234) is in the ZIP it extends.
    return value == option or value.split("-")[0] == option


def _same(value: str, option: str) -> bool:
    return value == option


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _check_when(when: RuleWhen, ctx: RouteContext) -> tuple[list[str], str | None]:
    """What each condition matched on (config spelling), or why the first one failing does not hold."""
    lead = ctx.lead
    services: list[str | None] = [part.strip() for part in (lead.service or "").split(",")]
    checks: list[tuple[str, str, list[str] | None, list[str | None], Callable[[str], str], Callable[[str, str], bool]]] = [
        ("postal prefix", "postal code", when.postal_prefix, [lead.postal_code], _postal, str.startswith),
        ("postal code", "postal code", when.postal_in, [lead.postal_code], _postal, _same_postal),
        ("city", "city", when.city_in, [lead.city], _fold, _same),
        ("state", "state", when.state_in, [lead.state], _fold, _same),
        ("service", "service", when.service_in, services, _fold, _same),
        ("source", "source", when.source_in, [ctx.source], _fold, _same),
        ("segment", "segment", when.segment_in, [ctx.segment], _fold, _same),
    ]
    matched_on: list[str] = []
    for label, subject, options, values, norm, test in checks:
        if options is None:
            continue
        present = [v for v in values if v]
        hit = next((o for o in options for v in present if test(norm(v), norm(o))), None)
        if hit is None:
            if not present:
                return matched_on, f"no {subject}"
            shown = ", ".join(present)
            verb = "does not start with" if label == "postal prefix" else "is not"
            return matched_on, f"{subject} {shown} {verb} {_either(options)}"
        matched_on.append(f"{label} {hit}")
    return matched_on, None


def why_unavailable(spec: OwnerSpec, now: datetime) -> str | None:
    """Why an owner cannot take a lead at ``now`` (away, outside hours), or None if they can."""
    local = now.astimezone(ZoneInfo(spec.timezone))
    today = local.date()
    if any(first <= today <= last for first, last in spec.away):
        return f"away until {_back_after(spec.away, today)}"
    hours = spec.hours
    if hours is None or _within(hours, local):
        return None
    shift = f"{hours.start:%H:%M}–{hours.end:%H:%M} {_days_text(hours.days)}, {spec.timezone}"
    return f"outside working hours ({shift}; it is {DAYS[local.weekday()]} {local:%H:%M} there)"


def _back_after(away: list[tuple[date, date]], day: date) -> date:
    # The last day of the stretch of consecutive away days that includes ``day``.
    while any(first <= day + timedelta(days=1) <= last for first, last in away):
        day += timedelta(days=1)
    return day


def _within(hours: Hours, local: datetime) -> bool:
    clock, today = local.time(), DAYS[local.weekday()]
    if hours.start < hours.end:
        return today in hours.days and hours.start <= clock < hours.end
    # An overnight shift belongs to the day it starts on.
    yesterday = DAYS[(local.weekday() - 1) % 7]
    return (today in hours.days and clock >= hours.start) or (yesterday in hours.days and clock < hours.end)


def _days_text(days: list[Weekday]) -> str:
    ordered = sorted(set(days), key=DAYS.index)
    first, last = DAYS.index(ordered[0]), DAYS.index(ordered[-1])
    if len(ordered) > 2 and last - first + 1 == len(ordered):
        return f"{ordered[0]}–{ordered[-1]}"
    return ", ".join(ordered)


def _check_owner(spec: OwnerSpec, now: datetime, directory: OwnerDirectory) -> tuple[str | None, str | None]:
    """The owner's HubSpot id if they can take a lead now, else None and why not."""
    why = why_unavailable(spec, now)
    if why is not None:
        return None, why
    owner_id = directory.owner_id(spec)
    if owner_id is None:
        return None, "not found among HubSpot owners"
    if not directory.is_active(owner_id):
        return None, "inactive in HubSpot"
    return owner_id, None


def caught_up_counts(counts: Mapping[str, int], weights: Mapping[str, int]) -> dict[str, int]:
    """Each member's count, credited up to the pool's pace where it lags by more than a lead.

    A member's pace is the most leads per unit of weight any other member had before its
    latest lead. In plain rotation nobody is below it (whoever took a lead was lowest
    then), so this only moves a member who joined, was away, was re-added or re-weighted:
    they rejoin the rotation at the front instead of taking every lead until they catch up.
    """
    caught_up = {}
    for name, weight in weights.items():
        paces = [Fraction(counts.get(other, 0) - 1, w) for other, w in weights.items() if other != name]
        pace = max(paces, default=Fraction(0))
        caught_up[name] = max(counts.get(name, 0), math.ceil(pace * weight))
    return caught_up


def _from_pool(
    ctx: RouteContext,
    head: str,
    rule: RouteRule,
    settings: RoutingSettings,
    store: PoolStore,
    directory: OwnerDirectory,
    notes: list[str],
    dry_run: bool,
) -> Decision:
    pool = str(rule.pool)
    weights = settings.pools[pool].members
    recorded = store.assigned_counts(pool)
    counts = caught_up_counts(recorded, weights)
    credited = {m: c for m, c in counts.items() if c > recorded.get(m, 0)}
    turn = _take_turn(pool, weights, counts, settings, ctx.now, directory, notes)
    notes.extend(f"pool {pool}: {m} credited from {recorded.get(m, 0)} to {c} to keep pace" for m, c in credited.items())
    if not dry_run:
        for member, count in credited.items():
            store.raise_count(pool, member, count)
        if turn.member is not None:
            store.record_assignment(pool, turn.member, ctx.delivery_id or "")
    skipped = [f"{member}: {why}" for member, why in turn.skipped]
    if turn.member is None:
        return _triage(
            f"{head} → pool {pool}: nobody available ({'; '.join(skipped)})", rule.name, pool, settings, directory, notes
        )
    standing = _standing(turn.member, weights, counts)
    detail = "; ".join([standing] + [f"{member} skipped: {why}" for member, why in turn.skipped])
    reason = f"{head} → pool {pool} → {turn.member} ({detail})"
    return Decision(turn.member, turn.owner_id, rule.name, pool, rule.channel, False, reason, notes)


@dataclass
class _Turn:
    member: str | None = None
    owner_id: str | None = None
    # Members ahead of the pick in turn who could not take the lead, and why.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _take_turn(
    pool: str,
    weights: Mapping[str, int],
    counts: Mapping[str, int],
    settings: RoutingSettings,
    now: datetime,
    directory: OwnerDirectory,
    notes: list[str],
) -> _Turn:
    """The first available member by fewest leads per unit of weight, then config order."""
    position = list(weights)
    order = sorted(weights, key=lambda m: (Fraction(counts[m], weights[m]), position.index(m)))
    turn = _Turn()
    for member in order:
        spec, standing = settings.owners[member], _standing(member, weights, counts)
        if turn.member is not None:
            why = why_unavailable(spec, now)
            notes.append(f"pool {pool}: {member} " + (f"also unavailable: {why}" if why else f"next in turn ({standing})"))
            continue
        owner_id, why = _check_owner(spec, now, directory)
        if owner_id is None:
            turn.skipped.append((member, str(why)))
            notes.append(f"pool {pool}: {member} skipped: {why}")
        else:
            turn.member, turn.owner_id = member, owner_id
            notes.append(f"pool {pool}: {member} picked ({standing})")
    return turn


def _standing(member: str, weights: Mapping[str, int], counts: Mapping[str, int]) -> str:
    return f"weight {weights[member]}, {counts[member]} of {sum(counts.values())} assigned"


def _triage(
    head: str,
    rule: str | None,
    pool: str | None,
    settings: RoutingSettings,
    directory: OwnerDirectory,
    notes: list[str],
    *,
    channel: str | None = None,
) -> Decision:
    """To the triage owner, whatever their hours (someone must own it), and the triage channel."""
    name = settings.triage.owner
    owner_id = directory.owner_id(settings.owners[name]) if name is not None else None
    if name is None:
        tail = "triage (no triage owner)"
    elif owner_id is None or not directory.is_active(owner_id):
        why = "not found among HubSpot owners" if owner_id is None else "inactive in HubSpot"
        tail, name, owner_id = f"triage (triage owner {name} is {why}: left unassigned)", None, None
    else:
        tail = f"triage → {name}"
    notes.append(f"sent to {tail}")
    return Decision(name, owner_id, rule, pool, channel or settings.triage.channel, True, f"{head} → {tail}", notes)


def next_in_pool(
    pool: str,
    leaving: str | None,
    settings: RoutingSettings,
    store: PoolStore,
    directory: OwnerDirectory,
    now: datetime,
    delivery_id: str,
) -> tuple[str | None, str | None, str]:
    """The pool's next turn for a lead its owner ``leaving`` gives up (a speed-to-lead reassignment).

    The same weighted round robin as ``route`` (catch-up credit, availability, the count
    recorded), with ``leaving`` left out; returns (member, owner id, reason). Call it with the
    ledger's write lock held and owners resolved, as routing is.
    """
    weights = {m: w for m, w in settings.pools[pool].members.items() if m != leaving}
    if not weights:
        return None, None, f"pool {pool} has nobody but {leaving}"
    recorded = store.assigned_counts(pool)
    counts = caught_up_counts(recorded, weights)
    turn = _take_turn(pool, weights, counts, settings, now, directory, [])
    for member, count in counts.items():
        if count > recorded.get(member, 0):
            store.raise_count(pool, member, count)
    skipped = "; ".join(f"{member} skipped: {why}" for member, why in turn.skipped)
    if turn.member is None:
        return None, None, f"pool {pool}: nobody else available ({skipped})"
    store.record_assignment(pool, turn.member, delivery_id)
    detail = "; ".join([_standing(turn.member, weights, counts)] + ([skipped] if skipped else []))
    return turn.member, turn.owner_id, f"pool {pool} → {turn.member} ({detail})"
