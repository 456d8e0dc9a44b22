"""The sales side of a delivered lead: score, route, contact, alert, deal, task, alert update.

The rep is pinged as soon as the contact exists; the deal and the follow-up task come
after, and the Slack message gains its deal link then (``chat.update``). Every step that
changes something outside (a pool's round-robin count, a HubSpot record, a Slack message)
is checkpointed in the ledger before the next starts, so a retry, a replay or a restarted
worker resumes without a second deal, task or message; a create whose answer was lost is
found, not repeated (bridge/norepeat.py). The ledger also remembers what the
relay left in a contact's first-touch properties and owner, so a returning person's write
needs no read first (README: "How a lead travels" and the call budget). Scoring and routing
are explainable: their reasons are written to HubSpot properties and to the ledger.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import DealSettings, Settings
from .errors import DeliveryError, PermanentError, RetriableError, ThrottledError, UnansweredError
from .ledger import Delivery, Ledger
from .merge import OWNER, after_write, careful, merged
from .norepeat import DELIVERY_ID_PROPERTY, LOOKED_UP_STEPS, find_notice, find_record, marker, not_sent, start_create
from .notes import fit, note_html
from .ports import CRM, Alert, ContactResult, ContactWrite, Link, Notice, Notifier, Snapshot
from .routing import Decision, OwnerSpec, RouteContext, route
from .scoring import Score, ScoreContext, due_at, parse_budget, score_lead
from .sources import Interpretation
from .text import escape_mrkdwn
from .workermetrics import record_step

# HubSpot-defined association type ids (hubspot.md §5).
DEAL_TO_CONTACT, LEAD_TO_PRIMARY_CONTACT = 3, 578
NOTE_TO_CONTACT, NOTE_TO_DEAL, NOTE_TO_LEAD = 202, 214, 855
TASK_TO_CONTACT, TASK_TO_DEAL, TASK_TO_LEAD = 204, 216, 647


class CrmOwners:
    """Routing's owner directory, answered by the CRM (ids as given, emails resolved and cached)."""

    def __init__(self, crm: CRM) -> None:
        self.crm = crm

    def owner_id(self, spec: OwnerSpec) -> str | None:
        if spec.id:
            return spec.id
        return self.crm.owner_id_for_email(spec.email) if spec.email else None

    def is_active(self, owner_id: str) -> bool:
        return self.crm.owner_active(owner_id)


class ResolvedOwners:
    """Routing's owner directory answered from memory.

    Every owner routing could pick (and the contact's current owner) is resolved before the
    ledger's write lock is taken, so no HubSpot call ever runs while intake waits on that lock.
    """

    def __init__(self, directory: CrmOwners, specs: Iterable[OwnerSpec], existing_owner_id: str | None) -> None:
        self.directory = directory
        self._ids = {(spec.id, spec.email): directory.owner_id(spec) for spec in specs}
        wanted = {owner_id for owner_id in self._ids.values() if owner_id}
        if existing_owner_id:
            wanted.add(existing_owner_id)
        self._active = {owner_id: directory.is_active(owner_id) for owner_id in sorted(wanted)}

    def owner_id(self, spec: OwnerSpec) -> str | None:
        key = (spec.id, spec.email)
        return self._ids[key] if key in self._ids else self.directory.owner_id(spec)

    def is_active(self, owner_id: str) -> bool:
        return self._active[owner_id] if owner_id in self._active else self.directory.is_active(owner_id)


@dataclass
class Run:
    """One attempt at one delivery: what is known so far."""

    delivery: Delivery
    owner: str
    seen: Interpretation
    done: dict[str, dict[str, Any]]
    # Set when the first Slack post failed: the CRM records go ahead, the post is retried later.
    slack_failure: RetriableError | None = None
    # Until when this worker holds the lease, as far as it knows (renewed when half is used).
    lease_until: float = 0.0
    # Steps an earlier attempt may have sent without a checkpoint: looked for before sending again.
    unsure: set[str] = field(default_factory=set)
    # Checkpoints that commit with the next write before a side effect (``Sales.settle``).
    pending: list[Callable[[], None]] = field(default_factory=list)

    @property
    def lead_id(self) -> str:
        return self.delivery.id


class Sales:
    def __init__(self, settings: Settings, ledger: Ledger, crm: CRM, notifier: Notifier) -> None:
        self.settings = settings
        self.ledger = ledger
        self.crm = crm
        self.notifier = notifier
        self.owners = CrmOwners(crm)

    def deliver(self, run: Run) -> ContactResult:
        """All side-effect steps for a lead that passed validation; raises DeliveryError naming its step."""
        with self._step(run, "score"):
            score = self.score(run)
        with self._step(run, "route"):
            snapshot = None if "contact" in run.done else self._snapshot(run)
            decision = self.route(run, score, snapshot)
        with self._step(run, "contact"):
            contact = self._contact(run, score, decision, snapshot)
        with self._step(run, "notify"):
            self._alert_first(run, contact, score, decision)
        with self._step(run, "deal"):
            deal_type, deal_id = self._deal(run, contact, decision)
        if self.settings.tasks.enabled:
            with self._step(run, "task"):
                self._task(run, contact, deal_type, deal_id, score, decision)
        else:
            with self._step(run, "note"):
                self._note(run, contact, deal_type, deal_id)
        deal_url = self.crm.record_url(deal_type, deal_id) if deal_type and deal_id else None
        with self._step(run, "notify_update" if "notify" in run.done else "notify"):
            self._alert_last(run, contact, deal_url, score, decision)
        return contact

    @contextmanager
    def _step(self, run: Run, name: str) -> Iterator[None]:
        """Keep the lease (each step may take a few calls), and name the step that failed."""
        fresh = name not in run.done  # a checkpointed step returns its saved result at once
        lease = self.settings.worker.lease_seconds
        if fresh and name in LOOKED_UP_STEPS:
            # The create's intent rides in the lease renewal's transaction, and so does the last
            # step's checkpoint if it waits: no extra commit.
            def intent() -> None:
                if start_create(self.ledger, run.lead_id, run.owner, name, lease):
                    run.unsure.add(name)

            self.settle(run, then=intent)
            run.lease_until = time.time() + lease
        else:
            self.settle(run)
            if fresh:
                self._keep_lease(run)
        started, outcome = time.monotonic(), "error"
        try:
            yield
            outcome = "ok"
        except DeliveryError as exc:
            exc.step = exc.step or name
            outcome = "failed"
            if fresh:
                self._answered(run, name, exc)
            raise
        finally:
            if fresh:
                record_step(name, outcome, time.monotonic() - started)

    def settle(self, run: Run, then: Callable[[], None] | None = None) -> None:
        """Commit the checkpoints that wait (and ``then``, a last ledger write) in one transaction.

        A step whose next step begins with a write of its own (a create's intent, the finish)
        leaves its checkpoint to that write: nothing outside is touched in between, so the
        checkpoint is still on disk before the next side effect, for one commit instead of two.
        """
        writes, run.pending = run.pending, []
        if not writes and then is None:
            return

        def commit() -> None:
            for write in writes:
                write()
            if then is not None:
                then()

        try:
            self.ledger.atomically(commit)
        except BaseException:
            run.pending = writes + run.pending  # not committed: still waiting
            raise

    def _keep_lease(self, run: Run) -> None:
        """Renew once half the lease is used: until then nobody else can take the delivery (only
        an expired lease is taken over), and each checkpoint checks the lease as it is written."""
        lease = self.settings.worker.lease_seconds
        now = time.time()
        if now > run.lease_until - lease / 2:
            self.ledger.renew(run.lead_id, run.owner, lease, now)
            run.lease_until = now + lease

    # -- score and route ----------------------------------------------------------

    def score(self, run: Run) -> Score:
        previous = self.ledger.previous_delivery_at(run.lead_id)
        context = ScoreContext(
            previous_delivery_at=datetime.fromtimestamp(previous, UTC) if previous else None,
            now=datetime.fromtimestamp(run.delivery.received_at, UTC),
        )
        score = score_lead(run.seen.lead, self.settings.scoring, context)
        if "score" not in run.done:
            result = score.as_record() | {"summary": score.summary()}
            self.ledger.record_step(run.lead_id, run.owner, "score", result, score.summary())
        return score

    def route(self, run: Run, score: Score, snapshot: Snapshot | None) -> Decision:
        if "route" in run.done:
            return Decision(**run.done["route"])
        existing = (snapshot.properties.get("hubspot_owner_id") or None) if snapshot else None
        context = RouteContext(
            lead=run.seen.lead,
            source=run.delivery.source,
            segment=score.segment,
            existing_owner_id=existing,
            now=datetime.now(UTC),
            delivery_id=run.lead_id,
        )
        owners = ResolvedOwners(self.owners, self.settings.routing.owners.values(), existing)

        def take_turn() -> Decision:
            # The turn and its checkpoint commit together: a retry never takes a second turn.
            decision = route(context, self.settings.routing, self.ledger, owners)
            self.ledger.record_step(run.lead_id, run.owner, "route", decision.__dict__, decision.reason)
            return decision

        return self.ledger.atomically(take_turn)

    # -- CRM records --------------------------------------------------------------

    def _write(self, run: Run, extra: dict[str, str] | None = None, current: Snapshot | None = None) -> ContactWrite:
        lead = run.seen.lead
        known = self.ledger.contact_for(lead.identity_key) if lead.identity_key else None
        merge = {name: str(policy) for name, policy in run.seen.mapping.merge_policies().items()}
        return ContactWrite(run.lead_id, lead, known, merge, current, extra or {})

    def _snapshot(self, run: Run) -> Snapshot:
        """What the contact holds that this write depends on (first touch, append, owner), at the least cost.

        A contact the ledger remembers: its memory, no call. A person the ledger has never seen,
        with an email: nothing, written as new (``hubspot.read_unknown_contacts`` reads first).
        Otherwise one batch read by id or email, or a phone search.
        """
        write = self._write(run)
        return self._known(write) or self.crm.lookup_contact(write, [*careful(self.crm.planned(write)), OWNER])

    def _known(self, write: ContactWrite) -> Snapshot | None:
        """The snapshot the ledger can answer without a call, or None when the CRM must be read."""
        if write.known_contact_id:
            memory = self.ledger.contact_memory(write.known_contact_id)
            return Snapshot(write.known_contact_id, memory) if memory is not None else None
        if write.lead.email and not self.settings.hubspot.read_unknown_contacts:
            return Snapshot(None)
        return None

    def _contact(self, run: Run, score: Score, decision: Decision, snapshot: Snapshot | None) -> ContactResult:
        if "contact" in run.done:
            return ContactResult(**run.done["contact"])
        write = self._write(run, _extra(score, decision), snapshot)
        outcome = self.crm.upsert_contacts([write])[run.lead_id]
        if isinstance(outcome, Exception):
            raise outcome
        self._remember(run, write, outcome, decision)
        return outcome

    def _remember(self, run: Run, write: ContactWrite, outcome: ContactResult, decision: Decision) -> None:
        """The person's ids, what the write left in HubSpot and the step's checkpoint, in one transaction."""
        current, planned = write.current or Snapshot(None), self.crm.planned(write)
        if current.contact_id in (None, outcome.contact_id):
            memory = self.ledger.contact_memory(outcome.contact_id) if current.contact_id else None
            state = after_write(planned, current.properties, memory, decision.owner_id)
        else:
            # The known contact was gone (deleted or merged away) and another one was written:
            # it holds only what this write sent, so skipped first-touch values are sent next time.
            state = merged(careful(planned), current.properties)
            state.update({OWNER: decision.owner_id} if decision.owner_id else {})
        verb = "created" if outcome.created else "updated"

        def remember() -> None:
            if outcome.merged_from:  # merged in HubSpot: its ids and deals now belong to the survivor
                self.ledger.merge_contact_ids([outcome.merged_from], outcome.contact_id)
            self.ledger.remember_contact(run.seen.lead.person_keys(), outcome.contact_id)
            self.ledger.remember_contact_state(outcome.contact_id, state)
            result = {k: v for k, v in outcome.__dict__.items() if v is not None}  # merged_from only after a merge
            self.ledger.record_step(run.lead_id, run.owner, "contact", result, f"{verb} contact {outcome.contact_id}")

        # Committed with the Slack post's intent, before the post (see ``settle``).
        run.pending.append(remember)

    def _include_meta(self, run: Run) -> bool:
        spec = self.settings.source(run.delivery.source)
        return bool(spec and spec.note.include_meta)

    def deal_settings(self, source: str) -> DealSettings:
        spec = self.settings.source(source)
        return (spec.deal if spec and spec.deal else None) or self.settings.deals

    def _deal(self, run: Run, contact: ContactResult, decision: Decision) -> tuple[str | None, str | None]:
        """The open deal (or HubSpot lead) this inquiry belongs to: the one leadbridge made, else a new one."""
        cfg = self.deal_settings(run.delivery.source)
        if cfg.object == "none":
            return None, None
        object_type = "deals" if cfg.object == "deal" else "leads"
        if "deal" in run.done:
            return object_type, run.done["deal"]["record_id"]
        found = self.ledger.open_deal(contact.contact_id, object_type)
        record_id = found or self._create_deal(run, contact, decision, cfg, object_type)
        created = found is None
        verb = "created" if created else "reused open"
        result = {"object_type": object_type, "record_id": record_id, "created": created}

        def checkpoint() -> None:
            # The person's open deal and the step's checkpoint in one commit.
            if created:
                self.ledger.remember_deal(contact.contact_id, object_type, record_id, run.lead_id)
            self.ledger.record_step(run.lead_id, run.owner, "deal", result, f"{verb} {object_type[:-1]} {record_id}")

        # Committed with the task's (or note's) intent, before it is created (see ``settle``).
        run.pending.append(checkpoint)
        return object_type, record_id

    def _create_deal(self, run: Run, contact: ContactResult, decision: Decision, cfg: DealSettings, object_type: str) -> str:
        lead = run.seen.lead
        name = render(cfg.name_template, lead_values(run.seen)) or f"Inquiry from {lead.name}"
        owner = {"hubspot_owner_id": decision.owner_id} if decision.owner_id else {}
        if object_type == "leads":
            props = {"hs_lead_name": name, **owner}
            return self.crm.create_record("leads", props, [Link("contacts", contact.contact_id, LEAD_TO_PRIMARY_CONTACT)])
        # Unique in HubSpot: a create sent again after a lost answer meets a 409 naming this deal.
        props = {"dealname": name, "pipeline": cfg.pipeline, "dealstage": cfg.stage, DELIVERY_ID_PROPERTY: run.lead_id, **owner}
        amount = parse_budget(str(lead_values(run.seen).get(cfg.amount_field, "")))
        if amount:
            props["amount"] = str(amount)
        return self.crm.create_record("deals", props, [Link("contacts", contact.contact_id, DEAL_TO_CONTACT)])

    def _note(self, run: Run, contact: ContactResult, deal_type: str | None, deal_id: str | None) -> None:
        if "note" in run.done:
            return
        links = [Link("contacts", contact.contact_id, NOTE_TO_CONTACT)]
        if deal_id and deal_type:
            links.append(Link(deal_type, deal_id, NOTE_TO_DEAL if deal_type == "deals" else NOTE_TO_LEAD))
        props = {"hs_timestamp": _millis(run.delivery.received_at), "hs_note_body": note_body(run, self._include_meta(run))}
        note_id = self._made_before(run, "note", contact) or self.crm.create_record("notes", props, links)
        self.ledger.record_step(run.lead_id, run.owner, "note", {"note_id": note_id}, f"note {note_id}")

    def _task(
        self, run: Run, contact: ContactResult, deal_type: str | None, deal_id: str | None, score: Score, decision: Decision
    ) -> None:
        cfg = self.settings.tasks
        if "task" in run.done or not cfg.enabled:
            return
        owner = self.settings.routing.owners.get(decision.owner_name or "")
        # The follow-up clock starts when the lead arrived, not when a retry got here.
        received = datetime.fromtimestamp(run.delivery.received_at, UTC)
        due = due_at(score.action, received, owner.timezone if owner else None)
        links = [Link("contacts", contact.contact_id, TASK_TO_CONTACT)]
        if deal_id and deal_type:
            links.append(Link(deal_type, deal_id, TASK_TO_DEAL if deal_type == "deals" else TASK_TO_LEAD))
        why = f"<p>{html.escape(score.summary())}<br>{html.escape(decision.reason)}</p>"
        # The form's answers ride in the task (one call, not two); a note from an earlier attempt keeps them.
        # Either way the body carries the delivery marker a retry looks for.
        body = why + f"<p>{marker(run.lead_id)}</p>" if "note" in run.done else why + note_body(run, self._include_meta(run))
        props = {
            "hs_task_subject": render(cfg.subject_template, lead_values(run.seen)) or f"Call {run.seen.lead.name}",
            "hs_task_body": fit(body),
            "hs_timestamp": _millis(due.timestamp()),
            "hs_task_priority": score.action.task_priority,
            "hs_task_type": cfg.type,
            "hs_task_status": "NOT_STARTED",
        }
        if decision.owner_id:
            props["hubspot_owner_id"] = decision.owner_id
        task_id = self._made_before(run, "task", contact) or self.crm.create_record("tasks", props, links)
        result = {"task_id": task_id, "due": due.isoformat()}
        self.ledger.record_step(run.lead_id, run.owner, "task", result, f"task {task_id} due {due.isoformat()}")

    def _answered(self, run: Run, step: str, exc: DeliveryError) -> None:
        """A step's create that failed with an answer (a 4xx, a 429, our own pacing) sent nothing:
        its retry needs no lookup. Not so for no answer, nor when an earlier attempt may have sent it."""
        if step in LOOKED_UP_STEPS and step not in run.unsure and not isinstance(exc, UnansweredError):
            not_sent(self.ledger, run.lead_id, step, str(exc))

    def _made_before(self, run: Run, step: str, contact: ContactResult) -> str | None:
        """The note or task an earlier attempt sent without hearing back, found by its marker."""
        return find_record(self.ledger, self.crm, run.lead_id, step, contact.contact_id) if step in run.unsure else None

    # -- Slack --------------------------------------------------------------------

    def _alert_first(self, run: Run, contact: ContactResult, score: Score, decision: Decision) -> None:
        """Ping the rep as soon as the contact exists, with the deal link if the deal is known already.

        Slack does not hold up the CRM records: a paced channel's post waits until after the
        deal and task and then goes out with its link; a failing Slack is retried after them.
        """
        if "notify" in run.done:
            return
        cfg = self.deal_settings(run.delivery.source)
        object_type = {"deal": "deals", "lead": "leads"}.get(cfg.object)
        deal_id = run.done.get("deal", {}).get("record_id") if object_type else None
        if object_type and deal_id is None:
            deal_id = self.ledger.open_deal(contact.contact_id, object_type)
        deal_url = self.crm.record_url(object_type, deal_id) if object_type and deal_id else None
        alert = self._alert(run, contact, deal_url, score, decision)
        if alert is None:
            return  # a digest lead: queued once its deal exists, with that link
        try:
            self._post(run, alert)
        except ThrottledError as exc:
            self._answered(run, "notify", exc)
            return
        except RetriableError as exc:
            self._answered(run, "notify", exc)
            run.slack_failure = exc

    def _alert_last(self, run: Run, contact: ContactResult, deal_url: str | None, score: Score, decision: Decision) -> None:
        """Queue a digest lead, post a message that had to wait, or add the deal link to the one posted."""
        if "notify_update" in run.done:
            return
        alert = self._alert(run, contact, deal_url, score, decision)
        if alert is None:
            if "notify" not in run.done:
                self._queue_digest(run, contact, deal_url, score, decision)
            return
        if "notify" not in run.done:
            if run.slack_failure is not None:
                raise run.slack_failure  # not a second wait on a failing Slack in one attempt
            self._post(run, alert)
            if run.done["notify"].get("deal_url") == deal_url:
                return
            # A message found from an earlier attempt shows what it showed then: give it the link.
        posted = run.done["notify"]
        if not deal_url or posted.get("deal_url") == deal_url or "ts" not in posted:
            return
        try:
            notice = self.notifier.update(Notice(posted["channel"], posted["ts"]), alert)
        except PermanentError as exc:
            # The ping went out; a message deleted or no longer editable only misses its link.
            self.ledger.note(run.lead_id, "notify_update", "skipped", str(exc))
            notice = None
        result = {"channel": posted["channel"], "ts": posted["ts"], "deal_url": deal_url if notice else None}
        detail = f"deal link added to {posted['channel']}" if notice else ""
        # The last step: its checkpoint commits with the delivery's finish (see ``settle``).
        run.done["notify_update"] = result
        run.pending.append(lambda: self.ledger.record_step(run.lead_id, run.owner, "notify_update", result, detail))

    def _alert(self, run: Run, contact: ContactResult, deal_url: str | None, score: Score, decision: Decision) -> Alert | None:
        """The Slack message for this lead as things stand; None for a lead that goes to a digest."""
        lead, action = run.seen.lead, score.action
        channel = decision.channel or action.channel or self.settings.slack.channel
        # Without routing configured every lead is unassigned by design: that is not triage.
        routed = bool(self.settings.routing.rules or self.settings.routing.owners)
        triage = decision.triage and routed
        if action.digest and not triage:
            return None
        if triage:
            channel = self.settings.routing.triage.channel or channel
        mention = self._slack_user(decision) if action.mention_owner and not triage else None
        headline = "Unassigned lead (triage)" if triage else f"{score.segment.upper()} lead ({score.points})"
        details = (score.summary(), f"Routing: {decision.reason}") if routed else (score.summary(),)
        return Alert(
            lead=lead,
            source=run.delivery.source,
            contact=contact,
            channel=channel,
            deal_url=deal_url,
            mention=mention,
            owner_name=decision.owner_name,
            headline=headline,
            details=details,
            delivery_id=run.lead_id,
        )

    def _post(self, run: Run, alert: Alert) -> None:
        found = self._posted_before(run, alert)
        notice = found or self.notifier.notify(alert)
        # What a found message links to is not known: None makes the update add the deal link.
        result = {"channel": notice.channel, "ts": notice.ts, "deal_url": None if found else alert.deal_url}
        self._record(run, "notify", result, f"posted to {notice.channel}")

    def _posted_before(self, run: Run, alert: Alert) -> Notice | None:
        """The message an earlier attempt posted without hearing back, found by its metadata."""
        return find_notice(self.ledger, self.notifier, alert, run.delivery.received_at) if "notify" in run.unsure else None

    def _queue_digest(self, run: Run, contact: ContactResult, deal_url: str | None, score: Score, decision: Decision) -> None:
        channel = decision.channel or score.action.channel or self.settings.slack.channel
        self.ledger.queue_digest(run.lead_id, channel, digest_line(run, contact, deal_url, score))
        self._record(run, "notify", {"digest": channel}, f"queued for the {channel} digest")

    def _record(self, run: Run, step: str, result: dict[str, Any], detail: str) -> None:
        """Checkpoint a step and count it done for the rest of this attempt too."""
        self.ledger.record_step(run.lead_id, run.owner, step, result, detail)
        run.done[step] = result

    def _slack_user(self, decision: Decision) -> str | None:
        spec = self.settings.routing.owners.get(decision.owner_name or "")
        if spec is None:
            return None
        if spec.slack:
            return spec.slack
        return self.notifier.user_id_for_email(spec.email) if spec.email else None


def _extra(score: Score, decision: Decision) -> dict[str, str]:
    """Contact properties the relay decides itself: score, routing reason, owner."""
    extra = {**score.as_properties(), "routing_reason": decision.reason}
    if decision.owner_id:
        extra[OWNER] = decision.owner_id
    return extra


def lead_values(seen: Interpretation) -> dict[str, Any]:
    """A lead's fields and custom properties by name, for templates (empty ones left out)."""
    lead = seen.lead
    values = {k: v for k, v in lead.model_dump(exclude={"custom", "consent"}).items() if v not in (None, "")}
    values.update(lead.custom)
    values["name"] = lead.name
    return values


def render(template: str, values: dict[str, Any]) -> str:
    """Fill a template; placeholders without a value drop out with their separators."""
    text = re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), "")), template)
    text = re.sub(r"\s*([,—–-])\s*(?=[,—–-]|$)", "", text)  # separators left dangling
    return re.sub(r"^\s*[,—–-]\s*", "", text).strip()


def note_body(run: Run, include_meta: bool = False) -> str:
    """The form's answers as the note's HTML (bridge/notes.py)."""
    seen = run.seen
    return note_html(seen.lead, seen.mapping, seen.flat, run.delivery.source, run.lead_id, include_meta)


def digest_line(run: Run, contact: ContactResult, deal_url: str | None, score: Score) -> str:
    """One mrkdwn line; every lead value in it escaped by the one Slack escaper."""
    lead = run.seen.lead
    what = escape_mrkdwn(", ".join(p for p in (lead.service, lead.city) if p) or "no details")
    link = f"<{deal_url}|deal>" if deal_url else f"<{contact.url}|contact>"
    return f"• {escape_mrkdwn(lead.name)} ({what}), score {score.points} · {link}"


def _millis(seconds: float) -> str:
    return str(int(seconds * 1000))
