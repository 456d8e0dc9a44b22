"""Typeform webhooks: ``Typeform-Signature`` verification, parsing and flattening.

Typeform signs the raw body: ``sha256=`` + base64(HMAC-SHA256(secret, body)). The
idempotency key is ``event_id``, else the response ``token``. Flattening turns each
answer into ``<field ref>: value`` (choice labels, joined multi-choices, numbers,
booleans...) and each hidden field into ``hidden.<name>``, which mappings then read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from bridge.errors import PayloadError, SignatureError
from bridge.ports import Kind, Request
from connectors import parse_options, secret_matches
from connectors.bodies import load_json

SIGNATURE_HEADER = "typeform-signature"


def typeform_signature(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


def verify_typeform(body: bytes, header: str | None, secrets: Sequence[str]) -> None:
    """Constant-time check of the header against every active secret (rotation)."""
    if not header:
        raise SignatureError("missing Typeform-Signature header")
    if not secret_matches(header.strip(), (typeform_signature(s, body) for s in secrets)):
        raise SignatureError("Typeform-Signature does not match the body")


def answer_value(answer: dict[str, Any]) -> Any:
    """The plain value of one answer, whatever its type."""
    kind = answer.get("type")
    value = answer.get(kind) if isinstance(kind, str) else None
    if kind == "choice" and isinstance(value, dict):
        return value.get("label") or value.get("other")
    if kind == "choices" and isinstance(value, dict):
        labels = value.get("labels")
        labels = list(labels) if isinstance(labels, list) else []
        return labels + ([value["other"]] if value.get("other") else [])
    if kind == "payment" and isinstance(value, dict):
        return value.get("amount")
    return value


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TypeformSource:
    recorded_headers: ClassVar[tuple[str, ...]] = ("content-type", "user-agent", "x-forwarded-for")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(Options, options)

    def verify(self, request: Request, secrets: Sequence[str]) -> None:
        verify_typeform(request.body, request.headers.get(SIGNATURE_HEADER), secrets)

    def parse(self, body: bytes, content_type: str) -> dict[str, Any]:
        payload = load_json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("form_response"), dict):
            raise PayloadError("body has no form_response object")
        response = payload["form_response"]
        if not (payload.get("event_id") or response.get("token")):
            raise PayloadError("body has neither event_id nor form_response.token")
        answers = response.get("answers") or []
        if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
            raise PayloadError("form_response.answers is not a list of objects")
        return payload

    def idempotency_key(self, payload: dict[str, Any], received_at: float) -> str:
        return str(payload.get("event_id") or payload["form_response"]["token"])

    def kind(self, payload: dict[str, Any]) -> Kind:
        return "partial" if payload.get("event_type") == "form_response_partial" else "lead"

    def form_key(self, payload: dict[str, Any]) -> str | None:
        form_id = payload["form_response"].get("form_id")
        return str(form_id) if form_id else None

    def wire_request(self, values: Mapping[str, str], secret: str) -> Request:
        """A form_response whose answers are text answers with the given refs; hidden.* keys become hidden fields."""
        token = uuid.uuid4().hex
        answers = [
            {"type": "text", "text": value, "field": {"id": f"f-{ref}", "type": "short_text", "ref": ref}}
            for ref, value in values.items()
            if not ref.startswith("hidden.")
        ]
        hidden = {key.removeprefix("hidden."): value for key, value in values.items() if key.startswith("hidden.")}
        response = {"form_id": values.get("form_id", "staging"), "token": token, "answers": answers, "hidden": hidden}
        body = json.dumps({"event_id": token, "event_type": "form_response", "form_response": response}).encode()
        headers = {"content-type": "application/json", SIGNATURE_HEADER: typeform_signature(secret, body)}
        return Request(body=body, content_type="application/json", headers=headers, query={})

    def fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        response = payload["form_response"]
        flat: dict[str, Any] = {
            "form_id": response.get("form_id"),
            "token": response.get("token"),
            "submitted_at": response.get("submitted_at"),
            "landed_at": response.get("landed_at"),
            "event_type": payload.get("event_type"),
        }
        # Answers carry field.id always and field.ref only sometimes: join refs via the definition.
        # Anything of the wrong shape is skipped: the signature says who sent it, not that it is sane.
        refs = {_name(f.get("id")): f.get("ref") for f in _objects(_object(response.get("definition")).get("fields"))}
        for answer in _objects(response.get("answers")):
            field = _object(answer.get("field"))
            key = next((k for k in (field.get("ref"), refs.get(_name(field.get("id"))), field.get("id")) if _name(k)), None)
            if key:
                flat[key] = answer_value(answer)
        for name, value in _object(response.get("hidden")).items():
            flat[f"hidden.{name}"] = value
        for variable in _objects(response.get("variables")):
            flat[f"variables.{variable.get('key')}"] = variable.get(_name(variable.get("type")) or "")
        return flat


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
