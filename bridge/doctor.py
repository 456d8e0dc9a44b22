"""`leadbridge doctor`: the config checked against the real HubSpot portal and Slack workspace.

`check-config` proves the file is well formed; this proves it will work: every Slack
channel the config names exists and has the bot in it, every owner exists and is active,
the deal pipeline and stage exist (and the stage is open), every contact property
leadbridge writes exists (and the unique ``leadbridge_delivery_id`` on deals and contacts that
keeps a retried create from repeating), and each secret is set. Each problem is one line naming the
setting and the fix. Read access problems (a token without a scope) show up as the
failed check with HubSpot's own explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .config import Settings, source_path
from .errors import DeliveryError
from .norepeat import DELIVERY_ID_PROPERTY
from .ports import CRM, Notifier
from .sources import load_sources


@dataclass(frozen=True)
class Problem:
    setting: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.setting}: {self.problem} — fix: {self.fix}"


def named_channels(settings: Settings) -> dict[str, str]:
    """Every Slack channel the config can post to -> the first setting that names it."""
    found: dict[str, str] = {}
    candidates = [("slack.channel", settings.slack.channel), ("routing.triage.channel", settings.routing.triage.channel)]
    candidates += [(f"routing.rules[{r.name}].channel", r.channel) for r in settings.routing.rules]
    candidates += [(f"scoring.actions.{seg}.channel", a.channel) for seg, a in settings.scoring.actions.items()]
    candidates += [(f"{source_path(s.name)}.test_channel", s.test_channel) for s in settings.sources]
    for setting, channel in candidates:
        if channel:
            found.setdefault(channel, setting)
    return found


def written_properties(settings: Settings) -> dict[str, str]:
    """Contact properties leadbridge writes -> the setting or mapping that makes it write them."""
    props = {p: f"hubspot.properties.{field}" for field, p in settings.hubspot.properties.items() if p}
    props.update({p: f"hubspot.consent_properties.{name}" for name, p in settings.hubspot.consent_properties.items()})
    for kit in load_sources(settings).values():
        for form, mapping in kit.mappings.items():
            where = source_path(kit.name) + (f".forms.{form}" if form else ".mapping")
            props.update({p: f"{where} custom" for p in mapping.custom if p not in props})
    return props


def static_problems(settings: Settings) -> list[Problem]:
    """What `check-config` can tell without calling anyone (beyond validation)."""
    return list(_portal(settings))


def diagnose(settings: Settings, crm: CRM, chat: Notifier, *, create_properties: bool = False) -> list[Problem]:
    """Every problem found, checked live; nothing is written unless ``create_properties``."""
    checks: list[tuple[str, Callable[[], Iterator[Problem]]]] = [
        ("secrets", lambda: _secrets(settings)),
        ("hubspot.portal_id", lambda: _portal(settings)),
        ("slack", lambda: _channels(settings, chat)),
        ("routing.owners", lambda: _owners(settings, crm)),
        ("deals", lambda: _pipeline(settings, crm)),
        ("hubspot.properties", lambda: _properties(settings, crm, create_properties)),
        ("hubspot.properties", lambda: _delivery_ids(crm, create_properties)),
    ]
    problems: list[Problem] = []
    for area, check in checks:
        try:
            problems.extend(check())
        except DeliveryError as exc:
            # One unreachable API (or a token without a scope) must not hide the other checks.
            problems.append(Problem(area, f"could not check: {exc}", "check the token, its scopes and the base_url"))
    return problems


def _secrets(settings: Settings) -> Iterator[Problem]:
    for line in settings.env_problems():
        setting, _, problem = line.partition(": ")
        yield Problem(setting, problem, "set it in the environment of the intake and the worker")


def _portal(settings: Settings) -> Iterator[Problem]:
    if "{portal_id}" in settings.hubspot.contact_url and not settings.hubspot.portal_id:
        yield Problem(
            "hubspot.portal_id",
            "empty, but hubspot.contact_url needs it, so Slack links would be broken",
            "set it to your portal's id (the number in any HubSpot URL)",
        )


def _channels(settings: Settings, chat: Notifier) -> Iterator[Problem]:
    known = chat.channels()
    for channel, setting in named_channels(settings).items():
        key = channel.lstrip("#")
        if key not in known:
            yield Problem(
                setting,
                f"Slack channel {channel} does not exist (or is private without the bot)",
                f"create {channel} in Slack, or correct the name",
            )
        elif not known[key]:
            yield Problem(setting, f"the bot is not a member of {channel}", f"in Slack, /invite the app to {channel}")


def _owners(settings: Settings, crm: CRM) -> Iterator[Problem]:
    for name, spec in settings.routing.owners.items():
        setting = f"routing.owners.{name}"
        owner_id = spec.id or crm.owner_id_for_email(str(spec.email))
        if owner_id is None:
            yield Problem(
                setting,
                f"no HubSpot owner has the email {spec.email}",
                "invite that user in HubSpot (Settings › Users & Teams), or correct the email",
            )
        elif not crm.owner_active(owner_id):
            yield Problem(
                setting,
                f"HubSpot owner {owner_id} does not exist or is deactivated",
                "use the id from the owners API (not a user id), or remove the owner",
            )


def _pipeline(settings: Settings, crm: CRM) -> Iterator[Problem]:
    specs = [("deals", settings.deals)] + [(f"{source_path(s.name)}.deal", s.deal) for s in settings.sources if s.deal]
    for setting, deal in specs:
        if deal is None or deal.object == "none":
            continue
        object_type = "deals" if deal.object == "deal" else "leads"
        stages = crm.pipeline_stages(object_type, deal.pipeline)
        if stages is None:
            yield Problem(
                f"{setting}.pipeline",
                f"no {object_type} pipeline with id {deal.pipeline!r}",
                'use an id from HubSpot\'s pipeline settings (the default pipeline is "default")',
            )
        elif deal.stage not in stages:
            yield Problem(
                f"{setting}.stage", f"pipeline {deal.pipeline!r} has no stage {deal.stage!r}", f"use one of: {', '.join(stages)}"
            )
        elif stages[deal.stage]:
            yield Problem(f"{setting}.stage", f"stage {deal.stage!r} is a closed stage", "new leads belong in an open stage")


def _properties(settings: Settings, crm: CRM, create: bool) -> Iterator[Problem]:
    existing = crm.property_names("contacts")
    for prop, setting in sorted(written_properties(settings).items()):
        if prop in existing:
            continue
        if create:
            crm.create_property("contacts", prop)
            continue
        yield Problem(
            setting,
            f"HubSpot has no contact property {prop!r}",
            "run `leadbridge doctor --create-properties`, or map the field to an existing property",
        )


def _delivery_ids(crm: CRM, create: bool) -> Iterator[Problem]:
    """Deals and phone-only contacts carry the delivery id in a unique property (bridge/norepeat.py):
    without it HubSpot refuses every deal and phone-only contact create."""
    for object_type in ("deals", "contacts"):
        if DELIVERY_ID_PROPERTY in crm.property_names(object_type):
            continue
        if create:
            crm.create_property(object_type, DELIVERY_ID_PROPERTY, unique=True)
            continue
        yield Problem(
            f"hubspot.properties.{DELIVERY_ID_PROPERTY}",
            f"HubSpot has no {object_type[:-1]} property {DELIVERY_ID_PROPERTY!r} (unique values)",
            "run `leadbridge doctor --create-properties`",
        )
