"""Follow-ups: what happens after the task, kept in the ledger table ``followups``.

Two kinds of row, both run by one chore in the worker loop (``run_due_followups``):

- ``sla``: speed to lead (bridge/sla.py). A delivered lead of a segment with an ``sla:``
  rule gets a row, found by a cheap ledger query; at each deadline HubSpot is read and
  the owner pinged, then the channel or a manager, the lead maybe reassigned.
- ``stage``: a deal the relay knows entered a stage (HubSpot's webhook, through
  ``stage_entered`` in bridge/crm_events.py); ``deals.follow_ups`` rules for that stage give
  the deal's owner a task and a DM if the deal is still there ``after`` later. A later
  stage change cancels it; the stage is read from HubSpot again at the due time.

Exactly once across restarts and workers: a worker claims due rows under a lease in one
short transaction (never holding the write lock across a network call), and checkpoints
every outside action in the row before and after it (``once``). A restarted worker resumes
a row from its checkpoints; an action found "sending" (its worker died mid-call) is not
repeated: a lost reminder is better than two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from .config import FollowUpRule, Settings
from .errors import DeliveryError, RetriableError, ThrottledError
from .ledger import LeaseLostError, Ledger
from .ledger_followups import FollowUp
from .ports import CRM, Link, Notifier
from .sla import check_sla, notice, slack_user, span_text
from .text import escape_mrkdwn

log = logging.getLogger(__name__)
# Rows handled per loop, so one loop of the worker never runs long.
BATCH = 20
# A HubSpot or Slack failure is tried again this much later; a row failing this often ends.
RETRY_SECONDS, MAX_FAILURES = 60.0, 8
TASK_TO_CONTACT, TASK_TO_DEAL = 204, 216  # HubSpot-defined association type ids (hubspot.md §5)


class FollowUpStore:
    """The ``followups`` rows: scheduled, claimed under a lease, checkpointed, finished."""

    def __init__(self, ledger: Ledger, owner: str, lease_seconds: float) -> None:
        self.ledger, self.owner, self.lease_seconds = ledger, owner, lease_seconds

    def schedule_slas(self, settings: Settings, now: float) -> int:
        """A row for every delivered lead of an SLA segment that has none yet; returns how many."""
        longest = max(max(r.owner_after, r.escalate_after or 0) for r in settings.sla.values())
        found = self.ledger.new_sla_leads(now - longest - 86400, sorted(settings.sla))
        if not found:
            return 0  # the usual loop: a read, no write lock
        items = []
        for delivery_id, received, segment in found:
            rule = settings.sla[segment]
            data = sla_data(settings, segment, received, self.ledger.steps(delivery_id))
            data["owner_due"] = received + rule.owner_after
            data["escalate_due"] = received + rule.escalate_after if rule.escalate_after else None
            items.append(FollowUp(f"sla:{delivery_id}", "sla", delivery_id, "owner", data["owner_due"], data))
        self.ledger.add_followups(items, now)
        return len(items)

    def claim(self, now: float, limit: int = BATCH) -> list[FollowUp]:
        """Due rows nobody holds (or whose holder's lease ran out), leased to this worker at once."""
        return self.ledger.claim_followups(self.owner, now, self.lease_seconds, limit)

    def save(self, item: FollowUp, now: float, event: tuple[str, str] | None = None, **columns: Any) -> None:
        """Write the row's data (and columns) if this worker still holds it, with an event in the lead's log."""
        if not self.ledger.save_followup(item, self.owner, now, event, columns):
            raise LeaseLostError(f"follow-up {item.id} is no longer held by this worker")

    def advance(self, item: FollowUp, phase: str, due_at: float, now: float, event: tuple[str, str] | None = None) -> None:
        """On to the row's next deadline; the lease is given up so any worker can take it then."""
        item.phase, item.due_at = phase, due_at
        self.save(item, now, event, phase=phase, due_at=due_at, lease_owner=None, lease_until=None)

    def finish(self, item: FollowUp, state: str, reason: str, now: float, event: str | None = None) -> None:
        item.data[f"{state}_at"] = now
        self.save(item, now, (event or state, reason), state=state, reason=reason, lease_owner=None, lease_until=None)

    def release(self, item: FollowUp, due_at: float, error: str, now: float) -> None:
        """Not now (HubSpot or Slack failed): the same deadline again at ``due_at``."""
        item.data["last_error"] = error
        self.save(item, now, due_at=due_at, lease_owner=None, lease_until=None)

    def drop(self, item: FollowUp) -> None:
        self.ledger.drop_followup(item.id, self.owner)

    def once(self, item: FollowUp, step: str, action: Callable[[], dict[str, Any]], now: float) -> dict[str, Any] | None:
        """Run an outside action at most once for this row, checkpointed before and after.

        Returns its recorded result, or None when a worker died while it was being sent (its
        outcome unknown, so it is not sent again). A failure (an exception) leaves no mark.
        """
        recorded = item.steps.get(step)
        if recorded is not None and recorded.get("state") == "sending":
            item.steps[step] = {"state": "unknown", "at": recorded.get("at")}
            self.save(item, now, (f"{step}_unknown", "its worker stopped while sending it: not sent again"))
            return None
        if recorded is not None:
            return None if recorded.get("state") == "unknown" else dict(recorded)
        item.steps[step] = {"state": "sending", "at": now}
        self.save(item, now)
        try:
            result = action()
        except Exception:  # known not sent; a process dying here leaves "sending" for the next worker to see
            item.steps.pop(step, None)
            self.save(item, now)
            raise
        item.steps[step] = {**result, "state": "done", "at": now}
        self.save(item, now)
        return dict(item.steps[step])


def sla_data(settings: Settings, segment: str, received: float, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a speed-to-lead check needs, from the delivery's checkpoints (no personal data)."""
    route, notify, deal = steps.get("route", {}), steps.get("notify", {}), steps.get("deal", {})
    action = settings.scoring.actions.get(segment)
    channel = notify.get("channel") or notify.get("digest") or route.get("channel") or (action.channel if action else None)
    contact = steps["contact"]
    return {
        "segment": segment,
        "received_at": received,
        "contact_id": contact.get("contact_id"),
        "contact_url": contact.get("url"),
        "task_id": steps.get("task", {}).get("task_id"),
        "deal_type": deal.get("object_type"),
        "deal_id": deal.get("record_id"),
        "owner_id": route.get("owner_id"),
        "owner_name": route.get("owner_name"),
        "pool": route.get("pool"),
        "channel": channel or settings.slack.channel,
        "steps": {},
    }


def stage_entered(ledger: Ledger, deal_id: str, stage: str, now: float) -> None:
    """A deal the ledger knows moved to ``stage``: its waiting stage reminders for other stages
    are cancelled, and this entry is kept for the chore to match against ``deals.follow_ups``.

    Called from bridge/crm_events.py inside its transaction; a few local writes, no call.
    """
    origin = ledger.deal_origin(deal_id)
    if origin is None:
        return
    delivery_id, contact_id = origin
    entry = None
    if stage:
        data = {"deal_id": deal_id, "contact_id": contact_id, "stage": stage, "entered_at": now, "steps": {}}
        entry = FollowUp(f"stage:{deal_id}:{stage}:{int(now * 1000)}", "stage", delivery_id, "entered", now, data)
    ledger.enter_stage_followup(delivery_id, deal_id, stage, entry, now)


class FollowUps:
    """The chore: schedule new speed-to-lead checks, then run every due follow-up once."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        crm: CRM,
        notifier: Notifier,
        owner: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.ledger, self.crm, self.notifier = settings, ledger, crm, notifier
        self.store = FollowUpStore(ledger, owner, settings.worker.lease_seconds)
        self.clock = clock

    def run(self) -> int:
        """One pass; returns how many due rows were handled."""
        if not self.settings.sla and not self.settings.deals.follow_ups:
            return 0
        now = self.clock()
        if self.settings.sla:
            self.store.schedule_slas(self.settings, now)
        claimed = self.store.claim(now)
        for item in claimed:
            self._one(item, now)
        return len(claimed)

    def _one(self, item: FollowUp, now: float) -> None:
        try:
            if item.kind == "sla":
                check_sla(self, item, now)
            else:
                self._stage(item, now)
        except LeaseLostError:
            log.warning("follow-up %s was taken over by another worker", item.id)
        except Exception as exc:
            self._failed(item, exc, now)

    def _failed(self, item: FollowUp, exc: Exception, now: float) -> None:
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, DeliveryError) else type(exc).__name__
        failures = int(item.data.get("failures", 0)) + 1
        item.data["failures"] = failures
        try:
            if failures >= MAX_FAILURES and not isinstance(exc, RetriableError):
                self.store.finish(item, "cancelled", f"failed {failures} times (last: {detail})", now)
                return
            # A paced channel (our own limit or Slack's 429) is tried as soon as it may; a failure a minute on.
            hint = exc.retry_after if isinstance(exc, RetriableError) and exc.retry_after else 0.0
            wait = hint if isinstance(exc, ThrottledError) else max(RETRY_SECONDS, hint)
            self.store.release(item, now + wait, detail, now)
        except LeaseLostError:
            return
        log.warning("follow-up %s failed (%s); trying again later", item.id, detail)

    # -- stage follow-ups -----------------------------------------------------------

    def _stage(self, item: FollowUp, now: float) -> None:
        stage, deal_id = str(item.data["stage"]), str(item.data["deal_id"])
        rules = sorted((r for r in self.settings.deals.follow_ups if r.stage == stage), key=lambda r: r.after)
        if item.phase == "entered":
            if not rules:
                self.store.drop(item)  # no follow-up for this stage: nothing to keep
                return
            due = float(item.data["entered_at"]) + rules[0].after
            if due > now:
                self.store.advance(item, "rule:0", due, now)
                return
            item.phase = "rule:0"  # due already (the chore was not running): on at once, still held
            self.store.save(item, now, phase=item.phase, due_at=due)
        index = int(item.phase.partition(":")[2])
        if index >= len(rules):
            self.store.finish(item, "cancelled", f"no follow-up rule for stage {stage} any more", now)
            return
        deal = self.crm.read_record("deals", deal_id, ["dealstage", "hubspot_owner_id"])
        if deal is None:
            self.store.finish(item, "cancelled", f"deal {deal_id} is gone from HubSpot", now)
            return
        if deal.get("dealstage") != stage:
            self.store.finish(item, "cancelled", f"deal {deal_id} moved to {deal.get('dealstage') or 'no stage'}", now)
            return
        self._remind(item, rules[index], deal.get("hubspot_owner_id"), index, now)
        if index + 1 < len(rules):
            self.store.advance(item, f"rule:{index + 1}", float(item.data["entered_at"]) + rules[index + 1].after, now)
        else:
            self.store.finish(item, "done", f"deal {deal_id} reminded after {span_text(rules[index].after)} in {stage}", now)

    def _remind(self, item: FollowUp, rule: FollowUpRule, owner_id: str | None, index: int, now: float) -> None:
        deal_id, stage = str(item.data["deal_id"]), str(item.data["stage"])
        waited = span_text(rule.after)
        task = self.store.once(item, f"task{index}", lambda: {"task_id": self._stage_task(item, rule, owner_id, now)}, now)
        if task is not None:
            self.ledger.note(
                item.delivery_id, "stage", "task", f"deal {deal_id} in {stage} for {waited}: task {task['task_id']}", now=now
            )
        user = slack_user(self.settings, self.crm, self.notifier, None, owner_id)
        if user is None:
            self.ledger.note(item.delivery_id, "stage", "not_pinged", f"deal {deal_id}: its owner has no Slack user", now=now)
            return
        url = self.crm.record_url("deals", deal_id)
        what = f"{escape_mrkdwn(rule.task)}: your deal has been in {escape_mrkdwn(stage)} for {waited}."
        text = f"⏰ {what} <{url}|Open the deal in HubSpot>"
        sent = self.store.once(item, f"dm{index}", lambda: notice(self.notifier.direct_message(user, text)), now)
        if sent is not None:
            item.data["reminded_at"] = now
            self.ledger.note(item.delivery_id, "stage", "reminded", f"deal {deal_id}: owner reminded by DM", now=now)

    def _stage_task(self, item: FollowUp, rule: FollowUpRule, owner_id: str | None, now: float) -> str:
        props = {
            "hs_task_subject": rule.task,
            "hs_task_body": f"The deal has been in stage {item.data['stage']} for {span_text(rule.after)}.",
            "hs_timestamp": str(int(now * 1000)),
            "hs_task_status": "NOT_STARTED",
            "hs_task_type": "TODO",
            "hs_task_priority": "MEDIUM",
            **({"hubspot_owner_id": owner_id} if owner_id else {}),
        }
        links = [Link("deals", str(item.data["deal_id"]), TASK_TO_DEAL)]
        if item.data.get("contact_id"):
            links.append(Link("contacts", str(item.data["contact_id"]), TASK_TO_CONTACT))
        return self.crm.create_record("tasks", props, links)


def run_due_followups(settings: Settings, ledger: Ledger, crm: CRM, notifier: Notifier, owner: str) -> int:
    """The worker loop's chore (beside the digests)."""
    return FollowUps(settings, ledger, crm, notifier, owner).run()


# -- `leadbridge show` ---------------------------------------------------------------


def followup_lines(ledger: Ledger, delivery_id: str) -> Iterator[str]:
    """One line per follow-up of this delivery: its state, deadlines and what was done."""
    for row in ledger.followups_of(delivery_id):
        data, state = row["data"], row["state"]
        status = f"waiting ({row['phase']} due {_iso(row['due_at'])})" if state == "waiting" else state
        if row["kind"] == "sla":
            head = f"speed to lead ({data.get('segment')}): {status}"
            parts = [
                ("owner due", _iso(data.get("owner_due"))),
                ("owner pinged at", _iso(data.get("owner_pinged_at"))),
                ("escalate due", _iso(data.get("escalate_due"))),
                ("escalated at", _iso(data.get("escalated_at"))),
                ("reassigned", data.get("reassigned")),
            ]
        else:
            head = f"stage follow-up (deal {data.get('deal_id')} in {data.get('stage')}): {status}"
            parts = [("entered at", _iso(data.get("entered_at"))), ("reminded at", _iso(data.get("reminded_at")))]
        if state == "cancelled":
            parts.append(("cancelled because", row["reason"]))
        elif state == "done":
            parts.append(("done", row["reason"]))
        yield "; ".join([head] + [f"{label} {value}" for label, value in parts if value and value != "-"])


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"
