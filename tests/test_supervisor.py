"""`leadbridge run` and `leadbridge serve` as a supervisor: signals, restarts, ports, slow clients.

Real processes throughout: the commands are started as a user would, their children found
through /proc, and every one of them checked after the supervisor exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .conftest import ROOT, answer, post_typeform, typeform_payload, with_absolute_mappings
from .procs import BOOT_SECONDS, alive, catches, command_line, descendants, free_port, started, wait_for, wait_until
from .test_quickstart import makefile_sandbox_env


@dataclass
class Relay:
    config: Path
    relay: str
    sandbox: str
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return self.config.with_name("relay.log")


@pytest.fixture
def relay(tmp_path: Path) -> Relay:
    relay_port, sandbox_port = free_port(), free_port()
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text().replace(":8025", f":{sandbox_port}"))
    data["server"]["port"] = relay_port
    data["ledger"]["path"] = str(tmp_path / "ledger.db")
    data["worker"]["poll_seconds"] = 0.1
    data["slack"]["min_seconds_between_posts"] = 0
    with_absolute_mappings(data)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    secrets = makefile_sandbox_env()
    env = {k: v for k, v in os.environ.items() if k not in secrets} | secrets
    return Relay(config, f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{sandbox_port}", env)


def command(relay: Relay, verb: str) -> list[str]:
    extra = ["--sandbox"] if verb == "run" else []
    return [sys.executable, "-m", "bridge", verb, *extra, "--config", str(relay.config)]


@contextmanager
def launch(relay: Relay, verb: str) -> Iterator[subprocess.Popen[bytes]]:
    """The command started, and running Python: its stop handler installed.

    Until the interpreter runs its first line, no program can catch a signal (SIGTERM then
    kills it, with no child to leave behind); on a loaded machine that alone can take more
    than half a second, so "0.5 s after start" is counted from there. bridge/__main__.py
    installs the handler before anything else.
    """
    # To a file: a pipe nobody reads could fill and stall the process.
    with relay.log.open("ab") as log, started(command(relay, verb), cwd=ROOT, env=relay.env, stdout=log, stderr=log) as proc:
        wait_until(lambda: catches(proc.pid, signal.SIGTERM), time.monotonic() + BOOT_SECONDS, "a SIGTERM handler", proc)
        yield proc


def family_until(proc: subprocess.Popen[bytes], seconds: float) -> set[int]:
    """Every process seen below ``proc`` in the next ``seconds`` (children come and go while booting)."""
    seen: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        seen |= descendants(proc.pid)
        time.sleep(0.05)
    return seen | descendants(proc.pid)


def assert_stops_cleanly(proc: subprocess.Popen[bytes], family: set[int], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    deadline = time.monotonic() + 10
    wait_until(lambda: not any(alive(pid) for pid in family), deadline, "every child to exit")


@pytest.mark.parametrize("after", [0.0, 0.5, 3.0, 10.0])
def test_sigterm_at_any_moment_stops_run_and_every_child(relay: Relay, after: float) -> None:
    with launch(relay, "run") as proc:
        family = family_until(proc, after)
        if after >= 10:
            assert any("gunicorn" in command_line(pid) for pid in family), "gunicorn should be up by now"
        assert_stops_cleanly(proc, family, relay.log)


@pytest.mark.parametrize("after", [0.5, 3.0])
def test_sigterm_while_serve_boots_stops_gunicorn_and_exits_0(relay: Relay, after: float) -> None:
    with launch(relay, "serve") as proc:
        assert_stops_cleanly(proc, family_until(proc, after), relay.log)


def test_slow_clients_do_not_block_serve_and_sigterm_stops_it(relay: Relay) -> None:
    with launch(relay, "serve") as proc:
        wait_for(f"{relay.relay}/healthz", time.monotonic() + BOOT_SECONDS, proc)
        host, port = relay.relay.removeprefix("http://").split(":")
        trickling = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]
        try:
            for sock in trickling:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            answer = requests.get(f"{relay.relay}/healthz", timeout=30)
            assert answer.status_code == 200 and answer.json()["ok"] is True
        finally:
            for sock in trickling:
                sock.close()
        assert_stops_cleanly(proc, descendants(proc.pid), relay.log)


def lead(n: int) -> dict[str, Any]:
    return answer(typeform_payload(event_id=f"sup-{n}-{time.time_ns()}"), "email", f"person{n}@example-roofing.com")


def wait_delivered(relay: Relay, email: str, proc: subprocess.Popen[bytes]) -> None:
    def arrived() -> bool:
        state = requests.get(f"{relay.sandbox}/__sandbox/state", timeout=5).json()
        return any(c["properties"].get("email") == email for c in state["contacts"])

    wait_until(arrived, time.monotonic() + BOOT_SECONDS, f"the lead for {email} to reach the sandbox", proc)


def worker_pids(proc: subprocess.Popen[bytes]) -> set[int]:
    return {pid for pid in descendants(proc.pid) if " worker" in command_line(pid) and alive(pid)}


def test_sighup_reloads_and_a_killed_worker_is_restarted(relay: Relay) -> None:
    secret = relay.env["TYPEFORM_SECRET"]
    with launch(relay, "run") as proc:
        deadline = time.monotonic() + BOOT_SECONDS
        wait_for(f"{relay.relay}/healthz", deadline, proc)
        wait_until(lambda: bool(worker_pids(proc)), deadline, "the worker child", proc)

        proc.send_signal(signal.SIGHUP)
        # Give the reload a moment to start, then check nothing was lost: intake answers, a lead is delivered.
        time.sleep(1)
        assert proc.poll() is None
        assert post_typeform(relay.relay, lead(1), secret=secret).status_code == 200
        wait_delivered(relay, "person1@example-roofing.com", proc)

        (old,) = worker_pids(proc)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: bool(worker_pids(proc) - {old}), time.monotonic() + BOOT_SECONDS, "a new worker", proc)
        assert post_typeform(relay.relay, lead(2), secret=secret).status_code == 200
        wait_delivered(relay, "person2@example-roofing.com", proc)
        assert_stops_cleanly(proc, descendants(proc.pid), relay.log)


@pytest.fixture
def taken_port(relay: Relay) -> Iterator[int]:
    port = int(relay.relay.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield port


@pytest.mark.parametrize("verb", ["run", "serve"])
def test_a_taken_port_fails_fast_naming_the_port_and_setting(relay: Relay, taken_port: int, verb: str) -> None:
    done = subprocess.run(command(relay, verb), cwd=ROOT, env=relay.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"port {taken_port}" in done.stderr and "server.port" in done.stderr
