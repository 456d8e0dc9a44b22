"""Log redaction: the one place personal data and secrets are taken out of text we keep.

``redact`` rewrites emails, phone-number-like digit runs, bearer and Slack tokens and the
values of configured secrets. ``RedactionFilter`` applies it to every record a handler
emits, our own and third-party alike (urllib3's retry warning carries a contact URL with
the email in its path; email-validator's reasons quote the domain), and ``install`` puts
it on every handler of the root logger from each entry point (CLI, gunicorn, sandbox).
Error messages bound for the ledger's event log go through ``redact`` as well.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

MASK = "[redacted]"

# An address, also when percent-encoded in a URL path (%40 for "@").
EMAIL = re.compile(r"[\w.!#$%&'*+=?^`{|}~-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
# International (+ then 7+ digits, separators allowed) or grouped national numbers (415 555 0187).
# Bare digit runs are left alone: HubSpot record ids and timestamps look just like them.
PHONE = re.compile(r"\+\d(?:[\s().-]{0,2}\d){6,}|\(?\b\d{2,4}\)?[\s.-]{1,2}\d{3,4}[\s.-]\d{4}\b")
# email-validator's reasons quote the address's domain or characters from it.
EMAIL_REASON = re.compile(r"(?<=The domain name )\S+(?= does)|(?<=@-sign)( [^(]*)\([^)]*\)")
TOKEN = re.compile(r"(?i)\b(?:bearer\s+)[\w.~+/=-]+|\bxox[abposr]-[\w-]+|\bpat-[\w-]{8,}")

_secrets: set[str] = set()


def add_secrets(values: Iterable[str | None]) -> None:
    """Values (tokens, signing secrets) to mask wherever they appear; short ones would mask too much."""
    _secrets.update(v for v in values if v and len(v) >= 6)


def redact(text: str) -> str:
    """``text`` with emails, phone numbers, tokens and configured secrets masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = TOKEN.sub(MASK, text)
    text = EMAIL.sub(MASK, text)
    text = EMAIL_REASON.sub(lambda m: (m.group(1) or "") + MASK, text)
    if "%" in text:
        text = EMAIL.sub(MASK, unquote(text))
    return PHONE.sub(MASK, text)


class RedactionFilter(logging.Filter):
    """Rewrites a record's message and traceback in place, so every formatter sees them redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad arguments: logging reports those itself, never us
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set, so the traceback is printed redacted too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._redacted = True
        return True


_FILTER = RedactionFilter()


def install(secrets: Iterable[str | None] = ()) -> None:
    """Redact every log record of this process, from any logger to any handler (idempotent).

    The filter runs where records are made (the record factory), so handlers added later,
    such as werkzeug's and gunicorn's, and third-party loggers are covered without a list;
    it is also put on the handlers that exist now, for records built by a foreign factory.
    """
    add_secrets(secrets)
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_redacting", False):

        def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            _FILTER.filter(record)
            return record

        redacting_factory._redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(redacting_factory)
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    handlers = {h for lg in loggers for h in lg.handlers} | ({logging.lastResort} if logging.lastResort else set())
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def settings_secrets(settings: object) -> list[str]:
    """Every secret value the settings resolve (``Settings.secret_refs``; duck-typed, as the
    config module imports this one)."""
    refs: list[Any] = getattr(settings, "secret_refs", list)()
    return [value for ref in refs if (value := ref.value())]
