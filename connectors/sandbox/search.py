"""HubSpot's CRM search rules: filter operators, phone matching without the country code,
the limits on filter groups and pages, default properties and sorting."""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import phonenumbers

from connectors.sandbox.errors import HubSpotError
from connectors.sandbox.records import Record, Version

# HubSpot returns these for a contact read or search that names no properties.
CONTACT_DEFAULT_READ_PROPERTIES = (
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
)
# HubSpot indexes phone numbers for search without the country code under these virtual names.
PHONE_SEARCH_PROPERTIES = {
    "hs_searchable_calculated_phone": "phone",
    "hs_searchable_calculated_mobile_number": "mobilephone",
}
SEARCH_PAGE_DEFAULT = 10
SEARCH_PAGE_MAX = 200
SEARCH_MAX_GROUPS, SEARCH_MAX_FILTERS_PER_GROUP, SEARCH_MAX_FILTERS = 5, 6, 18


def national_number(raw: str) -> str:
    """The phone number as HubSpot's searchable phone properties hold it: no country code."""
    try:
        return str(phonenumbers.parse(raw, None).national_number)
    except phonenumbers.NumberParseException:
        return re.sub(r"\D", "", raw)


def contains_token(actual: str, pattern: str) -> bool:
    tokens = {actual, *re.split(r"[\s@.,;:/\\_+-]+", actual)}
    return any(token and fnmatch.fnmatchcase(token, pattern) for token in tokens)


FilterTest = Callable[[str | None, str, list[str]], bool]
FILTER_OPERATORS: dict[str, FilterTest] = {
    "EQ": lambda actual, value, values: actual == value,
    "NEQ": lambda actual, value, values: actual != value,
    "IN": lambda actual, value, values: actual in values,
    "NOT_IN": lambda actual, value, values: actual not in values,
    "HAS_PROPERTY": lambda actual, value, values: actual is not None,
    "NOT_HAS_PROPERTY": lambda actual, value, values: actual is None,
    "CONTAINS_TOKEN": lambda actual, value, values: actual is not None and contains_token(actual, value),
    "NOT_CONTAINS_TOKEN": lambda actual, value, values: actual is None or not contains_token(actual, value),
}


def filter_matches(properties: Mapping[str, str], flt: Mapping[str, Any]) -> bool:
    """One search filter against one snapshot; HubSpot compares values case-insensitively."""
    name = str(flt.get("propertyName", ""))
    if flt.get("operator") in RANGE_OPERATORS:
        return range_matches(properties.get(name), flt)
    source = PHONE_SEARCH_PROPERTIES.get(name)
    raw = properties.get(source or name)
    clean: Callable[[str], str] = (lambda text: re.sub(r"\D", "", text)) if source else str.lower
    actual = None if not raw else (national_number(raw) if source else raw.lower())
    value = clean(str(flt.get("value", "")))
    values = [clean(str(item)) for item in flt.get("values") or []]
    return FILTER_OPERATORS[str(flt.get("operator"))](actual, value, values)


# Range filters (the poller's ``hs_lastmodifieddate GTE``): numbers compare as numbers, and a
# date compares as epoch milliseconds whether it is written that way (as clients send it) or
# as ISO-8601 (as the sandbox stores it).
RANGE_OPERATORS = ("GT", "GTE", "LT", "LTE", "BETWEEN")


def comparable(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return text.lower()


def range_matches(raw: str | None, flt: Mapping[str, Any]) -> bool:
    if not raw:
        return False
    actual, low = comparable(raw), comparable(str(flt.get("value", "")))
    if type(actual) is not type(low):
        return False
    operator = flt["operator"]
    if operator == "BETWEEN":
        high = comparable(str(flt.get("highValue", "")))
        return type(high) is type(actual) and low <= actual <= high  # type: ignore[operator]
    tests: dict[str, Callable[[Any, Any], bool]] = {
        "GT": lambda a, b: a > b,
        "GTE": lambda a, b: a >= b,
        "LT": lambda a, b: a < b,
        "LTE": lambda a, b: a <= b,
    }
    return tests[operator](actual, low)


def check_filter_groups(groups: list[list[dict[str, Any]]]) -> None:
    total = sum(len(group) for group in groups)
    if (
        len(groups) > SEARCH_MAX_GROUPS
        or total > SEARCH_MAX_FILTERS
        or any(len(group) > SEARCH_MAX_FILTERS_PER_GROUP for group in groups)
    ):
        raise HubSpotError(400, "Too many filters: at most 5 filterGroups of 6 filters, 18 in all")
    for flt in itertools.chain.from_iterable(groups):
        if not flt.get("propertyName"):
            raise HubSpotError(400, "Invalid input JSON: a filter needs propertyName")
        if flt.get("operator") not in FILTER_OPERATORS and flt.get("operator") not in RANGE_OPERATORS:
            raise HubSpotError(400, f"The sandbox does not support operator {flt.get('operator')}")


def default_read_properties(object_type: str) -> tuple[str, ...] | None:
    return CONTACT_DEFAULT_READ_PROPERTIES if object_type == "contacts" else None


def sort_hits(hits: list[tuple[Record, Version]], sorts: Any) -> None:
    hits.sort(key=lambda hit: int(hit[0].id))
    if not sorts:
        return
    rule = sorts[0]
    if isinstance(rule, dict):
        name, descending = str(rule.get("propertyName")), rule.get("direction") == "DESCENDING"
    else:
        name, descending = str(rule).lstrip("-"), str(rule).startswith("-")
    hits.sort(key=lambda hit: hit[1].properties.get(name) or "", reverse=descending)
