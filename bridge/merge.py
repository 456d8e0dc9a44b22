"""Merge policies: how a lead's value meets the value a contact already has.

``set_if_empty`` keeps a first-touch value; ``append`` adds a new value once; anything else
overwrites. Pure functions, shared by the HubSpot connector (what to send) and the sales
steps (what the ledger remembers having left in HubSpot, so the next write needs no read).
"""

from __future__ import annotations

from collections.abc import Mapping

OVERWRITE, SET_IF_EMPTY, APPEND = "overwrite", "set_if_empty", "append"
OWNER = "hubspot_owner_id"


def merged(planned: Mapping[str, tuple[str, str]], current: Mapping[str, str]) -> dict[str, str]:
    """The properties to send: ``planned`` maps property -> (value, merge policy)."""
    props = {}
    for prop, (value, merge) in planned.items():
        have = (current.get(prop) or "").strip()
        if merge == SET_IF_EMPTY and have:
            continue
        if merge == APPEND and have:
            if value in have.split("\n"):
                continue
            value = f"{have}\n{value}"
        props[prop] = value
    return props


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
