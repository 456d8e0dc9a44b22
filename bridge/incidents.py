"""Condition alerts: something is wrong now (not one lead, but the relay), said once, and
said again when it clears.

Three conditions, checked by the worker on its heartbeat:
- **backlog**: the oldest due delivery has waited longer than ``alerts.backlog_after``
  (HubSpot or Slack down, or no worker keeping up);
- **auth**: HubSpot or Slack refused the token (401, ``invalid_auth``…) in the last few minutes;
- **quiet source**: a source that normally receives leads at this hour has been silent for
  longer than its usual gap (learned from its last 30 days, or ``quiet_after`` per source).
  This is the alert for a WordPress plugin that silently stopped sending.

Each condition is an incident in the ledger: opened once (the worker that opens it posts),
closed once (the worker that closes it posts the recovery), so several workers and restarts
never make a storm. Messages carry names, counts and ages, never lead data.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

from .config import Settings
from .errors import DeliveryError
from .ledger import Ledger
from .ports import Notifier

log = logging.getLogger(__name__)

HISTORY_DAYS = 30
# A source needs this many deliveries in its history before its rhythm is trusted.
MIN_HISTORY = 20
# Hours of the week with fewer deliveries than this share of the busiest hour are "off hours".
ACTIVE_HOUR_SHARE = 0.1
AUTH_WINDOW_SECONDS = 900
AUTH_ERRORS = re.compile(r"HubSpot 401|HubSpot 403|invalid_auth|not_authed|token_revoked|token_expired|account_inactive")


@dataclass(frozen=True)
class Condition:
    key: str  # one incident per key, e.g. "backlog", "auth:hubspot", "quiet:typeform"
    opened: str  # the message when it starts
    cleared: str  # the message when it ends


def conditions(settings: Settings, ledger: Ledger, now: float) -> tuple[list[Condition], set[str]]:
    """The conditions holding now, and every key this check is able to judge (to close the rest)."""
    holding: list[Condition] = []
    judged: set[str] = {"backlog", "auth:hubspot", "auth:slack"}
    holding += _backlog(settings, ledger, now)
    holding += _auth(ledger, now)
    for source in settings.sources:
        key = f"quiet:{source.name}"
        judged.add(key)
        holding += _quiet(settings, ledger, source.name, source.quiet_after, now)
    return holding, judged


def check_incidents(settings: Settings, ledger: Ledger, notifier: Notifier, now: float | None = None) -> list[str]:
    """Open incidents for new conditions and close cleared ones; returns the messages sent."""
    now = time.time() if now is None else now
    holding, judged = conditions(settings, ledger, now)
    sent = []
    for condition in holding:
        if ledger.open_incident(condition.key, condition.cleared, now):
            sent.append(_post(settings, notifier, condition.opened))
    still = {c.key for c in holding}
    for key, cleared in ledger.open_incidents().items():
        if key in judged and key not in still and ledger.close_incident(key, now):
            sent.append(_post(settings, notifier, cleared))
    return sent


def _post(settings: Settings, notifier: Notifier, text: str) -> str:
    channel = settings.alerts.slack_channel
    if channel:
        try:
            notifier.post_ops(channel, text)
        except DeliveryError as exc:  # the incident stays recorded; the log still has it
            log.error("ops alert not sent (%s): %s", type(exc).__name__, text)
            return text
    log.warning("alert: %s", text)
    return text


def _backlog(settings: Settings, ledger: Ledger, now: float) -> Iterator[Condition]:
    waiting = ledger.backlog(now)
    age, limit = float(waiting["oldest_due_age_seconds"]), settings.alerts.backlog_after_seconds
    if limit and age > limit:
        yield Condition(
            "backlog",
            f"Leads are waiting: the oldest due delivery has waited {_span(age)} ({waiting['queue_depth']} unfinished). "
            "HubSpot or Slack may be down, or no worker is running: see `leadbridge deliveries --status retrying`.",
            "Leads are moving again: nothing due has waited longer than the alert threshold.",
        )


def _auth(ledger: Ledger, now: float) -> Iterator[Condition]:
    seen = {"hubspot": False, "slack": False}
    for error in ledger.recent_errors(now - AUTH_WINDOW_SECONDS):
        if AUTH_ERRORS.search(error):
            seen["slack" if "Slack" in error or "_auth" in error or "token_" in error else "hubspot"] = True
    for vendor, failing in seen.items():
        if failing:
            name = {"hubspot": "HubSpot", "slack": "Slack"}[vendor]
            yield Condition(
                f"auth:{vendor}",
                f"{name} is refusing leadbridge's token (seen in the last {AUTH_WINDOW_SECONDS // 60} min): "
                f"leads cannot reach {name}. Check the token and its scopes (`leadbridge doctor`).",
                f"{name} accepts leadbridge's token again.",
            )


def _quiet(settings: Settings, ledger: Ledger, source: str, override: float | None, now: float) -> Iterator[Condition]:
    last = ledger.last_received(source, since=now - HISTORY_DAYS * 86400)
    if last is None:
        return
    zone = settings.digest.timezone
    rhythm = _hourly_rhythm(ledger, source, zone, int(now // 3600))
    usual = override if override is not None else rhythm.quiet_after if rhythm else None
    in_hours = rhythm is None or _hour_of_week(now, ZoneInfo(zone)) in rhythm.hours
    silence = now - last
    if usual is not None and silence > usual and in_hours:
        yield Condition(
            f"quiet:{source}",
            f"Source {source} has sent nothing for {_span(silence)}, longer than its usual gap ({_span(usual)}) "
            "at a time it normally receives leads. Check that the form still posts its webhook.",
            f"Source {source} is sending again.",
        )


@lru_cache(maxsize=256)
def _hourly_rhythm(ledger: Ledger, source: str, zone: str, hour: int) -> Rhythm | None:
    """A source's rhythm, learned again once an hour rather than from 30 days of rows on every heartbeat."""
    return learn_rhythm(ledger.received_times(source, hour * 3600 - HISTORY_DAYS * 86400), ZoneInfo(zone))


@dataclass(frozen=True)
class Rhythm:
    hours: frozenset[int]  # hours of the week (0 = Monday 00:00) when leads usually arrive
    quiet_after: float  # seconds of silence, inside those hours, that is unusual


def learn_rhythm(times: list[float], zone: ZoneInfo) -> Rhythm | None:
    """The hours a source is busy and how long it is usually quiet within them."""
    if len(times) < MIN_HISTORY:
        return None
    per_hour: dict[int, int] = {}
    for t in times:
        hour = _hour_of_week(t, zone)
        per_hour[hour] = per_hour.get(hour, 0) + 1
    busiest = max(per_hour.values())
    hours = frozenset(h for h, n in per_hour.items() if n >= max(1, busiest * ACTIVE_HOUR_SHARE))
    gaps = sorted(b - a for a, b in pairwise(times) if _hour_of_week(b, zone) in hours)
    if not gaps:
        return None
    # Three times the 90th-percentile gap, and never under an hour: an alert worth reading.
    p90 = statistics.quantiles(gaps, n=10)[-1] if len(gaps) > 1 else gaps[0]
    return Rhythm(hours, max(3600.0, 3 * p90))


def _hour_of_week(t: float, zone: ZoneInfo) -> int:
    moment = datetime.fromtimestamp(t, UTC).astimezone(zone)
    return moment.weekday() * 24 + moment.hour


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"
