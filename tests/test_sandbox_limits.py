"""The sandbox as a busy HubSpot: HubSpot's burst and search limits enforced per token with its
429 body and headers, latency that overlaps across concurrent calls, the run-time control route
and the ``leadbridge sandbox`` flags. Off by default, so every other test sees no change."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.sandbox import SandboxServer
from connectors.sandbox.limits import LimitSettings, Rate
from tests.conftest import ROOT
from tests.procs import BOOT_SECONDS, free_port, started, wait_until

OWNERS = "/crm/v3/owners/"
SEARCH = "/crm/v3/objects/contacts/search"
# Windows far longer than any test run, so a slow machine cannot slide them open mid-test.
LONG = "300s"


@pytest.fixture
def busy() -> Iterator[SandboxServer]:
    limits = LimitSettings.parse(rate_limit=f"100/{LONG}", search_rate_limit=f"5/{LONG}")
    with SandboxServer(limits=limits) as server:
        yield server


def call(url: str, path: str, token: str = "token-a") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if path.endswith("/search"):
        return requests.post(url + path, json={"filterGroups": []}, headers=headers, timeout=30)
    return requests.get(url + path, headers=headers, timeout=30)


def test_the_101st_request_in_a_window_gets_hubspots_429(busy: SandboxServer) -> None:
    served = [call(busy.url, OWNERS) for _ in range(100)]
    refused = call(busy.url, OWNERS)

    assert [r.status_code for r in served] == [200] * 100
    assert [r.headers["X-HubSpot-RateLimit-Remaining"] for r in served] == [str(n) for n in range(99, -1, -1)]
    assert {(r.headers["X-HubSpot-RateLimit-Max"], r.headers["X-HubSpot-RateLimit-Interval-Milliseconds"]) for r in served} == {
        ("100", "300000")
    }
    assert refused.status_code == 429
    body = refused.json()
    assert {k: v for k, v in body.items() if k not in ("correlationId", "groupName")} == {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "TEN_SECONDLY_ROLLING",
    }
    assert body["correlationId"] and "ten-secondly-rolling" in body["groupName"]
    assert (
        refused.headers["X-HubSpot-RateLimit-Max"],
        refused.headers["X-HubSpot-RateLimit-Remaining"],
        refused.headers["X-HubSpot-RateLimit-Interval-Milliseconds"],
    ) == ("100", "0", "300000")
    # Another token (another app) has its own window; the refused call used none of it.
    assert call(busy.url, OWNERS, token="token-b").headers["X-HubSpot-RateLimit-Remaining"] == "99"
    counts = requests.get(f"{busy.url}/__sandbox/limits", timeout=5).json()["statuses"]
    assert counts == {"hubspot 200": 101, "hubspot 429": 1}


def test_search_has_its_own_secondly_limit_and_no_rate_limit_headers(busy: SandboxServer) -> None:
    searches = [call(busy.url, SEARCH) for _ in range(6)]

    assert [r.status_code for r in searches] == [200] * 5 + [429]
    assert searches[-1].json()["policyName"] == "SECONDLY"
    assert searches[-1].json()["message"] == "You have reached your secondly limit."
    assert not [h for r in searches for h in r.headers if h.lower().startswith("x-hubspot-ratelimit")]
    # The burst window is untouched by searches.
    assert call(busy.url, OWNERS).headers["X-HubSpot-RateLimit-Remaining"] == "99"


def test_latency_is_slept_outside_the_lock_so_concurrent_calls_overlap() -> None:
    with SandboxServer() as server:
        answer = requests.post(f"{server.url}/__sandbox/limits", json={"latency_ms": 1500}, timeout=5)
        assert answer.json()["latency_ms"] == 1500
        gate = threading.Barrier(4)
        took: list[float] = []

        def one(path: str) -> None:
            gate.wait(timeout=30)
            start = time.monotonic()
            assert call(server.url, path).status_code == 200
            took.append(time.monotonic() - start)

        threads = [threading.Thread(target=one, args=(p,)) for p in (OWNERS, OWNERS, "/api/auth.test", "/api/auth.test")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        seen = requests.get(f"{server.url}/__sandbox/limits", timeout=5).json()

    assert len(took) == 4 and min(took) >= 1.5
    # Slept one after another, at most one call would ever be inside its latency.
    assert seen["peak_waiting"] >= 2
    assert seen["statuses"] == {"hubspot 200": 2, "slack auth.test 200": 2}


def test_limits_are_off_by_default_and_report_the_old_window() -> None:
    with SandboxServer() as server:
        answers = [call(server.url, OWNERS) for _ in range(120)]
        shown = requests.get(f"{server.url}/__sandbox/limits", timeout=5).json()

    assert {r.status_code for r in answers} == {200}
    assert {r.headers["X-HubSpot-RateLimit-Max"] for r in answers} == {"190"}
    assert (shown["latency_ms"], shown["rate_limit"], shown["search_rate_limit"]) == (0.0, None, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"rate_limit": "fast"}, "a rate looks like 100/10s"),
        ({"latency_ms": -1}, "latency_ms must be 0-600000"),
        ({"latency": 5}, "unknown keys ['latency']"),
    ],
)
def test_the_control_route_refuses_bad_settings(body: dict[str, Any], error: str) -> None:
    with SandboxServer() as server:
        answer = requests.post(f"{server.url}/__sandbox/limits", json=body, timeout=5)
    assert answer.status_code == 400
    assert error in answer.json()["error"]


def test_the_control_route_turns_the_limit_on_while_running() -> None:
    with SandboxServer() as server:
        requests.post(f"{server.url}/__sandbox/limits", json={"rate_limit": f"2/{LONG}"}, timeout=5).raise_for_status()
        statuses = [call(server.url, OWNERS).status_code for _ in range(3)]
        requests.post(f"{server.url}/__sandbox/limits", json={"rate_limit": None}, timeout=5).raise_for_status()
        after = call(server.url, OWNERS).status_code
    assert (statuses, after) == ([200, 200, 429], 200)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("100/10s", Rate(100, 10.0)), ("5/1s", Rate(5, 1.0)), ("5 / 1000ms", Rate(5, 1.0)), ("7/2", Rate(7, 2.0)), ("off", None)],
)
def test_rates_parse(text: str, rate: Rate | None) -> None:
    assert Rate.parse(text) == rate


def test_the_sandbox_command_takes_latency_and_limits(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bridge", "sandbox", "--port", str(port), "--latency-ms", "20", "--rate-limit", f"3/{LONG}"]
    argv += ["--search-rate-limit"]  # alone: HubSpot's 5/1s
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "sandbox.log").open("wb") as log, started(argv, cwd=ROOT, stdout=log, stderr=log) as proc:
        wait_until(
            lambda: requests.get(f"{url}/__sandbox/limits", timeout=2).ok, time.monotonic() + BOOT_SECONDS, "sandbox", proc
        )
        shown = requests.get(f"{url}/__sandbox/limits", timeout=5).json()
        statuses = [call(url, OWNERS).status_code for _ in range(4)]
    assert (shown["latency_ms"], shown["rate_limit"], shown["search_rate_limit"]) == (20.0, "3/300s", "5/1s")
    assert statuses == [200, 200, 200, 429]
