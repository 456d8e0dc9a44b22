"""The exceptions leadbridge raises, and what each one tells the caller to do.

    LeadbridgeError
    ├── ConfigError            the config or a mapping is wrong; fix the file
    ├── ExistingFilesError     ``init`` would overwrite these files; pass --force or pick another folder
    ├── IntakeError            a webhook request is refused; carries its HTTP status
    │   ├── UnknownSourceError       404  no such source in config
    │   ├── SignatureError           401  the sender could not be verified
    │   ├── PayloadError             400  the body cannot be read
    │   ├── BodyTooLargeError        413  the body is over the configured limit
    │   ├── SourceNotConfiguredError 503  the source's secret is not set yet; sender should retry
    │   └── LedgerUnavailableError   503  the delivery could not be written; sender should retry
    └── DeliveryError          a pipeline step failed
        ├── RetriableError     try again later (timeouts, 5xx, 429); may carry retry_after
        │   └── UnansweredError    no answer after the request went out: it may have been applied
        └── PermanentError     retrying cannot help (validation, other 4xx); goes to dead

Vendor exceptions are translated into these at the connector boundary with
``raise ... from exc``. Messages never contain tokens or personal data.
"""

from __future__ import annotations

import traceback
from pathlib import Path


class LeadbridgeError(Exception):
    """Base of every error leadbridge raises on purpose."""


class ConfigError(LeadbridgeError):
    """The configuration or a mapping file is invalid; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ExistingFilesError(LeadbridgeError):
    """Files ``leadbridge init`` would overwrite; ``paths`` lists them."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__("would overwrite " + ", ".join(str(p) for p in paths))
        self.paths = paths


class IntakeError(LeadbridgeError):
    """A webhook request is refused; rendered as ``{"ok": false, "error": {...}}``."""

    status = 400
    code = "bad_request"


class UnknownSourceError(IntakeError):
    status = 404
    code = "unknown_source"


class SignatureError(IntakeError):
    status = 401
    code = "bad_signature"


class PayloadError(IntakeError):
    status = 400
    code = "malformed_body"


class BodyTooLargeError(IntakeError):
    status = 413
    code = "body_too_large"


class SourceNotConfiguredError(IntakeError):
    # 503, not 401 or 404: the sender retries later instead of switching the webhook off.
    status = 503
    code = "source_not_configured"


class LedgerUnavailableError(IntakeError):
    status = 503
    code = "ledger_unavailable"


class DeliveryError(LeadbridgeError):
    """A pipeline step failed; ``step`` names it once the pipeline knows."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class RetriableError(DeliveryError):
    """Transient: the delivery is scheduled again, no sooner than ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, step: str | None = None) -> None:
        super().__init__(message, step=step)
        self.retry_after = retry_after


class ThrottledError(RetriableError):
    """Our own client-side limit (e.g. one Slack message per second per channel) says wait."""


class UnansweredError(RetriableError):
    """The request went out and no answer came (a dropped connection, a read timeout, a gateway's
    502/504): the vendor may have applied it, so a retry looks for it before sending it again."""


# HTTP answers that do not say whether the request was applied (an error inside the vendor,
# a gateway or proxy timing out): every connector treats them as no answer (UnansweredError).
UNKNOWN_OUTCOME_STATUSES = frozenset({500, 502, 504, 524})


class PermanentError(DeliveryError):
    """Retrying cannot help: the delivery goes to ``dead`` with this message."""


def where(exc: BaseException, frames: int = 3) -> str:
    """The innermost frames an exception passed through, as file:line, innermost first (never
    its message, which can quote lead data)."""
    seen = traceback.extract_tb(exc.__traceback__)[-frames:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(seen)) or "?"
