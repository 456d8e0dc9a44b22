"""HubSpot's error answers: the JSON body, its category by status, and the batch ``errors[]`` entry.

Every layer of the sandbox raises :class:`HubSpotError` when a CRM request turns out to be invalid;
the app renders it the way HubSpot does.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Response, jsonify

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
