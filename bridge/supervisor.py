"""The supervisor behind ``leadbridge run`` and ``leadbridge serve``: children, signals, restarts.

Every part (gunicorn's master and workers, the worker, the sandbox) is a child process
in its own session, so a terminal's Ctrl-C reaches only the supervisor, and stopping a
child's process group stops everything that child started. The rules:

- stop signals (SIGTERM, SIGINT) are handled before the first child starts; at any moment
  they stop every child (SIGTERM, then SIGKILL after a grace period) and exit 0;
- SIGHUP reloads: children that reload themselves (gunicorn) get the HUP, the others are
  restarted, so each part reads the config again; no part dies silently;
- a child that exits on its own is logged and restarted with backoff; one that keeps
  failing right after start makes the supervisor stop everything and exit 1;
- a port that is already taken fails before anything starts, naming the port and setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A child that lived this long is healthy again: its backoff starts over.
HEALTHY_AFTER_SECONDS = 30.0
# This many failures in a row, each soon after start, and the supervisor gives up.
MAX_QUICK_FAILURES = 5


class PortInUseError(Exception):
    """A port the relay needs is taken; the message names it and the setting."""


@dataclass
class Child:
    """One supervised process: how to start it and how it reloads."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    # True: SIGHUP is forwarded and the child reloads itself (gunicorn). False: it is restarted.
    reloads_on_hup: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def backoff_seconds(failures: int) -> float:
    """0.5 s, 1 s, 2 s, ... up to 30 s between restarts of a child that keeps dying."""
    return min(30.0, 0.5 * 2 ** max(0, failures - 1))


def check_port_free(host: str, port: int, setting: str) -> None:
    """Fail fast, before any child starts, when something already listens on ``port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {host} is already in use ({setting}); stop what is using it or change {setting}"
            ) from exc


class Supervisor:
    def __init__(self, children: list[Child], grace_seconds: float = 10.0) -> None:
        self.children = children
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self._wake = threading.Event()

    def install_signal_handlers(self) -> None:
        """Call before the first child starts (and before anything slow)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested.set()
        self._wake.set()

    def run(self, after_start: Callable[[], None] | None = None) -> int:
        """Start every child and keep them running until a stop signal; returns the exit code."""
        code = 0
        try:
            for child in self.children:
                if self.stopping.is_set():
                    break
                child.start()
            if after_start is not None and not self.stopping.is_set():
                threading.Thread(target=self._guarded, args=(after_start,), daemon=True).start()
            while not self.stopping.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self._reload()
                if not self._tend():
                    code = 1
                    break
                self._wake.wait(0.2)
                self._wake.clear()
        finally:
            self.stop_all()
        return code

    def _guarded(self, task: Callable[[], None]) -> None:
        try:
            task()
        except Exception as exc:  # a start-up helper (sandbox seeding) failing must not kill the relay
            log.warning("start-up task failed: %s", type(exc).__name__)

    def _tend(self) -> bool:
        """Restart children that exited; False when one keeps failing and it is time to give up."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.alive():
                if child.alive() and now - child.started_at > HEALTHY_AFTER_SECONDS:
                    child.quick_failures = 0
                continue
            if child.restart_at is None:
                lived = now - child.started_at
                child.quick_failures = child.quick_failures + 1 if lived < HEALTHY_AFTER_SECONDS else 1
                if child.quick_failures >= MAX_QUICK_FAILURES:
                    log.error("%s keeps exiting (%d times in a row); stopping everything", child.name, child.quick_failures)
                    return False
                delay = backoff_seconds(child.quick_failures)
                child.restart_at = now + delay
                log.error("%s exited with code %s; restarting in %.1f s", child.name, child.proc.returncode, delay)
            elif now >= child.restart_at:
                child.start()
        return True

    def _reload(self) -> None:
        log.info("SIGHUP: reloading the config")
        for child in self.children:
            if child.reloads_on_hup:
                child.signal_group(signal.SIGHUP)
            elif child.alive():
                child.signal_group(signal.SIGTERM)
                self._wait_for(child)
                child.start()

    def _wait_for(self, child: Child) -> None:
        assert child.proc is not None
        try:
            child.proc.wait(timeout=self.grace_seconds)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", child.name, self.grace_seconds)
            child.signal_group(signal.SIGKILL)
            child.proc.wait()

    def stop_all(self) -> None:
        """SIGTERM every child's process group, wait out the grace period, then SIGKILL."""
        running = [c for c in self.children if c.proc is not None]
        for child in running:
            child.signal_group(signal.SIGTERM)
        for child in reversed(running):
            self._wait_for(child)
            # Whatever the child left behind in its group (gunicorn workers) goes too.
            child.signal_group(signal.SIGKILL)
        if running:
            log.info("stopped %s", ", ".join(c.name for c in running))
