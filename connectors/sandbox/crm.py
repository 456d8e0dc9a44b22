"""The in-memory CRM: every object type in one store, with HubSpot's write checks (known contact
properties, unique emails, required properties and associations), search, properties and owners."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from connectors.sandbox.errors import HubSpotError, invalid_properties, property_problem
from connectors.sandbox.records import (
    Record,
    Version,
    normalize_properties,
    parse_associations,
    property_definition,
    system_properties,
    utc_now_iso,
)
from connectors.sandbox.search import (
    SEARCH_PAGE_DEFAULT,
    SEARCH_PAGE_MAX,
    check_filter_groups,
    default_read_properties,
    filter_matches,
    sort_hits,
)

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
# leadbridge's own markers, which `leadbridge doctor --create-properties` makes with hasUniqueValue:
# the delivery that created a deal or a phone-only contact, so a retried create meets a 409.
LEADBRIDGE_UNIQUE_PROPERTIES: dict[str, tuple[str, ...]] = {
    "contacts": ("leadbridge_delivery_id",),
    "deals": ("leadbridge_delivery_id",),
}
REQUIRED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "deals": ("dealname", "dealstage"),
    "notes": ("hs_timestamp",),
    "tasks": ("hs_timestamp",),
    "leads": ("hs_lead_name",),
}
DEFAULT_VALUES: dict[str, dict[str, str]] = {"deals": {"pipeline": "default"}}
# HubSpot refuses a lead that is not associated with its primary contact.
REQUIRED_ASSOCIATION_TYPES = {"leads": 578}
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class CrmStore:
    """All CRM object types in one store; contacts add email uniqueness and known properties."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Record]] = {}
        self.property_definitions: dict[str, dict[str, dict[str, Any]]] = {
            "contacts": {
                name: property_definition(name) for name in HUBSPOT_DEFAULT_CONTACT_PROPERTIES + LEADBRIDGE_CONTACT_PROPERTIES
            }
        }
        for object_type, names in LEADBRIDGE_UNIQUE_PROPERTIES.items():
            definitions = self.property_definitions.setdefault(object_type, {})
            definitions.update({n: property_definition(n, {"hasUniqueValue": True}) for n in names})
        self.owners: list[dict[str, Any]] = []
        # Pipelines created through the API (the default deal pipeline is always there), by object type.
        self.pipelines: dict[str, list[dict[str, Any]]] = {}
        # Merged-away record id -> the surviving record's id, by object type: HubSpot answers a
        # read or a write of a merged-away id with the survivor (and the survivor's id).
        self.merged_into: dict[str, dict[str, str]] = {}
        # Plain counters rather than iterators, so a state file can save and restore them.
        self.next_record_id = 1001
        self.next_owner_id = 501

    def objects(self, object_type: str) -> Mapping[str, Record]:
        return self.records.get(object_type, {})

    def remove(self, object_type: str, record_id: str) -> None:
        self.records.get(object_type, {}).pop(record_id, None)

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
            record = self.objects(object_type).get(self.survivor(object_type, key))
        else:
            record = next(
                (r for r in self.objects(object_type).values() if r.properties.get(id_property) == key),
                None,
            )
        if record is None:
            raise HubSpotError(404, "Object not found.  objectId are usually numeric.", context={"id": [key]})
        return record

    def survivor(self, object_type: str, record_id: str) -> str:
        """The id that answers for ``record_id``: itself, or the record it was merged into."""
        merged = self.merged_into.get(object_type, {})
        seen = {record_id}
        while record_id in merged and merged[record_id] not in seen:
            record_id = merged[record_id]
            seen.add(record_id)
        return record_id

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
        self.check_unique(object_type, properties, record)
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

    def check_unique(self, object_type: str, properties: Mapping[str, str], record: Record | None) -> None:
        """A value of a ``hasUniqueValue`` property another record holds: HubSpot's 409 (hubspot.md §2),
        naming the record that has it the way the duplicate-email 409 does."""
        definitions = self.property_definitions.get(object_type, {})
        for name, value in properties.items():
            if not value or not definitions.get(name, {}).get("hasUniqueValue"):
                continue
            other = next((r for r in self.objects(object_type).values() if r.properties.get(name) == value), None)
            if other is not None and other is not record:
                label = object_type[:-1].capitalize()
                raise HubSpotError(409, f"{label} already exists. Existing ID: {other.id}")

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
        self.next_record_id += 1
        record = Record(
            id=str(self.next_record_id - 1),
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
        if not body.get("id"):
            self.next_owner_id += 1
        owner = {
            "id": str(body.get("id") or self.next_owner_id - 1),
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
