"""Intake: the Flask app that receives webhooks and writes them to the ledger.

A request is verified against its raw body, parsed, given its idempotency key and
written in one transaction; only then does the sender get 200. No CRM or Slack call
happens here. A configured source never answers 404 or 410, because Typeform switches
a webhook off when it sees either.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Settings, load_settings
from .crm_events import register_crm_webhook
from .errors import (
    BodyTooLargeError,
    IntakeError,
    LedgerUnavailableError,
    SignatureError,
    SourceNotConfiguredError,
    UnknownSourceError,
    where,
)
from .health import register_health
from .httpbody import read_body
from .jsonlog import apply_log_format
from .ledger import open_ledger
from .logs import install as install_redaction
from .logs import settings_secrets
from .metrics import register_metrics
from .ports import Request, Source, key_aliases
from .ratelimit import RateLimiter, open_limits
from .sources import interpret, load_sources

log = logging.getLogger(__name__)
UNEXPECTED = "unexpected error on our side; retry later"


class Intake:
    """Long-lived objects of one app: settings, ledger and the configured sources."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = open_ledger(settings.ledger)
        self.kits = load_sources(settings)
        for spec in settings.sources:
            if not spec.secrets():
                # Once here, not per request: names where the secret is looked for, never a value.
                log.warning("source %s has no secret: set %s (answering 503 until then)", spec.name, spec.secret_refs())

    def accept(self, source_name: str, req: Request) -> tuple[str, bool]:
        kit = self.kits.get(source_name)
        spec = self.settings.source(source_name)
        if kit is None or spec is None:
            raise UnknownSourceError(f"no source named {source_name!r} is configured")
        if len(req.body) > self.settings.server.max_body_bytes:
            raise BodyTooLargeError(f"body is over {self.settings.server.max_body_bytes} bytes")
        secrets = spec.secrets()
        if not secrets:
            # Fail closed, and with a status the sender retries rather than one that disables it.
            raise SourceNotConfiguredError("this source has no secret configured yet; retry later")
        kit.source.verify(req, secrets)
        payload = kit.source.parse(req.body, req.content_type)
        received_at = time.time()
        key = kit.source.idempotency_key(payload, received_at)
        headers = {k: v for k, v in req.headers.items() if k.lower() in kit.source.recorded_headers}
        try:
            # Who this is about, so the worker keeps one person's submissions in order.
            person_keys = interpret(kit, payload, self.settings.lead.default_region).lead.person_keys()
        except Exception:  # a mapping problem is the worker's to report, never a reason to refuse
            person_keys = []
        try:
            return self.ledger.accept(
                source=source_name,
                idem_key=key,
                body=at_rest(kit.source, req.body, payload),
                content_type=req.content_type,
                headers=headers,
                config_version=self.settings.version,
                person_keys=person_keys,
                aliases=key_aliases(key),
                now=received_at,
            )
        except self.ledger.errors as exc:
            log.error("ledger write failed for source %s: %s", source_name, type(exc).__name__)
            raise LedgerUnavailableError("the delivery could not be stored; retry later") from exc


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    # Here, so gunicorn's workers and wsgi.py redact as the CLI does.
    install_redaction(settings_secrets(settings))
    apply_log_format(settings.logging)
    app = Flask("leadbridge")
    # Let werkzeug refuse oversized bodies before reading them (plus slack for headers).
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    intake = Intake(settings)
    app.extensions["leadbridge"] = intake

    limits = settings.server.rate_limit
    if limits.trusted_proxies:
        # Only the hops we run are trusted; anything a client prepends is ignored.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=limits.trusted_proxies)  # type: ignore[method-assign]
    store = open_limits(settings.ledger)
    app.extensions["leadbridge.limits"] = store
    per_ip = RateLimiter(store, "ip", limits.per_client_ip)
    per_source = RateLimiter(store, "source", limits.per_source)

    def over_limit(source: str) -> tuple[Response, int] | None:
        wait = per_ip.allow(request.remote_addr or "-") or per_source.allow(source)
        if not wait:
            return None
        response, status = _error(429, "rate_limited", "too many requests; retry later")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response, status

    app.extensions["leadbridge.over_limit"] = over_limit

    @app.post("/hooks/<source>")
    def hook(source: str) -> tuple[Response, int]:
        refused = over_limit(source)
        if refused:
            return refused
        req = Request(
            body=read_body(request.environ, settings.server.max_body_bytes),
            content_type=request.content_type or "",
            headers={k.lower(): v for k, v in request.headers.items()},
            query=request.args.to_dict(),
        )
        delivery_id, created = intake.accept(source, req)
        if created:
            log.info("delivery %s accepted from %s", delivery_id, source)
        return jsonify(ok=True, delivery_id=delivery_id, duplicate=not created), 200

    @app.get("/healthz")
    def health() -> tuple[Response, int]:
        try:
            counts = intake.ledger.counts()
        except intake.ledger.errors:
            return jsonify(ok=False, ledger="unavailable"), 503
        return jsonify(ok=True, version=settings.version, deliveries=counts), 200

    register_crm_webhook(app, settings, intake.ledger, over_limit)  # /hubspot/webhooks
    register_health(app)  # /readyz
    register_metrics(app, intake.ledger, set(intake.kits))  # /metrics

    if settings.server.staging:
        from .staging import register_staging

        register_staging(app, intake)

    @app.errorhandler(IntakeError)
    def intake_error(exc: IntakeError) -> tuple[Response, int]:
        if isinstance(exc, SignatureError):
            log.warning("rejected request to %s: %s", request.path.split("?")[0], exc.code)
        return _error(exc.status, exc.code, str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        err = BodyTooLargeError(f"body is over {settings.server.max_body_bytes} bytes")
        return _error(err.status, err.code, str(err))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        return _error(status, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")

    @app.errorhandler(Exception)
    def bug(exc: Exception) -> tuple[Response, int]:
        # Last resort, for true bugs only: every refusal is an IntakeError or HTTPException above.
        # Type and place only: the message or the locals may quote the body.
        log.error("unexpected %s at %s on %s", type(exc).__name__, where(exc, frames=1), request.path)
        return _error(500, "internal_error", UNEXPECTED)

    return app


def at_rest(source: Source, body: bytes, payload: Any) -> bytes:
    """The body as the ledger stores it: a source whose secret travels inside the body
    (Google's ``google_key``) writes it out again from the parsed payload without it; the
    worker never needs it."""
    scrub = getattr(source, "at_rest", None)
    return bytes(scrub(payload)) if scrub else body


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    body: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    return jsonify(body), status
