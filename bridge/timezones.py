"""Time zone names from config and mappings, checked once at load time.

``ZoneInfo`` raises a different error per kind of bad name (unknown, a folder such as
"America", a path, a NUL byte); this turns all of them into one answer.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo


def is_time_zone(name: str) -> bool:
    """True if ``name`` is an IANA time zone this machine knows (e.g. "America/Chicago")."""
    if not name or name != name.strip():
        return False
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError, TypeError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True
