"""``logging.format: json``: one JSON object per log line, for log shippers (Loki, CloudWatch, ELK).

Built on python-json-logger. Each line has ``time``, ``level``, ``logger`` and ``message``,
plus ``delivery_id``, ``source``, ``step``, ``outcome`` and ``duration_ms`` when the record
carries them (``log.info(..., extra={"step": "contact"})``); a delivery id named in the
message is lifted into ``delivery_id`` too, so every existing line is searchable by it.
Nothing else a record carries is written (a third-party ``extra`` could hold anything), and
every value goes through ``redact`` as text lines do: the RedactionFilter has already
rewritten the message, and this also covers the traceback, which the JSON formatter renders
again from the exception itself.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .config import LoggingSettings
from .logs import install as install_redaction
from .logs import redact

FIELDS = ("delivery_id", "source", "step", "outcome", "duration_ms")
_BASE = ("time", "level", "logger", "message", "exc_info", "stack_info")
DELIVERY_ID = re.compile(r"\bdlv_[0-9a-f]{20}\b")
# gunicorn's own loggers have their own handlers; their lines should be JSON as well.
_FOREIGN = ("gunicorn.error", "gunicorn.access")


class LeadbridgeJsonFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in log_data.items() if k in _BASE or k in FIELDS}
        if "delivery_id" not in kept:
            found = DELIVERY_ID.search(str(kept.get("message", "")))
            if found:
                kept["delivery_id"] = found.group(0)
        return {k: redact(v) if isinstance(v, str) else v for k, v in kept.items()}


def apply_log_format(settings: LoggingSettings) -> None:
    """Switch this process's log handlers to JSON when configured; text needs nothing."""
    if settings.format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:  # a gunicorn worker: our records had nowhere to go but lastResort
        root.addHandler(logging.StreamHandler())
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
    formatter = LeadbridgeJsonFormatter()
    for logger in (root, *(logging.getLogger(name) for name in _FOREIGN)):
        for handler in logger.handlers:
            handler.setFormatter(formatter)
    install_redaction()  # the new handler gets the filter as well
