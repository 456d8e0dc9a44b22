"""Fixtures in layers: sandbox -> settings -> ledger / intake server -> worker.

Everything crosses a real boundary: the sandbox and the intake app are real HTTP
servers on free ports, the ledger is a real SQLite file in tmp_path.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from werkzeug.serving import WSGIRequestHandler, make_server

from bridge.app import create_app
from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, open_ledger
from bridge.worker import Worker
from connectors.sandbox import SandboxServer
from connectors.typeform import typeform_signature

from . import postgres

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SECRET = "tf-test-secret"
ENV = {
    "TYPEFORM_SECRET": SECRET,
    "GOOGLE_ADS_KEY": "test-google-key",
    "WORDPRESS_SECRET": "wp-dev-secret",
    "HUBSPOT_TOKEN": "test-hubspot-token",
    "SLACK_BOT_TOKEN": "xoxb-test",
}


class Sandbox:
    """Test-side handle on the running sandbox's control API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def state(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/__sandbox/state", timeout=5).json()

    def fault(self, **spec: Any) -> None:
        requests.post(f"{self.url}/__sandbox/faults", json=spec, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        requests.delete(f"{self.url}/__sandbox/faults", timeout=5).raise_for_status()

    def search_lag(self, seconds: float) -> None:
        requests.post(f"{self.url}/__sandbox/search_lag", json={"seconds": seconds}, timeout=5).raise_for_status()

    def calls(self, path_part: str) -> int:
        return sum(1 for r in self.state()["requests"] if path_part in r["path"])

    def hubspot(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": "Bearer test-hubspot-token"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=5, **kwargs)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, search_lag=3.0) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Sandbox:
    requests.post(f"{sandbox_server.url}/__sandbox/reset", timeout=5).raise_for_status()
    handle = Sandbox(sandbox_server.url)
    handle.search_lag(3.0)
    return handle


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def example_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config.example.yaml").read_text())


def with_absolute_mappings(data: dict[str, Any]) -> dict[str, Any]:
    """Mapping paths resolved against the repo, so the config can be written anywhere."""
    for source in data["sources"]:
        if "mapping" in source:
            source["mapping"] = str(ROOT / source["mapping"])
        source["forms"] = {key: str(ROOT / path) for key, path in source.get("forms", {}).items()}
    return data


BACKENDS = ["sqlite", "postgresql"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on a ledger runs twice: on the SQLite file and on a PostgreSQL database of its own.

    ``LEADBRIDGE_TEST_BACKEND=postgresql`` (or ``sqlite``) runs only that half. A test marked
    ``sqlite_only`` is about SQLite itself (its locks, its file), one marked ``postgres_only``
    about a shared database; each runs once.
    """
    if "backend" not in metafunc.fixturenames:
        return
    only = os.environ.get("LEADBRIDGE_TEST_BACKEND")
    if metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("backend", ["sqlite"], indirect=True)
    elif metafunc.definition.get_closest_marker("postgres_only"):
        metafunc.parametrize("backend", ["postgresql"], indirect=True)
    else:
        metafunc.parametrize("backend", [only] if only else BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    why = postgres.unavailable()
    if why:
        pytest.skip(f"the PostgreSQL half of the suite is skipped: {why}")
    server = postgres.start_postgres(fsync=False)
    try:
        # Each test's database is a copy of one already migrated: a copy costs a fraction of
        # applying every migration again.
        from bridge.ledger_pg import PostgresLedger

        template = server.create_database(postgres.TEMPLATE)
        PostgresLedger(template).close()
        yield server
    finally:
        server.stop()


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest, backend: str) -> Iterator[str]:
    """ "" (the SQLite file), or a new PostgreSQL database for this test alone, migrated and empty."""
    if backend == "sqlite":
        yield ""
        return
    server: postgres.PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database("t_" + uuid.uuid4().hex[:16], template=postgres.TEMPLATE)
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def config_data(tmp_path: Path, sandbox: Sandbox, ledger_url: str) -> dict[str, Any]:
    """The example config, pointed at this test's sandbox and ledger, with fast retries."""
    data = copy.deepcopy(example_config())
    data["hubspot"]["base_url"] = sandbox.url
    data["hubspot"]["contact_url"] = sandbox.url + "/__sandbox/contacts/{contact_id}"
    data["slack"]["base_url"] = sandbox.url + "/api/"
    data["slack"]["min_seconds_between_posts"] = 0  # pacing has its own test
    # Routing needs owners seeded in the sandbox; test_sales and test_routing cover it.
    data["routing"] = {}
    data["ledger"]["path"] = str(tmp_path / "ledger.db")
    data["ledger"]["url"] = ledger_url
    data["retry"] = {"schedule_seconds": [0.05, 0.05, 0.05, 0.05], "jitter": 0}
    data["worker"].update(poll_seconds=0.05, person_busy_delay_seconds=0.05)
    return with_absolute_mappings(data)


@pytest.fixture
def settings(config_data: dict[str, Any]) -> Settings:
    return settings_from_dict(config_data, ROOT)


@pytest.fixture
def ledger(settings: Settings) -> Ledger:
    return open_ledger(settings.ledger)


class PathOnlyLog(WSGIRequestHandler):
    """Logs each request the way `leadbridge serve` has gunicorn log it: the path, never the
    query (where Elementor and Ninja sources carry their token)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s %s" %s', self.command, urlsplit(self.path).path, code)


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """The intake app served over real HTTP on a free port; yields its base URL."""
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True, request_handler=PathOnlyLog)
    # A short poll interval makes shutdown quick; the default 0.5 s costs every test half a second.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def intake(settings: Settings) -> Iterator[str]:
    with served(settings) as url:
        yield url


@pytest.fixture
def worker(settings: Settings, ledger: Ledger) -> Worker:
    return Worker(settings, ledger)


def typeform_payload(**overrides: Any) -> dict[str, Any]:
    """The recorded quote form, with top-level or form_response keys replaced."""
    payload = json.loads((FIXTURES / "typeform" / "quote.json").read_text())
    for key, value in overrides.items():
        if key in payload:
            payload[key] = value
        else:
            payload["form_response"][key] = value
    return payload


def answer(payload: dict[str, Any], ref: str, value: Any) -> dict[str, Any]:
    """Set (or with None, remove) the answer to the field with this ref."""
    response = payload["form_response"]
    field_id = next(f["id"] for f in response["definition"]["fields"] if f["ref"] == ref)
    response["answers"] = [a for a in response["answers"] if a["field"]["id"] != field_id]
    if value is not None:
        kind = {"email": "email", "phone": "phone_number"}.get(ref, "text")
        response["answers"].append({"type": kind, kind: value, "field": {"id": field_id, "type": "short_text", "ref": ref}})
    return payload


def post_typeform(url: str, payload: dict[str, Any] | bytes, secret: str = SECRET, **kwargs: Any) -> requests.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "Typeform-Signature": typeform_signature(secret, body)}
    return requests.post(f"{url}/hooks/typeform", data=body, headers=headers, timeout=10, **kwargs)
