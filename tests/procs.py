"""Process helpers for tests that start real `leadbridge` processes.

Waits poll with a deadline and tolerate every kind of request failure while a server
boots (a busy machine answers a connect but not yet a read); every started process tree
is stopped on the way out, so nothing outlives the test run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

BOOT_SECONDS = 60.0  # generous: CI's 2 cores are often busy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], deadline: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``check`` until it is true; a request error counts as not yet. Fails at the deadline,
    or at once when ``proc`` has exited."""
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        assert proc is None or proc.poll() is None, f"process exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_for(url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until ``url`` answers 200."""
    wait_until(lambda: requests.get(url, timeout=2).status_code == 200, deadline, url, proc)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = Path(f"/proc/{parent}/task").iterdir()
            children = {int(c) for task in tasks for c in (task / "children").read_text().split()}
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo.extend(children - found)
        found |= children
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


@contextmanager
def started(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session; on the way out it and everything below it are killed."""
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        family = descendants(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for ``signum`` (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False
