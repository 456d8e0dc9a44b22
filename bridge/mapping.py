"""Mapping files: data that says where each canonical lead field comes from.

A source connector flattens a delivery into ``{key: value}`` (for Typeform: answer refs,
``hidden.<name>``, ``submitted_at``...). A mapping names, for each canonical field, the
key(s) to read, first non-empty wins; keys not in the flat record are tried as dotted
paths into the parsed payload, so a mapping can reach any value. A key may carry its own
transforms after ``|`` (``FULL_NAME|first_name``); a rule may add transforms, a value
map, a default, and a merge policy for the CRM property it feeds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import phonenumbers
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import validation_problems
from .errors import ConfigError
from .lead import Lead, read_phone
from .timezones import is_time_zone
from .yamlfile import load_yaml

LEAD_FIELDS = frozenset(Lead.model_fields) - {"custom", "consent"}


class Merge(StrEnum):
    """How a value meets what the CRM already has."""

    OVERWRITE = "overwrite"  # last touch: always update (the default)
    SET_IF_EMPTY = "set_if_empty"  # first touch: never overwrite a value that is there
    APPEND = "append"  # add to what is there, once


def _split_name(value: str) -> list[str]:
    return value.split(None, 1) if value.strip() else []


def _first_name(value: str, _: str | None) -> str | None:
    parts = _split_name(value)
    return parts[0] if parts else None


def _last_name(value: str, _: str | None) -> str | None:
    parts = _split_name(value)
    return parts[1] if len(parts) > 1 else None


def _phone_e164(value: str, region: str | None) -> str:
    # Numbers this cannot read are passed on as they are: the lead's own check reports them.
    return read_phone(value, (region or "").upper() or None)[0] or value


DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%B %d, %Y", "%b %d, %Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d")


def _date(value: str, zone: str | None) -> str:
    """To ISO 8601; ``date:UTC`` (or any zone name) says which zone a time without an offset is in."""
    text = value.strip()
    parsed: datetime | None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = next((p for fmt in DATE_FORMATS if (p := _strptime(text, fmt))), None)
    if parsed is None:
        return value
    if zone and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone))
    return parsed.isoformat()


def _strptime(text: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        return None


# name -> function(text, argument after ":" or None)
TRANSFORMS: dict[str, Callable[[str, str | None], str | None]] = {
    "trim": lambda v, _: v.strip(),
    "lower": lambda v, _: v.lower(),
    "upper": lambda v, _: v.upper(),
    "title": lambda v, _: v.title(),
    "digits": lambda v, _: "".join(c for c in v if c.isdigit()),
    "first_name": _first_name,
    "last_name": _last_name,
    "phone_e164": _phone_e164,
    "date": _date,
}


def check_transform(spec: str) -> str:
    name, _, arg = spec.partition(":")
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}")
    if name == "date" and arg and not is_time_zone(arg):
        raise ValueError(f"date:{arg}: not a time zone name (e.g. date:UTC, date:America/Chicago)")
    if name == "phone_e164" and arg and not phonenumbers.country_code_for_region(arg.upper()):
        raise ValueError(f"phone_e164:{arg}: not a region code (e.g. phone_e164:GB)")
    return spec


def apply_transforms(value: Any, specs: list[str]) -> Any:
    for spec in specs:
        if value is None:
            return None
        name, _, arg = spec.partition(":")
        if isinstance(value, list):
            value = [TRANSFORMS[name](str(v), arg or None) for v in value]
        else:
            value = TRANSFORMS[name](str(value), arg or None)
    return value


def _canonical(name: str) -> str:
    if name not in LEAD_FIELDS:
        raise ValueError(f"unknown canonical field {name!r}; known: {', '.join(sorted(LEAD_FIELDS))}")
    return name


# A mapping key that must name a canonical lead field; each unknown one is its own error.
CanonicalField = Annotated[str, AfterValidator(_canonical)]


class FieldRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Keys to read, first non-empty wins; "KEY|transform|transform" transforms that key only.
    from_: list[str] = Field(default_factory=list, alias="from")
    default: str | None = None
    # Applied to whichever key matched, before the value map.
    transform: list[str] = Field(default_factory=list)
    # Value map, e.g. {"Roof repair": "roofing"}.
    values: dict[str, str] = Field(default_factory=dict)
    merge: Merge = Merge.OVERWRITE

    @field_validator("from_", "transform", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("from_")
    @classmethod
    def _key_transforms(cls, value: list[str]) -> list[str]:
        for key in value:
            for spec in key.split("|")[1:]:
                check_transform(spec)
        return value

    @field_validator("transform")
    @classmethod
    def _transforms(cls, value: list[str]) -> list[str]:
        return [check_transform(spec) for spec in value]

    def read(self, flat: dict[str, Any], payload: Any) -> Any:
        for source in self.from_:
            key, *specs = source.split("|")
            value = apply_transforms(flat[key] if key in flat else _dotted(payload, key), specs)
            if value not in (None, "", [], {}):
                value = apply_transforms(value, self.transform)
                return self.values.get(value, value) if isinstance(value, str) else value
        return self.default


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_type: str
    description: str = ""
    fields: dict[CanonicalField, FieldRule]
    # Extra CRM properties: property name -> rule.
    custom: dict[str, FieldRule] = Field(default_factory=dict)
    # Consent evidence (flags, privacy-policy version, IP, user agent): kept in the
    # delivery's event log; hubspot.consent_properties says which reach the CRM.
    consent: dict[str, FieldRule] = Field(default_factory=dict)
    # Labels for the rep's note: payload key -> what to call it (answers the mapping does not
    # read show under their key otherwise; read ones under the field's own label).
    labels: dict[str, str] = Field(default_factory=dict)

    def absent(self, flat: dict[str, Any], payload: Any) -> list[str]:
        """Each field, custom property or consent item whose keys are all missing from a sample
        (and that has no default): what a marketer mistyped, or a form that lacks the question."""
        sections = (("", self.fields), ("custom.", self.custom), ("consent.", self.consent))
        missing = []
        for prefix, rules in sections:
            for name, rule in rules.items():
                keys = [source.split("|")[0] for source in rule.from_]
                if rule.default is None and keys and not any(k in flat or _dotted(payload, k) is not None for k in keys):
                    missing.append(f"{prefix}{name}: the sample has no {' or '.join(keys)}")
        return missing

    def read_keys(self) -> set[str]:
        """The payload keys some field, custom property or consent item reads."""
        rules = [*self.fields.values(), *self.custom.values(), *self.consent.values()]
        return {source.split("|")[0] for rule in rules for source in rule.from_}

    @field_validator("fields", "custom", "consent", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `email: email` is short for `email: {from: email}`.
        if isinstance(value, dict):
            return {k: {"from": v} if isinstance(v, (str, list)) else v for k, v in value.items()}
        return value

    def apply(self, flat: dict[str, Any], payload: Any) -> dict[str, Any]:
        """Canonical values (not yet normalised) for one delivery."""
        values: dict[str, Any] = {name: rule.read(flat, payload) for name, rule in self.fields.items()}
        values["custom"] = {prop: rule.read(flat, payload) for prop, rule in self.custom.items()}
        values["consent"] = {name: rule.read(flat, payload) for name, rule in self.consent.items()}
        return values

    def merge_policies(self) -> dict[str, Merge]:
        """Non-default merge policies by canonical field or custom property name."""
        rules = {**self.fields, **self.custom}
        return {name: rule.merge for name, rule in rules.items() if rule.merge is not Merge.OVERWRITE}


def load_mapping(path: Path) -> Mapping:
    try:
        data = load_yaml(path.read_bytes())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read mapping ({exc})"]) from exc
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{path.name}: {line}" for line in validation_problems(exc)]) from exc


def _dotted(payload: Any, path: str) -> Any:
    node = payload
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
