"""The ledger's follow-ups (the ``followups`` rows of bridge/followups.py) and the lookup
bridge/norepeat.py makes in the event log.

A follow-up row is claimed under a lease, like a delivery: a worker takes due rows in one short
transaction and may change a row only while it holds it. The rules (what is due when, what a
reminder says) live in bridge/followups.py and bridge/sla.py; here is only what is stored and how.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ledger_base import LedgerBase, marks

_DUE_ROWS = """
    SELECT id, kind, delivery_id, phase, due_at, data FROM followups INDEXED BY followups_due
    WHERE state = 'waiting' AND due_at <= ? AND (lease_until IS NULL OR lease_until < ?)
    ORDER BY due_at LIMIT ?"""


@dataclass
class FollowUp:
    """One row: a speed-to-lead check (``sla``) or a stage reminder (``stage``), at its ``phase``."""

    id: str
    kind: str
    delivery_id: str
    phase: str
    due_at: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> dict[str, Any]:
        steps: dict[str, Any] = self.data.setdefault("steps", {})
        return steps


class FollowUpLedger(LedgerBase):
    def new_sla_leads(self, since: float, segments: Sequence[str]) -> list[tuple[str, float, str]]:
        """(delivery id, received at, segment) of delivered leads since ``since``, of these segments,
        with a contact and no speed-to-lead row yet; at most 500 at a time."""
        from .ledger import Status  # ledger.py imports this module

        rows = self.db.execute(
            f"""SELECT d.id, d.received_at, json_extract(score.result, '$.segment') AS segment
                FROM deliveries AS d
                JOIN steps AS score ON score.delivery_id = d.id AND score.step = 'score'
                WHERE d.received_at >= :since AND d.status = '{Status.DELIVERED}'
                  AND json_extract(score.result, '$.segment') IN (SELECT value FROM json_each(:segments))
                  AND EXISTS (SELECT 1 FROM steps AS c WHERE c.delivery_id = d.id AND c.step = 'contact')
                  AND NOT EXISTS (SELECT 1 FROM followups AS f WHERE f.id = 'sla:' || d.id)
                LIMIT 500""",
            {"since": since, "segments": json.dumps(list(segments))},
        ).fetchall()
        return [(str(delivery_id), float(received), str(segment)) for delivery_id, received, segment in rows]

    def add_followups(self, items: Sequence[FollowUp], now: float) -> None:
        """New waiting rows, in one transaction; a row that exists already stays as it is."""
        with self._write() as conn:
            for item in items:
                conn.execute(
                    """INSERT INTO followups (id, kind, delivery_id, phase, state, due_at, data, updated_at)
                       VALUES (?, ?, ?, ?, 'waiting', ?, ?, ?) ON CONFLICT DO NOTHING""",
                    (item.id, item.kind, item.delivery_id, item.phase, item.due_at, json.dumps(item.data, sort_keys=True), now),
                )

    def claim_followups(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[FollowUp]:
        """Due rows nobody holds (or whose holder's lease ran out), leased to ``owner`` at once."""
        args = (now, now, limit)
        if not self.db.execute(_DUE_ROWS, args).fetchone():
            return []  # the usual loop: a read, no write lock
        with self._write() as conn:
            rows = conn.execute(_DUE_ROWS, args).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE followups SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, now + lease_seconds, row[0])
                )
        return [FollowUp(r[0], r[1], r[2], r[3], float(r[4]), json.loads(r[5])) for r in rows]

    def save_followup(
        self,
        item: FollowUp,
        owner: str,
        now: float,
        event: tuple[str, str] | None = None,
        columns: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write the row's data (and ``columns``) with ``event`` (outcome, detail) in the lead's log,
        in one transaction; False, and nothing written, when ``owner`` no longer holds the row."""
        columns = columns or {}
        sets = ", ".join(f"{name} = ?" for name in ["data", "updated_at", *columns])
        values = [json.dumps(item.data, sort_keys=True, default=str), now, *columns.values()]
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE followups SET {sets} WHERE id = ? AND lease_owner = ? AND lease_until >= ?",
                (*values, item.id, owner, now),
            )
            if cursor.rowcount != 1:
                return False
            if event is not None:
                self.note(item.delivery_id, item.kind, event[0], event[1], now=now)
        return True

    def drop_followup(self, followup_id: str, owner: str) -> None:
        """Delete the row if ``owner`` holds it."""
        with self._write() as conn:
            conn.execute("DELETE FROM followups WHERE id = ? AND lease_owner = ?", (followup_id, owner))

    def enter_stage_followup(self, delivery_id: str, deal_id: str, stage: str, entry: FollowUp | None, now: float) -> None:
        """The deal entered ``stage``: its waiting stage rows for other stages are cancelled (each
        noted in the lead's log) and ``entry`` is added, in one transaction. Nothing changes when a
        row waits for this very stage (a repeated report): the first entry's clock stands."""
        with self._write() as conn:
            waiting = conn.execute(
                """SELECT id, json_extract(data, '$.stage') FROM followups
                   WHERE delivery_id = ? AND kind = 'stage' AND state = 'waiting' AND json_extract(data, '$.deal_id') = ?""",
                (delivery_id, deal_id),
            ).fetchall()
            if any(old_stage == stage for _, old_stage in waiting):
                return
            for row_id, old_stage in waiting:
                reason = f"the deal moved from {old_stage} to {stage or 'another stage'}"
                conn.execute(
                    "UPDATE followups SET state = 'cancelled', reason = ?, updated_at = ? WHERE id = ?", (reason, now, row_id)
                )
                self.note(delivery_id, "stage", "cancelled", f"deal {deal_id}: {reason}", now=now)
            if entry is not None:
                self.add_followups([entry], now)

    def followups_of(self, delivery_id: str) -> list[dict[str, Any]]:
        """Every row of this delivery (id, kind, phase, state, due_at, data, reason), by id."""
        rows = self.db.execute(
            "SELECT id, kind, phase, state, due_at, data, reason FROM followups WHERE delivery_id = ? ORDER BY id", (delivery_id,)
        ).fetchall()
        keys = ("id", "kind", "phase", "state", "due_at", "data", "reason")
        return [{**dict(zip(keys, row, strict=True)), "data": json.loads(row[5])} for row in rows]

    # -- bridge/norepeat.py ---------------------------------------------------------

    def last_outcome(self, delivery_id: str, step: str, among: Sequence[str]) -> str | None:
        """The newest outcome in the event log of this delivery's ``step`` that is one of ``among``."""
        row = self.db.execute(
            f"""SELECT outcome FROM events WHERE delivery_id = ? AND step = ? AND outcome IN ({marks(among)})
                ORDER BY id DESC LIMIT 1""",
            [delivery_id, step, *among],
        ).fetchone()
        return str(row[0]) if row is not None else None
