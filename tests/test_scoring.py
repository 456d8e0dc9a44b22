"""Lead scoring: rules, segments, actions and due times, through the real config loader."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge.config import settings_from_dict
from bridge.errors import ConfigError
from bridge.lead import Lead
from bridge.scoring import (
    CHECKS,
    CONDITIONS,
    Fired,
    Score,
    ScoreContext,
    ScoringSettings,
    SegmentAction,
    due_at,
    parse_budget,
    score_lead,
    spam_signals,
)

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2025, 3, 14, 16, 42, tzinfo=UTC)  # a Friday
PHONE = "+14155550132"
NY = ZoneInfo("America/New_York")

# Every condition type once, with points that put rows on the 39/40 and 69/70 boundaries.
TABLE_CONFIG = """
scoring:
  rules:
    - {name: service_offered, category: fit, points: 20, service_in: [roofing, gutters, plumbing]}
    - {name: service_area, category: fit, points: 15, postal_prefix: ["941", "946"]}
    - {name: core_zip, category: fit, points: 5, postal_in: ["94107"]}
    - {name: core_city, category: fit, points: 10, city_in: [Oakland, San Francisco]}
    - {name: in_state, category: fit, points: 5, state_in: [CA]}
    - {name: budget_10k, category: fit, points: 15, budget_at_least: 10000}
    - {name: urgent_words, category: intent, points: 25, message_matches: [urgent, asap, emergency, "leak*", today]}
    - {name: quote_requested, category: intent, points: 10, quote_requested: true}
    - {name: returning_7d, category: behaviour, points: 10, returning_within_days: 7}
    - {name: engaged_visitor, category: behaviour, points: 5, pages_visited_at_least: 3}
    - {name: valid_phone, category: data_quality, points: 15, valid_phone: true}
    - {name: no_phone, category: data_quality, points: -10, valid_phone: false}
    - {name: business_email, category: data_quality, points: 5, business_email: true}
    - {name: free_email, category: data_quality, points: -1, free_email: true}
    - {name: spam, category: data_quality, points: -60, spam_signals: true}
"""

# The `scoring:` section proposed for config.example.yaml (a roofing and plumbing contractor).
EXAMPLE_CONFIG = """
scoring:
  rules:
    - name: service_offered
      category: fit
      points: 20
      service_in: [roofing, roof repair, gutters, plumbing, water heater, drain cleaning]
    - name: service_area
      category: fit
      points: 15
      postal_prefix: ["940", "941", "945", "946"]
    - name: budget_10k
      category: fit
      points: 15
      budget_at_least: 10000
    - name: urgent_words
      category: intent
      points: 25
      message_matches: [urgent, asap, emergency, "leak*", "flood*", burst, today, no hot water]
    - name: quote_requested
      category: intent
      points: 10
      quote_requested: true
    - name: returning_7d
      category: behaviour
      points: 10
      returning_within_days: 7
    - name: engaged_visitor
      category: behaviour
      points: 5
      pages_visited_at_least: 3
    - name: valid_phone
      category: data_quality
      points: 15
      valid_phone: true
    - name: business_email
      category: data_quality
      points: 5
      business_email: true
    - name: no_phone
      category: data_quality
      points: -10
      valid_phone: false
    - name: spam_signals
      category: data_quality
      points: -60
      spam_signals: true
  segments: {cold: 0, warm: 40, hot: 70}
  actions:
    hot: {channel: "#leads-hot", mention_owner: true, task_priority: HIGH, task_due: 15m}
    warm: {task_priority: MEDIUM, task_due: 2h}
    cold: {digest: true, task_priority: LOW, task_due: next_business_morning}
"""


def scoring_from_yaml(text: str) -> ScoringSettings:
    return settings_from_dict(yaml.safe_load(text), ROOT).scoring


def config_problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(yaml.safe_load(text), ROOT)
    return caught.value.problems


def action_table(scoring: ScoringSettings) -> dict[str, tuple[str | None, bool, bool, str, str]]:
    return {name: (a.channel, a.mention_owner, a.digest, a.task_priority, a.task_due) for name, a in scoring.actions.items()}


def context(days_ago: float | None = None) -> ScoreContext:
    previous = None if days_ago is None else NOW - timedelta(days=days_ago)
    return ScoreContext(previous_delivery_at=previous, now=NOW)


TABLE: list[tuple[str, dict[str, Any], float | None, int, str, list[str]]] = [
    (
        "39 is still cold",
        {"service": "Roofing", "phone": PHONE, "email": "jane@gmail.com", "custom": {"pages_visited": "4"}},
        None,
        39,
        "cold",
        ["service_offered", "engaged_visitor", "valid_phone", "free_email"],
    ),
    (
        "40 is warm",
        {"service": "roofing", "phone": PHONE, "email": "jane@acme-roofing.com"},
        None,
        40,
        "warm",
        ["service_offered", "valid_phone", "business_email"],
    ),
    (
        "69 is still warm",
        {"service": "Windows, Gutters", "message": "Need a quote, the roof is leaking", "phone": PHONE, "email": "j@gmail.com"},
        None,
        69,
        "warm",
        ["service_offered", "urgent_words", "quote_requested", "valid_phone", "free_email"],
    ),
    (
        "70 is hot",
        {"service": "Windows, Gutters", "message": "Need a quote, the roof is leaking", "phone": PHONE},
        None,
        70,
        "hot",
        ["service_offered", "urgent_words", "quote_requested", "valid_phone"],
    ),
    (
        "service area by zip+4, city and state",
        {"postal_code": "94107-1234", "city": "san  francisco", "state": "ca", "phone": PHONE, "email": "j@yahoo.com"},
        None,
        49,
        "warm",
        ["service_area", "core_zip", "core_city", "in_state", "valid_phone", "free_email"],
    ),
    (
        "budget range and a return within the week",
        {"email": "jane@acme-roofing.com", "custom": {"budget": "$10k-$50k"}},
        3,
        20,
        "cold",
        ["budget_10k", "returning_7d", "no_phone", "business_email"],
    ),
    (
        "near misses fire nothing, a negative total is cold",
        {
            "email": "jane@acme-roofing.com",
            "service": "Windows",
            "postal_code": "94501",
            "city": "Alameda",
            "message": "Bleak outlook, no rush",
            "custom": {"budget": "< $10k", "pages_visited": "2"},
        },
        8,
        -5,
        "cold",
        ["no_phone", "business_email"],
    ),
    (
        "spam",
        {"first_name": "Visit https://cheap-seo.example", "message": "BUY CHEAP SEO SERVICES NOW", "email": "x@gmail.com"},
        None,
        -71,
        "cold",
        ["no_phone", "free_email", "spam"],
    ),
    (
        "an estimate asked for in the service field",
        {"service": "Free estimate", "phone": PHONE},
        None,
        25,
        "cold",
        ["quote_requested", "valid_phone"],
    ),
    ("a phone that is not valid is no phone", {"phone": "+1415555"}, None, -10, "cold", ["no_phone"]),
    (
        "everything",
        {
            "service": "Plumbing",
            "postal_code": "94107",
            "city": "Oakland",
            "state": "CA",
            "message": "Water leak under the sink, can you come today? Need a quote.",
            "phone": PHONE,
            "email": "ops@acme-property.com",
            "custom": {"budget": "25000", "pages_visited": "7 pages"},
        },
        0.1,
        140,
        "hot",
        [
            "service_offered",
            "service_area",
            "core_zip",
            "core_city",
            "in_state",
            "budget_10k",
            "urgent_words",
            "quote_requested",
            "returning_7d",
            "engaged_visitor",
            "valid_phone",
            "business_email",
        ],
    ),
]


@pytest.mark.parametrize(
    ("lead", "days_ago", "points", "segment", "fired"), [row[1:] for row in TABLE], ids=[r[0] for r in TABLE]
)
def test_score_table(lead: dict[str, Any], days_ago: float | None, points: int, segment: str, fired: list[str]) -> None:
    settings = scoring_from_yaml(TABLE_CONFIG)
    score = score_lead(Lead(**lead), settings, context(days_ago))
    assert (score.points, score.segment, [f.rule for f in score.fired]) == (points, segment, fired)
    assert score.points == sum(f.points for f in score.fired)
    assert score.action == settings.actions[segment]
    # Reasons, summary and properties never carry the email address or phone number.
    shown = " ".join([score.summary(), *score.as_properties().values(), *(f.why for f in score.fired)])
    for secret in (lead.get("email"), lead.get("phone"), (lead.get("phone") or "").lstrip("+1")):
        assert not secret or secret not in shown


def test_reasons_say_why_in_plain_words() -> None:
    everything = next(row for row in TABLE if row[0] == "everything")
    score = score_lead(Lead(**everything[1]), scoring_from_yaml(TABLE_CONFIG), context(0.1))
    assert [(f.rule, f.category, f.points, f.why) for f in score.fired] == [
        ("service_offered", "fit", 20, "service includes 'plumbing'"),
        ("service_area", "fit", 15, "postal code starts with '941'"),
        ("core_zip", "fit", 5, "postal code '94107' is in the service area"),
        ("core_city", "fit", 10, "city is 'Oakland'"),
        ("in_state", "fit", 5, "state is 'CA'"),
        ("budget_10k", "fit", 15, "budget starts at $25,000 (at least $10,000)"),
        ("urgent_words", "intent", 25, "message mentions 'leak', 'today'"),
        ("quote_requested", "intent", 10, "message mentions 'quote'"),
        ("returning_7d", "behaviour", 10, "came back the same day after an earlier inquiry (within 7 days)"),
        ("engaged_visitor", "behaviour", 5, "visited 7 pages (at least 3)"),
        ("valid_phone", "data_quality", 15, "phone number is valid"),
        ("business_email", "data_quality", 5, "email is on a company domain"),
    ]
    spam = score_lead(
        Lead(first_name="<a href=x>win</a>", message="ok", email="x@gmail.com"), scoring_from_yaml(TABLE_CONFIG), context()
    )
    assert [f.why for f in spam.fired] == [
        "no valid phone number",
        "email is on a free mail domain (gmail.com)",
        "spam signals: html_in_name, short_message",
    ]


def test_summary_and_hubspot_properties() -> None:
    lead = Lead(service="Gutters", message="Need a quote, the roof is leaking", phone=PHONE, email="j@gmail.com")
    score = score_lead(lead, scoring_from_yaml(TABLE_CONFIG), context())
    assert (
        score.summary() == "warm (69): service_offered +20, urgent_words +25, quote_requested +10, valid_phone +15, free_email -1"
    )
    assert score.as_properties() == {
        "lead_score": "69",
        "lead_segment": "warm",
        "lead_score_rules": "service_offered +20; urgent_words +25; quote_requested +10; valid_phone +15; free_email -1",
    }
    assert score.as_record() == {
        "points": 69,
        "segment": "warm",
        "fired": [
            {"rule": "service_offered", "category": "fit", "points": 20, "why": "service includes 'gutters'"},
            {"rule": "urgent_words", "category": "intent", "points": 25, "why": "message mentions 'leak'"},
            {"rule": "quote_requested", "category": "intent", "points": 10, "why": "message mentions 'quote'"},
            {"rule": "valid_phone", "category": "data_quality", "points": 15, "why": "phone number is valid"},
            {"rule": "free_email", "category": "data_quality", "points": -1, "why": "email is on a free mail domain (gmail.com)"},
        ],
    }
    nothing = Score(0, "cold", (), SegmentAction())
    assert (nothing.summary(), nothing.as_properties()["lead_score_rules"]) == ("cold (0): no rules fired", "none")


@pytest.mark.parametrize(
    ("message", "fired"),
    [
        ("The roof is LEAKING", True),  # "leak*" takes any ending
        ("Leaks everywhere", True),
        ("A bleak outlook", False),  # words start at a word boundary
        ("no hot\nwater since Monday", True),  # a phrase matches across any whitespace
        ("no hot watering can", False),
        ("ASAP!", True),
        ("asaparagus", False),
    ],
)
def test_message_matches_whole_words(message: str, fired: bool) -> None:
    settings = ScoringSettings(
        rules=[{"name": "urgent", "category": "intent", "points": 25, "message_matches": ["leak*", "no hot water", "asap"]}]
    )
    assert score_lead(Lead(message=message), settings, context()).points == (25 if fired else 0)


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("$10k-$50k", 10000),
        ("$10k–$50k", 10000),  # en dash, as Typeform sends it
        ("< $10k", 0),
        ("Under $5,000", 0),
        ("up to 10k", 0),
        ("25000", 25000),
        ("$5,000", 5000),
        ("$10,000 - $50,000", 10000),
        ("$50k+", 50000),
        ("over $100K", 100000),
        ("between 5k and 10k", 5000),
        ("10-20k", 10000),  # the unit is written once for both ends
        ("500-1k", 500),  # ...unless that would make 500k, above the upper end
        ("1.5k", 1500),
        ("$ 7,500.50", 7500),
        ("$2M", 2000000),
        ("15 thousand", 15000),
        ("not sure yet", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_budget(text: str | None, amount: int | None) -> None:
    assert parse_budget(text) == amount


@pytest.mark.parametrize(
    ("lead", "signals"),
    [
        ({"first_name": "<b>Jane</b>"}, ["html_in_name"]),
        ({"last_name": "see www.cheap-seo.ru"}, ["url_in_name"]),
        ({"first_name": "asdf", "last_name": "asdf", "message": "ASDF"}, ["same_text_everywhere"]),
        ({"message": "PLEASE CALL ME ABOUT MY ROOF"}, ["all_caps_message"]),
        ({"message": "k"}, ["short_message"]),
        ({"first_name": "Lee", "last_name": "Lee"}, []),  # two fields alike is a name
        ({"message": "NO HEAT"}, []),  # short shouting is a person in a hurry
        ({"first_name": "Jane", "company": "Acme.com", "message": "Roof leak"}, []),
    ],
)
def test_spam_signals(lead: dict[str, str], signals: list[str]) -> None:
    assert spam_signals(Lead(**lead)) == signals


def test_every_condition_has_a_check() -> None:
    assert set(CHECKS) == set(CONDITIONS)


DEFAULT_RULES = [
    "valid_phone",
    "business_email",
    "free_email",
    "spam_signals",
    "quote_requested",
    "urgent_words",
    "budget_10k",
    "returning_7d",
    "engaged_visitor",
]


def test_empty_section_gives_defaults() -> None:
    scoring = scoring_from_yaml("scoring:\n")
    assert [rule.name for rule in scoring.rules] == DEFAULT_RULES
    assert scoring.segments == {"cold": 0, "warm": 40, "hot": 70}
    # (channel, mention_owner, digest, task_priority, task_due)
    assert action_table(scoring) == {
        "cold": (None, False, True, "LOW", "next_business_morning"),
        "warm": (None, False, False, "MEDIUM", "2h"),
        "hot": (None, True, False, "HIGH", "15m"),
    }
    assert scoring_from_yaml("{}\n") == scoring


@pytest.mark.parametrize(
    ("lead", "summary"),
    [
        ({"phone": PHONE, "email": "j@gmail.com"}, "cold (20): valid_phone +20, free_email +0"),
        (
            {"phone": PHONE, "email": "j@acme.com", "message": "Quote for a new roof"},
            "warm (45): valid_phone +20, business_email +10, quote_requested +15",
        ),
        (
            {"phone": PHONE, "email": "j@acme.com", "message": "Urgent: quote to fix a leak"},
            "hot (70): valid_phone +20, business_email +10, quote_requested +15, urgent_words +25",
        ),
    ],
)
def test_default_rules_segment_sensibly(lead: dict[str, str], summary: str) -> None:
    assert score_lead(Lead(**lead), scoring_from_yaml("scoring:\n"), context()).summary() == summary


def test_configured_actions_start_from_the_segment_defaults() -> None:
    scoring = scoring_from_yaml(
        """
scoring:
  segments: {cold: 0, warm: 40, hot: 70, fire: 100}
  actions:
    hot: {channel: "#leads-hot"}
    cold: {digest: false, task_priority: low}
    fire: {mention_owner: true, task_due: 1h30m}
"""
    )
    assert action_table(scoring) == {
        "cold": (None, False, False, "LOW", "next_business_morning"),
        "warm": (None, False, False, "MEDIUM", "2h"),
        "hot": ("#leads-hot", True, False, "HIGH", "15m"),
        "fire": (None, True, False, "MEDIUM", "1h30m"),
    }


@pytest.mark.parametrize(
    ("points", "segment"),
    [(-500, "low"), (0, "low"), (10, "low"), (29, "low"), (30, "mid"), (89, "mid"), (90, "top"), (1000, "top")],
)
def test_scores_below_the_first_threshold_go_to_the_lowest_segment(points: int, segment: str) -> None:
    scoring = scoring_from_yaml("scoring: {segments: {low: 10, mid: 30, top: 90}}")
    assert scoring.segment_for(points) == segment


RULE = "{name: r, category: fit, points: 5"
VALIDATION = [
    (
        "unknown condition",
        f"scoring: {{rules: [{RULE}, zip_in: ['941']}}]}}",
        "scoring.rules.0: unknown condition 'zip_in' (a rule has name, points, category and one of: service_in, "
        "postal_prefix, postal_in, city_in, state_in, budget_at_least, message_matches, quote_requested, "
        "returning_within_days, pages_visited_at_least, valid_phone, business_email, free_email, spam_signals)",
    ),
    (
        "two conditions in one rule",
        f"scoring: {{rules: [{RULE}, city_in: [Oakland], state_in: [CA]}}]}}",
        "scoring.rules.0: rule 'r' has 2 conditions (city_in, state_in); a rule takes exactly one, so split it",
    ),
    ("no condition", f"scoring: {{rules: [{RULE}}}]}}", "scoring.rules.0: rule 'r' has no condition"),
    (
        "duplicate rule names",
        f"scoring: {{rules: [{RULE}, valid_phone: true}}, {RULE}, free_email: true}}]}}",
        "scoring.rules: rule name 'r' is used more than once",
    ),
    (
        "unknown segment in actions",
        "scoring: {actions: {urgent: {mention_owner: true}}}",
        "scoring.actions: 'urgent' is not a segment (segments: cold, warm, hot)",
    ),
    (
        "two segments starting at the same score",
        "scoring: {segments: {cold: 0, hot: 40, warm: 40}}",
        "scoring.segments: segments 'hot' and 'warm' both start at 40; each needs its own lowest score",
    ),
    (
        "unquoted postal codes",
        f"scoring: {{rules: [{RULE}, postal_in: [02134]}}]}}",
        'scoring.rules.0.postal_in: write postal codes as quoted strings, e.g. ["02134", "941"]: YAML drops leading zeros',
    ),
    (
        "bad due time",
        "scoring: {actions: {hot: {task_due: soon}}}",
        "scoring.actions.hot.task_due: task_due 'soon' is not a duration (15m, 2h, 1d, 1h30m) or next_business_morning",
    ),
    (
        "digest and mention",
        "scoring: {actions: {cold: {mention_owner: true}}}",
        "scoring: actions.cold: a digest segment cannot mention the owner",
    ),
    (
        "unknown category",
        "scoring: {rules: [{name: r, category: vibes, points: 5, valid_phone: true}]}",
        "scoring.rules.0.category: Input should be 'fit', 'intent', 'behaviour' or 'data_quality'",
    ),
    (
        "unknown setting",
        "scoring: {threshold: 50}",
        "scoring.threshold: unknown key",
    ),
]


@pytest.mark.parametrize(("text", "problem"), [row[1:] for row in VALIDATION], ids=[row[0] for row in VALIDATION])
def test_config_validation_errors(text: str, problem: str) -> None:
    assert config_problems(text) == [problem]


def test_budget_condition_accepts_written_amounts() -> None:
    scoring = scoring_from_yaml(f"scoring: {{rules: [{RULE}, budget_at_least: '$10k'}}]}}")
    assert scoring.rules[0].budget_at_least == 10000


def test_example_config_scores_the_typeform_sample_lead() -> None:
    scoring = scoring_from_yaml(EXAMPLE_CONFIG)
    lead = Lead(
        email="jane.doe@acme-plumbing.com",
        phone=PHONE,
        first_name="Jane",
        last_name="Doe",
        service="Bathroom remodel, Water heater, Gas line check",
        message="Need a quote for 3 bathrooms & a water heater <soon>",
        postal_code="94107",
        custom={"budget": "$10k–$50k"},
    )
    score = score_lead(lead, scoring, context())
    assert score.summary() == (
        "hot (80): service_offered +20, service_area +15, budget_10k +15, quote_requested +10, valid_phone +15, business_email +5"
    )
    assert score.action == SegmentAction(channel="#leads-hot", mention_owner=True, task_priority="HIGH", task_due="15m")


HOT, WARM, DAY, MORNING = (SegmentAction(task_due=due) for due in ("15m", "2h", "1d", "next_business_morning"))
DUE = [
    ("15 minutes", HOT, NOW, None, "2025-03-14T16:57:00+00:00"),
    ("2 h across spring-forward", WARM, datetime(2025, 3, 9, 1, 30, tzinfo=NY), None, "2025-03-09T04:30:00-04:00"),
    ("1 day across fall-back is 24 h", DAY, datetime(2025, 11, 1, 12, 0, tzinfo=NY), None, "2025-11-02T11:00:00-05:00"),
    ("Monday before work", MORNING, datetime(2025, 3, 10, 6, 0, tzinfo=NY), "America/New_York", "2025-03-10T08:00:00-04:00"),
    ("Monday at 08:00 sharp", MORNING, datetime(2025, 3, 10, 8, 0, tzinfo=NY), "America/New_York", "2025-03-11T08:00:00-04:00"),
    ("Tuesday midday", MORNING, datetime(2025, 3, 11, 12, 0, tzinfo=NY), "America/New_York", "2025-03-12T08:00:00-04:00"),
    (
        "Friday 17:00 to Monday, across spring-forward",
        MORNING,
        datetime(2025, 3, 7, 22, 0, tzinfo=UTC),  # 17:00 EST
        "America/New_York",
        "2025-03-10T08:00:00-04:00",
    ),
    ("Saturday", MORNING, datetime(2025, 3, 15, 10, 0, tzinfo=NY), "America/New_York", "2025-03-17T08:00:00-04:00"),
    ("fall-back night", MORNING, datetime(2025, 11, 2, 1, 30, tzinfo=NY), "America/New_York", "2025-11-03T08:00:00-05:00"),
    ("no owner zone is UTC", MORNING, NOW, None, "2025-03-17T08:00:00+00:00"),
    (
        "owner in London, now given in Los Angeles",
        MORNING,
        datetime(2025, 3, 30, 20, 0, tzinfo=ZoneInfo("America/Los_Angeles")),  # Monday 04:00 BST
        "Europe/London",
        "2025-03-31T08:00:00+01:00",
    ),
]


@pytest.mark.parametrize(("action", "now", "owner_tz", "expected"), [row[1:] for row in DUE], ids=[row[0] for row in DUE])
def test_due_at(action: SegmentAction, now: datetime, owner_tz: str | None, expected: str) -> None:
    assert due_at(action, now, owner_tz).isoformat() == expected


def test_due_at_follows_the_owners_week() -> None:
    friday_evening = datetime(2025, 3, 14, 17, 0, tzinfo=NY)
    due = due_at(MORNING, friday_evening, "America/New_York", (time(9), time(17)), workdays={0, 1, 2, 3, 4, 5})
    assert due.isoformat() == "2025-03-15T09:00:00-04:00"


def test_due_at_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        due_at(HOT, datetime(2025, 3, 14, 16, 42), None)


def test_fired_is_plain_data() -> None:
    fired = Fired("urgent_words", "intent", 25, "message mentions 'leak'")
    assert (fired.label(), Fired("spam", "data_quality", -60, "x").label()) == ("urgent_words +25", "spam -60")


def test_segments_are_kept_in_score_order_whatever_order_the_yaml_lists_them() -> None:
    settings = ScoringSettings.model_validate({"segments": {"hot": 70, "cold": 0, "warm": 40}})
    assert list(settings.segments) == ["cold", "warm", "hot"]
    assert [settings.segment_for(p) for p in (-5, 39, 40, 69, 70)] == ["cold", "cold", "warm", "warm", "hot"]
