"""Owner routing: rules in order, weighted pools that stay fair through edits and time
off, returning contacts, triage, reasons, and config validation.

Routing is pure over its inputs, so these tests pass ``now`` and a ``MemoryPoolStore``;
``FakeOwners`` stands in for HubSpot's owners API (an external service). The ledger's
own PoolStore is tested with the ledger.
"""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import settings_from_dict
from bridge.errors import ConfigError
from bridge.lead import Lead
from bridge.routing import (
    Decision,
    MemoryPoolStore,
    OwnerSpec,
    RouteContext,
    RoutingSettings,
    caught_up_counts,
    route,
    why_unavailable,
)

# The `routing:` section of config.example.yaml: a roofing crew pool weighted 2:1:1,
# a plumbing owner given by email, territory rules on postal prefixes and cities, triage.
EXAMPLE = """
routing:
  owners:
    alice:
      id: "71234501"
      slack: U01ALICE
      timezone: America/Los_Angeles
      hours: {start: "07:00", end: "17:00", days: [mon, tue, wed, thu, fri, sat]}
      away: ["2026-12-24..2026-12-26"]
    bob:
      id: "71234502"
      timezone: America/Los_Angeles
      hours: {start: "08:00", end: "18:00"}
    carol:
      email: carol@acme-roofing.example
      timezone: America/Chicago
      hours: {start: "08:00", end: "17:00"}
    pat:
      email: pat@acme-plumbing.example
      timezone: America/Los_Angeles
    dana:
      id: "71234509"
  pools:
    roofing_crew:
      members: {alice: 2, bob: 1, carol: 1}
  rules:
    - name: sf-roofing
      when: {postal_prefix: ["940", "941"], service_in: [roofing, roof repair, gutters]}
      pool: roofing_crew
      channel: "#leads-roofing"
    - name: east-bay-roofing
      when: {city_in: [Oakland, Berkeley, Alameda], service_in: [roofing, roof repair]}
      owner: bob
      channel: "#leads-roofing"
    - name: plumbing
      when: {service_in: [plumbing, water heater, drain cleaning]}
      owner: pat
      channel: "#leads-plumbing"
    - name: hot-paid-leads
      when: {source_in: [google-ads], segment_in: [hot]}
      pool: roofing_crew
    - name: commercial
      when: {service_in: [commercial]}
      queue: triage
      channel: "#leads-commercial"
  triage:
    owner: dana
    channel: "#leads-triage"
"""

# Wednesday 2026-03-04 18:00 UTC: 10:00 in Los Angeles, 12:00 in Chicago; everyone works.
NOW = datetime(2026, 3, 4, 18, 0, tzinfo=UTC)
EMAILS = {"carol@acme-roofing.example": "71234503", "pat@acme-plumbing.example": "71234504"}
IDS = {"alice": "71234501", "bob": "71234502", "carol": "71234503", "pat": "71234504", "dana": "71234509"}
SF_ROOF = {"postal_code": "94107", "service": "Roofing"}


class FakeOwners:
    """HubSpot's owners API as routing sees it: ids as given, known emails, some inactive."""

    def __init__(self, emails: dict[str, str] | None = None, inactive: tuple[str, ...] = ()) -> None:
        self.emails = EMAILS if emails is None else emails
        self.inactive = set(inactive)

    def owner_id(self, spec: OwnerSpec) -> str | None:
        return spec.id if spec.id else self.emails.get(spec.email or "")

    def is_active(self, owner_id: str) -> bool:
        return owner_id not in self.inactive


def example_data() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE)["routing"]


def settings(data: dict[str, Any] | None = None) -> RoutingSettings:
    return RoutingSettings.model_validate(example_data() if data is None else data)


def context(
    now: datetime = NOW,
    source: str = "typeform",
    segment: str | None = "warm",
    existing: str | None = None,
    delivery: str | None = "dlv_1",
    **lead: str,
) -> RouteContext:
    return RouteContext(Lead(**(lead or SF_ROOF)), source, segment, existing, now, delivery)


def send(n: int, config: RoutingSettings, store: MemoryPoolStore, now: datetime = NOW) -> list[str | None]:
    """Route n San Francisco roofing leads; the owners they went to, in order."""
    return [route(context(now, delivery=f"dlv_{i}"), config, store, FakeOwners()).owner_name for i in range(n)]


def longest_run(names: list[str | None], who: str) -> int:
    return max((len(list(run)) for name, run in groupby(names) if name == who), default=0)


# -- rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "lead", "source", "segment", "explained"),
    [
        ({"postal_prefix": ["941"]}, {"postal_code": "94107"}, "typeform", None, "matches (postal prefix 941)"),
        ({"postal_prefix": ["SW1"]}, {"postal_code": "sw1a 1aa"}, "typeform", None, "matches (postal prefix SW1)"),
        (
            {"postal_prefix": ["945", "946"]},
            {"postal_code": "94107"},
            "typeform",
            None,
            "no match (postal code 94107 does not start with 945 or 946)",
        ),
        ({"postal_prefix": ["941"]}, {"city": "Oakland"}, "typeform", None, "no match (no postal code)"),
        ({"postal_in": ["94107"]}, {"postal_code": "94107-1234"}, "typeform", None, "matches (postal code 94107)"),
        ({"city_in": ["San Francisco"]}, {"city": "SAN  FRANCISCO"}, "typeform", None, "matches (city San Francisco)"),
        (
            {"city_in": ["Oakland", "Berkeley"]},
            {"city": "Alameda"},
            "typeform",
            None,
            "no match (city Alameda is not Oakland or Berkeley)",
        ),
        ({"state_in": ["CA"]}, {"state": "ca"}, "typeform", None, "matches (state CA)"),
        ({"service_in": ["roofing"]}, {"service": "Gutters, Roofing"}, "typeform", None, "matches (service roofing)"),
        (
            {"service_in": ["roofing", "roof repair"]},
            {"service": "Painting"},
            "typeform",
            None,
            "no match (service Painting is not roofing or roof repair)",
        ),
        ({"source_in": ["google-ads"]}, {"city": "Reno"}, "google-ads", None, "matches (source google-ads)"),
        ({"source_in": ["google-ads"]}, {"city": "Reno"}, "typeform", None, "no match (source typeform is not google-ads)"),
        ({"segment_in": ["hot", "warm"]}, {"city": "Reno"}, "typeform", "warm", "matches (segment warm)"),
        ({"segment_in": ["hot"]}, {"city": "Reno"}, "typeform", None, "no match (no segment)"),
        (
            {"postal_prefix": ["941"], "service_in": ["roofing"], "segment_in": ["hot"]},
            SF_ROOF,
            "typeform",
            "cold",
            "no match (segment cold is not hot)",
        ),
        ({}, {"city": "Reno"}, "typeform", None, "matches (every lead)"),
    ],
)
def test_each_condition_matches_case_insensitively_and_explains_itself(
    when: dict[str, Any], lead: dict[str, str], source: str, segment: str | None, explained: str
) -> None:
    config = settings({"owners": {"alice": {"id": "1"}}, "rules": [{"name": "r", "when": when, "owner": "alice"}]})
    decision = route(context(source=source, segment=segment, **lead), config, MemoryPoolStore(), FakeOwners())
    assert decision.considered[0] == f'rule "r": {explained}'
    assert decision.rule == ("r" if explained.startswith("matches") else None)


@pytest.mark.parametrize(
    ("lead", "source", "segment", "expected"),
    [
        (SF_ROOF, "typeform", "warm", ("sf-roofing", "alice", IDS["alice"], "#leads-roofing", False)),
        (
            {"postal_code": "94016", "service": "Gutters, Skylights"},
            "typeform",
            "cold",
            ("sf-roofing", "alice", IDS["alice"], "#leads-roofing", False),
        ),
        (
            {"postal_code": "94607", "city": "Oakland", "service": "Roof repair"},
            "typeform",
            "warm",
            ("east-bay-roofing", "bob", IDS["bob"], "#leads-roofing", False),
        ),
        (
            {"postal_code": "94107", "service": "Water heater"},
            "typeform",
            "cold",
            ("plumbing", "pat", IDS["pat"], "#leads-plumbing", False),
        ),
        (
            {"postal_code": "95014", "service": "Siding"},
            "google-ads",
            "hot",
            ("hot-paid-leads", "alice", IDS["alice"], None, False),
        ),
        ({"postal_code": "95014", "service": "Siding"}, "google-ads", "warm", (None, "dana", IDS["dana"], "#leads-triage", True)),
        (
            {"postal_code": "94107", "service": "Commercial"},
            "typeform",
            "hot",
            ("commercial", "dana", IDS["dana"], "#leads-commercial", True),
        ),
    ],
    ids=[
        "postal-prefix",
        "second-prefix-multi-service",
        "city",
        "service-by-email-owner",
        "source-and-segment",
        "no-match",
        "queue",
    ],
)
def test_example_rules_route_by_territory_service_source_and_segment(
    lead: dict[str, str], source: str, segment: str, expected: tuple[Any, ...]
) -> None:
    decision = route(context(source=source, segment=segment, **lead), settings(), MemoryPoolStore(), FakeOwners())
    assert (decision.rule, decision.owner_name, decision.owner_id, decision.channel, decision.triage) == expected


def test_considered_lists_every_rule_and_every_pool_member_with_why() -> None:
    store = MemoryPoolStore({"roofing_crew": {"alice": 3, "bob": 1, "carol": 1}})
    decision = route(context(), settings(), store, FakeOwners(inactive=(IDS["bob"],)))
    assert decision.considered == [
        'rule "sf-roofing": matches (postal prefix 941, service roofing)',
        'rule "east-bay-roofing": not reached',
        'rule "plumbing": not reached',
        'rule "hot-paid-leads": not reached',
        'rule "commercial": not reached',
        "pool roofing_crew: bob skipped: inactive in HubSpot",
        "pool roofing_crew: carol picked (weight 1, 1 of 5 assigned)",
        "pool roofing_crew: alice next in turn (weight 2, 3 of 5 assigned)",
    ]
    plumbing = route(context(postal_code="94107", service="Water heater"), settings(), store, FakeOwners())
    assert plumbing.considered[:3] == [
        'rule "sf-roofing": no match (service Water heater is not roofing, roof repair or gutters)',
        'rule "east-bay-roofing": no match (no city)',
        'rule "plumbing": matches (service water heater)',
    ]


# -- pools --------------------------------------------------------------------------------


def test_weights_2_1_1_give_exactly_50_25_25_over_100_leads() -> None:
    store = MemoryPoolStore()
    owners = send(100, settings(), store)
    assert owners[:8] == ["alice", "bob", "carol", "alice", "alice", "bob", "carol", "alice"]
    assert Counter(owners) == {"alice": 50, "bob": 25, "carol": 25}
    assert store.counts == {"roofing_crew": {"alice": 50, "bob": 25, "carol": 25}}


def test_adding_and_removing_reps_mid_stream_keeps_shares_fair_without_a_flood() -> None:
    data, store = example_data(), MemoryPoolStore()
    assert Counter(send(40, settings(data), store)) == {"alice": 20, "bob": 10, "carol": 10}

    data["owners"]["dan"] = {"id": "71234505"}
    data["pools"]["roofing_crew"]["members"]["dan"] = 1
    added = send(30, settings(data), store)
    # Dan starts at the pool's pace: his share from the first lead, not the 10 he "missed".
    assert Counter(added) == {"alice": 12, "bob": 6, "carol": 6, "dan": 6}
    assert (added.index("dan"), longest_run(added, "dan")) == (3, 1)

    del data["pools"]["roofing_crew"]["members"]["bob"]
    removed = send(30, settings(data), store)
    assert Counter(removed) == {"alice": 15, "carol": 8, "dan": 7}
    assert store.counts["roofing_crew"] == {"alice": 47, "bob": 16, "carol": 24, "dan": 23}

    data["pools"]["roofing_crew"]["members"]["bob"] = 1
    readded = send(20, settings(data), store)
    # Bob's 16 is credited up to the pace (23), not paid back with a run of seven leads.
    assert Counter(readded) == {"alice": 8, "bob": 4, "carol": 4, "dan": 4}
    assert max(longest_run(added + removed + readded, who) for who in ("alice", "bob", "carol", "dan")) == 2
    assert longest_run(readded, "bob") == 1


def test_a_rep_back_from_time_off_rejoins_at_the_pace_instead_of_catching_up() -> None:
    data, store = example_data(), MemoryPoolStore()
    data["owners"]["bob"]["away"] = ["2026-03-02..2026-03-06"]
    config = settings(data)
    away = send(21, config, store)
    assert Counter(away) == {"alice": 14, "carol": 7}
    back = send(20, config, store, now=datetime(2026, 3, 9, 18, 0, tzinfo=UTC))
    assert Counter(back) == {"alice": 10, "bob": 5, "carol": 5}
    assert longest_run(back, "bob") == 1


@pytest.mark.parametrize(
    ("counts", "weights", "expected"),
    [
        ({"alice": 4, "bob": 2, "carol": 2}, {"alice": 2, "bob": 1, "carol": 1}, {"alice": 4, "bob": 2, "carol": 2}),
        ({"alice": 5, "bob": 2, "carol": 2}, {"alice": 2, "bob": 1, "carol": 1}, {"alice": 5, "bob": 2, "carol": 2}),
        ({}, {"alice": 2, "bob": 1}, {"alice": 0, "bob": 0}),
        # A new member starts at the pace the others set.
        (
            {"alice": 20, "bob": 10, "carol": 10},
            {"alice": 2, "bob": 1, "carol": 1, "dan": 1},
            {"alice": 20, "bob": 10, "carol": 10, "dan": 10},
        ),
        # Two new members at once both start at the pace.
        ({"alice": 20, "bob": 10}, {"alice": 2, "bob": 1, "dan": 1, "erin": 2}, {"alice": 20, "bob": 10, "dan": 10, "erin": 19}),
        # Back after a week off: credited up to one lead behind the leader's pace.
        ({"alice": 40, "bob": 5, "carol": 20}, {"alice": 2, "bob": 1, "carol": 1}, {"alice": 40, "bob": 20, "carol": 20}),
        # Alice's weight halved: the others are credited up to her pace.
        ({"alice": 20, "bob": 10, "carol": 10}, {"alice": 1, "bob": 1, "carol": 1}, {"alice": 20, "bob": 19, "carol": 19}),
    ],
    ids=["in-step", "in-step-mid-cycle", "empty", "newcomer", "two-newcomers", "back-from-time-off", "reweighted"],
)
def test_caught_up_counts(counts: dict[str, int], weights: dict[str, int], expected: dict[str, int]) -> None:
    assert caught_up_counts(counts, weights) == expected


def test_an_away_rep_is_skipped_and_named_in_the_reason() -> None:
    data = example_data()
    data["owners"]["bob"]["away"] = ["2026-03-02", "2026-03-03..2026-03-05", "2026-03-07"]
    store = MemoryPoolStore({"roofing_crew": {"alice": 3, "bob": 1, "carol": 1}})
    decision = route(context(), settings(data), store, FakeOwners())
    assert decision == Decision(
        owner_name="carol",
        owner_id=IDS["carol"],
        rule="sf-roofing",
        pool="roofing_crew",
        channel="#leads-roofing",
        triage=False,
        reason='rule "sf-roofing" (postal prefix 941, service roofing) → pool roofing_crew → carol '
        "(weight 1, 1 of 5 assigned; bob skipped: away until 2026-03-05)",
        considered=decision.considered,
    )
    assert store.counts == {"roofing_crew": {"alice": 3, "bob": 1, "carol": 2}}


BOB_OFF = "bob skipped: outside working hours (08:00–18:00 mon–fri, America/Los_Angeles; it is {} there)"
CAROL_OFF = "carol skipped: outside working hours (08:00–17:00 mon–fri, America/Chicago; it is {} there)"


@pytest.mark.parametrize(
    ("now", "detail"),
    [
        # 07:30 in Los Angeles (PST), 09:30 in Chicago.
        (datetime(2026, 3, 4, 15, 30, tzinfo=UTC), "carol (weight 1, 1 of 5 assigned; " + BOB_OFF.format("wed 07:30") + ")"),
        (datetime(2026, 3, 4, 16, 30, tzinfo=UTC), "bob (weight 1, 1 of 5 assigned)"),
        # The same UTC time a week later is 08:30 in Los Angeles: daylight saving time began on March 8.
        (datetime(2026, 3, 11, 15, 30, tzinfo=UTC), "bob (weight 1, 1 of 5 assigned)"),
        # Saturday: alice works Saturdays, bob and carol do not.
        (
            datetime(2026, 3, 7, 18, 0, tzinfo=UTC),
            "alice (weight 2, 3 of 5 assigned; " + BOB_OFF.format("sat 10:00") + "; " + CAROL_OFF.format("sat 12:00") + ")",
        ),
    ],
    ids=["bob-before-hours", "bob-in-hours", "after-dst", "weekend"],
)
def test_working_hours_are_read_in_each_owners_time_zone(now: datetime, detail: str) -> None:
    store = MemoryPoolStore({"roofing_crew": {"alice": 3, "bob": 1, "carol": 1}})
    decision = route(context(now), settings(), store, FakeOwners())
    assert decision.reason == f'rule "sf-roofing" (postal prefix 941, service roofing) → pool roofing_crew → {detail}'


@pytest.mark.parametrize(
    ("owner", "now", "expected"),
    [
        ({"id": "1", "hours": {"start": "22:00", "end": "06:00"}}, datetime(2026, 3, 6, 23, 0, tzinfo=UTC), None),
        # Saturday 02:00 is still Friday's night shift.
        ({"id": "1", "hours": {"start": "22:00", "end": "06:00"}}, datetime(2026, 3, 7, 2, 0, tzinfo=UTC), None),
        (
            {"id": "1", "hours": {"start": "22:00", "end": "06:00"}},
            datetime(2026, 3, 7, 23, 0, tzinfo=UTC),
            "outside working hours (22:00–06:00 mon–fri, UTC; it is sat 23:00 there)",
        ),
        (
            {"id": "1", "hours": {"start": "09:00", "end": "17:00", "days": ["Monday", "wed", "fri"]}},
            datetime(2026, 3, 3, 12, 0, tzinfo=UTC),
            "outside working hours (09:00–17:00 mon, wed, fri, UTC; it is tue 12:00 there)",
        ),
        # Consecutive away entries read as one stretch.
        (
            {"id": "1", "away": ["2026-12-24", "2026-12-25..2026-12-27"]},
            datetime(2026, 12, 24, 12, tzinfo=UTC),
            "away until 2026-12-27",
        ),
        # 03:00 UTC on the 24th is still the 23rd in Chicago.
        ({"id": "1", "timezone": "America/Chicago", "away": ["2026-12-24"]}, datetime(2026, 12, 24, 3, tzinfo=UTC), None),
    ],
    ids=["night-shift", "night-shift-past-midnight", "night-shift-off-day", "some-days", "away-stretch", "away-in-own-zone"],
)
def test_why_unavailable(owner: dict[str, Any], now: datetime, expected: str | None) -> None:
    assert why_unavailable(OwnerSpec.model_validate(owner), now) == expected


# -- returning contacts, triage, owners by email -------------------------------------------


@pytest.mark.parametrize(
    ("existing", "inactive", "expected"),
    [
        # Kept even on a day she is away: the customer knows their rep.
        (IDS["alice"], (), ("alice", IDS["alice"], None, "returning contact keeps owner alice (HubSpot owner 71234501)")),
        (IDS["carol"], (), ("carol", IDS["carol"], None, "returning contact keeps owner carol (HubSpot owner 71234503)")),
        ("71239999", (), (None, "71239999", None, "returning contact keeps HubSpot owner 71239999")),
        (
            IDS["alice"],
            (IDS["alice"],),
            (
                "bob",
                IDS["bob"],
                "sf-roofing",
                'rule "sf-roofing" (postal prefix 941, service roofing) → pool roofing_crew → bob '
                "(weight 1, 0 of 0 assigned; alice skipped: away until 2026-12-26)",
            ),
        ),
        # Triage is a holding queue, not a relationship: route as if new.
        (
            IDS["dana"],
            (),
            (
                "bob",
                IDS["bob"],
                "sf-roofing",
                'rule "sf-roofing" (postal prefix 941, service roofing) → pool roofing_crew → bob '
                "(weight 1, 0 of 0 assigned; alice skipped: away until 2026-12-26)",
            ),
        ),
    ],
    ids=["by-id", "by-email", "not-in-config", "inactive", "triage-owner"],
)
def test_a_returning_contact_keeps_its_active_owner(existing: str, inactive: tuple[str, ...], expected: tuple[Any, ...]) -> None:
    christmas_eve = datetime(2026, 12, 24, 18, 0, tzinfo=UTC)
    store = MemoryPoolStore()
    decision = route(context(christmas_eve, existing=existing), settings(), store, FakeOwners(inactive=inactive))
    assert (decision.owner_name, decision.owner_id, decision.rule, decision.reason) == expected
    assert (decision.channel, decision.triage) == ("#leads-roofing", False)
    assert store.counts == ({} if decision.rule is None else {"roofing_crew": {"bob": 1}})


def test_the_first_considered_line_says_why_an_existing_owner_was_not_kept() -> None:
    decision = route(context(existing=IDS["bob"]), settings(), MemoryPoolStore(), FakeOwners(inactive=(IDS["bob"],)))
    assert decision.considered[0] == "existing owner bob (HubSpot owner 71234502) is inactive in HubSpot: routed by rules"


SUNDAY = datetime(2026, 3, 8, 18, 0, tzinfo=UTC)  # 11:00 in Los Angeles, 13:00 in Chicago


@pytest.mark.parametrize(
    ("now", "lead", "owners", "expected"),
    [
        (
            SUNDAY,
            SF_ROOF,
            FakeOwners(),
            Decision(
                "dana",
                IDS["dana"],
                "sf-roofing",
                "roofing_crew",
                "#leads-triage",
                True,
                'rule "sf-roofing" (postal prefix 941, service roofing) → pool roofing_crew: nobody available ('
                "alice: outside working hours (07:00–17:00 mon–sat, America/Los_Angeles; it is sun 11:00 there); "
                "bob: outside working hours (08:00–18:00 mon–fri, America/Los_Angeles; it is sun 11:00 there); "
                "carol: outside working hours (08:00–17:00 mon–fri, America/Chicago; it is sun 13:00 there)) → triage → dana",
            ),
        ),
        (
            NOW,
            {"service": "Water heater"},
            FakeOwners(inactive=(IDS["pat"],)),
            Decision(
                "dana",
                IDS["dana"],
                "plumbing",
                None,
                "#leads-triage",
                True,
                'rule "plumbing" (service water heater) → owner pat: inactive in HubSpot → triage → dana',
            ),
        ),
        (
            NOW,
            {"service": "Water heater"},
            FakeOwners(emails={}),
            Decision(
                "dana",
                IDS["dana"],
                "plumbing",
                None,
                "#leads-triage",
                True,
                'rule "plumbing" (service water heater) → owner pat: not found among HubSpot owners → triage → dana',
            ),
        ),
        (
            NOW,
            {"service": "Painting"},
            FakeOwners(),
            Decision("dana", IDS["dana"], None, None, "#leads-triage", True, "no rule matched → triage → dana"),
        ),
        (
            NOW,
            {"service": "Painting"},
            FakeOwners(inactive=(IDS["dana"],)),
            Decision(
                None,
                None,
                None,
                None,
                "#leads-triage",
                True,
                "no rule matched → triage (triage owner dana is inactive in HubSpot: left unassigned)",
            ),
        ),
    ],
    ids=["pool-nobody-in-hours", "owner-inactive", "owner-email-unknown", "no-rule-matches", "triage-owner-inactive"],
)
def test_nobody_available_or_no_match_goes_to_triage_and_its_channel(
    now: datetime, lead: dict[str, str], owners: FakeOwners, expected: Decision
) -> None:
    store = MemoryPoolStore()
    decision = route(context(now, **lead), settings(), store, owners)
    assert decision == Decision(**{**expected.__dict__, "considered": decision.considered})
    assert store.counts == {}


def test_an_empty_routing_section_is_valid_and_sends_everything_to_triage() -> None:
    config = RoutingSettings.model_validate({})
    decision = route(context(), config, MemoryPoolStore(), FakeOwners())
    assert decision == Decision(
        None, None, None, None, None, True, "no rule matched → triage (no triage owner)", ["sent to triage (no triage owner)"]
    )
    assert settings_from_dict({}, Path.cwd()).routing == config


def test_owners_given_by_email_are_resolved_through_the_directory() -> None:
    decision = route(context(postal_code="94107", service="Plumbing"), settings(), MemoryPoolStore(), FakeOwners())
    assert (decision.owner_name, decision.owner_id, decision.reason) == (
        "pat",
        "71234504",
        'rule "plumbing" (service plumbing) → owner pat',
    )


# -- dry runs and what a reason may hold -----------------------------------------------------


def test_a_dry_run_explains_the_next_pick_and_records_nothing() -> None:
    data = example_data()
    data["owners"]["dan"] = {"id": "71234505"}
    data["pools"]["roofing_crew"]["members"]["dan"] = 1
    before = {"roofing_crew": {"alice": 20, "bob": 10, "carol": 10}}
    store = MemoryPoolStore(before)
    dry = [route(context(delivery=None), settings(data), store, FakeOwners(), dry_run=True) for _ in range(2)]
    assert dry[0] == dry[1]
    assert store.counts == before
    assert dry[0].considered[-1] == "pool roofing_crew: dan credited from 0 to 10 to keep pace"
    real = route(context(), settings(data), store, FakeOwners())
    assert real == dry[0]
    assert store.counts == {"roofing_crew": {"alice": 21, "bob": 10, "carol": 10, "dan": 10}}


def test_route_refuses_a_naive_time_and_a_real_run_without_a_delivery_id() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        route(context(datetime(2026, 3, 4, 18, 0)), settings(), MemoryPoolStore(), FakeOwners())
    with pytest.raises(ValueError, match="delivery_id"):
        route(context(delivery=None), settings(), MemoryPoolStore(), FakeOwners())


def test_reasons_and_explanations_never_hold_the_leads_email_or_phone() -> None:
    lead = {**SF_ROOF, "email": "jane.doe@example-home.com", "phone": "+14155550132", "city": "San Francisco"}
    for existing in (None, IDS["bob"]):
        store = MemoryPoolStore({"roofing_crew": {"alice": 3, "bob": 1, "carol": 1}})
        decision = route(context(existing=existing, **lead), settings(), store, FakeOwners(inactive=(IDS["bob"],)))
        text = " ".join([decision.reason, *decision.considered])
        assert ("jane.doe" in text, "5550132" in text, "carol" in decision.reason) == (False, False, True)


# -- config -----------------------------------------------------------------------------------


def test_the_example_round_trips_through_the_json_dump_the_config_shows() -> None:
    config = settings()
    dumped = config.model_dump(mode="json")
    assert dumped["owners"]["alice"]["hours"] == {
        "start": "07:00",
        "end": "17:00",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
    }
    assert dumped["owners"]["alice"]["away"] == ["2026-12-24..2026-12-26"]
    assert RoutingSettings.model_validate(dumped) == config


def broken(path: str, value: Any) -> dict[str, Any]:
    """The example with one value (a dotted path; list items by index) replaced."""
    data = copy.deepcopy(example_data())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        (broken("owners.pat.id", "71234504"), ["owners.pat: give exactly one of id (HubSpot owner id) or email"]),
        (broken("owners.dana", {"slack": "U0DANA"}), ["owners.dana: give exactly one of id (HubSpot owner id) or email"]),
        (
            broken("owners.dana.id", "dana"),
            ['owners.dana.id: "dana" is not a HubSpot owner id (a number like "12345678": the owners API\'s id)'],
        ),
        (
            broken("owners.bob.timezone", "America/Los_Angles"),
            ['owners.bob.timezone: unknown time zone "America/Los_Angles": use an IANA name like "America/Chicago"'],
        ),
        (broken("owners.bob.slack", "@bob"), ["owners.bob.slack: String should match pattern '^[UW][A-Z0-9]{2,}$'"]),
        (
            broken("owners.bob.hours.end", yaml.safe_load("18:00")),
            ['owners.bob.hours.end: write the time in quotes, like "18:00": unquoted, YAML read it as the number 1080'],
        ),
        (
            broken("owners.bob.hours.start", 8),
            ['owners.bob.hours.start: write the time in quotes, like "08:00": unquoted, YAML read it as the number 8'],
        ),
        (broken("owners.bob.hours.start", "8am"), ['owners.bob.hours.start: "8am" is not a 24-hour time like "08:00"']),
        (
            broken("owners.bob.hours.days", ["mon", "funday"]),
            ["owners.bob.hours.days.1: Input should be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'"],
        ),
        (
            broken("owners.alice.away.0", "2026-12-26..2026-12-24"),
            ['owners.alice.away.0: "2026-12-26..2026-12-24" ends before it starts'],
        ),
        (
            broken("owners.alice.away.0", "Christmas"),
            ['owners.alice.away.0: "Christmas" is not a date (2026-12-24) or an inclusive range (2026-12-26..2026-12-31)'],
        ),
        (broken("pools.roofing_crew.members.bob", 0), ["pools.roofing_crew.members.bob: Input should be greater than 0"]),
        (
            broken("pools.roofing_crew.members", {}),
            ["pools.roofing_crew.members: Dictionary should have at least 1 item after validation, not 0"],
        ),
        (
            broken("rules.0.when.postal_prefix", yaml.safe_load("[02134]")),
            [
                'rules.0.when.postal_prefix: write it in quotes, like "02134": '
                "YAML read an unquoted number (1116) and drops leading zeros"
            ],
        ),
        (
            broken("rules.0.when.state_in", yaml.safe_load("[ON, QC]")),
            ['rules.0.when.state_in: quote it: YAML reads unquoted yes/no/on/off as true/false (write "ON" for Ontario)'],
        ),
        (broken("rules.0.when", {"zip_in": ["94107"]}), ["rules.0.when.zip_in: unknown key"]),
        (
            broken("rules.1.pool", "roofing_crew"),
            ['rules.1: rule "east-bay-roofing" needs exactly one of owner, pool or queue: triage (it has owner and pool)'],
        ),
        (broken("rules.4.queue", "sales"), ["rules.4.queue: Input should be 'triage'"]),
        (
            broken("rules.1.name", "sf-roofing") | {"triage": {"owner": "erin"}},
            [
                ': rules.1: rule name "sf-roofing" is used more than once; '
                'triage.owner: no owner named "erin" (defined: alice, bob, carol, pat, dana)'
            ],
        ),
        (
            broken("pools.roofing_crew.members.erin", 1)
            | {"rules": [{"name": "all", "pool": "roofers"}, {"name": "x", "owner": "zed"}]},
            [
                ': pools.roofing_crew.members: no owner named "erin" (defined: alice, bob, carol, pat, dana); '
                'rules.0.pool: no pool named "roofers" (defined: roofing_crew); '
                'rules.1: rule "x" can never match: rule "all" before it matches every lead; '
                'rules.1.owner: no owner named "zed" (defined: alice, bob, carol, pat, dana)'
            ],
        ),
    ],
    ids=[
        "id-and-email",
        "neither-id-nor-email",
        "id-not-a-number",
        "time-zone",
        "slack-id",
        "unquoted-time",
        "bare-hour",
        "bad-time",
        "bad-day",
        "away-backwards",
        "away-not-a-date",
        "zero-weight",
        "empty-pool",
        "unquoted-postal-code",
        "yaml-boolean-state",
        "unknown-condition",
        "two-targets",
        "unknown-queue",
        "duplicate-name-and-triage-owner",
        "unknown-names-and-unreachable-rule",
    ],
)
def test_config_mistakes_are_refused_with_their_path_and_what_to_do(
    data: dict[str, Any], problems: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"routing": data}, tmp_path)
    assert caught.value.problems == [f"routing{'' if p.startswith(':') else '.'}{p}" for p in problems]
