"""Daily digests: cold leads ping no one; each channel gets one summary a day.

The worker calls ``send_due_digests`` on every loop. Once the configured local time has
passed, each channel with waiting leads gets at most one digest for that day: the ledger
claims (channel, day) before posting, so restarts and several workers never send it
twice. A post that fails is given back and tried again on a later loop.
"""

from __future__ import annotations

import logging
from datetime import datetime, time
from zoneinfo import ZoneInfo

from .config import DigestSettings
from .errors import DeliveryError
from .ledger import Ledger
from .ports import Notifier

log = logging.getLogger(__name__)


def digest_day(settings: DigestSettings, now: datetime) -> str | None:
    """The local date whose digest is due at ``now``, or None before the digest time."""
    local = now.astimezone(ZoneInfo(settings.timezone))
    hour, minute = (int(part) for part in settings.time.split(":"))
    return local.date().isoformat() if local.time() >= time(hour, minute) else None


def send_due_digests(settings: DigestSettings, ledger: Ledger, notifier: Notifier, now: datetime) -> list[str]:
    """Send every digest that is due; returns the channels that got one."""
    day = digest_day(settings, now)
    if day is None:
        return []
    sent = []
    for channel in ledger.digest_channels_waiting():
        claim = ledger.start_digest(channel, day)
        if claim is None:
            continue  # today's went out already; these leads wait for tomorrow's
        digest_id, lines = claim
        try:
            notice = notifier.post_digest(channel, settings.title, lines)
        except DeliveryError as exc:
            ledger.abandon_digest(digest_id)
            log.warning("digest for %s not sent (%s); will try again", channel, exc)
            continue
        ledger.finish_digest(digest_id, notice.ts)
        log.info("digest for %s sent with %d leads", channel, len(lines))
        sent.append(channel)
    return sent
