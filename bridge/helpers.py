"""Helper workers: while a backlog drains, the worker starts more worker processes beside it.

One worker process holds ``worker.concurrency`` deliveries at once (one thread each), and
each of them costs memory (a thread, its SQLite connections), so one process cannot hold
the hundreds in flight that fill HubSpot's batch calls without passing its memory budget.
A backlog (after an outage, an import, a burst of forms) is therefore drained by several
processes: while the worker has been full for ``worker.scale_after_seconds`` with more
still due, it starts one helper, ``leadbridge worker --helper`` on the same config, and
another after as long again, up to ``worker.processes`` processes in all.

A helper is a worker like any other: it claims under a lease, takes the person's lock and
counts against the one HubSpot call budget (kept in the ledger), so nothing is delivered
twice and no 429 is provoked. It leaves the chores (digests, follow-ups, polling,
retention, ops alerts, the metrics port) to the worker that started it, and stops by
itself once it has had nothing to do for ``worker.helper_idle_seconds``, or as soon as
that worker is gone (even killed with SIGKILL). Stopping the worker stops its helpers;
each finishes what it holds first.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from .config import WorkerSettings

log = logging.getLogger(__name__)
STOP_SECONDS = 60.0


class Helpers:
    """The helper processes one worker started, and the rule for starting the next."""

    def __init__(self, settings: WorkerSettings, config_file: str | None) -> None:
        self.settings = settings
        self.argv = [sys.executable, "-m", "bridge", "worker", "--helper"]
        if config_file:
            self.argv += ["--config", config_file]
        self.running: list[subprocess.Popen[bytes]] = []
        self._busy_since: float | None = None

    def tick(self, backlog: bool, now: float | None = None) -> None:
        """Called every poll: ``backlog`` says the worker is full and more is due."""
        now = time.monotonic() if now is None else now
        for proc in self.running:
            if proc.poll():  # gone with an error (an idle helper exits 0): say so, once
                log.error("helper worker %d exited with status %d", proc.pid, proc.returncode)
        self.running = [p for p in self.running if p.returncode is None]
        if not backlog:
            self._busy_since = None
            return
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since < self.settings.scale_after_seconds or len(self.running) + 1 >= self.settings.processes:
            return
        try:
            self.running.append(subprocess.Popen(self.argv))
        except OSError as exc:
            log.error("could not start a helper worker: %s", exc)
        else:
            log.info("backlog: started helper worker %d of %d", len(self.running), self.settings.processes - 1)
        self._busy_since = now  # the next one only if the backlog lasts as long again

    def terminate(self) -> None:
        """SIGTERM to every helper now (the worker is stopping): each finishes what it holds."""
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM to every helper, then wait for them."""
        self.terminate()
        for proc in self.running:
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running = []
