"""Google Ads lead form webhooks: ``google_key`` verification, parsing and flattening.

Google posts one JSON ``WebhookLead`` per submission. It is not signed: the advertiser's
shared key travels inside the body as ``google_key`` (spelled ``Google_key`` on Google's
Samples page), so verification is a constant-time comparison of that field, against the
key configured for the delivery's form or campaign (``options.keys``) if there is one,
else against the source's secrets. The key is then removed (``at_rest``) before the body is
stored, so neither the ledger nor ``leadbridge show --body`` ever holds it. The idempotency key is ``lead_id``. Flattening gives
each answer by its ``column_id`` (``EMAIL``, ``FULL_NAME``...) and by its ``column_name``
(custom questions may have no id), plus the lead's metadata. The int64 ids (``form_id``,
``campaign_id``...) are kept as exact decimal strings: they exceed 2**53, so a float
would silently change them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.errors import PayloadError, SignatureError, SourceNotConfiguredError
from bridge.ports import Kind, Request
from bridge.secrets import read_secrets
from connectors import parse_options, secret_matches
from connectors.bodies import LimitError, load_json_object

KEY_FIELD = "google_key"
# int64 fields the docs say to process as 8-byte integers.
ID_FIELDS = ("form_id", "campaign_id", "adgroup_id", "creative_id", "asset_group_id")
TEXT_FIELDS = ("lead_id", "gcl_id", "lead_stage", "lead_submit_time", "api_version")
# Standard and qualifying-question column ids are enum names (FULL_NAME, VEHICLE_MODEL...).
COLUMN_ID = re.compile(r"^[A-Z][A-Z0-9_]*$")
INT64 = re.compile(r"^-?[0-9]{1,19}$")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Form id or campaign id -> environment variable(s) holding that form's or campaign's
    # google_key; several names allow rotation. Forms and campaigns not listed use secret_env.
    keys: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("keys", mode="before")
    @classmethod
    def _ids_and_names(cls, value: Any) -> Any:
        # YAML reads an unquoted id as an int; a single env var name is short for a list of one.
        if not isinstance(value, dict):
            return value
        return {str(k): [v] if isinstance(v, str) else v for k, v in value.items()}

    @field_validator("keys")
    @classmethod
    def _numeric_ids(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        bad = sorted(k for k in value if not INT64.match(k))
        if bad:
            raise ValueError(f"not a form or campaign id (digits only): {', '.join(bad)}")
        empty = sorted(k for k, names in value.items() if not names)
        if empty:
            raise ValueError(f"no environment variable named for: {', '.join(empty)}")
        return value


def int64_text(value: Any) -> str | None:
    """An int64 id as an exact decimal string; None if absent or not an integer (never via float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and INT64.match(value.strip()):
        return value.strip()
    return None


def google_key(payload: Mapping[str, Any]) -> str | None:
    """The key the sender put in the body, whatever the case of the field name."""
    value = next((v for k, v in payload.items() if k.lower() == KEY_FIELD), None)
    return value if isinstance(value, str) and value else None


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, within the parsing limits (Python ints are exact, so int64 ids stay exact)."""
    return load_json_object(body)


def without_key(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The lead without its ``google_key``, at the top or as an answer column (ids stay exact ints)."""
    kept = {k: v for k, v in payload.items() if k.lower() != KEY_FIELD}
    columns = kept.get("user_column_data")
    if isinstance(columns, list):
        kept["user_column_data"] = [c for c in columns if not _is_key_column(c)]
    return kept


def _is_key_column(column: Any) -> bool:
    names = (column.get("column_name"), column.get("column_id")) if isinstance(column, dict) else ()
    return any(isinstance(n, str) and n.lower() == KEY_FIELD for n in names)


def load_lead(body: bytes) -> dict[str, Any]:
    """One delivery; PayloadError unless it is a JSON object with a lead_id and a list of columns."""
    payload = json_object(body)
    if not isinstance(payload.get("lead_id"), str) or not payload["lead_id"].strip():
        raise PayloadError("body has no lead_id")
    columns = payload.get("user_column_data") or []
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        raise PayloadError("user_column_data is not a list of objects")
    return payload


class GoogleAdsSource:
    recorded_headers: ClassVar[tuple[str, ...]] = ("content-type", "user-agent", "x-forwarded-for")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(Options, options)

    def verify(self, request: Request, secrets: Sequence[str]) -> None:
        try:
            payload = json_object(request.body)
        except LimitError:
            # Over a parsing limit: refused as such, whoever sent it.
            raise
        except PayloadError as exc:
            # Nothing readable carries a key: refuse it as unauthenticated, like a missing signature.
            raise SignatureError("body carries no google_key") from exc
        given = google_key(payload)
        if given is None:
            raise SignatureError("body carries no google_key")
        if not secret_matches(given, self.accepted_keys(payload, secrets)):
            raise SignatureError("google_key does not match the key configured for this form")

    def accepted_keys(self, payload: Mapping[str, Any], secrets: Sequence[str]) -> list[str]:
        """The keys valid for this delivery: its form's, else its campaign's, else the source's."""
        for id_field in ("form_id", "campaign_id"):
            names = self.options.keys.get(int64_text(payload.get(id_field)) or "")
            if names is None:
                continue
            keys = read_secrets(names)
            if not keys:
                # Fail closed with a status the sender retries, as intake does for an unset secret_env.
                raise SourceNotConfiguredError(f"no key is configured yet for this {id_field.removesuffix('_id')}")
            return keys
        return list(secrets)

    def parse(self, body: bytes, content_type: str) -> dict[str, Any]:
        return load_lead(body)

    def at_rest(self, payload: dict[str, Any]) -> bytes:
        """The body as the ledger keeps it (from the payload intake already parsed): without the
        key, which is only needed to verify at intake."""
        return json.dumps(without_key(payload), ensure_ascii=False).encode()

    def idempotency_key(self, payload: dict[str, Any], received_at: float) -> str:
        return str(payload["lead_id"]).strip()

    def kind(self, payload: dict[str, Any]) -> Kind:
        is_test = payload.get("is_test")
        return "test" if is_test is True or str(is_test).lower() == "true" else "lead"

    def form_key(self, payload: dict[str, Any]) -> str | None:
        return int64_text(payload.get("form_id"))

    def fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Answers by column_name, then by column_id (which wins), then the lead's metadata (which wins)."""
        columns = payload.get("user_column_data") or []
        flat: dict[str, Any] = {}
        for key in ("column_name", "column_id"):
            for column in columns:
                name = column.get(key)
                if isinstance(name, str) and name and name.lower() != KEY_FIELD:
                    flat[name] = column.get("string_value")
        flat.update({name: payload.get(name) for name in TEXT_FIELDS})
        flat.update({name: int64_text(payload.get(name)) for name in ID_FIELDS})
        flat["is_test"] = self.kind(payload) == "test"
        return flat

    def wire_request(self, values: Mapping[str, str], secret: str) -> Request:
        """A lead whose answers are the values keyed by column id (others become custom
        questions by column_name); id and metadata keys go to the top level."""
        meta = set(ID_FIELDS) | set(TEXT_FIELDS) | {"is_test", KEY_FIELD}
        columns = [
            {"column_name": key.replace("_", " ").title(), "string_value": value, "column_id": key}
            if COLUMN_ID.match(key)
            else {"column_name": key, "string_value": value}
            for key, value in values.items()
            if key not in meta
        ]
        payload: dict[str, Any] = {
            "lead_id": uuid.uuid4().hex,
            "user_column_data": columns,
            "api_version": values.get("api_version", "1.0"),
            "lead_submit_time": values.get("lead_submit_time") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            KEY_FIELD: secret,
            "is_test": values.get("is_test") == "true",
        }
        payload.update({k: values[k] for k in ("gcl_id", "lead_stage") if values.get(k)})
        # Ids go out as JSON integers, as Google sends them (int() of a digit string is exact).
        payload.update({k: int(text) for k in ID_FIELDS if (text := int64_text(values.get(k)))})
        body = json.dumps(payload).encode()
        return Request(body=body, content_type="application/json", headers={"content-type": "application/json"}, query={})
