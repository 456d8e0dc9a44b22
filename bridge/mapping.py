"""Mapping files: data that says where each canonical lead field comes from.

A source connector flattens a delivery into ``{key: value}`` (for Typeform: answer refs,
``hidden.<name>``, ``submitted_at``...). A mapping names, for each canonical field, the
key(s) to read, with an optional value map and default. Keys not in the flat record are
tried as dotted paths into the parsed payload, so a mapping can reach any value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import validation_problems
from .errors import ConfigError
from .lead import Lead

LEAD_FIELDS = frozenset(Lead.model_fields) - {"custom"}


class FieldRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Keys to read, first non-empty wins.
    from_: list[str] = Field(alias="from", min_length=1)
    default: str | None = None
    # Value map applied after reading, e.g. {"Roof repair": "roofing"}.
    values: dict[str, str] = Field(default_factory=dict)

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_type: str
    description: str = ""
    fields: dict[str, FieldRule]
    # Extra CRM properties: property name -> rule.
    custom: dict[str, FieldRule] = Field(default_factory=dict)

    @field_validator("fields", "custom", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `email: email` is short for `email: {from: email}`.
        if isinstance(value, dict):
            return {k: {"from": v} if isinstance(v, (str, list)) else v for k, v in value.items()}
        return value

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, FieldRule]) -> dict[str, FieldRule]:
        unknown = sorted(set(value) - LEAD_FIELDS)
        if unknown:
            raise ValueError(f"unknown canonical field(s) {', '.join(unknown)}; known: {', '.join(sorted(LEAD_FIELDS))}")
        return value

    def apply(self, flat: dict[str, Any], payload: Any) -> dict[str, Any]:
        """Canonical values (not yet normalised) for one delivery."""
        values: dict[str, Any] = {name: _read(rule, flat, payload) for name, rule in self.fields.items()}
        values["custom"] = {prop: _read(rule, flat, payload) for prop, rule in self.custom.items()}
        return values


def load_mapping(path: Path) -> Mapping:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read mapping ({exc})"]) from exc
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{path.name}: {line}" for line in validation_problems(exc)]) from exc


def _read(rule: FieldRule, flat: dict[str, Any], payload: Any) -> Any:
    for key in rule.from_:
        value = flat[key] if key in flat else _dotted(payload, key)
        if value not in (None, "", [], {}):
            return rule.values.get(value, value) if isinstance(value, str) else value
    return rule.default


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
