"""The ledger's memory of HubSpot's deals: their stage versions, the stages still to check, HubSpot's
pipeline stages as last read, and the poller's lease and high-water mark.

Used by bridge/crm_events.py, bridge/stages.py and bridge/crm_poll.py, which hold the rules;
here is only what is stored and how. Methods that write join the caller's transaction when
one is open (``exclusive()``, ``atomically()``), as the webhook's ``apply_events`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .ledger_base import LedgerBase, marks

# SQLite refuses more bound parameters than this in one statement (its default limit is 999).
_IN_CHUNK = 500


@dataclass(frozen=True)
class StageCheck:
    """A deal whose stage the webhook handler did not find in HubSpot's pipelines, queued at ``at``."""

    record_id: str
    stage: str
    at: float


@dataclass(frozen=True)
class PollLease:
    """What taking the poller's lease found: taken, held by another worker until ``busy_until``, or not due."""

    taken: bool
    busy_until: float | None
    last_run_at: float


class CrmLedger(LedgerBase):
    # -- deals the relay opened ----------------------------------------------------

    def remembers_deal(self, record_id: str) -> bool:
        """Whether leadbridge opened this deal (or HubSpot lead)."""
        return self.db.execute("SELECT 1 FROM deals WHERE record_id = ?", (record_id,)).fetchone() is not None

    def remembered_deals(self, record_ids: Sequence[str], object_type: str = "deals") -> set[str]:
        """Those of ``record_ids`` that leadbridge opened."""
        known: set[str] = set()
        for start in range(0, len(record_ids), _IN_CHUNK):
            chunk = record_ids[start : start + _IN_CHUNK]
            rows = self.db.execute(
                f"SELECT record_id FROM deals WHERE object_type = ? AND record_id IN ({marks(chunk)})", (object_type, *chunk)
            ).fetchall()
            known |= {str(r[0]) for r in rows}
        return known

    def oldest_deal_at(self, object_type: str = "deals") -> float | None:
        """When leadbridge opened its first deal that is still remembered."""
        row = self.db.execute("SELECT min(created_at) FROM deals WHERE object_type = ?", (object_type,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def deal_origin(self, record_id: str, object_type: str = "deals") -> tuple[str, str] | None:
        """The delivery that opened this deal and the contact it belongs to; None for a deal leadbridge did not open."""
        row = self.db.execute(
            "SELECT delivery_id, contact_id FROM deals WHERE record_id = ? AND object_type = ?", (record_id, object_type)
        ).fetchone()
        return (str(row[0]), str(row[1])) if row is not None else None

    def advance_deal_version(self, record_id: str, at_ms: int) -> bool:
        """Keep ``at_ms`` (HubSpot's time of a stage change) as the deal's newest; False when the
        ledger already holds a change as new or newer, which this one must not undo."""
        with self._write() as conn:
            row = conn.execute("SELECT at_ms FROM crm_deal_versions WHERE record_id = ?", (record_id,)).fetchone()
            if row is not None and int(row[0]) >= at_ms:
                return False
            conn.execute(
                """INSERT INTO crm_deal_versions (record_id, at_ms) VALUES (?, ?)
                   ON CONFLICT (record_id) DO UPDATE SET at_ms = excluded.at_ms""",
                (record_id, at_ms),
            )
        return True

    # -- stages to check again (bridge/stages.py) -----------------------------------

    def queue_stage_check(self, record_id: str, stage: str, now: float) -> None:
        """The deal's new stage was not in HubSpot's pipelines as last read: the worker checks it again."""
        with self._write() as conn:
            conn.execute(
                """INSERT INTO crm_stage_checks (record_id, stage, at) VALUES (?, ?, ?)
                   ON CONFLICT (record_id) DO UPDATE SET stage = excluded.stage, at = excluded.at""",
                (record_id, stage, now),
            )

    def drop_stage_check(self, record_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM crm_stage_checks WHERE record_id = ?", (record_id,))

    def stage_checks(self) -> list[StageCheck]:
        rows = self.db.execute("SELECT record_id, stage, at FROM crm_stage_checks").fetchall()
        return [StageCheck(str(record_id), str(stage), float(at)) for record_id, stage, at in rows]

    def settle_stage_checks(self, settled: Sequence[tuple[StageCheck, bool | None]], now: float) -> None:
        """Close (True) or reopen (False) each checked deal still in the checked stage, or leave it
        as it is (None), and drop the checks: all in one transaction."""
        with self._write() as conn:
            for check, closed in settled:
                if closed is not None:
                    conn.execute(
                        """UPDATE deals SET closed_at = CASE WHEN ? THEN COALESCE(closed_at, ?) ELSE NULL END
                           WHERE record_id = ? AND stage = ?""",
                        (closed, now, check.record_id, check.stage),
                    )
                conn.execute("DELETE FROM crm_stage_checks WHERE record_id = ? AND stage = ?", (check.record_id, check.stage))

    # -- HubSpot's pipeline stages, as last read -------------------------------------

    def deal_stages(self, object_type: str = "deals") -> dict[str, bool]:
        """Every stage of HubSpot's pipelines as last read, and whether it is closed."""
        rows = self.db.execute("SELECT stage, closed FROM crm_stages WHERE object_type = ?", (object_type,)).fetchall()
        return {str(stage): bool(closed) for stage, closed in rows}

    def store_deal_stages(self, pipelines: Mapping[str, Mapping[str, bool]], now: float, object_type: str = "deals") -> None:
        """Replace the stages kept with ``pipelines`` (pipeline id -> stage id -> closed), at once."""
        rows = [
            (object_type, stage, pipeline, int(closed), now)
            for pipeline, stages in pipelines.items()
            for stage, closed in stages.items()
        ]
        with self._write() as conn:
            conn.execute("DELETE FROM crm_stages WHERE object_type = ?", (object_type,))
            conn.executemany(
                """INSERT INTO crm_stages (object_type, stage, pipeline, closed, fetched_at) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (object_type, stage) DO UPDATE SET pipeline = excluded.pipeline, closed = excluded.closed,
                   fetched_at = excluded.fetched_at""",
                rows,
            )

    # -- the poller's lease and high-water mark (bridge/crm_poll.py) ------------------

    def take_poll_lease(self, name: str, owner: str, now: float, lease_seconds: float, every: float | None) -> PollLease:
        """Lease the poll ``name`` to ``owner`` unless another owner's lease is live or, ``every``
        given, it last ran less than ``every`` ago; the check and the take are one transaction."""
        with self._write() as conn:
            conn.execute("INSERT INTO crm_poll (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
            holder, lease_until, last_run = conn.execute(
                "SELECT owner, lease_until, last_run_at FROM crm_poll WHERE name = ?", (name,)
            ).fetchone()
            if holder and holder != owner and lease_until > now:
                return PollLease(False, float(lease_until), float(last_run))
            if every is not None and last_run + every > now:
                return PollLease(False, None, float(last_run))
            conn.execute("UPDATE crm_poll SET owner = ?, lease_until = ? WHERE name = ?", (owner, now + lease_seconds, name))
        return PollLease(True, None, float(last_run))

    def release_poll_lease(self, name: str, owner: str, high_water_ms: int | None, ran_at: float | None) -> None:
        """Give the lease up (if still ``owner``'s), raising the high-water mark and recording the run when given."""
        with self._write() as conn:
            conn.execute(
                """UPDATE crm_poll SET owner = NULL, lease_until = 0,
                   high_water_ms = CASE WHEN CAST(? AS BIGINT) > COALESCE(high_water_ms, 0)
                                   THEN CAST(? AS BIGINT) ELSE high_water_ms END,
                   last_run_at = COALESCE(?, last_run_at) WHERE name = ? AND owner = ?""",
                (high_water_ms, high_water_ms, ran_at, name, owner),
            )

    def poll_high_water(self, name: str) -> int | None:
        """The newest HubSpot modification time (epoch ms) the poll ``name`` has seen; None before its first run."""
        row = self.db.execute("SELECT high_water_ms FROM crm_poll WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None
