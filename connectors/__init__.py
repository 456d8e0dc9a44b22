"""Vendor edges: form sources (verify and parse a request), the CRM and the notifier.

Each module implements a small interface defined in ``bridge.ports`` and is imported
lazily by name (see ``bridge.ports.load``), so a relay only loads the vendors it uses.
"""

import hmac
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

# Source type name -> "module:Class"; a new source type is one line here plus its module.
SOURCE_TYPES = {
    "typeform": "connectors.typeform:TypeformSource",
    "wordpress": "connectors.wordpress:WordPressSource",
    "google": "connectors.google:GoogleAdsSource",
}
CRM = "connectors.hubspot:HubSpotCRM"
NOTIFIER = "connectors.slack:SlackNotifier"


def secret_matches(given: str | bytes, expected: Iterable[str | bytes]) -> bool:
    """Constant-time comparison of what a sender sent against each active secret (or signature).

    As bytes: ``hmac.compare_digest`` raises on non-ASCII text, which a forged header can carry.
    """
    sent = given.encode() if isinstance(given, str) else given
    return any(hmac.compare_digest(sent, e.encode() if isinstance(e, str) else e) for e in expected)


def parse_options(model: type[T], options: Mapping[str, Any] | None) -> T:
    """A source's ``options`` validated by its own model; problems name their path."""
    from pydantic import ValidationError

    from bridge.config import validation_problems
    from bridge.errors import ConfigError

    try:
        return model.model_validate(options or {})
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from exc
