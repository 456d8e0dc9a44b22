"""The processes a benchmark drives, each started through the public CLI as a deployment would:
``leadbridge sandbox`` (latency and HubSpot's rate limit on), ``leadbridge serve`` (gunicorn),
``leadbridge worker``, and a bare Flask "hello" app on the intake's own gunicorn settings.

Every process runs in its own session and is killed with everything below it on the way out
(:func:`tests.procs.started`); logs go to files in the run's temporary folder, so a failed
phase can say where to look.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.procs import BOOT_SECONDS, command_line, descendants, free_port, started, wait_for, wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"
HUBSPOT_TOKEN = "bench-hubspot-token"
# Harmless values, as `make run` uses; every secret the example config names must be set.
ENV = {
    "TYPEFORM_SECRET": SECRET,
    "GOOGLE_ADS_KEY": "bench-google-key",
    "WORDPRESS_SECRET": "bench-wordpress-secret",
    "HUBSPOT_TOKEN": HUBSPOT_TOKEN,
    "SLACK_BOT_TOKEN": "xoxb-bench",
}
CLI = [sys.executable, "-m", "bridge"]
# One POST in gunicorn's access log, as ``gunicorn_command`` formats it: '... "POST /hooks/x" 200 3ms'.
ACCESS_LINE = re.compile(r'"POST [^"]*" \d{3} (\d+)ms$', re.MULTILINE)


def bench_env() -> dict[str, str]:
    # The worktree's own code first, whatever the venv's editable install points at.
    return dict(os.environ, **ENV, PYTHONPATH=str(ROOT))


@dataclass
class Sandbox:
    """A running ``leadbridge sandbox`` and its control API."""

    url: str

    def limits(self, **settings: Any) -> dict[str, Any]:
        """Change the latency or the limits (``latency_ms``, ``rate_limit``, ``search_rate_limit``)."""
        answer = requests.post(f"{self.url}/__sandbox/limits", json=settings, timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    def counters(self) -> dict[str, int]:
        """Requests served so far, keyed ``"<hubspot|search|slack> <status>"``."""
        return dict(requests.get(f"{self.url}/__sandbox/limits", timeout=10).json()["statuses"])

    def state(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/__sandbox/state", timeout=60).json())

    def reset(self, owners: dict[str, Any]) -> None:
        """Empty the CRM and Slack, then seed the owners routing needs."""
        from connectors.sandbox import seed_owners

        requests.post(f"{self.url}/__sandbox/reset", timeout=10).raise_for_status()
        seed_owners(self.url, owners)


@contextmanager
def sandbox(tmp: Path, latency_ms: float, rate_limit: str, search_rate_limit: str) -> Iterator[Sandbox]:
    """``leadbridge sandbox`` with latency and limits; search sees writes at once, so a returning
    lead is found the way it would be a few seconds later at HubSpot."""
    port = free_port()
    argv = [*CLI, "sandbox", "--port", str(port), "--search-lag", "0", "--latency-ms", str(latency_ms)]
    argv += ["--rate-limit", rate_limit, "--search-rate-limit", search_rate_limit]
    url = f"http://127.0.0.1:{port}"
    with (tmp / "sandbox.log").open("ab") as log, started(argv, cwd=ROOT, env=bench_env(), stdout=log, stderr=log) as proc:
        wait_until(lambda: requests.get(f"{url}/__sandbox/limits", timeout=2).ok, deadline(), "the sandbox", proc)
        yield Sandbox(url)


def deadline(seconds: float = BOOT_SECONDS) -> float:
    return time.monotonic() + seconds


def example_config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "config.example.yaml").read_text()))


def write_config(
    folder: Path, sandbox_url: str, ledger_url: str = "", processes: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """The example config as shipped (worker, retry and gunicorn settings included), pointed at
    this run's sandbox, port and ledger (a SQLite file, or the PostgreSQL database ``ledger_url``);
    ``processes`` replaces the example's ``worker.processes`` (helper workers)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = example_config()
    data["server"]["port"] = free_port()
    data["hubspot"]["base_url"] = sandbox_url
    data["hubspot"]["contact_url"] = sandbox_url + "/__sandbox/contacts/{contact_id}"
    data["slack"]["base_url"] = sandbox_url + "/api/"
    data["ledger"]["path"] = str(folder / "leadbridge.db")
    data["ledger"]["url"] = ledger_url
    if processes is not None:
        data["worker"]["processes"] = processes
    # Measure the relay, not its guards: the intake's per-IP limit would refuse a load test, and
    # Slack pacing (one post a second per channel, by design) would be all a latency figure shows.
    data["server"]["rate_limit"].update(per_client_ip=0, per_source=0)
    data["slack"]["min_seconds_between_posts"] = 0
    for source in data["sources"]:
        if "mapping" in source:
            source["mapping"] = str(ROOT / source["mapping"])
        source["forms"] = {key: str(ROOT / path) for key, path in source.get("forms", {}).items()}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


@dataclass
class Relay:
    """One ledger with its intake and, when started, its worker."""

    folder: Path
    config: Path
    data: dict[str, Any]
    stack: ExitStack = field(default_factory=ExitStack)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.data['server']['port']}"

    @property
    def ledger(self) -> Path:
        return Path(self.data["ledger"]["path"])

    def serve(self) -> None:
        """``leadbridge serve`` until :meth:`close`; returns once it answers."""
        proc = self._start("serve", [*CLI, "serve", "--config", str(self.config)])
        wait_for(f"{self.url}/healthz", deadline(), proc)

    def worker(self, count: int = 1) -> ExitStack:
        """``count`` ``leadbridge worker`` processes until the returned stack (or :meth:`close`) is closed."""
        inner = ExitStack()
        self.stack.enter_context(inner)
        for n in range(count):
            self._start("worker" if n == 0 else f"worker{n + 1}", [*CLI, "worker", "--config", str(self.config)], inner)
        return inner

    def _start(self, name: str, argv: list[str], stack: ExitStack | None = None) -> Any:
        stack = stack or self.stack
        log = stack.enter_context((self.folder / f"{name}.log").open("ab"))
        proc = stack.enter_context(started(argv, cwd=ROOT, env=bench_env(), stdout=log, stderr=log))
        self.pids[name] = proc.pid
        return proc

    def close(self) -> None:
        self.stack.close()


@contextmanager
def relay(folder: Path, sandbox_url: str, ledger_url: str = "", processes: int | None = None) -> Iterator[Relay]:
    path, data = write_config(folder, sandbox_url, ledger_url, processes)
    running = Relay(folder, path, data)
    try:
        yield running
    finally:
        running.close()


def hello_command(data: dict[str, Any], config: Path, port: int) -> list[str]:
    """gunicorn serving ``bench.hello`` with the argv ``leadbridge serve`` would use; if that
    argv cannot be had (the helper changed), the same settings read from the config."""
    try:
        from bridge.cli import gunicorn_command
        from bridge.config import settings_from_dict

        settings = settings_from_dict({**data, "server": {**data["server"], "port": port}}, config.parent)
        argv = [str(arg) for arg in gunicorn_command(settings)]
    except (ImportError, TypeError, AttributeError, ValueError):
        argv = []
    if sum("bridge.app" in arg for arg in argv) == 1:
        return [("bench.hello:app" if "bridge.app" in arg else arg) for arg in argv]
    server = data["server"]
    return [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        "--workers", str(server.get("gunicorn_workers", 2)), "--worker-class", "gthread",
        "--threads", str(server.get("threads", 8)), "--keep-alive", str(server.get("keepalive_seconds", 5)),
        "--access-logfile", "-", "bench.hello:app",
    ]  # fmt: skip


@contextmanager
def hello(folder: Path, relay_: Relay) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = hello_command(relay_.data, relay_.config, port)
    with (folder / "hello.log").open("ab") as log, started(argv, cwd=ROOT, env=bench_env(), stdout=log, stderr=log) as proc:
        wait_for(f"{url}/healthz", deadline(), proc)
        yield url


def log_size(log: Path) -> int:
    """Where ``log`` ends now: pass it to :func:`served_ms` to read what came after."""
    return log.stat().st_size if log.exists() else 0


def served_ms(log: Path, since: int = 0) -> list[float]:
    """gunicorn's own time (its access log's ``%(M)s``, whole ms) for each POST logged after
    ``since``: each request from parsed to answered, without the client's side of it."""
    with log.open("rb") as lines:
        lines.seek(since)
        return [float(m.group(1)) for m in ACCESS_LINE.finditer(lines.read().decode(errors="replace"))]


def rss_mb(pid: int, only: str = "") -> list[float]:
    """Resident memory in MB of ``pid`` and each process below it whose command line names
    ``only`` (e.g. gunicorn's master and workers under ``leadbridge serve``'s supervisor)."""
    sizes = []
    for each in sorted({pid} | descendants(pid)):
        if only and only not in command_line(each):
            continue
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        sizes += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")]
    return sizes
