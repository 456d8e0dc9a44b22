"""The per-delivery pipeline: map -> validate -> upsert contact -> notify.

Each side-effect step checkpoints its result in the ledger before the next one starts,
so a retry, a replay or a restarted worker skips what is done and never repeats a
create or a message. Map and validate are pure and run again on every attempt, so a
fixed mapping takes effect on replay.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .errors import ConfigError, DeliveryError, IntakeError, RetriableError
from .lead import LeadResult, build_lead
from .ledger import Delivery, LeaseLostError, Ledger, Status
from .mapping import Mapping, load_mapping
from .ports import CRM, ContactResult, ContactWrite, Notifier, Source, build_crm, build_notifier, build_source
from .retry import next_attempt_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceKit:
    """A configured source: its connector and its mapping."""

    name: str
    source: Source
    mapping: Mapping


def load_sources(settings: Settings) -> dict[str, SourceKit]:
    kits, problems = {}, []
    for spec in settings.sources:
        try:
            mapping = load_mapping(spec.mapping)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if mapping.source_type != spec.type:
            problems.append(
                f"{spec.mapping.name}: maps {mapping.source_type!r} deliveries but source {spec.name!r} is {spec.type!r}"
            )
        kits[spec.name] = SourceKit(spec.name, build_source(spec.type), mapping)
    if problems:
        raise ConfigError(problems)
    return kits


def interpret(kit: SourceKit, body: bytes, content_type: str, default_region: str) -> LeadResult:
    """What a stored delivery says, as a normalised lead (pure: no I/O)."""
    return interpret_payload(kit, kit.source.parse(body, content_type), default_region)


def interpret_payload(kit: SourceKit, payload: Any, default_region: str) -> LeadResult:
    values = kit.mapping.apply(kit.source.fields(payload), payload)
    return build_lead(values, default_region)


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

    def process(self, delivery: Delivery, owner: str) -> str:
        """Run one claimed delivery as far as it can go; returns its outcome."""
        try:
            return self._process(delivery, owner)
        except LeaseLostError:
            log.warning("delivery %s: lease lost, leaving it to the worker that took it", delivery.id)
            return "lease_lost"

    def _process(self, delivery: Delivery, owner: str) -> str:
        ledger, lease = self.ledger, self.settings.worker.lease_seconds
        kit = self.kits.get(delivery.source)
        if kit is None:
            ledger.finish(delivery.id, owner, Status.DEAD, f"source {delivery.source!r} is no longer configured", "map")
            return Status.DEAD
        try:
            result = interpret(kit, delivery.body, delivery.content_type, self.settings.lead.default_region)
        except IntakeError as exc:
            ledger.finish(delivery.id, owner, Status.DEAD, f"stored body no longer parses: {exc}", "map")
            return Status.DEAD
        lead = result.lead
        if not result.reachable:
            ledger.record_step(delivery.id, owner, "validate", {"ok": False, "problems": result.problems})
            ledger.finish(delivery.id, owner, Status.REJECTED, "; ".join(result.problems), "validate")
            log.info("delivery %s rejected: %s", delivery.id, "; ".join(result.problems))
            return Status.REJECTED
        keys = lead.person_keys()
        if not ledger.lock_person(delivery.id, owner, keys):
            delay = self.settings.worker.person_busy_delay_seconds
            ledger.defer(delivery.id, owner, time.time() + delay, "another delivery of this person is in progress")
            return "deferred"
        attempt = ledger.begin_attempt(delivery.id, owner)
        ledger.record_step(delivery.id, owner, "map", {"lead": lead.model_dump(mode="json", exclude_defaults=True)})
        ledger.record_step(delivery.id, owner, "validate", {"ok": True, "problems": result.problems}, "; ".join(result.problems))
        step = "contact"
        try:
            done = ledger.steps(delivery.id)
            contact = ContactResult(**done["contact"]) if "contact" in done else self._contact(delivery, owner, lead, keys)
            step = "notify"
            if "notify" not in done:
                ledger.renew(delivery.id, owner, lease)
                notice = self.notifier.notify(lead, contact, delivery.source)
                ledger.record_step(
                    delivery.id, owner, "notify", {"channel": notice.channel, "ts": notice.ts}, f"posted to {notice.channel}"
                )
        except LeaseLostError:
            raise
        except DeliveryError as exc:
            return self._failed(delivery, owner, attempt, step, exc)
        except Exception as exc:  # a bug or an untranslated vendor error: keep the lead, retry later
            log.exception("delivery %s: unexpected error in %s", delivery.id, step)
            return self._failed(delivery, owner, attempt, step, RetriableError(f"unexpected {type(exc).__name__}"))
        ledger.finish(delivery.id, owner, Status.DELIVERED, None, "finish")
        log.info("delivery %s delivered (contact %s)", delivery.id, contact.contact_id)
        return Status.DELIVERED

    def _contact(self, delivery: Delivery, owner: str, lead: Any, keys: list[str]) -> ContactResult:
        self.ledger.renew(delivery.id, owner, self.settings.worker.lease_seconds)
        known = self.ledger.contact_for(lead.identity_key) if lead.identity_key else None
        write = ContactWrite(delivery.id, lead, known)
        outcome = self.crm.upsert_contacts([write])[delivery.id]
        if isinstance(outcome, DeliveryError):
            raise outcome
        self.ledger.remember_contact(keys, outcome.contact_id)
        verb = "created" if outcome.created else "updated"
        self.ledger.record_step(delivery.id, owner, "contact", outcome.__dict__, f"{verb} contact {outcome.contact_id}")
        return outcome

    def _failed(self, delivery: Delivery, owner: str, attempt: int, step: str, exc: DeliveryError) -> str:
        message = f"{step}: {exc}"
        if isinstance(exc, RetriableError):
            at = next_attempt_at(attempt, time.time(), self.settings.retry, retry_after=exc.retry_after)
            if at is not None:
                self.ledger.retry_later(delivery.id, owner, at, message, step)
                log.warning("delivery %s: %s; retrying", delivery.id, message)
                return Status.RETRYING
            message = f"{message} (gave up after {attempt} attempts)"
        self.ledger.finish(delivery.id, owner, Status.DEAD, message, step)
        log.error("delivery %s dead: %s", delivery.id, message)
        return Status.DEAD
