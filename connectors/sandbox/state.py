"""What one sandbox app remembers: the CRM store, Slack messages and users, the request log,
injected faults and the rate-limit window (the first three optionally kept in a state file);
and the accessors request handlers reach it by."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flask import Response, current_app, jsonify, request

from connectors.sandbox.crm import CrmStore
from connectors.sandbox.errors import HubSpotError
from connectors.sandbox.persist import StateFile, dump_crm, load_crm

RATE_LIMIT_INTERVAL_MS = 10_000
RATE_LIMIT_MAX = 190
EXTENSION_KEY = "leadbridge_sandbox"


@dataclass
class Fault:
    """An injected failure or delay for requests whose path starts with ``path``."""

    path: str
    method: str | None
    status: int | None
    remaining: int | None
    body: Any
    headers: dict[str, str]
    delay: float
    policy: str | None

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path) and self.method in (None, method)

    def response(self, path: str) -> Response:
        assert self.status is not None
        headers = {"Retry-After": "1"} if path.startswith("/api/") and self.status == 429 else {}
        headers.update(self.headers)
        body = self.body if self.body is not None else default_fault_body(path, self.status, self.policy)
        answer = jsonify(body)
        answer.status_code = self.status
        answer.headers.update(headers)
        return answer


@dataclass
class AnswerDrop:
    """ "Apply the write, then drop the answer": the next ``remaining`` requests matching ``method``
    and ``path`` (a prefix, or the whole path with ``exact``) are handled, then their connection is
    closed with no response, as when a network drops HubSpot's or Slack's answer."""

    path: str
    method: str | None
    remaining: int
    exact: bool = False
    # Instead of closing the connection, answer this (status, JSON body): a vendor that did the
    # work and then said it failed (Slack's fatal_error: "some aspect of the operation succeeded").
    instead: tuple[int, Any] | None = None

    def matches(self, method: str, path: str) -> bool:
        hit = path == self.path if self.exact else path.startswith(self.path)
        return hit and self.method in (None, method)


def default_fault_body(path: str, status: int, policy: str | None) -> dict[str, Any]:
    if path.startswith("/api/"):
        # As Slack words them: a 503 is the service being down (nothing done); other errors are
        # fatal_error, which Slack says may have half-succeeded.
        return {"ok": False, "error": {429: "ratelimited", 503: "service_unavailable"}.get(status, "fatal_error")}
    if status == 429:
        limit = "secondly" if policy == "SECONDLY" else "ten_secondly_rolling"
        return {
            "status": "error",
            "message": f"You have reached your {limit} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": limit.upper(),
            "groupName": f"publicapi:private-app-api-calls-{limit.replace('_', '-')}:1234567",
        }
    try:
        message = "internal error" if status >= 500 else HTTPStatus(status).phrase
    except ValueError:
        message = "error"  # vendor-specific codes such as 477 have no standard phrase
    return HubSpotError(status, message).body()


class SandboxState:
    """Everything one sandbox app remembers; callers hold ``lock`` while touching it."""

    def __init__(self, search_lag: float, state_file: StateFile | None = None) -> None:
        self.lock = threading.Lock()
        self.initial_search_lag = search_lag
        self.state_file = state_file
        self.reset()
        saved = state_file.read() if state_file else None
        if saved is not None:
            self.restore(saved)

    def reset(self) -> None:
        previous: CrmStore | None = getattr(self, "crm", None)
        self.search_lag = self.initial_search_lag
        self.crm = CrmStore()
        if previous is not None and self.state_file is not None:
            # A kept ledger may remember earlier ids; only `leadbridge sandbox --reset` rewinds them.
            self.crm.next_record_id, self.crm.next_owner_id = previous.next_record_id, previous.next_owner_id
        self.messages: list[dict[str, Any]] = []
        self.slack_users: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.answer_drops: list[AnswerDrop] = []
        self.recent_crm_calls: deque[float] = deque()
        self.last_ts_us = 0

    def restore(self, saved: dict[str, Any]) -> None:
        """Take back what :meth:`save` wrote."""
        self.crm = load_crm(saved["crm"])
        self.messages = saved["messages"]
        self.slack_users = saved["slack_users"]
        self.channels = saved.get("channels", {})  # state files from before channels existed
        self.last_ts_us = int(saved["last_ts_us"])

    def save(self) -> None:
        """Write the durable part to the state file, if there is one; callers hold ``lock``."""
        if self.state_file is not None:
            self.state_file.write(
                {
                    "crm": dump_crm(self.crm),
                    "messages": self.messages,
                    "slack_users": self.slack_users,
                    "channels": self.channels,
                    "last_ts_us": self.last_ts_us,
                }
            )

    def add_channel(self, name: str, is_member: bool) -> dict[str, Any]:
        existing = self.channels.get(name)
        channel_id = existing["id"] if existing else f"C{len(self.channels) + 1:08d}"
        self.channels[name] = {"id": channel_id, "name": name, "is_member": is_member, "is_private": False}
        return self.channels[name]

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    def take_answer_drop(self, method: str, path: str) -> AnswerDrop | None:
        """The knob that drops (or replaces) this request's answer, counted against it; None if none."""
        for drop in self.answer_drops:
            if drop.matches(method, path):
                drop.remaining -= 1
                if drop.remaining <= 0:
                    self.answer_drops.remove(drop)
                return drop
        return None

    def rate_limit_remaining(self) -> int:
        now = time.monotonic()
        self.recent_crm_calls.append(now)
        while self.recent_crm_calls[0] < now - RATE_LIMIT_INTERVAL_MS / 1000:
            self.recent_crm_calls.popleft()
        return max(0, RATE_LIMIT_MAX - len(self.recent_crm_calls))

    def next_ts(self) -> str:
        # Slack's ts identifies a message, so it must never repeat even within one microsecond.
        self.last_ts_us = max(time.time_ns() // 1000, self.last_ts_us + 1)
        seconds, micros = divmod(self.last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def snapshot(self) -> dict[str, Any]:
        contacts = self.crm.objects("contacts").values()
        return {
            "contacts": [
                {"id": r.id, "properties": r.properties, "createdAt": r.created_at, "updatedAt": r.versions[-1].updated_at}
                for r in contacts
            ],
            "objects": {
                object_type: [{**r.to_json(), "associations": r.associations} for r in records.values()]
                for object_type, records in self.crm.records.items()
                if object_type != "contacts"
            },
            "messages": self.messages,
            "owners": self.crm.owners,
            "slack_users": self.slack_users,
            "requests": self.requests,
            # Faults not used up yet: one taken by a request that it delays is gone from here.
            "faults": [{"method": f.method, "path": f.path, "remaining": f.remaining} for f in self.faults],
            "properties": sorted(self.crm.property_definitions["contacts"]),
        }


def state() -> SandboxState:
    sandbox: SandboxState = current_app.extensions[EXTENSION_KEY]
    return sandbox


def bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
