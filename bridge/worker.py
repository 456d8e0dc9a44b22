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

from .config import Settings
from .digest import send_due_digests
from .ledger import Delivery, Ledger
from .pipeline import Pipeline

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, ledger: Ledger, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.pipeline = pipeline or Pipeline(settings, ledger)
        self.owner = worker_id()
        self.stopping = threading.Event()

    def run(self) -> None:
        """Poll and process until ``stop()``; in-flight deliveries finish first."""
        cfg = self.settings.worker
        log.info("worker %s started (concurrency %d)", self.owner, cfg.concurrency)
        running: set[Future[str]] = set()
        with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="leadbridge-worker") as pool:
            while not self.stopping.is_set():
                free = cfg.concurrency - len(running)
                claimed = self.ledger.claim(self.owner, min(free, cfg.claim_batch), cfg.lease_seconds) if free else []
                running |= {pool.submit(self._process_one, d) for d in claimed}
                self._digests()
                if running:
                    running = set(wait(running, timeout=cfg.poll_seconds, return_when=FIRST_COMPLETED).not_done)
                if not claimed:
                    self.stopping.wait(cfg.poll_seconds)
            wait(running)
        log.info("worker %s stopped", self.owner)

    def _digests(self) -> None:
        try:
            send_due_digests(self.settings.digest, self.ledger, self.pipeline.notifier, datetime.now(UTC))
        except Exception:
            log.exception("digest run failed; will try again")

    def stop(self) -> None:
        self.stopping.set()

    def drain(self, timeout: float = 30.0) -> int:
        """Process everything due now, including retries that fall due meanwhile, until idle.

        For the CLI's one-shot use and for tests; returns how many deliveries were handled.
        """
        cfg = self.settings.worker
        handled, deadline = 0, time.monotonic() + timeout
        with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="leadbridge-drain") as pool:
            while time.monotonic() < deadline:
                claimed = self.ledger.claim(self.owner, cfg.concurrency, cfg.lease_seconds)
                if not claimed:
                    if not self._pending_soon(deadline):
                        break
                    time.sleep(min(cfg.poll_seconds, 0.05))
                    continue
                handled += len(list(pool.map(self._process_one, claimed)))
        return handled

    def _pending_soon(self, deadline: float) -> bool:
        due = self.ledger.next_due_at()
        return due is not None and due <= time.time() + (deadline - time.monotonic())

    def _process_one(self, delivery: Delivery) -> str:
        try:
            return self.pipeline.process(delivery, self.owner)
        except Exception:
            # The ledger itself failed; the lease will expire and another pass retries it.
            log.exception("worker could not record progress")
            return "error"
