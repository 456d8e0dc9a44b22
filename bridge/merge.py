"""Merge policies: how a lead's value meets the value a contact already has.

``set_if_empty`` keeps a first-touch value; ``append`` adds a new value once; anything else
overwrites. Pure functions, shared by the HubSpot connector (what to send) and the sales
steps (what the ledger remembers having left in HubSpot, so the next write needs no read).
"""

from __future__ import annotations

from collections.abc import Mapping

OVERWRITE, SET_IF_EMPTY, APPEND = "overwrite", "set_if_empty", "append"
OWNER = "hubspot_owner_id"
# The last touch: the lead fields that say where this visit came from. A submission carrying
# any of them replaces the whole group, so one visit's campaign never sticks to the next.
LAST_TOUCH = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "gclid", "fbclid")
# The first touch: set_if_empty properties named first_*, written once, as a whole group.
FIRST_TOUCH_PREFIX = "first_"


def last_touch_clears(lead: Mapping[str, object], properties: Mapping[str, str]) -> dict[str, str]:
    """Last-touch properties to blank because this visit carries a touch without them.

    ``lead`` maps lead field -> value, ``properties`` lead field -> contact property. A visit
    with no UTM and no click id leaves the last touch alone (nothing to clear).
    """
    if not any(lead.get(field) for field in LAST_TOUCH):
        return {}
    return {properties[f]: "" for f in LAST_TOUCH if properties.get(f) and not lead.get(f)}


def merged(planned: Mapping[str, tuple[str, str]], current: Mapping[str, str]) -> dict[str, str]:
    """The properties to send: ``planned`` maps property -> (value, merge policy).

    First-touch properties (``set_if_empty`` named ``first_*``) go as a group: once any of
    them is set, none is written, so a later visit cannot fill in the campaign the first
    visit lacked and make a first touch that never happened.
    """
    first_touch_kept = any((current.get(prop) or "").strip() for prop, (_, merge) in planned.items() if _first_touch(prop, merge))
    props = {}
    for prop, (value, merge) in planned.items():
        have = (current.get(prop) or "").strip()
        if merge == SET_IF_EMPTY and (have or (first_touch_kept and _first_touch(prop, merge))):
            continue
        if merge == APPEND and have:
            if value in have.split("\n"):
                continue
            value = f"{have}\n{value}"
        props[prop] = value
    return props


def _first_touch(prop: str, merge: str) -> bool:
    return merge == SET_IF_EMPTY and prop.startswith(FIRST_TOUCH_PREFIX)


def careful(planned: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The planned properties whose value depends on what the contact has (not overwrite)."""
    return {prop: plan for prop, plan in planned.items() if plan[1] != OVERWRITE}


def after_write(
    planned: Mapping[str, tuple[str, str]], current: Mapping[str, str], remembered: Mapping[str, str] | None, owner: str | None
) -> dict[str, str]:
    """What a contact holds for its careful properties and owner once this write lands.

    ``current`` is what the write was merged against (the ledger's memory or a read);
    only careful properties and the owner are kept, since overwrite properties need no memory.
    """
    wanted = careful(planned)
    keep = set(wanted) | set(remembered or {}) | {OWNER}
    state = {prop: value for prop, value in current.items() if prop in keep and value}
    state.update(merged(wanted, current))
    if owner:
        state[OWNER] = owner
    return state
