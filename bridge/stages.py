"""Which deal stages are closed: HubSpot's pipeline metadata (``metadata.isClosed``), cached.

A deal's stage id alone says nothing: a custom pipeline's "Signed" stage is as closed as the
default pipeline's ``closedwon``. HubSpot says which stages are closed in the pipelines it
lists (``GET /crm/v3/pipelines/deals``, one call for every pipeline), so:

- the worker's ``StageCache`` reads them at most once an hour, and again (at most once a
  minute) when a stage it does not know shows up; what it read is kept in the ledger
  (``crm_stages``), so every process judges alike;
- the webhook handler never calls HubSpot (it must answer within 5 s and holds the ledger's
  write lock): it judges a stage from the ledger's copy, and a stage it does not find there
  is judged by ``deals.closed_stages`` for now and queued (``crm_stage_checks``) for the
  worker, which reads the pipelines and corrects the deal (``recheck_stages``);
- ``deals.closed_stages`` (and a source's ``deal.closed_stages``) always close a deal, and are
  the whole answer while HubSpot's pipelines cannot be read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from .config import Settings
from .errors import DeliveryError
from .ledger import Ledger
from .ledger_crm import StageCheck
from .ports import CRM

log = logging.getLogger(__name__)
TTL_SECONDS = 3600.0
# An unknown stage makes the worker read the pipelines again, but not more often than this.
UNKNOWN_RETRY_SECONDS = 60.0


class ClosedStages:
    """A judgement of stage ids: the configured list, then what HubSpot's pipelines say.

    ``known`` None means "configured list only" (nothing to check later, as before pipelines
    were read); otherwise a stage absent from ``known`` is unknown and worth checking.
    """

    def __init__(self, configured: Iterable[str], known: Mapping[str, bool] | None) -> None:
        self.configured = frozenset(configured)
        self.known = known

    def closed(self, stage: str) -> bool:
        return stage in self.configured or bool(self.known and self.known.get(stage))

    def knows(self, stage: str) -> bool:
        return self.known is None or stage in self.configured or stage in self.known


def configured_closed(settings: Settings) -> set[str]:
    """Every closed stage the config names: ``deals.closed_stages`` and each source's ``deal:``."""
    stages = set(settings.deals.closed_stages)
    for source in settings.sources:
        if source.deal is not None:
            stages |= set(source.deal.closed_stages)
    return stages


class StageCache:
    """HubSpot's deal stages for one worker: in memory for an hour, refreshed on an unknown stage."""

    def __init__(self, crm: CRM, ledger: Ledger, configured: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        self.crm, self.ledger, self.clock = crm, ledger, clock
        self.configured = frozenset(configured)
        self.known: dict[str, bool] | None = None
        self.fetched_at: float | None = None  # the last successful read
        self._tried_at = float("-inf")

    def view(self, stages: Iterable[str] = ()) -> ClosedStages:
        """The judgement of ``stages`` now; reads HubSpot first when its copy is stale or lacks one of them."""
        now = self.clock()
        wanted = [stage for stage in stages if stage and stage not in self.configured]
        unknown = any(stage not in (self.known or {}) for stage in wanted)
        stale = self.fetched_at is None or now - self.fetched_at >= TTL_SECONDS
        # Nothing to judge, or only configured stages: no call.
        if wanted and (stale or unknown) and now - self._tried_at >= UNKNOWN_RETRY_SECONDS:
            self._refresh(now)
        if self.known is None:
            # Never read here: another worker's copy in the ledger, else the configured list alone.
            return ClosedStages(self.configured, self.ledger.deal_stages())
        return ClosedStages(self.configured, self.known)

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        try:
            pipelines = self.crm.pipelines("deals")
        except DeliveryError as exc:
            log.warning("HubSpot deal pipelines unreadable (%s); closed stages from deals.closed_stages", type(exc).__name__)
            return
        self.known = {stage: closed for stages in pipelines.values() for stage, closed in stages.items()}
        self.fetched_at = now
        self.ledger.store_deal_stages(pipelines, now)


def recheck_stages(ledger: Ledger, cache: StageCache) -> int:
    """Judge again the deals whose stage the webhook handler did not know; returns how many were settled.

    A stage HubSpot's pipelines now name decides the deal (closed or open again); one they
    still do not name, after a successful read, keeps what ``deals.closed_stages`` decided.
    """
    checks = ledger.stage_checks()
    if not checks:
        return 0
    view = cache.view(check.stage for check in checks)
    settled: list[tuple[StageCheck, bool | None]] = []
    for check in checks:
        if view.knows(check.stage):
            settled.append((check, view.closed(check.stage)))
        elif cache.fetched_at is not None and cache.fetched_at >= check.at:
            settled.append((check, None))  # read since and still not named; not read since: later
    ledger.settle_stage_checks(settled, cache.clock())
    return len(settled)
