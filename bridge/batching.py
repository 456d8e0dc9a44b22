"""Many threads' small requests, handled as one: the batcher behind group commit and batch calls.

Each thread submits one item and blocks. The first to arrive leads: it may linger a moment
for company (up to ``max_items``; for a fixed time, or while company keeps coming, see
``gather``), waits for its turn if it must (``before``: the call budget), hands the whole
batch to ``flush``, gives every thread its own outcome, and passes the lead to the next
thread that queued meanwhile. No thread runs a separate flusher, so an idle batcher costs
nothing, and nobody returns before the flush that holds their item.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

CAPACITY_POLL_SECONDS = 0.02
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failed:
    """A flush outcome that makes its submitter raise ``error`` (others are returned as they are)."""

    error: BaseException


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Slot(Generic[T]):
    item: T
    # Released once, to wake the thread: with the lead handed to it, or with its outcome. A bare
    # lock, not an Event: every write of a worker makes one, and an Event is a Condition, a lock
    # and Python-level waiting (8 % of a draining worker's CPU went into them).
    wake: threading.Lock = field(default_factory=_held)
    leads: bool = False
    done: bool = False
    outcome: Any = None


class Batcher(Generic[T, R]):
    """``submit(item)`` from any thread; ``flush(items)`` returns one outcome per item, in order."""

    def __init__(
        self,
        flush: Callable[[list[T]], Sequence[R | Failed]],
        max_items: int | Callable[[], int],
        linger: Callable[[], float] = lambda: 0.0,
        gather: tuple[float, float] = (0.0, 0.0),
        before: Callable[[], None] | None = None,
    ) -> None:
        # A number, or a function saying how many items could come at all right now (a batch
        # that holds all of them is full: no point lingering for more).
        self._capacity = max_items if callable(max_items) else (lambda: max_items)
        self._flush, self._linger = flush, linger
        # (gap, most): after ``linger``, the leader also waits while items keep arriving at most
        # ``gap`` apart, up to ``most`` after it began. A lone item waits ``gap``; a wave of
        # threads reaching this call together (they finished the step before at once) shares
        # one flush instead of its first few going alone and the rest in the next one.
        self._gap, self._most = gather
        self._arrived = 0.0  # when the newest item was queued
        # Called by the leader once it stops lingering, before it takes the batch; it may block
        # (waiting for the call budget), and whoever queues meanwhile goes in the same flush.
        self._before = before
        self._lock = threading.Condition()
        self._queue: list[_Slot[T]] = []
        self._busy = False
        self.holding = 0  # items submitted and not answered yet: queued, or in a flush

    @property
    def busy(self) -> bool:
        """A batch is gathering or in flight (read without the lock: a hint, not a promise)."""
        return self._busy

    def submit(self, item: T) -> R:
        slot: _Slot[T] = _Slot(item)
        with self._lock:
            self.holding += 1
            self._queue.append(slot)
            self._arrived = time.monotonic()
            if not self._busy:
                self._busy = slot.leads = True
            elif len(self._queue) >= self._capacity():
                self._lock.notify_all()  # a lingering leader has a full batch: go now
        if not slot.leads:
            slot.wake.acquire()
        if not slot.done:  # leading this batch (first, or handed the lead)
            self._lead(slot)
        if isinstance(slot.outcome, Failed):
            raise slot.outcome.error
        outcome: R = slot.outcome
        return outcome

    def _room(self) -> int:
        """How many items this batch may take now (at least its leader's)."""
        return max(1, self._capacity())

    def _lead(self, own: _Slot[T]) -> None:
        try:
            linger = self._linger()
        except Exception:  # a broken linger rule must not strand the threads queued behind us
            linger = 0.0
        with self._lock:
            began = time.monotonic()
            # Looked at again every few ms: the capacity can shrink as other work finishes.
            while len(self._queue) < self._room() and (left := began + linger - time.monotonic()) > 0:
                self._lock.wait(min(left, CAPACITY_POLL_SECONDS))
            while len(self._queue) < self._room():
                left = min(self._arrived + self._gap, began + self._most) - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
        if self._before is not None:
            with suppress(Exception):  # as with linger: a broken rule must not strand anyone
                self._before()
        with self._lock:
            full = self._room()
            batch, self._queue = self._queue[:full], self._queue[full:]
        try:
            outcomes: Sequence[Any] = self._flush([slot.item for slot in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} came back with {len(outcomes)} outcomes")
        except BaseException as exc:  # the flush as a whole failed: so did every item in it
            outcomes = [Failed(exc)] * len(batch)
        with self._lock:
            self.holding -= len(batch)
        for slot, outcome in zip(batch, outcomes, strict=True):
            slot.outcome, slot.done = outcome, True
            if slot is not own:  # the leader is awake (and was woken already, if handed the lead)
                slot.wake.release()
        with self._lock:
            if self._queue:
                self._queue[0].leads = True
                self._queue[0].wake.release()
            else:
                self._busy = False
