"""A busy upstream on demand: latency on every HubSpot and Slack call, and HubSpot's burst and
search rate limits enforced per token, for ``make bench`` and tests that need a realistic vendor.

Off by default (no latency, nothing refused; the rate-limit headers then report the old
never-enforced 190 per 10 s). ``leadbridge sandbox --latency-ms 150 --rate-limit 100/10s
--search-rate-limit 5/1s`` turns it on at start; ``POST /__sandbox/limits`` changes it at run
time and ``GET /__sandbox/limits`` shows it with counters a benchmark can poll cheaply
(requests per kind (Slack: per method) and status, so 429s, and the most calls ever inside their latency at once).

The latency is slept outside every lock, so concurrent calls overlap as they do against the
real service. A refused request does not use up the window: HubSpot counts what it serves.
Search has its own limit and, as at HubSpot, its answers carry no rate-limit headers.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from connectors.sandbox.state import RATE_LIMIT_INTERVAL_MS, RATE_LIMIT_MAX, SandboxState, default_fault_body

LIMITS_KEY = "leadbridge_sandbox_limits"
LIMITS_PATH = "/__sandbox/limits"
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*")


@dataclass(frozen=True)
class Rate:
    """``limit`` requests per rolling ``seconds``; written ``100/10s`` (or ``5/1s``, ``5/1000ms``)."""

    limit: int
    seconds: float

    @classmethod
    def parse(cls, text: str | None) -> Rate | None:
        """A rate from its text; ``None`` for off (empty, ``off`` or ``0``)."""
        if text is None or text.strip().lower() in ("", "off", "0", "none"):
            return None
        match = _RATE.fullmatch(text)
        if not match:
            raise ValueError(f"a rate looks like 100/10s, not {text!r}")
        seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
        if int(match.group(1)) < 1 or not 0 < seconds <= 3600:
            raise ValueError(f"a rate needs at least 1 request per 0-3600 s, not {text!r}")
        return cls(int(match.group(1)), seconds)

    def __str__(self) -> str:
        return f"{self.limit}/{self.seconds:g}s"


class Window:
    """A rolling window per key (HubSpot keys its limits by app, that is by token)."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._served: dict[str, deque[float]] = defaultdict(deque)

    def _trim(self, key: str, now: float) -> deque[float]:
        served = self._served[key]
        while served and served[0] <= now - self.rate.seconds:
            served.popleft()
        return served

    def take(self, key: str, now: float) -> int | None:
        """Count one request and return what is left, or ``None`` (not counted) when full."""
        served = self._trim(key, now)
        if len(served) >= self.rate.limit:
            return None
        served.append(now)
        return self.rate.limit - len(served)

    def remaining(self, key: str, now: float) -> int:
        return max(0, self.rate.limit - len(self._trim(key, now)))


@dataclass(frozen=True)
class LimitSettings:
    """What ``leadbridge sandbox`` was told: latency per call and the two HubSpot limits."""

    latency_ms: float = 0.0
    rate_limit: Rate | None = None
    search_rate_limit: Rate | None = None

    @classmethod
    def parse(cls, latency_ms: float = 0.0, rate_limit: str | None = None, search_rate_limit: str | None = None) -> LimitSettings:
        if not 0 <= latency_ms <= 600_000:
            raise ValueError("latency_ms must be 0-600000")
        return cls(float(latency_ms), Rate.parse(rate_limit), Rate.parse(search_rate_limit))

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "rate_limit": str(self.rate_limit) if self.rate_limit else None,
            "search_rate_limit": str(self.search_rate_limit) if self.search_rate_limit else None,
        }


class Limits:
    """The live limits of one sandbox app and what they have seen; thread-safe on its own lock,
    apart from the state lock, so waiting for a slot or sleeping never blocks other requests."""

    def __init__(self, settings: LimitSettings | None = None) -> None:
        self.lock = threading.Lock()
        self.configure(settings or LimitSettings())
        self.statuses: Counter[str] = Counter()
        # Calls inside their latency at once: more than one shows the sleeps overlap.
        self.waiting = self.peak_waiting = 0

    def configure(self, settings: LimitSettings) -> None:
        """New settings start with empty windows."""
        with self.lock:
            self.settings = settings
            self.burst = Window(settings.rate_limit) if settings.rate_limit else None
            self.search = Window(settings.search_rate_limit) if settings.search_rate_limit else None

    def enter(self, path: str, token: str) -> Response | None:
        """Before a vendor request: sleep the latency (no lock held), then take a slot; a 429
        answer when the limit is reached."""
        with self.lock:
            latency = self.settings.latency_ms / 1000
        if latency:
            self._wait(latency)
        if not path.startswith("/crm/"):
            return None
        searching = path.endswith("/search")
        with self.lock:
            window = self.search if searching else self.burst
            if window is None or window.take(token, time.monotonic()) is not None:
                return None
        return too_many_requests(path, searching, window.rate)

    def _wait(self, seconds: float) -> None:
        with self.lock:
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                self.waiting -= 1

    def leave(self, path: str, status: int) -> None:
        with self.lock:
            self.statuses[f"{request_kind(path)} {status}"] += 1

    def headers(self, sandbox: SandboxState, token: str) -> dict[str, str]:
        """The ``X-HubSpot-RateLimit-*`` headers of a served, non-search CRM answer."""
        with self.lock:
            burst = self.burst
            remaining = burst.remaining(token, time.monotonic()) if burst else None
        if burst is None or remaining is None:
            # Not enforced: report the busy-but-never-full window the sandbox always reported.
            return rate_headers(RATE_LIMIT_INTERVAL_MS, RATE_LIMIT_MAX, sandbox.rate_limit_remaining())
        return rate_headers(round(burst.rate.seconds * 1000), burst.rate.limit, remaining)

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                **self.settings.to_json(),
                "waiting": self.waiting,
                "peak_waiting": self.peak_waiting,
                "statuses": dict(self.statuses),
            }


def request_kind(path: str) -> str:
    """``hubspot``, ``search`` or ``slack <method>``: how the counters tell requests apart."""
    if path.startswith("/crm/"):
        return "search" if path.endswith("/search") else "hubspot"
    return f"slack {path.removeprefix('/api/')}" if path.startswith("/api/") else "other"


def rate_headers(interval_ms: int, limit: int, remaining: int) -> dict[str, str]:
    return {
        "X-HubSpot-RateLimit-Interval-Milliseconds": str(interval_ms),
        "X-HubSpot-RateLimit-Max": str(limit),
        "X-HubSpot-RateLimit-Remaining": str(remaining),
    }


def too_many_requests(path: str, searching: bool, rate: Rate) -> Response:
    """HubSpot's 429: the body names the policy; search answers carry no rate-limit headers."""
    answer = jsonify(default_fault_body(path, 429, "SECONDLY" if searching else "TEN_SECONDLY_ROLLING"))
    answer.status_code = 429
    if not searching:
        answer.headers.update(rate_headers(round(rate.seconds * 1000), rate.limit, 0))
    return answer


def limits() -> Limits:
    found: Limits = current_app.extensions[LIMITS_KEY]
    return found


def control_limits() -> ResponseReturnValue:
    """``POST /__sandbox/limits`` with ``latency_ms``, ``rate_limit``, ``search_rate_limit``
    (each optional: what is left out stays); ``GET`` shows them with the counters."""
    if request.method == "GET":
        return jsonify(limits().to_json())
    body = request.get_json(silent=True) or {}
    current = limits().settings.to_json()
    try:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        unknown = set(body) - set(current)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        merged = {**current, **body}
        limits().configure(
            LimitSettings.parse(float(merged["latency_ms"] or 0), merged["rate_limit"], merged["search_rate_limit"])
        )
    except (ValueError, TypeError) as exc:
        return jsonify({"ok": False, "error": f"bad input: {exc}"}), 400
    return jsonify({"ok": True, **limits().to_json()})


def install_limits(app: Flask, settings: LimitSettings | None = None) -> Limits:
    """Give a sandbox app its limits and their control route; the hooks in ``server`` call
    :meth:`Limits.enter` and :meth:`Limits.leave` around every vendor request."""
    app.extensions[LIMITS_KEY] = found = Limits(settings)
    app.add_url_rule(LIMITS_PATH, endpoint="control_limits", view_func=control_limits, methods=["GET", "POST"])
    return found
