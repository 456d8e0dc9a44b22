"""The worker: claims due deliveries under a lease and runs them through the pipeline.

Several deliveries run at once (``worker.concurrency`` threads) but the pipeline's
person lock keeps two deliveries of one person apart, across threads and processes.
A worker that dies leaves leases that expire; the next claim takes those deliveries
over and the ledger's checkpoints make them resume, not restart.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime

from .alerts import send_dead_letter_alerts
from .coalesce import batched_crm
from .config import Settings
from .crm_poll import CrmPoller
from .digest import send_due_digests
from .errors import where
from .followups import run_due_followups
from .helpers import Helpers
from .incidents import check_incidents
from .ledger import Delivery, Ledger
from .pipeline import Pipeline
from .retention import purge
from .workermetrics import counted_ports, record_delivery, serve_worker_metrics

log = logging.getLogger(__name__)
# How often an idle worker looks whether the ledger changed (a read of one counter, no query).
WAKE_SECONDS = 0.02


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        pipeline: Pipeline | None = None,
        *,
        helpers: Helpers | None = None,
        helper_of: int | None = None,
    ) -> None:
        self.settings = settings
        # A worker that starts helper processes while a backlog drains (bridge/helpers.py),
        # or a helper itself: started by the worker whose pid is ``helper_of``, no chores.
        self.helpers, self.helper_of = helpers, helper_of
        self.ledger = ledger
        crm, notifier = counted_ports(settings)
        # Several deliveries at once: their HubSpot writes go out as batch calls.
        self.in_flight = 0
        self._counting = threading.Lock()
        batched = batched_crm(settings, lambda: self.in_flight, crm)
        self.pipeline = pipeline or Pipeline(settings, ledger, batched, notifier)
        self.owner = worker_id()
        self.crm_poller = CrmPoller(settings, ledger, self.pipeline.crm, self.owner)
        self.stopping = threading.Event()
        self._ledger_down = False
        self._next_purge = 0.0
        self.started_at = time.time()

    def run(self) -> None:
        """Poll and process until ``stop()``; in-flight deliveries finish first."""
        cfg = self.settings.worker
        log.info("worker %s started (concurrency %d%s)", self.owner, cfg.concurrency, ", a helper" if self.helper_of else "")
        if self.helper_of is None:
            serve_worker_metrics(self.settings)
        running: set[Future[str]] = set()
        busy_at = time.monotonic()
        with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="leadbridge-worker") as pool:
            next_digest = next_beat = 0.0
            while not self.stopping.is_set():
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + cfg.heartbeat_seconds
                want = min(cfg.concurrency - len(running), cfg.claim_batch)
                # Look before claiming, so a delivery written after the claim's read still wakes us.
                self.ledger.written_since_last_look()
                claimed = self._claim(want) if want > 0 else []
                self._count(len(claimed))
                running |= {pool.submit(self._process_one, d) for d in claimed}
                if running:
                    busy_at = time.monotonic()
                if time.monotonic() >= next_digest:
                    if self.helper_of is not None:
                        self._helper_done(busy_at)
                    else:
                        self._chores(len(running) >= cfg.concurrency)
                    next_digest = time.monotonic() + cfg.poll_seconds
                if len(running) >= cfg.concurrency:
                    # Full: back to claiming as soon as a slot frees, never idle while work is due.
                    running = set(wait(running, timeout=cfg.poll_seconds, return_when=FIRST_COMPLETED).not_done)
                elif len(claimed) < want:
                    # Room, and nothing more due: until a slot frees or a new delivery is written.
                    running = self._idle(running, cfg.poll_seconds)
            wait(running)
        if self.helpers is not None:
            self.helpers.stop()
        log.info("worker %s stopped", self.owner)

    def _chores(self, full: bool) -> None:
        self._digests()
        self.crm_poller.tick()
        self._retention()
        self._followups()
        if self.helpers is not None:
            # Full, with more due: a backlog, which a helper process shares.
            self.helpers.tick(full and not self._ledger_down and self._due_now())

    def _helper_done(self, busy_at: float) -> None:
        """A helper stops once idle for ``worker.helper_idle_seconds``, or when its worker is gone."""
        if os.getppid() != self.helper_of:
            log.info("worker %s: the worker that started this helper is gone; stopping", self.owner)
            self.stop()
        elif time.monotonic() - busy_at >= self.settings.worker.helper_idle_seconds:
            log.info("worker %s: helper idle; stopping", self.owner)
            self.stop()

    def _idle(self, running: set[Future[str]], timeout: float) -> set[Future[str]]:
        """Wait up to ``timeout`` for a running delivery to finish, or for something to fall due.

        A new delivery wakes the worker within ``WAKE_SECONDS`` rather than a whole poll
        interval: the ledger says cheaply whether anyone wrote to it since we last looked.
        """
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if running:
                done, pending = wait(running, timeout=min(WAKE_SECONDS, left), return_when=FIRST_COMPLETED)
                running = set(pending)
                if done:
                    break
            else:
                self.stopping.wait(min(WAKE_SECONDS, left))
            if not self._ledger_down and self.ledger.written_since_last_look() and self._due_now():
                break
        return running

    def _due_now(self) -> bool:
        try:
            return self.ledger.due_now()
        except self.ledger.errors:
            return False

    def _digests(self) -> None:
        try:
            send_due_digests(self.settings.digest, self.ledger, self.pipeline.notifier, datetime.now(UTC))
        except Exception:
            log.exception("digest run failed; will try again")

    def _followups(self) -> None:
        try:
            run_due_followups(self.settings, self.ledger, self.pipeline.crm, self.pipeline.notifier, self.owner)
        except Exception:
            log.exception("follow-up run failed; will try again")

    def _retention(self) -> None:
        """Once a day (and at start) when ``retention.days`` is set: purge what finished before."""
        days = self.settings.retention.days
        if not days or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + 86400
        try:
            purge(self.ledger, time.time() - days * 86400, truncate_wal=False)
        except Exception:
            log.exception("retention purge failed; will try again tomorrow")

    def _heartbeat(self) -> None:
        """Tell /readyz this loop is alive (a worker that cannot write is not ready either)."""
        try:
            self.ledger.beat(self.owner, self.started_at)
        except Exception as exc:
            log.error("worker %s could not record its heartbeat: %s", self.owner, type(exc).__name__)
        if self.helper_of is None:
            self._alerts()

    def _alerts(self) -> None:
        try:
            send_dead_letter_alerts(self.settings.alerts, self.ledger, self.pipeline.notifier)
            check_incidents(self.settings, self.ledger, self.pipeline.notifier)
        except Exception as exc:
            log.error("ops alerts failed; will try again: %s", type(exc).__name__)

    def stop(self) -> None:
        self.stopping.set()
        if self.helpers is not None:
            # At once, not after this worker's own deliveries: a service manager that stops
            # only the main process (systemd's KillMode=mixed) gives all of them one grace period.
            self.helpers.terminate()

    def drain(self, timeout: float = 30.0) -> int:
        """Process everything due now, including retries that fall due meanwhile, until idle.

        For the CLI's one-shot use and for tests; returns how many deliveries were handled.
        """
        cfg = self.settings.worker
        handled, deadline = 0, time.monotonic() + timeout
        with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="leadbridge-drain") as pool:
            while time.monotonic() < deadline:
                claimed = self._claim(cfg.concurrency)
                if not claimed:
                    if not self._pending_soon(deadline):
                        break
                    time.sleep(min(cfg.poll_seconds, 0.05))
                    continue
                self._count(len(claimed))
                handled += len(list(pool.map(self._process_one, claimed)))
        self._alerts()
        return handled

    def _pending_soon(self, deadline: float) -> bool:
        due = self.ledger.next_due_at()
        return due is not None and due <= time.time() + (deadline - time.monotonic())

    def _claim(self, limit: int) -> list[Delivery]:
        """Take what is due; nothing while the ledger cannot be reached (a database restart, a
        lock held too long): the loop carries on and claims again after its poll interval."""
        cfg = self.settings.worker
        try:
            claimed = self.ledger.claim(self.owner, limit, cfg.lease_seconds, crash_budget=cfg.crash_budget)
        except self.ledger.errors as exc:
            if not self._ledger_down:
                log.error("worker %s cannot claim: the ledger is unavailable (%s); trying again", self.owner, type(exc).__name__)
            self._ledger_down = True
            return []
        if self._ledger_down:
            log.info("worker %s: the ledger is back", self.owner)
        self._ledger_down = False
        return claimed

    def _count(self, n: int) -> None:
        """Deliveries in flight (claimed and not finished): how full a batch call can get."""
        with self._counting:
            self.in_flight += n

    def _process_one(self, delivery: Delivery) -> str:
        started = time.monotonic()
        try:
            outcome = self._run_one(delivery)
        finally:
            self._count(-1)
        ms = round((time.monotonic() - started) * 1000)
        record_delivery(delivery.source, str(outcome), ms / 1000)
        fields = {"delivery_id": delivery.id, "source": delivery.source, "outcome": str(outcome), "duration_ms": ms}
        log.info("delivery %s: %s in %d ms", delivery.id, outcome, ms, extra=fields)
        return outcome

    def _run_one(self, delivery: Delivery) -> str:
        try:
            return self.pipeline.process(delivery, self.owner)
        except Exception as exc:
            # A poison delivery (or a bug) escaped the pipeline: count it against the delivery's
            # crash budget so it ends dead with the reason instead of looping forever.
            detail = f"{type(exc).__name__} at {where(exc)}"
            log.error("delivery %s crashed the worker: %s", delivery.id, detail)
            try:
                retry_at = time.time() + self.settings.retry.schedule_seconds[0]
                return self.ledger.record_crash(delivery.id, self.owner, detail, self.settings.worker.crash_budget, retry_at)
            except Exception as inner:  # the ledger itself failed: the lease expires and counts instead
                log.error("worker could not record the crash of %s: %s", delivery.id, type(inner).__name__)
                return "error"
