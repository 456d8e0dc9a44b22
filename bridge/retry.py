"""Durable retry policy: a schedule from config and one pure function over it.

Tests pass ``now`` and a seeded ``random.Random``; nothing here sleeps.
"""

from __future__ import annotations

import random

from .config import RetrySettings


def next_attempt_at(
    attempts: int,
    now: float,
    policy: RetrySettings,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """When to try again after ``attempts`` failed attempts, or None when the schedule is spent.

    Jitter spreads a burst of failures (a HubSpot outage) so they do not all return at once;
    a server's ``retry_after`` is a floor, never shortened by jitter.
    """
    if attempts < 1 or attempts > len(policy.schedule_seconds):
        return None
    delay = policy.schedule_seconds[attempts - 1]
    spread = delay * policy.jitter
    delay += (rng or random).uniform(-spread, spread)
    return now + max(delay, retry_after or 0.0)
