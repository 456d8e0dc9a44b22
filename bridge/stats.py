"""``leadbridge stats``: what the relay did over a period, from the ledger alone.

Volume per source per (UTC) day with each outcome (the drop-off from received to
delivered), dead letters, duplicates prevented and speed to lead (receipt to the Slack
message) as p50 and p95.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .ledger import FINAL, Ledger

# Columns of the per-day table: every final state, then what is still on its way.
OUTCOMES = [str(s) for s in FINAL]
IN_FLIGHT = "in_flight"


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None for none."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def collect_stats(ledger: Ledger, since: float, hubspot_calls: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints); ``hubspot_calls`` per UTC day, as
    the workers' call budget counted them (the limits file beside the ledger)."""
    days: dict[tuple[str, str], dict[str, int]] = {}
    for day, source, status, n in ledger.volume_by_day(since):
        row = days.setdefault((day, source), {"received": 0, **{o: 0 for o in OUTCOMES}, IN_FLIGHT: 0})
        row["received"] += n
        row[status if status in OUTCOMES else IN_FLIGHT] += n
    seconds = ledger.speed_to_lead_seconds(since)
    sender_retries = sum(n for _s, outcome, _c, n in ledger.intake_counts() if outcome == "duplicate")
    delivered = sum(row["delivered"] for row in days.values())
    calls = sum((hubspot_calls or {}).values())
    return {
        "since": since,
        "hubspot_calls": calls,
        "hubspot_calls_per_delivered_lead": round(calls / delivered, 2) if delivered and hubspot_calls else None,
        "days": [{"day": day, "source": source, **row} for (day, source), row in sorted(days.items())],
        "dead_waiting": ledger.backlog()["dead"],
        "duplicates_prevented": {
            "returning_person": sum(n for _, n in ledger.returning_contacts(since)),
            "sender_retry_all_time": sender_retries,
        },
        "speed_to_lead_seconds": {
            "count": len(seconds),
            "p50": percentile(seconds, 0.5),
            "p95": percentile(seconds, 0.95),
        },
    }


def stats_lines(report: dict[str, Any]) -> list[str]:
    """The report as a table and a few sentences."""
    columns = ["received", *OUTCOMES, IN_FLIGHT]
    lines = [f"{'day':<10}  {'source':<16} " + " ".join(f"{c:>9}" for c in columns)]
    for row in report["days"]:
        lines.append(f"{row['day']:<10}  {row['source']:<16} " + " ".join(f"{row[c]:>9}" for c in columns))
    if not report["days"]:
        lines.append("(no deliveries in this period)")
    speed = report["speed_to_lead_seconds"]
    if speed["count"]:
        lines.append(
            f"speed to lead (received -> Slack): p50 {speed['p50']:.1f}s, p95 {speed['p95']:.1f}s over {speed['count']} leads"
        )
    dup = report["duplicates_prevented"]
    lines.append(
        f"duplicates prevented: {dup['returning_person']} returning people updated their contact; "
        f"{dup['sender_retry_all_time']} sender retries (all time)"
    )
    if report["hubspot_calls_per_delivered_lead"] is not None:
        lines.append(
            f"HubSpot calls: {report['hubspot_calls']}, {report['hubspot_calls_per_delivered_lead']} per delivered lead"
            " (all of them: owner lookups and retries included)"
        )
    dead = report["dead_waiting"]
    lines.append(f"dead letters waiting: {dead}" + (" (see them: leadbridge deliveries --status dead)" if dead else ""))
    return lines
