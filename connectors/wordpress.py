"""WordPress form plugins: Contact Form 7 (CF7 to Webhook), Gravity Forms, WPForms,
Elementor Pro, Fluent Forms and Ninja Forms, as one source type.

``options.plugin`` says which plugin a configured source receives from; it decides the
auth, the flattening and the idempotency key:

- auth: only WPForms signs (``X-WPForms-Webhook-Signature: t=<unix>,v=<hex HMAC-SHA256
  over "<t>.<body>">``); CF7, Gravity, WPForms and Fluent can send a shared secret in a
  custom header; Elementor and Ninja have no header UI, so their secret travels in the
  URL query (intake stores only the body and a few headers, never the URL).
- bodies are JSON or PHP form encoding (``connectors.formdata``), keys kept as sent:
  CF7 tag names, Gravity field ids (``1.3``), Elementor labels or ``fields[<id>][value]``.
- the idempotency key is the plugin's entry id where it sends one (Gravity ``id``,
  Fluent ``__submission.id``), else a hash of the content in a time window, so a double
  click makes one delivery and a real resubmission later makes another.

None of these plugins retries, and Elementor shows the visitor an error unless it gets
exactly 200 within 5 s: intake answers 200 as soon as the delivery is on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from werkzeug.http import parse_options_header

from bridge.errors import PayloadError, SignatureError
from bridge.ports import Kind, Request, content_key
from connectors import parse_options, secret_matches

from .formdata import build_php_query, flatten_dotted, nest_dotted, parse_body, parse_json

Plugin = Literal["cf7", "gravity", "wpforms", "elementor", "fluent", "ninja"]
Auth = Literal["hmac", "header", "query"]

SIGNATURE_HEADER = "x-wpforms-webhook-signature"
TOKEN_HEADER = "X-Leadbridge-Token"
RECORDED_HEADERS = ("content-type", "user-agent", "x-forwarded-for")
# Plugins whose admin screens cannot add a request header (only PHP filters can).
NO_HEADER_UI = {"elementor": "Elementor Pro", "ninja": "Ninja Forms"}
DEFAULT_AUTH: dict[str, Auth] = {"wpforms": "hmac", "elementor": "query", "ninja": "query"}
MULTI_VALUE_SEPARATORS: dict[str, str] = {"wpforms": "||"}
FORM = "application/x-www-form-urlencoded; charset=UTF-8"
# What wp_remote_post sends by default: "WordPress/<version>; <home URL>".
WP_USER_AGENT = "WordPress/6.7; https://www.example-plumbing.com"
# Metadata that differs between two clicks of one submission: left out of the content hash.
VOLATILE_KEYS = frozenset(
    {"date", "time", "date_created", "date_updated", "created_at", "updated_at", "serial_number", "user_agent", "unix"}
)


def wpforms_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-WPForms-Webhook-Signature`` value WPForms sends for this body at this time."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v={digest}"


def verify_wpforms(body: bytes, header: str | None, secrets: Sequence[str], tolerance: float, now: float) -> None:
    """Check the timestamp window (both ways) and the HMAC against every active secret."""
    if not header:
        raise SignatureError("missing X-WPForms-Webhook-Signature header")
    parts: dict[str, str] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts[name] = value
    stamp = parts.get("t", "").strip()
    # A Unix time has 10 digits; hundreds would overflow against the clock (a float).
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise SignatureError("X-WPForms-Webhook-Signature has no t=<unix time>")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"X-WPForms-Webhook-Signature timestamp is more than {tolerance:g} s away from now")
    given = parts.get("v", "").lower().encode()
    expected = [wpforms_signature(s, body, timestamp).partition(",v=")[2].encode() for s in secrets]
    if not secret_matches(given, expected):
        raise SignatureError("X-WPForms-Webhook-Signature does not match the body")


def verify_token(given: Sequence[str], secrets: Sequence[str], where: str) -> None:
    """A shared secret sent as is; constant-time compared against every active secret."""
    if not given:
        raise SignatureError(f"missing shared secret ({where})")
    if not any(secret_matches(g, secrets) for g in given):
        raise SignatureError(f"shared secret does not match ({where})")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plugin: Plugin
    # Default: hmac for WPForms, query for Elementor and Ninja, header for the others.
    auth: Auth | None = None
    header: str = Field(TOKEN_HEADER, pattern=r"^[A-Za-z0-9-]+$")
    query_param: str = Field("token", min_length=1)
    dedupe_window_seconds: float = Field(600, gt=0)
    signature_tolerance_seconds: float = Field(300, gt=0)
    # A value holding several choices joined by this becomes a list (WPForms joins checkbox
    # choices with "||"; default for WPForms only); "" leaves values as sent.
    multi_value_separator: str | None = None

    @property
    def separator(self) -> str:
        if self.multi_value_separator is not None:
            return self.multi_value_separator
        return MULTI_VALUE_SEPARATORS.get(self.plugin, "")

    @property
    def auth_mode(self) -> Auth:
        return self.auth or DEFAULT_AUTH.get(self.plugin, "header")

    @model_validator(mode="after")
    def _auth_fits_plugin(self) -> Options:
        if self.auth_mode == "hmac" and self.plugin != "wpforms":
            raise ValueError("auth: hmac: only WPForms signs its webhooks; use auth: header or auth: query")
        if self.auth_mode == "header" and self.plugin in NO_HEADER_UI:
            raise ValueError(f"auth: header: {NO_HEADER_UI[self.plugin]} cannot send custom headers; use auth: query")
        if self.header.lower() in RECORDED_HEADERS:
            raise ValueError(f"header: {self.header} is stored with every delivery; pick a header of its own")
        return self


class WordPressSource:
    recorded_headers: ClassVar[tuple[str, ...]] = RECORDED_HEADERS

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(Options, options)
        self.plugin = self.options.plugin

    def verify(self, request: Request, secrets: Sequence[str]) -> None:
        options = self.options
        headers = {k.lower(): v for k, v in request.headers.items()}
        if options.auth_mode == "hmac":
            if parse_options_header(request.content_type)[0] != "application/json":
                # For form bodies WPForms signs a JSON rendering of the array, not the bytes sent.
                raise SignatureError("WPForms signatures can only be checked on JSON: set the webhook's Request Format to JSON")
            verify_wpforms(request.body, headers.get(SIGNATURE_HEADER), secrets, options.signature_tolerance_seconds, time.time())
        elif options.auth_mode == "header":
            scheme, _, bearer = headers.get("authorization", "").partition(" ")
            given = [headers.get(options.header.lower(), ""), bearer.strip() if scheme.lower() == "bearer" else ""]
            verify_token([g for g in given if g], secrets, f"{options.header} header or Authorization: Bearer")
        else:
            token = request.query.get(options.query_param, "")
            verify_token([token] if token else [], secrets, f"{options.query_param!r} query parameter")

    def parse(self, body: bytes, content_type: str) -> dict[str, Any]:
        payload = parse_body(body, content_type)
        if self.plugin == "ninja" and list(payload) == ["json"] and isinstance(payload["json"], str):
            # Ninja's "Encode Args as a JSON String" with "json-use-arg": one form parameter holding JSON.
            payload = parse_json(payload["json"].encode())
        if not payload:
            raise PayloadError("body has no fields")
        return payload

    def idempotency_key(self, payload: dict[str, Any], received_at: float) -> str:
        entry = self._entry_id(payload)
        if entry:
            return entry
        stable = {key: value for key, value in self.fields(payload).items() if not _volatile(key)}
        return content_key(stable, received_at, self.options.dedupe_window_seconds)

    def kind(self, payload: dict[str, Any]) -> Kind:
        return "lead"

    def form_key(self, payload: dict[str, Any]) -> str | None:
        return form_id(payload)

    def fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.plugin == "elementor" and _is_elementor_advanced(payload):
            flat = _elementor_advanced_fields(payload)
        else:
            flat = flatten_dotted(payload)
        if self.plugin == "gravity":
            flat = _gravity_whole_fields(flat) | flat
        if separator := self.options.separator:
            flat = {k: _split(v, separator) for k, v in flat.items()}
        found = form_id(payload)
        if found is not None:
            flat.setdefault("form_id", found)
        return flat

    def wire_request(self, values: Mapping[str, str], secret: str) -> Request:
        """The request this plugin sends for a submission with these flat values."""
        body, content_type = WIRE_BODIES[self.plugin](dict(values))
        headers = {"content-type": content_type, "user-agent": WP_USER_AGENT}
        query: dict[str, str] = {}
        if self.plugin == "wpforms":
            # WPForms always signs, whatever auth this relay checks.
            headers |= {"x-wpforms-webhook-id": "1", SIGNATURE_HEADER: wpforms_signature(secret, body, int(time.time()))}
        if self.options.auth_mode == "header":
            headers[self.options.header.lower()] = secret
        elif self.options.auth_mode == "query":
            query[self.options.query_param] = secret
        return Request(body=body, content_type=content_type, headers=headers, query=query)

    def _entry_id(self, payload: dict[str, Any]) -> str | None:
        if self.plugin == "gravity" and _filled(payload.get("id")):
            return f"gravity:{payload.get('form_id', '')}:{payload['id']}"
        submission = payload.get("__submission")
        if self.plugin == "fluent" and isinstance(submission, dict) and _filled(submission.get("id")):
            return f"fluent:{submission['id']}"
        return None


def form_id(payload: Mapping[str, Any]) -> str | None:
    """The form id a plugin sends: ``form_id`` (Gravity, Elementor basic), ``form[id]``
    (Elementor advanced) or ``__submission.form_id`` (Fluent)."""
    form, submission = payload.get("form"), payload.get("__submission")
    for value in (
        payload.get("form_id"),
        form.get("id") if isinstance(form, dict) else None,
        submission.get("form_id") if isinstance(submission, dict) else None,
    ):
        if _filled(value) and not isinstance(value, (dict, list)):
            return str(value)
    return None


def _is_elementor_advanced(payload: Mapping[str, Any]) -> bool:
    fields = payload.get("fields")
    return isinstance(fields, dict) and all(isinstance(f, dict) for f in fields.values())


def _elementor_advanced_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``fields[<id>][value]`` -> ``<id>``, ``meta[<key>][value]`` -> ``meta.<key>``, ``form[name]`` -> ``form_name``."""
    flat: dict[str, Any] = {key: field.get("value") for key, field in payload["fields"].items()}
    meta = payload.get("meta")
    if isinstance(meta, dict):
        flat |= {f"meta.{key}": row.get("value") if isinstance(row, dict) else row for key, row in meta.items()}
    form = payload.get("form")
    if isinstance(form, dict) and "name" in form:
        flat["form_name"] = form["name"]
    return flat


def _gravity_whole_fields(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Each multi-input field under its own id as the list of its non-empty inputs, in
    order: ``6.1``/``6.3`` (ticked checkboxes) give ``6``, as Gravity's ``{Field:6}`` shows."""
    whole: dict[str, list[Any]] = {}
    for key, value in flat.items():
        field, dot, sub = key.partition(".")
        if dot and field.isdigit() and sub.isdigit() and _filled(value):
            whole.setdefault(field, []).append(value)
    return whole


def _volatile(key: str) -> bool:
    name = key.rsplit(".", 1)[-1].strip().lstrip("_").lower().replace(" ", "_").replace("-", "_")
    return name in VOLATILE_KEYS


def _filled(value: Any) -> bool:
    return value not in (None, "", [], {})


# -- bodies as each plugin sends them, for wire_request -------------------------------


def _entry_number() -> str:
    return str(uuid.uuid4().int % 10**9)


def _wp_time() -> str:
    # Gravity and Fluent write UTC as "YYYY-MM-DD HH:MM:SS".
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _json_body(data: Mapping[str, Any], content_type: str = "application/json") -> tuple[bytes, str]:
    return json.dumps(data, separators=(",", ":")).encode(), content_type


def _cf7_body(values: dict[str, Any]) -> tuple[bytes, str]:
    return _json_body(values, "application/json; charset=UTF-8")


def _gravity_body(values: dict[str, Any]) -> tuple[bytes, str]:
    entry = {"id": values.pop("id", None) or _entry_number(), "status": "active", "date_created": _wp_time()}
    return _json_body(entry | values)


def _wpforms_body(values: dict[str, Any]) -> tuple[bytes, str]:
    return _json_body(values, "application/json; charset=utf-8")


def _elementor_body(values: dict[str, Any]) -> tuple[bytes, str]:
    """Advanced mode when there are ``meta.*`` keys (only advanced mode has meta rows), else basic."""
    form = {"id": values.pop("form_id", "staging"), "name": values.pop("form_name", "Staging form")}
    meta = {k.removeprefix("meta."): v for k, v in values.items() if k.startswith("meta.")}
    if not meta:
        return build_php_query(values | {"form_id": form["id"], "form_name": form["name"]}).encode(), FORM
    fields = {
        key: {"id": key, "type": "text", "title": key, "value": value, "raw_value": value, "required": False}
        for key, value in values.items()
        if not key.startswith("meta.")
    }
    rows = {key: {"title": key, "value": value} for key, value in meta.items()}
    return build_php_query({"form": form, "fields": fields, "meta": rows}).encode(), FORM


def _fluent_body(values: dict[str, Any]) -> tuple[bytes, str]:
    data = nest_dotted(values)
    submission = data.setdefault("__submission", {})
    if "form_id" in data:
        submission.setdefault("form_id", data.pop("form_id"))
    submission.setdefault("id", _entry_number())
    submission.setdefault("created_at", _wp_time())
    return _json_body(data)


def _ninja_body(values: dict[str, Any]) -> tuple[bytes, str]:
    return build_php_query(values).encode(), FORM


WIRE_BODIES = {
    "cf7": _cf7_body,
    "gravity": _gravity_body,
    "wpforms": _wpforms_body,
    "elementor": _elementor_body,
    "fluent": _fluent_body,
    "ninja": _ninja_body,
}


def _split(value: Any, separator: str) -> Any:
    """``"Water heater||Drain cleaning"`` -> ``["Water heater", "Drain cleaning"]``."""
    if isinstance(value, str) and separator in value:
        return [part.strip() for part in value.split(separator) if part.strip()]
    return value
