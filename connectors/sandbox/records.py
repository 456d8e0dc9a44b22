"""CRM records as HubSpot shapes them: property values, property definitions, inline
associations, and each record's write history (so search can see a record as it was)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from connectors.sandbox.errors import HubSpotError

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


def utc_now_iso() -> str:
    """Current time the way HubSpot writes it: ISO-8601 UTC with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
