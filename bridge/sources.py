"""Configured sources: each one's connector and mappings, and what a delivery says.

``interpret`` is pure (no I/O): it is what the worker runs before any side effect, what
intake runs to learn who a delivery is about, and what ``leadbridge try`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings, SourceSettings, source_path
from .errors import ConfigError, PayloadError
from .lead import Lead, LeadResult, build_lead, looks_like_test
from .ledger import Status
from .mapping import Mapping, load_mapping
from .ports import Kind, Source, build_source


@dataclass(frozen=True)
class SourceKit:
    """A configured source: its settings, its connector and its mappings by form key."""

    spec: SourceSettings
    source: Source
    mappings: dict[str | None, Mapping]

    @property
    def name(self) -> str:
        return self.spec.name

    def mapping_for(self, form_key: str | None) -> Mapping:
        mapping = self.mappings.get(form_key) or self.mappings.get(None)
        if mapping is None:
            raise PayloadError(f"source {self.name!r} has no mapping for form {form_key!r}")
        return mapping


@dataclass(frozen=True)
class Interpretation:
    kind: Kind
    result: LeadResult
    mapping: Mapping
    # Why this looks like spam (a filled honeypot), or None.
    spam: str | None = None
    flat: dict[str, Any] = field(default_factory=dict)

    @property
    def lead(self) -> Lead:
        return self.result.lead


def load_sources(settings: Settings) -> dict[str, SourceKit]:
    """Build every configured source; ConfigError lists every problem at once."""
    kits, problems = {}, []
    for spec in settings.sources:
        mappings: dict[str | None, Mapping] = {}
        for key, path in spec.mapping_paths().items():
            try:
                mapping = load_mapping(path)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            if mapping.source_type != spec.type:
                problems.append(f"{path.name}: maps {mapping.source_type!r} deliveries but source {spec.name!r} is {spec.type!r}")
            mappings[key] = mapping
        try:
            kits[spec.name] = SourceKit(spec, build_source(spec), mappings)
        except ConfigError as exc:
            problems.extend(f"{source_path(spec.name)}.options: {p}" for p in exc.problems)
    if problems:
        raise ConfigError(problems)
    return kits


def interpret(kit: SourceKit, payload: Any, default_region: str) -> Interpretation:
    """What a parsed delivery says: its kind, spam signals and the normalised lead."""
    source = kit.source
    flat = source.fields(payload)
    mapping = kit.mapping_for(source.form_key(payload))
    spam = next((f"honeypot field {key!r} was filled" for key in kit.spec.honeypot if _filled(flat.get(key))), None)
    result = build_lead(mapping.apply(flat, payload), default_region)
    return Interpretation(source.kind(payload), result, mapping, spam, flat)


def screen(seen: Interpretation) -> tuple[Status, str] | None:
    """Why a delivery must not reach the CRM or a rep (its final state and reason), or None.

    The one screening order, used by the worker and by ``leadbridge try``.
    """
    if seen.kind == "partial":
        return Status.PARTIAL, "partial response: kept, not forwarded"
    if seen.spam:
        return Status.SPAM, seen.spam
    if not seen.result.reachable:
        return Status.REJECTED, "; ".join(seen.result.problems)
    if seen.kind == "test":
        return Status.TEST, "the sender marked it as a test; not sent to the CRM or to reps"
    if why := looks_like_test(seen.lead):
        return Status.TEST, f"looks like test data ({why}); not sent to the CRM or to reps"
    return None


def interpret_body(kit: SourceKit, body: bytes, content_type: str, default_region: str) -> Interpretation:
    return interpret(kit, kit.source.parse(body, content_type), default_region)


def _filled(value: Any) -> bool:
    return value not in (None, "", [], {}) and str(value).strip() != ""
