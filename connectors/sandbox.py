"""Local stand-in for the parts of HubSpot's CRM v3 API and Slack's Web API that leadbridge calls.

``leadbridge sandbox`` serves it for ``make run``; tests start a :class:`SandboxServer` on a free
port and drive it over real HTTP with the official SDKs (``hubspot-api-client`` v12 and
``slack_sdk``). It copies the real services wherever a client could tell the difference: the exact
success statuses SDK v12 expects (it turns any other success status into ``None``), HubSpot's error
bodies, the 409 on a duplicate email, 207 partial batches keyed by ``objectWriteTraceId``, a search
index that lags writes by ``search_lag`` seconds, rate-limit headers, and Slack's ``ok``/``error``
envelope with 429 + ``Retry-After``.

State lives in memory, per app instance, behind one lock. A control API under ``/__sandbox/`` (no
auth) shows the state, seeds owners and Slack users, changes the search lag and injects faults
(status, body, headers, delay) so retries can be exercised without a network.
"""

from __future__ import annotations

import fnmatch
import html
import itertools
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, NamedTuple, Self

import phonenumbers
from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

HUBSPOT_DEFAULT_CONTACT_PROPERTIES = (
    "email",
    "firstname",
    "lastname",
    "phone",
    "mobilephone",
    "company",
    "website",
    "address",
    "city",
    "state",
    "zip",
    "country",
    "jobtitle",
    "message",
    "lifecyclestage",
    "hs_lead_status",
    "hubspot_owner_id",
    "hs_google_click_id",
    "hs_analytics_source",
    "createdate",
    "lastmodifieddate",
    "hs_object_id",
    "hs_legal_basis",
)
# The custom contact properties leadbridge's setup docs tell a user to create in HubSpot.
LEADBRIDGE_CONTACT_PROPERTIES = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "fbclid",
    "landing_page",
    "referrer",
    "service",
    "submitted_at",
    "lead_source",
    "first_utm_source",
    "first_utm_medium",
    "first_utm_campaign",
    "first_gclid",
    "first_landing_page",
    "routing_reason",
    "lead_score",
    "lead_segment",
    "lead_score_rules",
    "budget",
    "google_campaign_id",
    "google_form_id",
)
# HubSpot returns these for a contact read or search that names no properties.
CONTACT_DEFAULT_READ_PROPERTIES = (
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
)
REQUIRED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "deals": ("dealname", "dealstage"),
    "notes": ("hs_timestamp",),
    "tasks": ("hs_timestamp",),
    "leads": ("hs_lead_name",),
}
DEFAULT_VALUES: dict[str, dict[str, str]] = {"deals": {"pipeline": "default"}}
# HubSpot refuses a lead that is not associated with its primary contact.
REQUIRED_ASSOCIATION_TYPES = {"leads": 578}
# Far end of the HubSpot-defined association types leadbridge uses, so that an association to a
# record that does not exist fails here as it does in HubSpot. Other type ids are accepted as is.
ASSOCIATION_TARGETS = {
    3: "contacts",
    202: "contacts",
    204: "contacts",
    578: "contacts",
    608: "contacts",
    214: "deals",
    216: "deals",
    855: "leads",
    647: "leads",
}
# HubSpot indexes phone numbers for search without the country code under these virtual names.
PHONE_SEARCH_PROPERTIES = {
    "hs_searchable_calculated_phone": "phone",
    "hs_searchable_calculated_mobile_number": "mobilephone",
}
BATCH_LIMIT = 100
SEARCH_PAGE_DEFAULT = 10
SEARCH_PAGE_MAX = 200
SEARCH_MAX_GROUPS, SEARCH_MAX_FILTERS_PER_GROUP, SEARCH_MAX_FILTERS = 5, 6, 18
RATE_LIMIT_INTERVAL_MS = 10_000
RATE_LIMIT_MAX = 190
SLACK_MAX_BLOCKS = 50
SLACK_IDENTITY = {
    "url": "https://sandbox.slack.com/",
    "team": "Sandbox",
    "user": "leadbridge",
    "team_id": "T0SANDBOX",
    "user_id": "U0BOT",
    "bot_id": "B0BOT",
}
ERROR_CATEGORIES = {
    400: "VALIDATION_ERROR",
    401: "INVALID_AUTHENTICATION",
    403: "MISSING_SCOPES",
    404: "OBJECT_NOT_FOUND",
    409: "CONFLICT",
    423: "LOCKED",
    429: "RATE_LIMITS",
}
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can "
    "find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CONTROL_PREFIX = "/__sandbox"
EXTENSION_KEY = "leadbridge_sandbox"


def utc_now_iso() -> str:
    """Current time the way HubSpot writes it: ISO-8601 UTC with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubSpotError(Exception):
    """A HubSpot-shaped error answer, raised wherever a CRM request turns out to be invalid."""

    def __init__(self, status: int, message: str, category: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        fallback = "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR"
        self.category = category or ERROR_CATEGORIES.get(status, fallback)
        self.extra = extra

    def body(self) -> dict[str, Any]:
        # Key order follows HubSpot's own bodies, which is what people compare logs against.
        return {
            "status": "error",
            "message": self.message,
            "correlationId": str(uuid.uuid4()),
            **self.extra,
            "category": self.category,
        }

    def response(self) -> tuple[Response, int]:
        return jsonify(self.body()), self.status

    def batch_error(self, trace_id: str) -> dict[str, Any]:
        """This error as one ``errors[]`` entry of a 207 answer (SDK model ``StandardError``)."""
        return {
            "status": "error",
            "category": self.category,
            "message": self.message,
            "context": {"objectWriteTraceId": [trace_id]},
            "errors": [],
            "links": {},
        }


def invalid_properties(problems: list[dict[str, Any]]) -> HubSpotError:
    return HubSpotError(400, "Property values were not valid: " + json.dumps(problems, separators=(",", ":")))


def property_problem(name: str, message: str, error: str) -> dict[str, Any]:
    return {
        "isValid": False,
        "message": message,
        "error": error,
        "name": name,
        "localizedErrorMessage": message,
    }


def property_definition(name: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A property as ``/crm/v3/properties`` describes it, with every field SDK v12 requires."""
    body = body or {}
    now = utc_now_iso()
    return {
        "name": name,
        "label": body.get("label") or name,
        "type": body.get("type", "string"),
        "fieldType": body.get("fieldType", "text"),
        "groupName": body.get("groupName", "contactinformation"),
        "description": body.get("description", ""),
        "options": body.get("options", []),
        "hasUniqueValue": bool(body.get("hasUniqueValue", False)),
        "hidden": False,
        "formField": bool(body.get("formField", False)),
        "calculated": False,
        "externalOptions": False,
        "createdAt": now,
        "updatedAt": now,
        "archived": False,
    }


def normalize_properties(raw: Any) -> dict[str, str]:
    """Property values as HubSpot stores them: strings, booleans lowercased, emails lowercased."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HubSpotError(400, "Invalid input JSON: properties must be an object")
    values: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        values[name] = "" if value is None else str(value)
    if values.get("email"):
        values["email"] = values["email"].strip().lower()
    return values


def system_properties(object_type: str) -> tuple[str, ...]:
    modified = "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"
    return ("createdate", modified, "hs_object_id")


def parse_associations(raw: Any) -> list[dict[str, Any]]:
    """Inline ``associations`` flattened to one entry per association type."""
    parsed: list[dict[str, Any]] = []
    for association in raw or []:
        target = str((association.get("to") or {}).get("id", ""))
        types = association.get("types") or []
        if not target or not types:
            raise HubSpotError(400, "Invalid input JSON: an association needs to.id and types")
        for spec in types:
            type_id = int(spec.get("associationTypeId", 0))
            parsed.append(
                {
                    "toObjectId": target,
                    "toObjectType": ASSOCIATION_TARGETS.get(type_id),
                    "associationCategory": spec.get("associationCategory", "HUBSPOT_DEFINED"),
                    "associationTypeId": type_id,
                }
            )
    return parsed


class Version(NamedTuple):
    written_at: float
    updated_at: str
    properties: dict[str, str]


@dataclass
class Record:
    """One CRM object with its full write history, so search can see it as it was."""

    id: str
    object_type: str
    created_at: str
    versions: list[Version] = field(default_factory=list)
    associations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def properties(self) -> dict[str, str]:
        return self.versions[-1].properties

    def as_of(self, moment: float) -> Version | None:
        visible = None
        for version in self.versions:
            if version.written_at > moment:
                break
            visible = version
        return visible

    def to_json(self, version: Version | None = None, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """``SimplePublicObject``; ``names`` limits properties the way ``properties=`` does."""
        version = version or self.versions[-1]
        properties: dict[str, str | None] = dict(version.properties)
        if names is not None:
            wanted = dict.fromkeys([*names, *system_properties(self.object_type)])
            properties = {name: version.properties.get(name) for name in wanted}
        return {
            "id": self.id,
            "properties": properties,
            "createdAt": self.created_at,
            "updatedAt": version.updated_at,
            "archived": False,
        }


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
    source = PHONE_SEARCH_PROPERTIES.get(name)
    raw = properties.get(source or name)
    clean: Callable[[str], str] = (lambda text: re.sub(r"\D", "", text)) if source else str.lower
    actual = None if not raw else (national_number(raw) if source else raw.lower())
    value = clean(str(flt.get("value", "")))
    values = [clean(str(item)) for item in flt.get("values") or []]
    return FILTER_OPERATORS[str(flt.get("operator"))](actual, value, values)


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
        if flt.get("operator") not in FILTER_OPERATORS:
            raise HubSpotError(400, f"The sandbox does not support operator {flt.get('operator')}")


class CrmStore:
    """All CRM object types in one store; contacts add email uniqueness and known properties."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Record]] = {}
        self.property_definitions: dict[str, dict[str, dict[str, Any]]] = {
            "contacts": {
                name: property_definition(name) for name in HUBSPOT_DEFAULT_CONTACT_PROPERTIES + LEADBRIDGE_CONTACT_PROPERTIES
            }
        }
        self.owners: list[dict[str, Any]] = []
        self._record_ids: Iterator[int] = itertools.count(1001)
        self._owner_ids: Iterator[int] = itertools.count(501)

    def objects(self, object_type: str) -> Mapping[str, Record]:
        return self.records.get(object_type, {})

    def contact_by_email(self, email: str) -> Record | None:
        email = email.strip().lower()
        for record in self.objects("contacts").values():
            if record.properties.get("email") == email:
                return record
        return None

    def find(self, object_type: str, key: str, id_property: str | None) -> Record:
        if object_type == "contacts" and id_property == "email":
            record = self.contact_by_email(key)
        elif id_property in (None, "", "hs_object_id"):
            record = self.objects(object_type).get(key)
        else:
            record = next(
                (r for r in self.objects(object_type).values() if r.properties.get(id_property) == key),
                None,
            )
        if record is None:
            raise HubSpotError(404, "Object not found.  objectId are usually numeric.", context={"id": [key]})
        return record

    def check_write(
        self,
        object_type: str,
        properties: dict[str, str],
        record: Record | None,
        associations: list[dict[str, Any]] | None = None,
    ) -> None:
        """Raise the error HubSpot would give for this write; ``record`` is None for a create."""
        if object_type == "contacts":
            self._check_contact(properties, record)
        if record is not None:
            return
        missing = [n for n in REQUIRED_PROPERTIES.get(object_type, ()) if not properties.get(n)]
        if missing:
            raise invalid_properties(
                [property_problem(n, f'Required property "{n}" is missing', "REQUIRED_PROPERTY") for n in missing]
            )
        required_type = REQUIRED_ASSOCIATION_TYPES.get(object_type)
        associations = associations or []
        if required_type and all(a["associationTypeId"] != required_type for a in associations):
            raise HubSpotError(
                400,
                f"{object_type} must be associated with a primary contact (associationTypeId {required_type})",
            )
        for association in associations:
            target_type = association["toObjectType"]
            if target_type and association["toObjectId"] not in self.objects(target_type):
                raise HubSpotError(
                    400,
                    f"Invalid association: no {target_type} record with id {association['toObjectId']}",
                    context={"id": [association["toObjectId"]]},
                )

    def _check_contact(self, properties: dict[str, str], record: Record | None) -> None:
        known = self.property_definitions["contacts"]
        problems = [
            property_problem(n, f'Property "{n}" does not exist', "PROPERTY_DOESNT_EXIST") for n in properties if n not in known
        ]
        email = properties.get("email")
        if email and not EMAIL_PATTERN.match(email):
            problems.append(property_problem("email", f"Email address {email} is invalid", "INVALID_EMAIL"))
        if problems:
            raise invalid_properties(problems)
        other = self.contact_by_email(email) if email else None
        if other is not None and other is not record:
            raise HubSpotError(409, f"Contact already exists. Existing ID: {other.id}")

    def prepare_create(self, object_type: str, body: Mapping[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        properties = {
            **DEFAULT_VALUES.get(object_type, {}),
            **normalize_properties(body.get("properties")),
        }
        associations = parse_associations(body.get("associations"))
        self.check_write(object_type, properties, None, associations)
        return properties, associations

    def create(self, object_type: str, body: Mapping[str, Any]) -> Record:
        properties, associations = self.prepare_create(object_type, body)
        return self._insert(object_type, properties, associations)

    def update(self, record: Record, body: Mapping[str, Any]) -> Record:
        properties = normalize_properties(body.get("properties"))
        self.check_write(record.object_type, properties, record)
        self._write(record, properties)
        return record

    def prepare_upsert(self, item: Mapping[str, Any]) -> tuple[dict[str, str], Record | None]:
        if item.get("idProperty") != "email":
            raise HubSpotError(
                400,
                f"The sandbox upserts contacts by idProperty email only, not {item.get('idProperty')!r}",
            )
        email = str(item.get("id", "")).strip().lower()
        properties = {**normalize_properties(item.get("properties")), "email": email}
        existing = self.contact_by_email(email)
        self.check_write("contacts", properties, existing)
        return properties, existing

    def upsert_contact(self, item: Mapping[str, Any]) -> dict[str, Any]:
        properties, existing = self.prepare_upsert(item)
        if existing is None:
            return {**self._insert("contacts", properties, []).to_json(), "new": True}
        self._write(existing, properties)
        return {**existing.to_json(), "new": False}

    def _insert(self, object_type: str, properties: dict[str, str], associations: list[dict[str, Any]]) -> Record:
        record = Record(
            id=str(next(self._record_ids)),
            object_type=object_type,
            created_at=utc_now_iso(),
            associations=associations,
        )
        self._write(record, properties)
        self.records.setdefault(object_type, {})[record.id] = record
        return record

    def _write(self, record: Record, changes: dict[str, str]) -> None:
        now = utc_now_iso()
        current = record.versions[-1].properties if record.versions else {}
        merged = {**current, **changes}
        createdate, modified, object_id = system_properties(record.object_type)
        merged.update({createdate: record.created_at, modified: now, object_id: record.id})
        # HubSpot treats an empty value as clearing the property.
        snapshot = {name: value for name, value in merged.items() if value != ""}
        record.versions.append(Version(time.monotonic(), now, snapshot))

    def search(self, object_type: str, body: Mapping[str, Any], moment: float) -> dict[str, Any]:
        """Search as the index saw things at ``moment``: later writes are not visible yet."""
        groups = [list(group.get("filters") or []) for group in body.get("filterGroups") or []]
        check_filter_groups(groups)
        try:
            limit = int(body.get("limit") or SEARCH_PAGE_DEFAULT)
            offset = int(body.get("after") or 0)
        except (TypeError, ValueError) as exc:
            raise HubSpotError(400, "limit and after must be formatted as integers") from exc
        if not 0 < limit <= SEARCH_PAGE_MAX:
            raise HubSpotError(400, f"limit must be between 1 and {SEARCH_PAGE_MAX}")
        hits: list[tuple[Record, Version]] = []
        for record in self.objects(object_type).values():
            version = record.as_of(moment)
            if version is not None and (
                not groups or any(all(filter_matches(version.properties, flt) for flt in group) for group in groups)
            ):
                hits.append((record, version))
        sort_hits(hits, body.get("sorts"))
        names = body.get("properties") or default_read_properties(object_type)
        page = hits[offset : offset + limit]
        answer: dict[str, Any] = {
            "total": len(hits),
            "results": [record.to_json(v, names) for record, v in page],
        }
        if offset + limit < len(hits):
            answer["paging"] = {"next": {"after": str(offset + limit)}}
        return answer

    def add_property(self, object_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not name:
            raise HubSpotError(400, "Invalid input JSON: name is required")
        definitions = self.property_definitions.setdefault(object_type, {})
        if name in definitions:
            raise HubSpotError(409, f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS")
        definitions[name] = property_definition(name, body)
        return definitions[name]

    def add_owner(self, body: Mapping[str, Any]) -> dict[str, Any]:
        now = utc_now_iso()
        archived = bool(body.get("archived", False))
        user_id = int(body.get("userId") or 7_000_000 + len(self.owners) + 1)
        owner = {
            "id": str(body.get("id") or next(self._owner_ids)),
            "email": body.get("email"),
            "firstName": body.get("firstName", ""),
            "lastName": body.get("lastName", ""),
            # HubSpot blanks userId on archived owners but keeps userIdIncludingInactive.
            "userId": None if archived else user_id,
            "userIdIncludingInactive": user_id,
            "type": "PERSON",
            "createdAt": now,
            "updatedAt": now,
            "archived": archived,
            "teams": body.get("teams", []),
        }
        self.owners.append(owner)
        return owner


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


@dataclass
class Fault:
    """An injected failure or delay for requests whose path starts with ``path``."""

    path: str
    method: str | None
    status: int | None
    remaining: int | None
    body: Any
    headers: dict[str, str]
    delay: float
    policy: str | None

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path) and self.method in (None, method)

    def response(self, path: str) -> Response:
        assert self.status is not None
        headers = {"Retry-After": "1"} if path.startswith("/api/") and self.status == 429 else {}
        headers.update(self.headers)
        body = self.body if self.body is not None else default_fault_body(path, self.status, self.policy)
        answer = jsonify(body)
        answer.status_code = self.status
        answer.headers.update(headers)
        return answer


def default_fault_body(path: str, status: int, policy: str | None) -> dict[str, Any]:
    if path.startswith("/api/"):
        return {"ok": False, "error": "ratelimited" if status == 429 else "fatal_error"}
    if status == 429:
        limit = "secondly" if policy == "SECONDLY" else "ten_secondly_rolling"
        return {
            "status": "error",
            "message": f"You have reached your {limit} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": limit.upper(),
            "groupName": f"publicapi:private-app-api-calls-{limit.replace('_', '-')}:1234567",
        }
    try:
        message = "internal error" if status >= 500 else HTTPStatus(status).phrase
    except ValueError:
        message = "error"  # vendor-specific codes such as 477 have no standard phrase
    return HubSpotError(status, message).body()


class SandboxState:
    """Everything one sandbox app remembers; callers hold ``lock`` while touching it."""

    def __init__(self, search_lag: float) -> None:
        self.lock = threading.Lock()
        self.initial_search_lag = search_lag
        self.reset()

    def reset(self) -> None:
        self.search_lag = self.initial_search_lag
        self.crm = CrmStore()
        self.messages: list[dict[str, Any]] = []
        self.slack_users: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.recent_crm_calls: deque[float] = deque()
        self.last_ts_us = 0

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    def rate_limit_remaining(self) -> int:
        now = time.monotonic()
        self.recent_crm_calls.append(now)
        while self.recent_crm_calls[0] < now - RATE_LIMIT_INTERVAL_MS / 1000:
            self.recent_crm_calls.popleft()
        return max(0, RATE_LIMIT_MAX - len(self.recent_crm_calls))

    def next_ts(self) -> str:
        # Slack's ts identifies a message, so it must never repeat even within one microsecond.
        self.last_ts_us = max(time.time_ns() // 1000, self.last_ts_us + 1)
        seconds, micros = divmod(self.last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def snapshot(self) -> dict[str, Any]:
        contacts = self.crm.objects("contacts").values()
        return {
            "contacts": [
                {"id": r.id, "properties": r.properties, "createdAt": r.created_at, "updatedAt": r.versions[-1].updated_at}
                for r in contacts
            ],
            "objects": {
                object_type: [{**r.to_json(), "associations": r.associations} for r in records.values()]
                for object_type, records in self.crm.records.items()
                if object_type != "contacts"
            },
            "messages": self.messages,
            "owners": self.crm.owners,
            "slack_users": self.slack_users,
            "requests": self.requests,
            "properties": sorted(self.crm.property_definitions["contacts"]),
        }


def state() -> SandboxState:
    sandbox: SandboxState = current_app.extensions[EXTENSION_KEY]
    return sandbox


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise HubSpotError(400, "Invalid input JSON: the body must be a JSON object")
    return body


def bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def batch_inputs(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise HubSpotError(400, "Invalid input JSON: inputs must be a list of objects")
    if len(inputs) > BATCH_LIMIT:
        raise HubSpotError(400, f"Batch input of {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
    return inputs


def run_batch(
    inputs: list[dict[str, Any]],
    check: Callable[[dict[str, Any]], object],
    apply: Callable[[dict[str, Any]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write a batch the way HubSpot does.

    Without a unique ``objectWriteTraceId`` on every input, one invalid input fails the whole
    request and nothing is written; with them, valid inputs are written and each invalid one
    becomes an error entry naming its trace id. ``check`` validates an input without writing;
    ``apply`` validates again as it writes, since earlier inputs can change the answer.
    """
    trace_ids = [item.get("objectWriteTraceId") for item in inputs]
    traced = all(trace_ids) and len(set(trace_ids)) == len(trace_ids)
    if not traced:
        for item in inputs:
            check(item)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for item in inputs:
        try:
            result = apply(item)
        except HubSpotError as exc:
            if not traced:
                raise
            errors.append(exc.batch_error(str(item["objectWriteTraceId"])))
            continue
        if traced:
            result["objectWriteTraceId"] = item["objectWriteTraceId"]
        results.append(result)
    return results, errors


def batch_response(
    results: list[dict[str, Any]], errors: list[dict[str, Any]], started_at: str, status: int
) -> ResponseReturnValue:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if errors:
        body.update(numErrors=len(errors), errors=errors)
    body.update(startedAt=started_at, completedAt=utc_now_iso())
    return jsonify(body), 207 if errors else status


def requested_properties() -> list[str]:
    # SDK v12 repeats ``properties=`` per name; hand-written clients send one comma list.
    return [n for value in request.args.getlist("properties") for n in value.split(",") if n]


def crm_create(object_type: str) -> ResponseReturnValue:
    with state().lock:
        record = state().crm.create(object_type, json_body())
        return jsonify(record.to_json()), 201


def crm_batch_create(object_type: str) -> ResponseReturnValue:
    started_at = utc_now_iso()
    with state().lock:
        crm = state().crm
        results, errors = run_batch(
            batch_inputs(json_body()),
            lambda item: crm.prepare_create(object_type, item),
            lambda item: crm.create(object_type, item).to_json(),
        )
        return batch_response(results, errors, started_at, 201)


def crm_batch_upsert(object_type: str) -> ResponseReturnValue:
    started_at = utc_now_iso()
    if object_type != "contacts":
        raise HubSpotError(400, f"The sandbox upserts contacts only, not {object_type}")
    inputs = batch_inputs(json_body())
    ids = [str(item.get("id", "")).strip().lower() for item in inputs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise HubSpotError(
            400,
            f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique",
            context={"ids": duplicates},
        )
    with state().lock:
        crm = state().crm
        results, errors = run_batch(inputs, crm.prepare_upsert, crm.upsert_contact)
        return batch_response(results, errors, started_at, 200)


def crm_search(object_type: str) -> ResponseReturnValue:
    body = json_body()
    with state().lock:
        moment = time.monotonic() - state().search_lag
        return jsonify(state().crm.search(object_type, body, moment))


def crm_get(object_type: str, object_id: str) -> ResponseReturnValue:
    with state().lock:
        record = state().crm.find(object_type, object_id, request.args.get("idProperty"))
        names = requested_properties() or default_read_properties(object_type)
        return jsonify(record.to_json(names=names))


def crm_update(object_type: str, object_id: str) -> ResponseReturnValue:
    with state().lock:
        crm = state().crm
        record = crm.find(object_type, object_id, request.args.get("idProperty"))
        return jsonify(crm.update(record, json_body()).to_json())


def properties_list(object_type: str) -> ResponseReturnValue:
    with state().lock:
        definitions = state().crm.property_definitions.get(object_type, {})
        return jsonify({"results": list(definitions.values())})


def properties_create(object_type: str) -> ResponseReturnValue:
    with state().lock:
        return jsonify(state().crm.add_property(object_type, json_body())), 201


def owners_list() -> ResponseReturnValue:
    email = request.args.get("email", "").lower()
    archived = request.args.get("archived", "false").lower() == "true"
    limit = int(request.args.get("limit") or 100)
    offset = int(request.args.get("after") or 0)
    with state().lock:
        owners = [o for o in state().crm.owners if o["archived"] == archived and (not email or str(o["email"]).lower() == email)]
    answer: dict[str, Any] = {"results": owners[offset : offset + limit]}
    if offset + limit < len(owners):
        answer["paging"] = {"next": {"after": str(offset + limit)}}
    return jsonify(answer)


def owner_get(owner_id: str) -> ResponseReturnValue:
    key = "userId" if request.args.get("idProperty") == "userId" else "id"
    with state().lock:
        for owner in state().crm.owners:
            if str(owner[key]) == owner_id:
                return jsonify(owner)
    raise HubSpotError(404, f"Owner {owner_id} not found", context={"id": [owner_id]})


def slack_args() -> dict[str, Any]:
    """Arguments from the query string, a form body or a JSON body, as Slack accepts all three."""
    args: dict[str, Any] = dict(request.args.items())
    args.update(request.form.items())
    body = request.get_json(silent=True)
    if isinstance(body, dict):
        args.update(body)
    for key in ("blocks", "attachments"):
        if isinstance(args.get(key), str):
            try:
                args[key] = json.loads(args[key])
            except ValueError:
                args[key] = None
    return args


def slack_auth_test(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, **SLACK_IDENTITY}


def slack_post_message(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    channel, blocks = args.get("channel"), args.get("blocks")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    if not (args.get("text") or blocks or args.get("attachments")):
        return {"ok": False, "error": "no_text"}
    if blocks is not None and (not isinstance(blocks, list) or len(blocks) > SLACK_MAX_BLOCKS):
        return {"ok": False, "error": "invalid_blocks"}
    ts = sandbox.next_ts()
    sandbox.messages.append(
        {
            "channel": channel,
            "ts": ts,
            "text": args.get("text"),
            "blocks": blocks,
            "thread_ts": args.get("thread_ts"),
            "args": args,
        }
    )
    message = {
        "type": "message",
        "user": SLACK_IDENTITY["user_id"],
        "bot_id": SLACK_IDENTITY["bot_id"],
        "text": args.get("text", ""),
        "ts": ts,
        **({"blocks": blocks} if blocks else {}),
        **({"thread_ts": args["thread_ts"]} if args.get("thread_ts") else {}),
    }
    return {"ok": True, "channel": channel, "ts": ts, "message": message}


def slack_lookup_by_email(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    email = str(args.get("email", "")).strip().lower()
    for user in sandbox.slack_users:
        if str(user["email"]).lower() == email:
            return {
                "ok": True,
                "user": {
                    "id": user["id"],
                    "name": user["name"],
                    "deleted": False,
                    "profile": {"email": user["email"]},
                },
            }
    return {"ok": False, "error": "users_not_found"}


SLACK_METHODS: dict[str, Callable[[SandboxState, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": slack_auth_test,
    "chat.postMessage": slack_post_message,
    "users.lookupByEmail": slack_lookup_by_email,
}


def slack_method(method: str) -> ResponseReturnValue:
    handler = SLACK_METHODS.get(method)
    if handler is None:
        return jsonify({"ok": False, "error": "unknown_method"}), 404
    args = slack_args()
    if not (bearer_token() or args.get("token")):
        return jsonify({"ok": False, "error": "not_authed"})
    with state().lock:
        return jsonify(handler(state(), args))


def control_summary() -> ResponseReturnValue:
    with state().lock:
        snapshot = state().snapshot()
    counts = ", ".join(
        [
            f"{len(snapshot['contacts'])} contacts",
            f"{len(snapshot['messages'])} Slack messages",
            f"{len(snapshot['requests'])} requests",
        ]
        + [f"{len(items)} {kind}" for kind, items in snapshot["objects"].items()]
    )
    contacts = "".join(
        f"<li><a href='contacts/{html.escape(c['id'])}'>{html.escape(c['id'])}</a>: "
        f"{html.escape(c['properties'].get('email', ''))} "
        f"{html.escape(c['properties'].get('firstname', ''))} "
        f"{html.escape(c['properties'].get('lastname', ''))}</li>"
        for c in snapshot["contacts"][-10:]
    )
    messages = "".join(
        f"<li>{html.escape(str(m['channel']))}: {html.escape(str(m['text']))}</li>" for m in snapshot["messages"][-10:]
    )
    page = (
        f"<!doctype html><title>leadbridge sandbox</title><h1>leadbridge sandbox</h1>"
        f"<p>{html.escape(counts)}. Full state as JSON: <a href='state'>state</a></p>"
        f"<h2>Latest contacts</h2><ul>{contacts}</ul>"
        f"<h2>Latest Slack messages</h2><ul>{messages}</ul>"
    )
    return Response(page, mimetype="text/html")


def control_state() -> ResponseReturnValue:
    with state().lock:
        return jsonify(state().snapshot())


def control_record(object_type: str, record_id: str) -> ResponseReturnValue:
    """One record (contact, deal, note...) with its associations; what a "view in CRM" link
    points at under ``make run``."""
    with state().lock:
        record = state().crm.objects(object_type).get(record_id)
        if record is None:
            return jsonify({"ok": False, "error": f"no {object_type} {record_id}"}), 404
        return jsonify({**record.to_json(), "associations": record.associations})


def control_reset() -> ResponseReturnValue:
    with state().lock:
        state().reset()
    return jsonify({"ok": True})


def control_add_fault() -> ResponseReturnValue:
    body = request.get_json(silent=True) or {}
    if body.get("status") is None and not body.get("delay"):
        return jsonify({"ok": False, "error": "a fault needs a status, a delay or both"}), 400
    fault = Fault(
        path=str(body.get("path", "")),
        method=str(body["method"]).upper() if body.get("method") else None,
        status=None if body.get("status") is None else int(body["status"]),
        remaining=None if body.get("times") is None else int(body["times"]),
        body=body.get("body"),
        headers={k: str(v) for k, v in (body.get("headers") or {}).items()},
        delay=float(body.get("delay") or 0.0),
        policy=body.get("policy"),
    )
    with state().lock:
        state().faults.append(fault)
    return jsonify({"ok": True}), 201


def control_clear_faults() -> ResponseReturnValue:
    with state().lock:
        state().faults.clear()
    return jsonify({"ok": True})


def control_add_owner() -> ResponseReturnValue:
    with state().lock:
        return jsonify(state().crm.add_owner(request.get_json(silent=True) or {})), 201


def control_add_slack_user() -> ResponseReturnValue:
    body = request.get_json(silent=True) or {}
    user = {"id": body.get("id"), "email": body.get("email"), "name": body.get("name")}
    with state().lock:
        state().slack_users.append(user)
    return jsonify(user), 201


def control_search_lag() -> ResponseReturnValue:
    seconds = float((request.get_json(silent=True) or {}).get("seconds", 0.0))
    with state().lock:
        state().search_lag = seconds
    return jsonify({"ok": True, "seconds": seconds})


def before_request() -> ResponseReturnValue | None:
    """Apply injected faults, then the vendors' auth rules, to every non-control request."""
    if request.path.startswith(CONTROL_PREFIX):
        return None
    with state().lock:
        fault = state().take_fault(request.method, request.path)
    if fault is not None:
        # Sleep outside the lock so a slow request does not stall the others.
        time.sleep(fault.delay)
        if fault.status is not None:
            return fault.response(request.path)
    if request.path.startswith("/crm/") and not bearer_token():
        return HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION").response()
    return None


def after_request(response: Response) -> Response:
    if request.path.startswith(CONTROL_PREFIX):
        return response
    with state().lock:
        state().requests.append({"method": request.method, "path": request.path, "status": response.status_code})
        # HubSpot leaves rate-limit headers off search answers; they have their own limit.
        if request.path.startswith("/crm/") and not request.path.endswith("/search") and 200 <= response.status_code < 300:
            response.headers.update(
                {
                    "X-HubSpot-RateLimit-Interval-Milliseconds": str(RATE_LIMIT_INTERVAL_MS),
                    "X-HubSpot-RateLimit-Max": str(RATE_LIMIT_MAX),
                    "X-HubSpot-RateLimit-Remaining": str(state().rate_limit_remaining()),
                }
            )
    return response


def http_error(exc: HTTPException) -> ResponseReturnValue:
    """Unknown paths and methods answer in the shape of the vendor the client thinks it calls."""
    if request.path.startswith("/crm/"):
        return HubSpotError(exc.code or 500, exc.description or "error").response()
    if request.path.startswith("/api/"):
        return jsonify({"ok": False, "error": "unknown_method"}), exc.code or 500
    return exc


ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/crm/v3/objects/<object_type>", crm_create, ["POST"]),
    ("/crm/v3/objects/<object_type>/batch/create", crm_batch_create, ["POST"]),
    ("/crm/v3/objects/<object_type>/batch/upsert", crm_batch_upsert, ["POST"]),
    ("/crm/v3/objects/<object_type>/search", crm_search, ["POST"]),
    ("/crm/v3/objects/<object_type>/<object_id>", crm_get, ["GET"]),
    ("/crm/v3/objects/<object_type>/<object_id>", crm_update, ["PATCH"]),
    ("/crm/v3/properties/<object_type>", properties_list, ["GET"]),
    ("/crm/v3/properties/<object_type>", properties_create, ["POST"]),
    # SDK v12 lists owners at ``/crm/v3/owners/`` with the trailing slash.
    ("/crm/v3/owners/", owners_list, ["GET"]),
    ("/crm/v3/owners/<owner_id>", owner_get, ["GET"]),
    ("/api/<method>", slack_method, ["GET", "POST"]),
    (f"{CONTROL_PREFIX}/", control_summary, ["GET"]),
    (f"{CONTROL_PREFIX}/state", control_state, ["GET"]),
    (f"{CONTROL_PREFIX}/<object_type>/<record_id>", control_record, ["GET"]),
    (f"{CONTROL_PREFIX}/reset", control_reset, ["POST"]),
    (f"{CONTROL_PREFIX}/faults", control_add_fault, ["POST"]),
    (f"{CONTROL_PREFIX}/faults", control_clear_faults, ["DELETE"]),
    (f"{CONTROL_PREFIX}/owners", control_add_owner, ["POST"]),
    (f"{CONTROL_PREFIX}/slack_users", control_add_slack_user, ["POST"]),
    (f"{CONTROL_PREFIX}/search_lag", control_search_lag, ["POST"]),
]


def create_sandbox_app(search_lag: float = 3.0) -> Flask:
    """A fresh sandbox with its own empty state; search sees writes ``search_lag`` seconds late."""
    app = Flask(__name__)
    provider = DefaultJSONProvider(app)
    # Keep HubSpot's key order in bodies rather than Flask's alphabetical default.
    provider.sort_keys = False
    app.json = provider
    app.extensions[EXTENSION_KEY] = SandboxState(search_lag)
    for rule, view, methods in ROUTES:
        app.add_url_rule(
            rule,
            endpoint=f"{view.__name__}",
            view_func=view,
            methods=methods,
            strict_slashes=False,
        )
    app.before_request(before_request)
    app.after_request(after_request)
    app.register_error_handler(HubSpotError, lambda exc: exc.response())
    app.register_error_handler(HTTPException, http_error)
    return app


class SandboxServer:
    """The sandbox app served on a daemon thread; ``with SandboxServer() as server:`` in tests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, search_lag: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.app = create_sandbox_app(search_lag)
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._server = make_server(self.host, self.port, self.app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="leadbridge-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(host: str, port: int, search_lag: float) -> None:
    """Serve the sandbox until interrupted; what ``leadbridge sandbox`` runs."""
    server = make_server(host, port, create_sandbox_app(search_lag), threaded=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def seed_owners(base_url: str, owners: Mapping[str, Mapping[str, Any]], timeout: float = 15.0) -> None:
    """Give a running sandbox the owners a config routes to, with Slack users to mention.

    ``leadbridge run --sandbox`` calls this so the example config's routing works with no
    HubSpot account: owners given by id keep their id, owners given by email get one.
    """
    import requests  # the sandbox server itself never needs it

    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(f"{base_url}{CONTROL_PREFIX}/state", timeout=1).raise_for_status()
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    for name, spec in owners.items():
        email = spec.get("email") or f"{name}@sandbox.example"
        owner = {"id": spec.get("id"), "email": email, "firstName": name.title(), "lastName": "(sandbox)"}
        requests.post(f"{base_url}{CONTROL_PREFIX}/owners", json=owner, timeout=5).raise_for_status()
        slack_id = spec.get("slack") or "U" + re.sub(r"[^A-Z0-9]", "", name.upper())
        user = {"id": slack_id, "email": email, "name": name}
        requests.post(f"{base_url}{CONTROL_PREFIX}/slack_users", json=user, timeout=5).raise_for_status()
