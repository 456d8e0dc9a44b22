"""Prometheus metrics at ``GET /metrics`` on the intake, read from the ledger at scrape time.

Every number comes from the ledger when Prometheus asks, through a custom collector, not
from counters kept in memory: whichever gunicorn worker answers the scrape, the values are
the ledger's counts, equal across workers and restarts, without prometheus-client's
multiprocess mode (and its directory of mmap files). The one thing the deliveries table
cannot show, a request answered without a new delivery (a sender's retry, a refusal), is
counted into the ledger by an ``after_request`` hook.

Names (README "Metrics" lists them; deploy/ has a dashboard and alert rules using them):
``leadbridge_deliveries``, ``leadbridge_intake_requests_total``,
``leadbridge_duplicates_prevented_total``, ``leadbridge_queue_depth``,
``leadbridge_oldest_due_age_seconds``, ``leadbridge_dead_letters_waiting``,
``leadbridge_worker_heartbeat_age_seconds``, ``leadbridge_speed_to_lead_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .ledger import Ledger

log = logging.getLogger(__name__)

# Seconds from receipt to the Slack message; a hot lead should land in the first few.
SPEED_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
# Refused requests to a name no source has are counted under this, so a scanner cannot
# grow the label set.
UNKNOWN_SOURCE = "(unknown)"


class LedgerCollector(Collector):
    """Reads the ledger's counts on every scrape."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.ledger.counts_by_source()  # one scan of the deliveries, for both families
            yield from self._deliveries(counts)
            yield from self._intake(counts)
            yield from self._backlog(time.time())
            yield self._speed_to_lead()
        except self.ledger.errors as exc:
            # An empty scrape shows as a gap; /readyz says why.
            log.error("metrics: the ledger could not be read (%s)", type(exc).__name__)

    def _deliveries(self, counts: list[tuple[str, str, int]]) -> Iterator[Metric]:
        by_status = GaugeMetricFamily(
            "leadbridge_deliveries", "Deliveries in the ledger by source and current status.", labels=["source", "status"]
        )
        for source, status, n in counts:
            by_status.add_metric([source, status], n)
        yield by_status

    def _intake(self, counts: list[tuple[str, str, int]]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "leadbridge_intake_requests",
            "Webhook requests by source, outcome (accepted, duplicate, refused) and status code; 429s are not counted.",
            labels=["source", "outcome", "code"],
        )
        prevented = CounterMetricFamily(
            "leadbridge_duplicates_prevented",
            "Duplicates that made no second record: a sender's retry (no second delivery), "
            "or a returning person (the existing contact updated).",
            labels=["source", "by"],
        )
        # Every delivery, whatever its status now, was an accepted request.
        accepted: dict[str, int] = {}
        for source, _status, n in counts:
            accepted[source] = accepted.get(source, 0) + n
        for source, n in accepted.items():
            requests.add_metric([source, "accepted", "200"], n)
        for source, outcome, code, n in self.ledger.intake_counts():
            requests.add_metric([source, outcome, str(code)], n)
            if outcome == "duplicate":
                prevented.add_metric([source, "sender_retry"], n)
        for source, n in self.ledger.returning_contacts():
            prevented.add_metric([source, "person"], n)
        yield requests
        yield prevented

    def _backlog(self, now: float) -> Iterator[Metric]:
        backlog = self.ledger.backlog(now)
        yield GaugeMetricFamily(
            "leadbridge_queue_depth", "Unfinished deliveries (received, retrying, processing).", value=backlog["queue_depth"]
        )
        yield GaugeMetricFamily(
            "leadbridge_oldest_due_age_seconds",
            "How long the most overdue waiting delivery has been due (0: nothing overdue).",
            value=backlog["oldest_due_age_seconds"],
        )
        yield GaugeMetricFamily("leadbridge_dead_letters_waiting", "Dead deliveries not replayed.", value=backlog["dead"])
        last = self.ledger.last_heartbeat()
        # No heartbeat ever: as old as it gets, so "older than N" alert rules fire.
        age = float("inf") if last is None else max(0.0, now - last)
        yield GaugeMetricFamily(
            "leadbridge_worker_heartbeat_age_seconds", "Seconds since any worker last wrote its heartbeat.", value=age
        )

    def _speed_to_lead(self) -> Metric:
        histogram = HistogramMetricFamily(
            "leadbridge_speed_to_lead_seconds",
            "Seconds from a delivery's receipt to its Slack message, by source and segment (digests not included).",
            labels=["source", "segment"],
        )
        for source, segment, under, count, total in self.ledger.speed_to_lead(SPEED_BUCKETS):
            buckets = [(repr(b), float(n)) for b, n in zip(SPEED_BUCKETS, under, strict=True)] + [("+Inf", float(count))]
            histogram.add_metric([source, segment], buckets, total)
        return histogram


def register_metrics(app: Flask, ledger: Ledger, sources: set[str]) -> None:
    """``GET /metrics``, and the hook counting intake answers that made no delivery."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    def count_intake(response: Response) -> Response:
        if request.endpoint != "hook" or response.status_code == 429:
            return response  # 429s come before anything is read; counting them would turn a flood into writes
        if response.status_code == 200:
            body = response.get_json(silent=True) or {}
            if not body.get("duplicate"):
                return response  # a new delivery: the deliveries table counts it
            outcome = "duplicate"
        else:
            outcome = "refused"
        name = (request.view_args or {}).get("source", "")
        source = name if name in sources else UNKNOWN_SOURCE
        try:
            ledger.count_intake(source, outcome, response.status_code)
        except ledger.errors as exc:  # a metric must never cost the sender its answer
            log.warning("metrics: could not count a %s request (%s)", outcome, type(exc).__name__)
        return response
