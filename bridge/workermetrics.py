"""The worker's own metrics, in process, on ``worker.metrics_port`` (0, the default: off).

What only the worker sees, and the ledger does not record: each call it makes through the
CRM and notifier ports (HubSpot and Slack) by method and outcome, with its duration, and
each delivery it handles by outcome, with its duration. The ports are wrapped, not the
connectors, so the core still never imports a vendor SDK and every connector is counted.
Counters live in this process (one worker, one scrape target); the ledger's own counts are
on the intake's ``/metrics`` (``bridge.metrics``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from .config import Settings
from .errors import DeliveryError, PermanentError, RetriableError, ThrottledError
from .ports import CRM, Notifier, build_crm, build_notifier

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
CALLS = Counter(
    "leadbridge_worker_calls",
    "Calls through the CRM (HubSpot) and notifier (Slack) ports by method and outcome "
    "(ok, throttled: a 429 or our own pacing, retriable, permanent, error).",
    ["port", "method", "outcome"],
    registry=REGISTRY,
)
CALL_SECONDS = Histogram("leadbridge_worker_call_seconds", "Duration of each port call.", ["port", "method"], registry=REGISTRY)
DELIVERIES = Counter(
    "leadbridge_worker_deliveries",
    "Deliveries this worker handled, by source and outcome.",
    ["source", "outcome"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "leadbridge_worker_delivery_seconds",
    "Time to handle one claimed delivery (all of its steps in this attempt).",
    ["source"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
STEP_SECONDS = Histogram(
    "leadbridge_worker_step_seconds",
    "Time each pipeline step took (score, route, contact, notify, deal, task...), by outcome.",
    ["step", "outcome"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RETRIES = Counter(
    "leadbridge_worker_retries",
    "Retries scheduled, by the step that failed and kind (retry: counts an attempt; deferred: pacing, attempt kept).",
    ["step", "kind"],
    registry=REGISTRY,
)
HUBSPOT_REQUESTS = Counter(
    "leadbridge_hubspot_requests",
    "HTTP requests to HubSpot by SDK endpoint and answer status (0: no answer).",
    ["endpoint", "status"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "leadbridge_rate_limited",
    "429s (and Slack's ratelimited) answered to us, by vendor and policy (TEN_SECONDLY_ROLLING, SECONDLY, ...).",
    ["vendor", "policy"],
    registry=REGISTRY,
)
FIRST_TOUCH_KEPT = Counter(
    "leadbridge_first_touch_kept",
    "Contact writes that left an existing first touch as it was (a returning person's new visit).",
    registry=REGISTRY,
)


def _methods(port: type) -> frozenset[str]:
    return frozenset(name for name in vars(port) if not name.startswith("_") and callable(getattr(port, name)))


# Every method of a port calls its vendor, except planned and record_url, which only compute.
CALLING = {"crm": _methods(CRM) - {"planned", "record_url"}, "notifier": _methods(Notifier)}

_served: set[int] = set()
_serving = threading.Lock()


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, ThrottledError):
        return "throttled"
    if isinstance(exc, RetriableError):
        return "retriable"
    if isinstance(exc, PermanentError):
        return "permanent"
    return "error"


class Counted:
    """A port whose vendor-calling methods are counted and timed; everything else passes through."""

    def __init__(self, target: Any, port: str) -> None:
        self._target, self._port = target, port

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in CALLING[self._port]:
            return attr
        return self._counted(name, attr)

    def _counted(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                CALLS.labels(self._port, name, outcome_of(exc)).inc()
                raise
            finally:
                CALL_SECONDS.labels(self._port, name).observe(time.monotonic() - started)
            # A batch answers per input: count each one's outcome.
            items = list(result.values()) if isinstance(result, Mapping) else result if isinstance(result, list) else [result]
            for item in items:
                CALLS.labels(self._port, name, outcome_of(item) if isinstance(item, DeliveryError) else "ok").inc()
            return result

        return call


def counted_ports(settings: Settings) -> tuple[CRM | None, Notifier | None]:
    """The CRM and notifier, counted when the worker serves metrics; (None, None) leaves them to the pipeline."""
    if not settings.worker.metrics_port:
        return None, None
    return cast(CRM, Counted(build_crm(settings), "crm")), cast(Notifier, Counted(build_notifier(settings), "notifier"))


def record_step(step: str, outcome: str, seconds: float) -> None:
    STEP_SECONDS.labels(step, outcome).observe(seconds)


def record_retry(step: str, kind: str) -> None:
    RETRIES.labels(step, kind).inc()


def record_hubspot_request(endpoint: str, status: int) -> None:
    HUBSPOT_REQUESTS.labels(endpoint, str(status)).inc()


def record_rate_limited(vendor: str, policy: str) -> None:
    RATE_LIMITED.labels(vendor, policy or "unknown").inc()


def record_first_touch_kept() -> None:
    FIRST_TOUCH_KEPT.inc()


def record_delivery(source: str, outcome: str, seconds: float) -> None:
    DELIVERIES.labels(source, outcome).inc()
    DELIVERY_SECONDS.labels(source).observe(seconds)


def serve_worker_metrics(settings: Settings) -> None:
    """Start the metrics server once per process (a SIGHUP reload keeps it and its counts)."""
    port = settings.worker.metrics_port
    with _serving:
        if not port or port in _served:
            return
        try:
            start_http_server(port, addr=settings.server.host, registry=REGISTRY)
        except OSError as exc:  # a metrics port is never a reason to stop delivering leads
            log.error("worker metrics: cannot listen on %s:%d (%s); check worker.metrics_port", settings.server.host, port, exc)
            return
        _served.add(port)
        log.info("worker metrics on http://%s:%d/metrics", settings.server.host, port)
