"""Speed to lead: a lead nobody touched in time is pinged to its owner, then escalated.

Per score segment (``sla:``), counted from when the lead arrived. At each deadline HubSpot
is read, not the webhooks: the lead's task (``hs_task_status`` COMPLETED ends it) and the
contact's ``notes_last_contacted`` ("Last Contacted", which HubSpot sets when a call, email
or meeting is logged; a time after the lead arrived means the rep got to it). Untouched:

1. ``owner_after``: the owner gets a Slack DM.
2. ``escalate_after``: the routed channel (or a ``#channel``, or a manager's DM) is told, and
   with ``reassign: true`` the lead goes to the next member of its routing pool (the same
   round robin as routing, its turn recorded with the checkpoint in one transaction);
   contact, deal and task get the new owner in HubSpot, the reason goes in the event log.

The row, its claim and its checkpoints are bridge/followups.py's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .config import Settings, SlaRule
from .merge import OWNER
from .ports import CRM, Notifier
from .routing import next_in_pool
from .sales import CrmOwners, ResolvedOwners
from .text import escape_mrkdwn

if TYPE_CHECKING:
    from .followups import FollowUp, FollowUps

LAST_CONTACTED = "notes_last_contacted"


def check_sla(chore: FollowUps, item: FollowUp, now: float) -> None:
    """The row's current deadline: cancelled if the lead was touched, else the ping it is due."""
    store, data = chore.store, item.data
    rule = chore.settings.sla.get(str(data["segment"]))
    if rule is None:
        store.finish(item, "cancelled", f"no sla rule for segment {data['segment']} any more", now)
        return
    why = touched(chore, data)
    if why is not None:
        store.finish(item, "cancelled", why, now)
        return
    if item.phase == "owner":
        _ping_owner(chore, item, now)
        data["owner_pinged_at"] = now
        waited = f"untouched {span_text(rule.owner_after)} after it arrived"
        if rule.escalate_after is None:
            store.finish(item, "done", f"{waited}: owner pinged (no escalation configured)", now, event="owner_pinged")
        else:
            due = float(data["received_at"]) + rule.escalate_after
            store.advance(item, "escalate", due, now, ("owner_pinged", f"{waited}: owner pinged"))
        return
    _escalate(chore, item, rule, now)


def touched(chore: FollowUps, data: dict[str, Any]) -> str | None:
    """Why the lead needs no ping (task completed, an activity logged, records gone), or None."""
    task_id = data.get("task_id")
    if task_id:
        task = chore.crm.read_record("tasks", str(task_id), ["hs_task_status"])
        if task is None:
            return f"task {task_id} was deleted in HubSpot"
        if task.get("hs_task_status", "").upper() == "COMPLETED":
            return f"task {task_id} was completed in HubSpot"
    contact = chore.crm.read_record("contacts", str(data["contact_id"]), [LAST_CONTACTED])
    if contact is None:
        return f"contact {data['contact_id']} is gone from HubSpot"
    last = hubspot_time(contact.get(LAST_CONTACTED))
    if last is not None and last > float(data["received_at"]):
        stamp = datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return f"a call, email or meeting was logged on the contact ({LAST_CONTACTED} {stamp})"
    return None


def hubspot_time(value: str | None) -> float | None:
    """A HubSpot datetime property (ISO 8601, or epoch milliseconds) as epoch seconds."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text) / 1000
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _ping_owner(chore: FollowUps, item: FollowUp, now: float) -> None:
    data = item.data
    user = slack_user(chore.settings, chore.crm, chore.notifier, data.get("owner_name"), data.get("owner_id"))
    if user is None:
        chore.ledger.note(item.delivery_id, "sla", "not_pinged", "the owner has no Slack user to DM", now=now)
        return
    waited = span_text(chore.settings.sla[str(data["segment"])].owner_after)
    text = (
        f"⏰ Speed to lead: your {escape_mrkdwn(str(data['segment']))} lead has waited {waited} with its task open "
        f"and no call, email or meeting logged. {_contact_link(data)}"
    )
    chore.store.once(item, "owner_dm", lambda: notice(chore.notifier.direct_message(user, text)), now)


def _escalate(chore: FollowUps, item: FollowUp, rule: SlaRule, now: float) -> None:
    data = item.data
    previous = _owner_label(chore, data.get("owner_name"), data.get("owner_id"))
    reassigned = _reassign(chore, item, now) if rule.reassign else None
    waited = span_text(rule.escalate_after or 0)
    tail = f" Reassigned to {_owner_label(chore, reassigned[0], reassigned[1])}." if reassigned else ""
    text = (
        f"⏰ Speed to lead: a {escape_mrkdwn(str(data['segment']))} lead owned by {previous} has waited {waited} "
        f"with no call, email or meeting logged.{tail} {_contact_link(data)}"
    )
    target, channel = rule.escalate_to, str(data["channel"])
    if target.startswith("#"):
        channel = target
    elif "@" in target:
        manager = chore.notifier.user_id_for_email(target)
        if manager is not None:
            chore.store.once(item, "escalation", lambda: notice(chore.notifier.direct_message(manager, text)), now)
            return _escalated(chore, item, "the manager (DM)", reassigned, waited, now)
        chore.ledger.note(item.delivery_id, "sla", "no_manager", "the manager has no Slack user: the channel is told", now=now)
    chore.store.once(item, "escalation", lambda: notice(chore.notifier.post_reminder(channel, text)), now)
    _escalated(chore, item, f"channel {channel}", reassigned, waited, now)


def _escalated(
    chore: FollowUps, item: FollowUp, where: str, reassigned: tuple[str | None, str | None] | None, waited: str, now: float
) -> None:
    item.data["escalated_at"] = now
    extra = f"; reassigned to {reassigned[0] or reassigned[1]}" if reassigned else ""
    chore.store.finish(item, "done", f"untouched {waited} after it arrived: escalated to {where}{extra}", now, event="escalated")


def _reassign(chore: FollowUps, item: FollowUp, now: float) -> tuple[str | None, str | None] | None:
    """The next pool member takes the lead: the turn and its checkpoint commit together, then HubSpot."""
    data, settings = item.data, chore.settings
    turn = item.steps.get("reassign")
    if turn is None:
        pool = data.get("pool")
        if not pool or pool not in settings.routing.pools:
            chore.ledger.note(item.delivery_id, "sla", "not_reassigned", "the lead was routed to an owner, not a pool", now=now)
            return None
        members = [settings.routing.owners[m] for m in settings.routing.pools[pool].members]
        owners = ResolvedOwners(CrmOwners(chore.crm), members, None)  # HubSpot asked before the lock
        at = datetime.fromtimestamp(now, UTC)
        with chore.ledger.exclusive():
            member, owner_id, why = next_in_pool(
                pool, data.get("owner_name"), settings.routing, chore.ledger, owners, at, item.delivery_id
            )
            turn = {"member": member, "owner_id": owner_id, "why": why, "from": data.get("owner_name") or data.get("owner_id")}
            item.steps["reassign"] = turn
            outcome = "reassigned" if member else "not_reassigned"
            chore.store.save(
                item, now, (outcome, f"untouched at the escalation deadline: from {turn['from']} to {member or 'nobody'}: {why}")
            )
    if not turn.get("member"):
        return None
    _write_owner(chore, item, str(turn["owner_id"]), now)
    data["reassigned"] = f"{turn['from']} → {turn['member']}"
    return str(turn["member"]), str(turn["owner_id"])


def _write_owner(chore: FollowUps, item: FollowUp, owner_id: str, now: float) -> None:
    """The new owner on contact, deal and task (each PATCH safe to repeat), and in the ledger's memory."""
    data = item.data
    if item.steps.get("owner_written"):
        return
    records = [("contacts", data.get("contact_id")), (data.get("deal_type"), data.get("deal_id")), ("tasks", data.get("task_id"))]
    for object_type, record_id in records:
        if object_type and record_id:
            chore.crm.update_record(str(object_type), str(record_id), {OWNER: owner_id})
    memory = chore.ledger.contact_memory(str(data["contact_id"]))
    if memory is not None:
        chore.ledger.remember_contact_state(str(data["contact_id"]), {**memory, OWNER: owner_id}, now=now)
    item.steps["owner_written"] = {"owner_id": owner_id, "at": now}
    chore.store.save(item, now)


def _owner_label(chore: FollowUps, name: str | None, owner_id: str | None) -> str:
    """A mention of the owner where Slack knows them, else their configured name."""
    user = slack_user(chore.settings, chore.crm, chore.notifier, name, owner_id) if (name or owner_id) else None
    if user:
        return f"<@{user}>"
    return escape_mrkdwn(name or (f"HubSpot owner {owner_id}" if owner_id else "nobody (triage)"))


def _contact_link(data: dict[str, Any]) -> str:
    url = data.get("contact_url")
    return f"<{url}|Open the contact in HubSpot>" if url else f"HubSpot contact {data.get('contact_id')}"


def slack_user(settings: Settings, crm: CRM, notifier: Notifier, owner_name: str | None, owner_id: str | None) -> str | None:
    """The chat user of a CRM owner: the configured ``slack`` id, else by the owner's email."""
    spec = settings.routing.owners.get(owner_name or "")
    if spec is None and owner_id:
        spec = next((s for s in settings.routing.owners.values() if s.id == owner_id), None)
    if spec is not None and spec.slack:
        return spec.slack
    email = spec.email if spec is not None and spec.email else (crm.owner_email(owner_id) if owner_id else None)
    return notifier.user_id_for_email(email) if email else None


def notice(sent: Any) -> dict[str, Any]:
    return {"channel": sent.channel, "ts": sent.ts}


def span_text(seconds: float) -> str:
    """1800 -> "30m", 259200 -> "3d", 5400 -> "1h30m": as the config writes durations."""
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n) or "0m"
