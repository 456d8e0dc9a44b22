"""The per-delivery pipeline: map -> validate -> the sales steps (``bridge.sales``) -> outcome.

Map and validate are pure and run again on every attempt, so a fixed mapping takes
effect on replay; partial, spam and unreachable leads end here. Each side-effect step
checkpoints its result in the ledger before the next one starts, so a retry, a replay or
a restarted worker skips what is done and never repeats a create or a message. Failures
become a retry on the schedule, or a dead letter with the reason.
"""

from __future__ import annotations

import json
import logging
import time

from .config import Settings
from .errors import DeliveryError, IntakeError, RetriableError, ThrottledError, where
from .ledger import Delivery, LeaseLostError, Ledger, Status
from .logs import redact
from .ports import CRM, Alert, Notifier, build_crm, build_notifier
from .retry import next_attempt_at
from .sales import Run, Sales
from .sources import Interpretation, interpret_body, load_sources, screen
from .workermetrics import record_retry

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        crm: CRM | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.kits = load_sources(settings)
        self.crm = crm or build_crm(settings)
        self.notifier = notifier or build_notifier(settings)
        self.sales = Sales(settings, ledger, self.crm, self.notifier)

    def process(self, delivery: Delivery, owner: str) -> str:
        """Run one claimed delivery as far as it can go; returns its outcome."""
        try:
            return self._process(delivery, owner)
        except LeaseLostError:
            log.warning("delivery %s: lease lost, leaving it to the worker that took it", delivery.id)
            return "lease_lost"

    def _process(self, delivery: Delivery, owner: str) -> str:
        ledger = self.ledger
        kit = self.kits.get(delivery.source)
        if kit is None:
            ledger.finish(delivery.id, owner, Status.DEAD, f"source {delivery.source!r} is no longer configured", "map")
            return Status.DEAD
        try:
            seen = interpret_body(kit, delivery.body, delivery.content_type, self.settings.lead.default_region)
        except IntakeError as exc:
            # The body was accepted once, so this is a config change (e.g. a form's mapping removed): replayable.
            ledger.finish(delivery.id, owner, Status.DEAD, f"cannot be mapped: {exc}", "map")
            return Status.DEAD
        verdict = screen(seen)
        if verdict and verdict[0] != Status.TEST:
            return self._end_early(delivery, owner, *verdict)
        # The person's lock, the attempt and what the delivery says: one transaction, not five
        # (nothing outside is touched in between; each commit costs the worker CPU and an fsync).
        attempt = ledger.atomically(lambda: self._begin(delivery, owner, seen))
        if attempt is None:
            delay = self.settings.worker.person_busy_delay_seconds
            ledger.defer(delivery.id, owner, time.time() + delay, "another delivery of this person is in progress")
            return "deferred"
        # A test lead is still counted and recorded; it may go to the source's test channel.
        test = verdict is not None
        step = "notify" if test else "contact"
        run = Run(delivery, owner, seen, {}, lease_until=delivery.lease_until or 0.0)
        try:
            run.done = ledger.steps(delivery.id)
            if test:
                self._notify_test(run, kit.spec.test_channel)
            else:
                contact = self.sales.deliver(run)
        except LeaseLostError:
            raise
        except DeliveryError as exc:
            self._settle(run)
            return self._failed(delivery, owner, attempt, exc.step or step, exc)
        except Exception as exc:  # a bug or an untranslated vendor error: keep the lead, retry later
            # Where, not what: an exception's message can quote lead data, which never goes in logs.
            log.error("delivery %s: unexpected %s at %s", delivery.id, type(exc).__name__, where(exc))
            self._settle(run)
            return self._failed(delivery, owner, attempt, step, RetriableError(f"unexpected {type(exc).__name__}"))
        if verdict is not None:  # only a test lead gets this far with a verdict
            ledger.finish(delivery.id, owner, Status.TEST, verdict[1], "finish")
            return Status.TEST
        # The last step's checkpoint and the finish: one commit.
        self.sales.settle(run, then=lambda: ledger.finish(delivery.id, owner, Status.DELIVERED, None, "finish"))
        log.info("delivery %s delivered (contact %s)", delivery.id, contact.contact_id)
        return Status.DELIVERED

    def _begin(self, delivery: Delivery, owner: str, seen: Interpretation) -> int | None:
        """Take the person, count the attempt and record what the delivery says, before any side
        effect; None (the person's keys recorded, nothing else) while the person is busy."""
        ledger, lead = self.ledger, seen.lead
        if not ledger.lock_person(delivery.id, owner, lead.person_keys()):
            return None
        attempt = ledger.begin_attempt(delivery.id, owner)
        ledger.record_step(delivery.id, owner, "map", {"lead": lead.model_dump(mode="json", exclude_defaults=True)})
        if lead.consent and attempt == 1:
            # Consent evidence goes in the append-only log, where an audit can find it.
            ledger.note(delivery.id, "consent", "recorded", json.dumps(lead.consent, sort_keys=True))
        problems = seen.result.problems
        ledger.record_step(delivery.id, owner, "validate", {"ok": True, "problems": problems}, "; ".join(problems))
        return attempt

    def _settle(self, run: Run) -> None:
        """Before a retry is scheduled, what finished before the failure keeps its checkpoint."""
        try:
            self.sales.settle(run)
        except LeaseLostError:
            raise
        except Exception as exc:  # as if the worker had stopped here: the retry finds what was sent
            log.error("delivery %s: checkpoints not written before the retry: %s", run.lead_id, type(exc).__name__)

    def _notify_test(self, run: Run, channel: str | None) -> None:
        """A test lead reaches nobody but the source's test channel, if it has one."""
        if channel and "notify" not in run.done:
            notice = self.notifier.notify(Alert(lead=run.seen.lead, source=run.delivery.source, channel=channel))
            self.ledger.record_step(run.lead_id, run.owner, "notify", {"channel": notice.channel, "ts": notice.ts})

    def _end_early(self, delivery: Delivery, owner: str, outcome: Status, reason: str) -> str:
        """Partial forms, spam and unreachable leads end before any side effect."""
        self.ledger.record_step(delivery.id, owner, "validate", {"ok": False, "problems": [reason]})
        self.ledger.finish(delivery.id, owner, outcome, reason, "validate")
        log.info("delivery %s %s: %s", delivery.id, outcome, reason)
        return outcome

    def _failed(self, delivery: Delivery, owner: str, attempt: int, step: str, exc: DeliveryError) -> str:
        if isinstance(exc, ThrottledError):
            # Our own pacing, not a failure: back in the queue shortly, the attempt given back.
            record_retry(step, "deferred")
            self.ledger.defer(delivery.id, owner, time.time() + (exc.retry_after or 1.0), str(exc), refund_attempt=True)
            return "deferred"
        message = redact(f"{step}: {exc}")
        if isinstance(exc, RetriableError):
            at = next_attempt_at(attempt, time.time(), self.settings.retry, retry_after=exc.retry_after)
            if at is not None:
                record_retry(step, "retry")
                self.ledger.retry_later(delivery.id, owner, at, message, step)
                fields = {"delivery_id": delivery.id, "source": delivery.source, "step": step, "outcome": "retrying"}
                log.warning("delivery %s: %s; retrying", delivery.id, message, extra=fields)
                return Status.RETRYING
            message = f"{message} (gave up after {attempt} attempts)"
        self.ledger.finish(delivery.id, owner, Status.DEAD, message, step)
        fields = {"delivery_id": delivery.id, "source": delivery.source, "step": step, "outcome": "dead"}
        log.error("delivery %s dead: %s", delivery.id, message, extra=fields)
        return Status.DEAD
