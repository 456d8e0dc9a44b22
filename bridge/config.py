"""The one validated config tree, loaded from a YAML file.

Secrets are never written in the file: the file names the environment variable that
holds each one (``*_env`` keys) or a file holding it (``*_file`` keys, for Docker and
Kubernetes secrets), and ``redacted()`` shows only whether it is set. Relative paths
(ledger, mappings, secret files) are resolved against the config file's folder.
The file is ``--config``, else ``$LEADBRIDGE_CONFIG``, else ``./config.yaml``; there is
no silent fallback, so a relay never starts on the example by accident.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .logs import add_secrets, settings_secrets
from .model import Model
from .routing import RoutingSettings
from .scoring import ScoringSettings, parse_duration
from .secrets import file_secret, read_secret, read_secrets, shown
from .timezones import is_time_zone
from .yamlfile import load_yaml

CONFIG_ENV = "LEADBRIDGE_CONFIG"
DEFAULT_CONFIG = "config.yaml"


class RateLimitSettings(Model):
    # Requests per minute before intake answers 429 (never touching the ledger); 0 = no limit.
    # Shared by every intake worker through <ledger>.limits.db.
    per_client_ip: int = Field(120, ge=0)
    per_source: int = Field(1200, ge=0)
    # How many proxies you run in front of the relay: the client is the address that many hops
    # from the right of X-Forwarded-For (werkzeug's ProxyFix); 0 ignores the header entirely.
    trusted_proxies: int = Field(0, ge=0, le=10)
    # Deprecated alias of trusted_proxies: 1 (it used to trust the spoofable leftmost entry).
    trust_forwarded_for: bool = False

    @model_validator(mode="after")
    def _alias_one_hop(self) -> RateLimitSettings:
        if self.trust_forwarded_for and not self.trusted_proxies:
            self.trusted_proxies = 1
        return self


class ServerSettings(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(256 * 1024, gt=0)
    gunicorn_workers: int = Field(2, ge=1)
    # Threads per gunicorn worker (gthread): a slow client holds one thread, not a whole worker.
    threads: int = Field(8, ge=1, le=256)
    # A worker silent this long is restarted; also the grace period on stop.
    timeout_seconds: int = Field(30, ge=1)
    # How long an idle keep-alive connection is held open.
    keepalive_seconds: int = Field(5, ge=0)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    # GET /staging/<source>: an HTML form that posts in the source's wire format. Off in production.
    staging: bool = False


class LedgerSettings(Model):
    path: Path = Path("leadbridge.db")
    busy_timeout_seconds: float = Field(10.0, gt=0)
    # PostgreSQL instead of the SQLite file (README "The ledger on PostgreSQL"), e.g.
    # postgresql://leadbridge@db:5432/leadbridge; its password comes from password_env or password_file.
    url: str = ""
    password_env: str = "LEADBRIDGE_LEDGER_PASSWORD"
    password_file: Path | None = None
    # Connections each process may open (the database's max_connections must cover them all).
    pool_size: int = Field(10, ge=2, le=200)

    @field_validator("url")
    @classmethod
    def _postgresql_without_password(cls, url: str) -> str:
        if url and not re.match(r"postgres(ql)?://", url):
            raise ValueError("ledger.url must start with postgresql:// (leave it out for the SQLite file at ledger.path)")
        if re.match(r"postgres(ql)?://[^/@]*:[^/@]*@", url) or re.search(r"[?&]password=", url):
            raise ValueError("ledger.url must not hold a password: name where it lives in password_env or password_file")
        return url

    def password(self) -> str | None:
        return read_secret(self.password_env, self.password_file)


class LeadSettings(Model):
    default_region: str = Field("US", min_length=2, max_length=2)


DEFAULT_PROPERTIES = {
    "email": "email",
    "phone": "phone",
    # Not a HubSpot default property: map it (and create it: `leadbridge doctor --create-properties`) to keep it.
    "phone_extension": "",
    "first_name": "firstname",
    "last_name": "lastname",
    "company": "company",
    "city": "city",
    "postal_code": "zip",
    "message": "message",
    "service": "service",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "utm_term": "utm_term",
    "utm_content": "utm_content",
    "gclid": "gclid",
    "fbclid": "fbclid",
    "landing_page": "landing_page",
    "referrer": "referrer",
    "state": "state",
    "country": "country",
    "submitted_at": "submitted_at",
}


class CallBudget(Model):
    """HubSpot's burst limit as this relay spends it (hubspot.md §4): Free/Starter 100 per 10 s,
    Professional/Enterprise 190; search 5 per second. 0 turns a limit off."""

    requests: int = Field(100, ge=0)
    per_seconds: float = Field(10.0, gt=0)
    search_requests: int = Field(5, ge=0)
    search_per_seconds: float = Field(1.0, gt=0)
    # How long one call may wait for a slot before its delivery is deferred (its attempt kept).
    max_wait_seconds: float = Field(10.0, ge=0)


class BatchingSettings(Model):
    """Batches across deliveries (bridge/coalesce.py): how long a write may wait for company,
    only while the call budget is tight (at most ``tight_below`` of the window left, for contact
    writes ``contact_tight_below``; 1: always)."""

    contact_wait_seconds: float = Field(0.1, ge=0, le=30)
    record_wait_seconds: float = Field(1.0, ge=0, le=30)
    tight_below: float = Field(0.5, ge=0, le=1)
    # The rep's ping waits on the contact write, so contacts count as tight only later.
    contact_tight_below: float = Field(0.2, ge=0, le=1)
    # Whatever the budget, a record create waits while others keep coming at most this far
    # apart (up to record_wait_seconds): a wave of deliveries shares one call. 0: off.
    gather_gap_seconds: float = Field(0.01, ge=0, le=1)


class PollSettings(Model):
    """The poller for portals that cannot send webhooks (bridge/crm_poll.py): every ``every``
    one worker searches the deals changed since the last poll, less ``overlap`` for search lag."""

    enabled: bool = False
    every: float = Field(300.0, ge=10)
    overlap: float = Field(120.0, ge=0)
    # Search answers at most 200 per page and 10,000 per query (hubspot.md §1).
    page_size: int = Field(200, ge=1, le=200)
    max_pages: int = Field(50, ge=1, le=50)

    @field_validator("every", "overlap", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            span = parse_duration(value)
            if span is None:
                raise ValueError(f'"{value}" is not a duration like "5m", "2h" or "1h30m" (or seconds as a number)')
            return span.total_seconds()
        return value


class HubSpotSettings(Model):
    base_url: str = "https://api.hubapi.com"
    token_env: str = "HUBSPOT_TOKEN"
    # A file holding the token instead (e.g. /run/secrets/hubspot_token); wins over token_env.
    token_file: Path | None = None
    timeout_seconds: float = Field(10.0, gt=0)
    # Bounded in-process retries for transport errors and 5xx; durable retries live in the ledger.
    inprocess_attempts: int = Field(2, ge=1, le=5)
    contact_url: str = "https://app.hubspot.com/contacts/{portal_id}/record/0-1/{contact_id}"
    portal_id: str = ""
    # Canonical lead field -> HubSpot contact property; fields mapped to "" are not written.
    properties: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROPERTIES))
    # Consent evidence name (from a mapping's consent section) -> contact property; unmapped ones stay in the ledger only.
    consent_properties: dict[str, str] = Field(default_factory=dict)
    # Shared by every worker process through the limits file beside the ledger.
    rate_limit: CallBudget = Field(default_factory=CallBudget)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    # Whether an owner is active is asked again after this long; during an outage the last answer stands.
    owner_cache_seconds: float = Field(300.0, ge=0)
    # HubSpot's own webhooks (POST /hubspot/webhooks): the app's client secret, and the URL
    # HubSpot calls exactly as configured there (it is signed; "" = the URL the request arrived at).
    webhook_secret_env: str = "HUBSPOT_CLIENT_SECRET"
    webhook_secret_file: Path | None = None
    webhook_url: str = ""
    # Read a contact the ledger has never written before the first write (one batch read, so a
    # new lead costs 4 calls, not 3): protects first-touch values and the owner of contacts that
    # HubSpot had before leadbridge. Worth it while a portal's existing contacts are still arriving.
    read_unknown_contacts: bool = False
    poll: PollSettings = Field(default_factory=PollSettings)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        # The SDK joins paths onto the host; a trailing slash gives "//crm/..." (hubspot.md §12).
        return value.rstrip("/")

    def token(self) -> str | None:
        return read_secret(self.token_env, self.token_file)

    def webhook_secret(self) -> str | None:
        """The app's client secret that signs HubSpot's own webhooks (README "HubSpot stays the truth")."""
        return read_secret(self.webhook_secret_env, self.webhook_secret_file)


class SlackSettings(Model):
    base_url: str = "https://slack.com/api/"
    token_env: str = "SLACK_BOT_TOKEN"
    # A file holding the token instead (e.g. /run/secrets/slack_bot_token); wins over token_env.
    token_file: Path | None = None
    channel: str = "#leads"
    timeout_seconds: float = Field(10.0, gt=0)
    # Slack allows about one message per second per channel.
    min_seconds_between_posts: float = Field(1.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack_sdk joins method names with urljoin, which drops a last segment without "/".
        return value if value.endswith("/") else value + "/"

    def token(self) -> str | None:
        return read_secret(self.token_env, self.token_file)


class WorkerSettings(Model):
    concurrency: int = Field(100, ge=1, le=500)
    lease_seconds: float = Field(60.0, gt=0)
    poll_seconds: float = Field(0.5, gt=0)
    # Deliveries claimed per poll; sized for HubSpot's 100-input batch endpoints.
    claim_batch: int = Field(100, ge=1, le=100)
    # A delivery whose person is being processed elsewhere waits this long before its next try.
    person_busy_delay_seconds: float = Field(1.0, gt=0)
    # A delivery that takes a worker down this many times (an exception escaping the pipeline,
    # or the worker dying while its lease runs) goes dead with the reason.
    crash_budget: int = Field(3, ge=1)
    # How often a running worker writes its heartbeat to the ledger; /readyz calls the worker
    # dead when none is newer than three of these.
    heartbeat_seconds: float = Field(10.0, gt=0)
    # The worker's own metrics (port calls, per-delivery durations) on server.host:<this>/metrics; 0 = off.
    metrics_port: int = Field(0, ge=0, le=65535)
    # Most worker processes while a backlog drains (bridge/helpers.py): this one and the helpers
    # it starts, one each time it has been full for scale_after_seconds with more due. 1: never.
    processes: int = Field(1, ge=1, le=16)
    scale_after_seconds: float = Field(2.0, gt=0)
    # A helper with nothing to do for this long stops.
    helper_idle_seconds: float = Field(15.0, gt=0)


class RetrySettings(Model):
    schedule_seconds: list[float] = Field(
        default_factory=lambda: [10.0, 30.0, 120.0, 600.0, 1800.0, 7200.0, 21600.0, 43200.0], min_length=1
    )
    jitter: float = Field(0.2, ge=0, le=1)


def _span(value: Any) -> Any:
    """A duration ("15m", "4h", "3d", "1h30m") as seconds; YAML numbers are refused as ambiguous."""
    if isinstance(value, str):
        span = parse_duration(value)
        if span is None or not span:
            raise ValueError(f'"{value}" is not a duration like "15m", "4h", "3d" or "1h30m"')
        return span.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'write the duration with its unit, like "15m" or "72h" (not the bare number {value})')
    return value


Span = Annotated[float, BeforeValidator(_span)]
_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s]+"


class SlaRule(Model):
    """Speed to lead for one score segment (README "Follow-ups")."""

    # The owner is sent a Slack DM when nothing happened on the lead this long after it arrived.
    owner_after: Span
    # Then, this long after it arrived, the escalation: unset means the owner's DM is all.
    escalate_after: Span | None = None
    # "channel" (the channel the lead was announced in), a "#channel", or a manager's email (a DM).
    escalate_to: str = "channel"
    # At the escalation, give the lead to the next member of its routing pool.
    reassign: bool = False

    @field_validator("escalate_to")
    @classmethod
    def _target(cls, value: str) -> str:
        value = value.strip()
        if value != "channel" and not value.startswith("#") and not re.fullmatch(_EMAIL, value):
            raise ValueError(f'"{value}" is not "channel", a "#channel" or a manager\'s email address')
        return value.lower() if "@" in value else value

    @model_validator(mode="after")
    def _order(self) -> SlaRule:
        if self.escalate_after is not None and self.escalate_after <= self.owner_after:
            raise ValueError("escalate_after must be later than owner_after (both count from when the lead arrived)")
        if self.reassign and self.escalate_after is None:
            raise ValueError("reassign happens at the escalation: give escalate_after too")
        return self


class FollowUpRule(Model):
    """A deal left in one stage this long gets a task and a Slack reminder for its owner."""

    stage: str = Field(min_length=1)  # internal stage id, e.g. contractsent
    after: Span
    task: str = Field("Follow up: the deal has not moved", min_length=1)


class DealSettings(Model):
    """What a delivered lead opens in the sales pipeline."""

    # "deal", HubSpot's "lead" object (portals that have it), or "none".
    object: Literal["deal", "lead", "none"] = "deal"
    pipeline: str = "default"
    stage: str = "appointmentscheduled"
    # Placeholders are lead fields ({service}, {last_name}, {city}, {name}...); empty ones drop out.
    name_template: str = "{service} — {last_name}, {city}"
    # A lead field or custom property holding a budget ("$10k-$50k" gives 10000).
    amount_field: str = "budget"
    # Stage ids that close a deal (HubSpot's default pipeline; add your pipelines' closed stages):
    # a deal moved there in HubSpot is not reused, the returning person gets a new one.
    closed_stages: list[str] = Field(default_factory=lambda: ["closedwon", "closedlost"])
    # Reminders for deals left in a stage (README "Follow-ups"), e.g. {stage: contractsent, after: 72h}.
    follow_ups: list[FollowUpRule] = Field(default_factory=list)


class TaskSettings(Model):
    enabled: bool = True
    subject_template: str = "Call {name} — {service}"
    type: Literal["CALL", "EMAIL", "TODO"] = "CALL"


class DigestSettings(Model):
    """When each channel's digest of cold leads goes out (once a day)."""

    time: str = Field("17:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    timezone: str = "UTC"
    title: str = "Leads today, no rush"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        # Checked here, or the worker logs a traceback at every digest tick.
        if not is_time_zone(value):
            raise ValueError(f'unknown time zone "{value}": use an IANA name like "America/Chicago"')
        return value


class NoteSettings(Model):
    # Plugin bookkeeping and the visitor's IP address and user agent in HubSpot too (default: ledger only).
    include_meta: bool = False


class SourceSettings(Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    type: str
    # Environment variables and/or files holding the secret; several allow rotation.
    secret_env: list[str] = Field(default_factory=list)
    secret_file: list[Path] = Field(default_factory=list)
    # The mapping for this source's deliveries, and per-form mappings chosen by the
    # connector's form key (Typeform form_id, Google form_id, Gravity form_id...).
    mapping: Path | None = None
    forms: dict[str, Path] = Field(default_factory=dict)
    # Connector-specific settings, validated by the connector (see its Options model).
    options: dict[str, Any] = Field(default_factory=dict)
    # Flattened keys that humans never fill: a value there means spam (answered 200, not forwarded).
    honeypot: list[str] = Field(default_factory=list)
    # Slack channel for the vendor's test leads (Google "send test data"); unset: record only.
    test_channel: str | None = None
    # Overrides the top-level `deals:` for this source.
    deal: DealSettings | None = None
    # Silence that raises a "source went quiet" alert ("6h", "2d"); unset: learned from the source's history.
    quiet_after: float | None = None
    # What the rep's note shows beyond the answers (README "Notes a rep reads").
    note: NoteSettings = Field(default_factory=NoteSettings)

    @field_validator("quiet_after", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            span = parse_duration(value)
            if span is None:
                raise ValueError(f'"{value}" is not a duration like "6h", "2d" or "1h30m"')
            return span.total_seconds()
        return value

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from connectors import SOURCE_TYPES

        if value not in SOURCE_TYPES:
            raise ValueError(f"unknown source type {value!r}; known: {', '.join(sorted(SOURCE_TYPES))}")
        return value

    @field_validator("secret_env", "secret_file", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_secret(self) -> SourceSettings:
        if not self.secret_env and not self.secret_file:
            raise ValueError("name where its secret lives: secret_env (a variable) or secret_file (a file)")
        return self

    def secrets(self) -> list[str]:
        """The values set among this source's secret variables and files."""
        return read_secrets(self.secret_env, self.secret_file)

    def secret_refs(self) -> str:
        """Where the secret is looked for, for messages (names and paths, never values)."""
        return ", ".join([*self.secret_env, *(str(path) for path in self.secret_file)])

    def mapping_paths(self) -> dict[str | None, Path]:
        """Mapping files by form key; the key None is the source-wide default."""
        paths: dict[str | None, Path] = {key: path for key, path in self.forms.items()}
        if self.mapping is not None:
            paths[None] = self.mapping
        return paths


class RetentionSettings(Model):
    # Finished deliveries older than this lose their raw bodies and person data, once a day
    # in the worker (`leadbridge purge` does it on demand); 0 keeps everything.
    days: float = Field(0, ge=0)


class AlertsSettings(Model):
    """Where an admin hears about trouble (README "Dead-letter alerts")."""

    # Slack channel for ops messages; unset: alerts go to the log only.
    slack_channel: str | None = None
    # More new dead letters than this in one sweep become one summary message, never a storm.
    max_per_sweep: int = Field(5, ge=1, le=50)
    # An incident (with a recovery message later) when the oldest due delivery has waited this long; 0: never.
    backlog_after_seconds: float = Field(900.0, ge=0)


class LoggingSettings(Model):
    # text: for a terminal (the default); json: one object per line for a log shipper (bridge/jsonlog.py).
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class SecretRef:
    """One place the config reads a secret from: what reads it, and its variable or file."""

    reader: str  # "hubspot.token_env", "sources[typeform]"...
    env: str | None = None
    file: Path | None = None  # wins over env, as everywhere
    note: str = ""

    def value(self) -> str | None:
        return read_secret(self.env, self.file)


class Settings(Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    lead: LeadSettings = Field(default_factory=LeadSettings)
    hubspot: HubSpotSettings = Field(default_factory=HubSpotSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    deals: DealSettings = Field(default_factory=DealSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    digest: DigestSettings = Field(default_factory=DigestSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    # Speed-to-lead escalation per score segment (README "Follow-ups").
    sla: dict[str, SlaRule] = Field(default_factory=dict)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    sources: list[SourceSettings] = Field(default_factory=list)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # Set by load_settings: where the file was and a hash of it and its mappings.
    path: Path | None = None
    version: str = "unversioned"

    @model_validator(mode="after")
    def _sla_segments(self) -> Settings:
        unknown = [name for name in self.sla if name not in self.scoring.segments]
        if unknown:
            known = ", ".join(self.scoring.segments)
            raise ValueError(f"sla: {', '.join(map(repr, unknown))} is not a score segment (scoring.segments: {known})")
        return self

    def source(self, name: str) -> SourceSettings | None:
        return next((s for s in self.sources if s.name == name), None)

    def redacted(self) -> dict[str, Any]:
        """The config as plain data, each secret shown only as set or unset."""
        data = self.model_dump(mode="json", exclude={"path"})
        for section, tokens in (("hubspot", self.hubspot), ("slack", self.slack)):
            if tokens.token_file is not None:
                data[section]["token_file"] = shown(tokens.token_file, tokens.token())
            data[section]["token_env"] = shown(tokens.token_env, read_secret(tokens.token_env))
        ledger = self.ledger
        data["ledger"]["password_env"] = shown(ledger.password_env, read_secret(ledger.password_env))
        if ledger.password_file is not None:
            data["ledger"]["password_file"] = shown(ledger.password_file, ledger.password())
        for source, spec in zip(data["sources"], self.sources, strict=True):
            source["secret_env"] = [shown(name, read_secret(name)) for name in spec.secret_env]
            source["secret_file"] = [shown(path, file_secret(path)) for path in spec.secret_file]
        return data

    def secret_refs(self) -> list[SecretRef]:
        """Every secret the config names, one list for log redaction and ``leadbridge init``."""
        hubspot = self.hubspot
        refs = [
            SecretRef("hubspot.token_env", hubspot.token_env, hubspot.token_file),
            SecretRef("slack.token_env", self.slack.token_env, self.slack.token_file),
            SecretRef(
                "hubspot.webhook_secret_env",
                hubspot.webhook_secret_env,
                hubspot.webhook_secret_file,
                "only for HubSpot's webhooks",
            ),
        ]
        ledger = self.ledger
        if ledger.url:
            refs.append(SecretRef("ledger.password_env", ledger.password_env, ledger.password_file, "the PostgreSQL ledger's"))
        for source in self.sources:
            refs += [SecretRef(source_path(source.name), env=name) for name in source.secret_env]
            refs += [SecretRef(source_path(source.name), file=path) for path in source.secret_file]
        return refs

    def missing_tokens(self) -> list[str]:
        """Where the unset HubSpot and Slack tokens were looked for ("environment variable X", "file Y")."""
        unset = [t for t in (self.hubspot, self.slack) if not t.token()]
        return [f"file {t.token_file}" if t.token_file else f"environment variable {t.token_env}" for t in unset]

    def env_problems(self) -> list[str]:
        """Secrets the running relay needs but the environment (or the secret files) do not hold."""
        problems = []
        for section, tokens in (("hubspot", self.hubspot), ("slack", self.slack)):
            if tokens.token():
                continue
            if tokens.token_file is not None:
                problems.append(f"{section}.token_file: file {tokens.token_file} is missing, unreadable or empty")
            else:
                problems.append(f"{section}.token_env: environment variable {tokens.token_env} is not set")
        for source in self.sources:
            if not source.secrets():
                keys = "/".join(k for k in ("secret_env", "secret_file") if getattr(source, k))
                problems.append(f"{source_path(source.name)}.{keys}: none of {source.secret_refs()} is set")
        return problems


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config``, else ``$LEADBRIDGE_CONFIG``, else ``./config.yaml``.

    Raises ConfigError naming every place it looked when there is no file. A file named by
    --config or the variable that is missing stops the search: reading another one instead
    would run the relay on a config nobody chose.
    """
    looked = []
    places = (("--config", explicit), (f"${CONFIG_ENV}", os.environ.get(CONFIG_ENV)), (f"./{DEFAULT_CONFIG}", DEFAULT_CONFIG))
    for where, value in places:
        if not value:
            looked.append(f"{where} (not set)")
            continue
        path = Path(value)
        if path.exists():
            return path
        looked.append(f"{where} ({path.absolute()}: no such file)")
        break
    raise ConfigError(
        [
            f"no config file found; looked at: {', '.join(looked)}",
            "to start one here, run `leadbridge init .` (writes config.yaml, mappings/ and .env.example)",
        ]
    )


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and resolve one config file; raises ConfigError listing every problem."""
    file = config_path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror})"]) from exc
    try:
        data = load_yaml(raw) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: not valid YAML ({exc})"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{file}: the top level must be a mapping"])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, data)) from exc
    resolved = _resolve(settings, file.resolve(), raw)
    add_secrets(settings_secrets(resolved))
    return resolved


def settings_from_dict(data: dict[str, Any], base: Path) -> Settings:
    """Build settings from plain data as if read from a file in ``base`` (used by tests and tools)."""
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, data)) from exc
    return _resolve(settings, base / "inline.yaml", yaml.safe_dump(data).encode())


def _resolve(settings: Settings, file: Path, raw: bytes) -> Settings:
    root = file.parent
    if not settings.ledger.path.is_absolute():
        settings.ledger.path = root / settings.ledger.path
    digest = hashlib.sha256(raw)
    problems = []
    names = [s.name for s in settings.sources]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"sources: name {dup!r} is used more than once")
    for tokens in (settings.hubspot, settings.slack):
        if tokens.token_file is not None:
            tokens.token_file = _under(root, tokens.token_file)
    if settings.ledger.password_file is not None:
        settings.ledger.password_file = _under(root, settings.ledger.password_file)
    for source in settings.sources:
        here = source_path(source.name)
        if source.mapping is None and not source.forms:
            problems.append(f"{here}: no mapping (set mapping or forms)")
        if source.mapping is not None:
            source.mapping = _under(root, source.mapping)
        source.forms = {key: _under(root, path) for key, path in source.forms.items()}
        source.secret_file = [_under(root, path) for path in source.secret_file]
        for key, path in source.mapping_paths().items():
            where = f"{here}.mapping" if key is None else f"{here}.forms.{key}"
            try:
                digest.update(path.read_bytes())
            except OSError:
                problems.append(f"{where}: file {path} not found")
    if problems:
        raise ConfigError(problems)
    settings.path = file
    settings.version = digest.hexdigest()[:12]
    return settings


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def source_path(name: str) -> str:
    """How messages name a source: by its name, which survives reordering the list."""
    return f"sources[{name}]"


def validation_problems(exc: ValidationError, data: Any = None) -> list[str]:
    """One line per pydantic error, naming its dotted path in the file.

    With the validated ``data``, a path into ``sources`` names the source by its ``name``
    (``sources[typeform].secret_env``) rather than by its index.
    """
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(part) for part in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            where = ".".join([_source_label(data, loc[1]), *(str(part) for part in loc[2:])])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {message}")
    return lines


def _source_label(data: Any, index: int) -> str:
    # The index is all there is when the entry is not a mapping or its name is missing.
    try:
        name = data["sources"][index]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    return source_path(name) if isinstance(name, str) and name else f"sources.{index}"
