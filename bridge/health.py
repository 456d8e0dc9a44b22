"""Readiness: ``GET /readyz`` says whether the relay as a whole can take and deliver leads.

``/healthz`` stays liveness (this intake process answers). ``/readyz`` answers 200 only when
the ledger takes writes (a write lock taken and released, nothing written) and some worker
wrote its heartbeat within ``worker.heartbeat_seconds`` x 3; otherwise 503 with the reasons.
Either way it reports the backlog, so a load balancer or a person sees how far behind it is.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from .config import Settings
from .ledger import Ledger

# A worker that missed this many heartbeats in a row is taken for dead.
MISSED_BEATS = 3

health = Blueprint("leadbridge_health", __name__)


def readiness(settings: Settings, ledger: Ledger, now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether the relay is ready, and the report /readyz shows."""
    now = time.time() if now is None else now
    reasons: list[str] = []
    report: dict[str, Any] = {}
    try:
        ledger.probe_write()
        report["ledger"] = "writable"
    except ledger.errors as exc:
        report["ledger"] = "unavailable"
        reasons.append(f"ledger: not writable ({type(exc).__name__})")
    try:
        last = ledger.last_heartbeat()
        report["backlog"] = ledger.backlog(now)
    except ledger.errors as exc:
        # Unreadable as well: the ledger reason says so, but keep what is known.
        last = None
        reasons.append(f"ledger: not readable ({type(exc).__name__})")
    window = settings.worker.heartbeat_seconds * MISSED_BEATS
    age = None if last is None else round(max(0.0, now - last), 3)
    report["worker"] = {"last_heartbeat_age_seconds": age, "window_seconds": window}
    if age is None:
        reasons.append("worker: no heartbeat recorded; is `leadbridge worker` running?")
    elif age > window:
        reasons.append(f"worker: last heartbeat {age:.0f}s ago (more than {window:g}s); the worker is down or stuck")
    report["ok"] = not reasons
    report["reasons"] = reasons
    return not reasons, report


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    intake = current_app.extensions["leadbridge"]
    ready, report = readiness(intake.settings, intake.ledger)
    return jsonify(report), 200 if ready else 503


def register_health(app: Flask) -> None:
    app.register_blueprint(health)
