"""Batches across deliveries: the CRM writes of the deliveries a worker runs at once, sent as
batch calls, while each delivery's pipeline stays one lead, one step after another.

A pipeline thread asks for one contact upsert or one record create, exactly as it would
alone; this wrapper holds it for a moment and sends it with the others of that moment:
contacts in one ``batch/upsert`` (100 at most), deals, notes and tasks in one
``batch/create`` per object type (and, with ``hubspot.read_unknown_contacts``, the reads
before them in one ``batch/read``). Each row keeps its own outcome, so a 207 row error fails
only its own delivery. Checkpoints, retries and one person's deliveries in order are
untouched: they live in the pipeline and the ledger, which do not know batching happens.

Three levels, by how much of HubSpot's call budget is left:
- more than ``hubspot.batching.tight_below`` (half the window): nothing lingers, a lone lead
  goes out at once, and a contact write does not queue behind a contact batch already in
  flight either (up to ``PARALLEL_CONTACT_BATCHES`` at once);
- at most that: a record create (after the rep's ping, so nobody waits on it) lingers up to
  ``record_wait_seconds`` for company, and contacts go one batch at a time, so those that
  arrive while one is in flight share the next call (no linger);
- at most ``contact_tight_below`` (a fifth): a contact write also lingers, up to
  ``contact_wait_seconds``.
Fewer, fuller calls exactly when calls are scarce; the ping's own write gives up its speed last.
(Parallel contact batches down to a fifth measured a better p50 and a worse p95 at 10 new
leads/s and 100 calls / 10 s: they spend the budget that the tail then waits for.)

Whatever the level, a record create also gathers: it waits while other creates of its type
keep arriving at most ``gather_gap_seconds`` apart (up to ``record_wait_seconds``). The
deliveries in flight move in waves (one batch answers them all at once); without this the
first of a wave went alone and the rest in a second call.

A batch is full at 100 rows, or once it holds every delivery in flight that could still come
to it: one waiting on a batch of a later step never will. (Counting them made a deal create
linger its whole ``record_wait_seconds`` while a second wave waited on its tasks: one worker
of 100 drained 37 leads/s that way. Not counting those at an earlier step either sent the
creates of a trickle sooner and in more calls, which spent the budget the contacts of the
next leads waited for: speed-to-lead p95 at 10 leads/s went from 525 to 600-840 ms.)

And a batch call that must wait for the call budget waits before the batch is taken, not
after: whoever arrives meanwhile goes in the same call (``CallPacer.prepay``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .batching import Batcher, Failed
from .config import Settings
from .errors import DeliveryError, RetriableError
from .ports import CRM, ContactResult, ContactWrite, Link, NewRecord, Snapshot, build_crm
from .ratelimit import CallPacer

BATCH_LIMIT = 100
# Contact batches in flight at once while the budget has room. At 10 new leads a second and
# 150 ms a call, one at a time made every other lead wait for the batch before it.
PARALLEL_CONTACT_BATCHES = 4
# Records created after the deal (bridge/sales.py: the task, or the note without tasks).
FOLLOW_UP_OBJECTS = ("tasks", "notes")


class CoalescingCRM:
    """A CRM whose single writes from concurrent threads become batch calls on ``inner``."""

    def __init__(
        self,
        inner: CRM,
        *,
        budget_tight: Callable[[], bool],
        contacts_tight: Callable[[], bool],
        contact_wait: float,
        record_wait: float,
        in_flight: Callable[[], int],
        gather_gap: float = 0.0,
        pacer: CallPacer | None = None,
    ) -> None:
        self.inner = inner
        self._in_flight, self._pacer = in_flight, pacer
        self._budget_tight = budget_tight
        self._contact_wait = lambda: contact_wait if contacts_tight() else 0.0
        self._record_wait = lambda: record_wait if budget_tight() else 0.0
        self._record_gather = (gather_gap, record_wait)
        self._batchers: dict[tuple[Any, ...], Batcher[Any, Any]] = {}
        self._lock = threading.Lock()

    def upsert_contacts(self, writes: Sequence[ContactWrite]) -> dict[str, ContactResult | DeliveryError]:
        if len(writes) != 1:  # already a batch: as it is
            return self.inner.upsert_contacts(writes)
        return {writes[0].trace_id: self._contact_batcher().submit(writes[0])}

    def create_record(self, object_type: str, properties: Mapping[str, str], links: Sequence[Link]) -> str:
        key, flush = ("create", object_type), self._flush_records(object_type)
        return self._batcher(key, flush, self._record_wait, self._record_gather).submit(NewRecord(properties, links))

    def lookup_contact(self, write: ContactWrite, properties: Sequence[str]) -> Snapshot:
        """Only with ``hubspot.read_unknown_contacts``: the reads of the moment in one batch read."""
        names = tuple(sorted(set(properties)))
        return self._batcher(("read", names), self._flush_reads(names), self._contact_wait).submit(write)

    def __getattr__(self, name: str) -> Any:
        # Reads, owners, links, planning: straight through.
        return getattr(self.inner, name)

    def _flush_contacts(self, writes: list[ContactWrite]) -> list[ContactResult | DeliveryError]:
        results = self.inner.upsert_contacts(writes)
        return [results.get(w.trace_id) or RetriableError("the CRM returned no result for this contact") for w in writes]

    def _flush_records(self, object_type: str) -> Callable[[list[NewRecord]], list[str | Failed]]:
        def flush(records: list[NewRecord]) -> list[str | Failed]:
            outcomes = self.inner.create_records(object_type, records)
            return [Failed(o) if isinstance(o, DeliveryError) else o for o in outcomes]

        return flush

    def _flush_reads(self, names: tuple[str, ...]) -> Callable[[list[ContactWrite]], list[Snapshot | Failed]]:
        def flush(writes: list[ContactWrite]) -> list[Snapshot | Failed]:
            found = self.inner.lookup_contacts(writes, names)
            missing = RetriableError("the CRM returned no snapshot for this contact")
            return [Failed(o) if isinstance(o := found.get(w.trace_id, missing), DeliveryError) else o for w in writes]

        return flush

    def _contact_batcher(self) -> Batcher[Any, Any]:
        """The first idle contact batcher while the budget has room; else always the first one."""
        batchers = [
            self._batcher(("upsert", n), self._flush_contacts, self._contact_wait) for n in range(PARALLEL_CONTACT_BATCHES)
        ]
        if not self._budget_tight():
            for batcher in batchers:
                if not batcher.busy:
                    return batcher
        return batchers[0]

    def _batcher(
        self,
        key: tuple[Any, ...],
        flush: Callable[[list[Any]], Sequence[Any]],
        wait: Callable[[], float],
        gather: tuple[float, float] = (0.0, 0.0),
    ) -> Batcher[Any, Any]:
        with self._lock:
            if key not in self._batchers:
                before = self._pacer.prepay if self._pacer is not None else None
                self._batchers[key] = Batcher(_forgetting(flush), lambda: self._could_come(key), wait, gather, before)
            return self._batchers[key]

    def _could_come(self, key: tuple[Any, ...]) -> int:
        """How many rows the batch ``key`` could hold now: every delivery in flight but those
        waiting on a batch of a later step (a hint read without locks: at worst a batch waits
        a little). Those at an earlier step still count: they come once their call answers."""
        step = _step(key)
        later = sum(batcher.holding for other, batcher in list(self._batchers.items()) if _step(other) > step)
        return min(BATCH_LIMIT, self._in_flight() - later)


def _step(key: tuple[Any, ...]) -> int:
    """Where a batch's call stands in a delivery's steps: reads, contact, deal, then task or note."""
    kind, what = key
    if kind == "create":
        return 3 if what in FOLLOW_UP_OBJECTS else 2
    return 0 if kind == "read" else 1


def _forgetting(flush: Callable[[list[Any]], Sequence[Any]]) -> Callable[[list[Any]], Sequence[Any]]:
    """``flush``, after which a call slot its leader took ahead and did not use is dropped."""

    def run(items: list[Any]) -> Sequence[Any]:
        try:
            return flush(items)
        finally:
            CallPacer.forget_prepaid()

    return run


def batched_crm(settings: Settings, in_flight: Callable[[], int], inner: CRM | None = None) -> CoalescingCRM:
    """The worker's CRM: ``inner`` (or the configured one), its writes batched across the
    deliveries in flight (``in_flight()`` says how many)."""
    pacer = CallPacer(settings.ledger, settings.hubspot.rate_limit)
    cfg = settings.hubspot.batching
    return CoalescingCRM(
        inner or build_crm(settings),
        budget_tight=lambda: pacer.free_share() <= cfg.tight_below,
        contacts_tight=lambda: pacer.free_share() <= cfg.contact_tight_below,
        contact_wait=cfg.contact_wait_seconds,
        record_wait=cfg.record_wait_seconds,
        in_flight=in_flight,
        gather_gap=cfg.gather_gap_seconds,
        pacer=pacer,
    )
