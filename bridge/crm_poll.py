"""Without webhooks: the poller, for portals that cannot send HubSpot's webhooks.

HubSpot's Service Keys do not support webhooks (hubspot.md §0), so such a portal never tells
the relay that a deal was closed. With ``hubspot.poll.enabled`` a worker chore asks instead:
every ``hubspot.poll.every``, one worker (a lease in the ledger's ``crm_poll`` row) searches
the deals in leadbridge's pipelines whose ``hs_lastmodifieddate`` is at or after the last
high-water mark less ``overlap`` (search lags behind writes, hubspot.md §3), oldest first,
page by page with ``after``. Every search call goes through the connector, so the shared
CallPacer holds it to the search limit (5 per second). Each deal the ledger knows becomes
the same ``CrmEvent`` a ``deal.propertyChange`` webhook makes, keyed on deal id + its
``hs_lastmodifieddate`` (so overlapping polls apply it once), and goes through the same
``apply_events``. The high-water mark is kept in the ledger, so a restart resumes.

What search cannot show: deleted records (search never returns archived ones) and merges
(the merged-away contact just stops appearing, which a poller cannot tell from "unchanged").
Those are still caught when the relay next writes: a deleted contact answers 404 and the lead
continues by email; a write to a merged-away id lands on the survivor, whose id HubSpot
answers and the ledger then remembers (``ContactResult.merged_from``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .config import Settings
from .crm_events import CrmEvent, apply_events
from .ledger import Ledger
from .ports import CRM, Found
from .stages import StageCache, configured_closed, recheck_stages

log = logging.getLogger(__name__)
NAME = "deals"
LEASE_SECONDS = 300.0
# HubSpot refuses to page past 10,000 results of one query (hubspot.md §1).
SEARCH_RESULT_CAP = 10_000
# After a failed poll, the chore waits this long (at most ``every``) before the next try.
FAILURE_PAUSE_SECONDS = 60.0


@dataclass
class PollResult:
    """What one poll did, for the CLI and the logs (deal ids and stage ids only: no personal data)."""

    ran: bool
    reason: str = ""
    since_ms: int | None = None
    high_water_ms: int | None = None
    pages: int = 0
    found: int = 0
    applied: int = 0
    duplicates: int = 0
    changes: list[dict[str, object]] = field(default_factory=list)


class CrmPoller:
    """One worker's poller chore and its stage cache; ``tick()`` is the worker loop's call."""

    def __init__(
        self, settings: Settings, ledger: Ledger, crm: CRM, owner: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings, self.ledger, self.crm, self.owner, self.clock = settings, ledger, crm, owner, clock
        self.stages = StageCache(crm, ledger, configured_closed(settings), clock=clock)
        self._next_look = float("-inf")  # wall time before which tick() does not ask the ledger

    def tick(self) -> None:
        """Settle queued stage checks; poll when enabled and due. Never raises (it is a chore)."""
        try:
            recheck_stages(self.ledger, self.stages)
            if self.settings.hubspot.poll.enabled and self.clock() >= self._next_look:
                self.poll()
        except Exception as exc:
            cfg = self.settings.hubspot.poll
            self._next_look = self.clock() + min(cfg.every, FAILURE_PAUSE_SECONDS)
            log.warning("HubSpot poll failed (%s); will try again", type(exc).__name__)

    def poll(self, *, force: bool = False) -> PollResult:
        """One poll if due (``force``: even if not, as ``leadbridge hubspot-poll`` does) and no
        other worker is polling now; raises DeliveryError when HubSpot cannot be searched."""
        now = self.clock()
        refused = self._take_lease(now, force)
        if refused:
            return PollResult(ran=False, reason=refused)
        try:
            result = self._run(now)
        except BaseException:
            self._release(None, None)
            raise
        self._release(result.high_water_ms, now)
        self._next_look = now + self.settings.hubspot.poll.every
        return result

    def _take_lease(self, now: float, force: bool) -> str:
        """ "" when this worker may poll now (and holds the lease), else why not."""
        every = self.settings.hubspot.poll.every
        lease = self.ledger.take_poll_lease(NAME, self.owner, now, LEASE_SECONDS, every=None if force else every)
        if lease.busy_until is not None:
            self._next_look = lease.busy_until
            return "another worker is polling"
        if not lease.taken:
            self._next_look = lease.last_run_at + every
            return "not due"
        return ""

    def _release(self, high_water_ms: int | None, ran_at: float | None) -> None:
        self.ledger.release_poll_lease(NAME, self.owner, high_water_ms, ran_at)

    def _run(self, now: float) -> PollResult:
        cfg = self.settings.hubspot.poll
        since = self._since(now)
        result = PollResult(ran=True, since_ms=since, high_water_ms=self.high_water())
        found: list[Found] = []
        after: str | None = None
        while True:
            page = self.crm.search_modified(
                "deals", since, ["dealstage", "pipeline"], among={"pipeline": self._pipelines()}, after=after, limit=cfg.page_size
            )
            result.pages += 1
            found += page.records
            after = page.after
            # The rest waits for the next poll, which starts at this one's high-water mark.
            if after is None or result.pages >= cfg.max_pages or int(after) + cfg.page_size > SEARCH_RESULT_CAP:
                break
        result.found = len(found)
        events = self._events(found)
        marks = [event.at_ms for event in events] + [modified_ms(f.properties.get("hs_lastmodifieddate", "")) for f in found]
        result.high_water_ms = max([m for m in marks if m] + [result.high_water_ms or 0]) or None
        applied: list[CrmEvent] = []
        view = self.stages.view(event.stage for event in events)
        result.applied, result.duplicates = apply_events(self.ledger, events, view, applied)
        result.changes = [{"deal": e.object_id, "stage": e.stage, "closed": view.closed(e.stage)} for e in applied]
        return result

    def high_water(self) -> int | None:
        return self.ledger.poll_high_water(NAME)

    def _since(self, now: float) -> int:
        """The high-water mark less the overlap; the first time, the oldest deal the ledger knows."""
        overlap_ms = int(self.settings.hubspot.poll.overlap * 1000)
        mark = self.high_water()
        if mark is None:
            oldest = self.ledger.oldest_deal_at()
            mark = int((now if oldest is None else oldest) * 1000)
        return max(0, mark - overlap_ms)

    def _pipelines(self) -> list[str]:
        """The pipelines leadbridge opens deals in: only those are searched."""
        settings = self.settings
        chosen = {settings.deals.pipeline} if settings.deals.object == "deal" else set()
        chosen |= {s.deal.pipeline for s in settings.sources if s.deal is not None and s.deal.object == "deal"}
        return sorted(chosen) or [settings.deals.pipeline]

    def _events(self, found: list[Found]) -> list[CrmEvent]:
        """Stage events for the deals the ledger knows (a local lookup; others are skipped)."""
        known = self.ledger.remembered_deals(sorted({f.record_id for f in found}))
        events = []
        for hit in found:
            at_ms = modified_ms(hit.properties.get("hs_lastmodifieddate", ""))
            if hit.record_id in known and hit.properties.get("dealstage"):
                key = f"poll:{hit.record_id}:{at_ms}"
                events.append(CrmEvent("deal_stage", key, hit.record_id, stage=hit.properties["dealstage"], at_ms=at_ms))
        return events


def modified_ms(value: str) -> int:
    """``hs_lastmodifieddate`` as epoch ms: search answers ISO-8601; 0 when unreadable."""
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def poll_lines(result: PollResult) -> list[str]:
    """``leadbridge hubspot-poll`` in words: the window searched, what was found and applied."""
    if not result.ran:
        return [f"not polled: {result.reason}"]
    lines = [
        f"searched deals changed since {_iso(result.since_ms)}: {result.pages} page(s), {result.found} deal(s) found, "
        f"{result.applied} new change(s), {result.duplicates} already applied; high-water mark {_iso(result.high_water_ms)}"
    ]
    lines += [f"deal {c['deal']}: stage {c['stage']} ({'closed' if c['closed'] else 'open'})" for c in result.changes]
    return lines


def _iso(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else "-"
