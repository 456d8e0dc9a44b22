"""The ``leadbridge`` command: run the relay, and let admins see and replay deliveries.

Thin commands over core functions; ``--json`` for scripting; exit 1 for a failed
outcome and 2 for misuse.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from .config import CONFIG_ENV, Settings, config_path, load_settings
from .errors import BodyTooLargeError, ConfigError, IntakeError
from .ledger import Ledger, Status
from .logs import install as install_redaction
from .pipeline import Pipeline
from .ports import ContactWrite, build_crm
from .sources import Interpretation, load_sources, screen

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar=CONFIG_ENV,
    help="Config file (default: $LEADBRIDGE_CONFIG, else config.yaml, else config.example.yaml).",
)


def _settings(config_file: str | None) -> Settings:
    try:
        return load_settings(config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config: {problem}", err=True)
        raise SystemExit(1) from exc


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_redaction()


@click.group()
@click.version_option(package_name="leadbridge")
def main() -> None:
    """leadbridge: form webhooks to one clean HubSpot contact and a Slack ping, durably.

    Example: leadbridge run --sandbox
    """


@main.command("check-config")
@config_option
@click.option("--show", is_flag=True, help="Also print the effective config, secrets redacted.")
def check_config(config_file: str | None, show: bool) -> None:
    """Validate the config and its mappings; list every problem, exit 1 if any.

    Example: leadbridge check-config --config config.yaml --show
    """
    problems: list[str] = []
    settings = None
    try:
        settings = load_settings(config_file)
        load_sources(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if settings is not None:
        problems.extend(settings.env_problems())
        for warning in unused_mappings(settings):
            click.echo(f"warning: {warning}", err=True)
        if show:
            click.echo(json.dumps(settings.redacted(), indent=2))
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"ok: {config_path(config_file)} (version {settings.version if settings else '?'})")


@main.command("try")
@config_option
@click.argument("source_name", metavar="SOURCE")
@click.argument("sample", type=click.Path(exists=True, dir_okay=False))
@click.option("--content-type", help="Content type of the sample (default: from its extension).")
@click.option("--json", "as_json", is_flag=True)
def try_(config_file: str | None, source_name: str, sample: str, content_type: str | None, as_json: bool) -> None:
    """Show what a sample delivery would become, touching neither HubSpot, Slack nor the ledger.

    Prints the normalised lead, the HubSpot properties it would write and the outcome;
    exits 1 unless the lead would be delivered.

    Example: leadbridge try typeform tests/fixtures/typeform/quote.json
    """
    settings = _settings(config_file)
    try:
        seen = _read_sample(settings, source_name, sample, content_type)
    except IntakeError as exc:
        click.echo(f"the relay would answer {exc.status}: {exc}", err=True)
        raise SystemExit(1) from exc
    except RecursionError as exc:  # a parser without its own depth limit
        click.echo("the sample is nested too deeply to read", err=True)
        raise SystemExit(1) from exc
    verdict = screen(seen)
    outcome, reasons = (str(verdict[0]), [verdict[1]]) if verdict else ("deliver", [])
    planned = build_crm(settings).planned(ContactWrite("try", seen.lead, None, seen.mapping.merge_policies()))
    report = {
        "lead": seen.lead.model_dump(mode="json", exclude_defaults=True),
        "hubspot_properties": {prop: {"value": v, "merge": m} for prop, (v, m) in sorted(planned.items())},
        "validation": {"outcome": outcome, "kind": seen.kind, "reasons": reasons, "problems": seen.result.problems},
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo("Normalised lead:")
        for key, value in report["lead"].items():
            click.echo(f"  {key}: {value}")
        click.echo("HubSpot properties it would write:")
        for prop, (value, merge) in sorted(planned.items()):
            click.echo(f"  {prop} = {value!r}" + (f"  ({merge})" if merge != "overwrite" else ""))
        click.echo(f"Outcome: {outcome}" + (f" ({'; '.join(reasons)})" if reasons else ""))
        for problem in seen.result.problems:
            click.echo(f"  problem: {problem}")
    if outcome != "deliver":
        raise SystemExit(1)


def _read_sample(settings: Settings, source_name: str, sample: str, content_type: str | None) -> Interpretation:
    """A sample file read by a configured source's connector and mapping (no I/O beyond the file)."""
    from .sources import interpret_body

    kits = load_sources(settings)
    if source_name not in kits:
        raise click.UsageError(f"no source named {source_name!r}; configured: {', '.join(kits)}")
    kind = content_type or ("application/json" if sample.endswith(".json") else "application/x-www-form-urlencoded")
    limit = settings.server.max_body_bytes
    # The intake's own body limit, checked before reading, so a huge sample is a message too.
    if Path(sample).stat().st_size > limit:
        raise BodyTooLargeError(f"body is over {limit} bytes")
    return interpret_body(kits[source_name], Path(sample).read_bytes(), kind, settings.lead.default_region)


@main.command("route")
@config_option
@click.argument("source_name", metavar="SOURCE")
@click.argument("sample", type=click.Path(exists=True, dir_okay=False))
@click.option("--content-type", help="Content type of the sample (default: from its extension).")
@click.option("--owner", "existing_owner", help="The contact's current HubSpot owner id, to see the returning-contact rule.")
@click.option("--resolve", is_flag=True, help="Resolve owner emails and check owners through HubSpot (otherwise offline).")
@click.option("--at", "at", help="Pretend it is this time (ISO 8601), to check working hours; default now.")
@click.option("--json", "as_json", is_flag=True)
def route_(
    config_file: str | None,
    source_name: str,
    sample: str,
    content_type: str | None,
    existing_owner: str | None,
    resolve: bool,
    at: str | None,
    as_json: bool,
) -> None:
    """Explain who would get a sample lead: its score, each rule checked, the next pick in a pool, and why.

    Nothing is recorded: round-robin counts are read from the ledger, not advanced.

    Example: leadbridge route typeform tests/fixtures/typeform/quote.json --at 2026-11-24T10:00:00-08:00
    """
    from datetime import UTC, datetime

    from .routing import MemoryPoolStore, RouteContext, route
    from .sales import CrmOwners
    from .scoring import ScoreContext, score_lead

    settings = _settings(config_file)
    seen = _read_sample(settings, source_name, sample, content_type)
    when = parse_since(at) if at else None
    now = datetime.fromtimestamp(when, UTC) if when is not None else datetime.now(UTC)
    score = score_lead(seen.lead, settings.scoring, ScoreContext(previous_delivery_at=None, now=now))
    ledger_file = settings.ledger.path
    counts = {}
    if ledger_file.exists():
        ledger = Ledger(ledger_file, settings.ledger.busy_timeout_seconds)
        counts = {pool: ledger.assigned_counts(pool) for pool in settings.routing.pools}
    directory = CrmOwners(build_crm(settings)) if resolve else OfflineOwners()
    context = RouteContext(lead=seen.lead, source=source_name, segment=score.segment, existing_owner_id=existing_owner, now=now)
    decision = route(context, settings.routing, MemoryPoolStore(counts), directory, dry_run=True)
    if as_json:
        click.echo(json.dumps({"score": score.as_record(), "decision": decision.__dict__}, indent=2, sort_keys=True))
        return
    click.echo(f"Score: {score.summary()}")
    for line in decision.considered:
        click.echo(f"  {line}")
    owner = decision.owner_name or "nobody (triage)"
    click.echo(f"Owner: {owner}" + (f" (HubSpot owner {decision.owner_id})" if decision.owner_id else ""))
    click.echo(f"Channel: {decision.channel or score.action.channel or settings.slack.channel}")
    click.echo(f"Reason: {decision.reason}")


class OfflineOwners:
    """For dry runs without HubSpot: ids as configured, emails shown unresolved, everyone active."""

    def owner_id(self, spec: Any) -> str | None:
        return str(spec.id) if spec.id else f"(owner {spec.email})"

    def is_active(self, owner_id: str) -> bool:
        return True


@main.command()
@config_option
def serve(config_file: str | None) -> None:
    """Run intake only (gunicorn), for installs that run workers separately.

    Example: leadbridge serve --config config.yaml
    """
    settings = _settings(config_file)
    raise SystemExit(_gunicorn(settings).wait())


def unused_mappings(settings: Settings) -> list[str]:
    """Mapping files next to the config (mappings/) or beside used ones that no source uses."""
    used = {path.resolve() for spec in settings.sources for path in spec.mapping_paths().values()}
    folders = {path.parent for path in used}
    if settings.path is not None:
        folders.add(settings.path.parent / "mappings")
    found = {p.resolve() for folder in folders if folder.is_dir() for p in folder.glob("*.y*ml")}
    return [f"{path.name}: no source uses this mapping" for path in sorted(found - used)]


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Process what is due now, then exit.")
def worker(config_file: str | None, once: bool) -> None:
    """Run a worker: claim due deliveries and push them to HubSpot and Slack.

    Example: leadbridge worker --config config.yaml
    """
    from .worker import Worker

    _logging()
    settings = _settings(config_file)
    ledger = Ledger(settings.ledger.path, settings.ledger.busy_timeout_seconds)
    w = Worker(settings, ledger)
    if once:
        click.echo(f"handled {w.drain()} deliveries")
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop())
    w.run()


@main.command()
@config_option
@click.option("--sandbox", "with_sandbox", is_flag=True, help="Also start the local HubSpot/Slack sandbox.")
def run(config_file: str | None, with_sandbox: bool) -> None:
    """Run intake (gunicorn) and a worker together, for a single-node install.

    Example: leadbridge run --sandbox --config config.example.yaml
    """
    from .worker import Worker

    _logging()
    settings = _settings(config_file)
    children = []
    if with_sandbox:
        url = urlparse(settings.hubspot.base_url)
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bridge.cli",
                    "sandbox",
                    "--host",
                    url.hostname or "127.0.0.1",
                    "--port",
                    str(url.port or 80),
                ]
            )
        )
    children.append(_gunicorn(settings))
    if with_sandbox:
        from connectors.sandbox import seed_owners

        seed_owners(settings.hubspot.base_url, settings.routing.model_dump(mode="json")["owners"])
    w = Worker(settings, Ledger(settings.ledger.path, settings.ledger.busy_timeout_seconds))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop())
    click.echo(f"leadbridge: intake on http://{settings.server.host}:{settings.server.port}, worker {w.owner}", err=True)
    try:
        w.run()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)


def _gunicorn(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{CONFIG_ENV: str(settings.path)})
    bind = f"{settings.server.host}:{settings.server.port}"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            bind,
            "--workers",
            str(settings.server.gunicorn_workers),
            "--access-logfile",
            "-",
            "--access-logformat",
            '%(h)s "%(m)s %(U)s" %(s)s %(M)sms',
            "bridge.app:create_app()",
        ],
        env=env,
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=int)
@click.option("--search-lag", default=3.0, show_default=True, type=float, help="Seconds before writes show in search.")
def sandbox(host: str, port: int, search_lag: float) -> None:
    """Serve a local stand-in for HubSpot's CRM API and Slack's Web API.

    State is in memory; see it at /__sandbox/state.

    Example: leadbridge sandbox --port 8025
    """
    from connectors.sandbox import serve_forever

    install_redaction()
    click.echo(f"sandbox on http://{host}:{port} (state: /__sandbox/state)", err=True)
    serve_forever(host, port, search_lag)


def _ledger(config_file: str | None) -> tuple[Settings, Ledger]:
    settings = _settings(config_file)
    return settings, Ledger(settings.ledger.path, settings.ledger.busy_timeout_seconds)


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """ "90s", "15m", "2h", "7d" ago, or an ISO-8601 time; as a Unix time."""
    if not value:
        return None
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if match:
        return now - float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is neither a duration like 2h nor an ISO time") from exc
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


status_choice = click.Choice([str(s) for s in Status])


@main.command()
@config_option
@click.option("--status", type=status_choice, help="Only deliveries in this state.")
@click.option("--source", help="Only deliveries from this source.")
@click.option("--since", help="Only deliveries received since, e.g. 2h, 30m, 7d or an ISO time.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def deliveries(
    config_file: str | None, status: str | None, source: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """List deliveries, newest first.

    Example: leadbridge deliveries --status dead --since 2h
    """
    _, ledger = _ledger(config_file)
    rows = ledger.deliveries(status=status, source=source, since=parse_since(since), limit=limit)
    if as_json:
        for d in rows:
            click.echo(json.dumps(d.summary(), sort_keys=True))
        return
    click.echo(f"{'ID':<25} {'SOURCE':<14} {'STATUS':<10} {'RECEIVED':<20} {'TRIES':>5}  LAST ERROR / REASON")
    for d in rows:
        why = (d.reason or d.last_error or "")[:70]
        click.echo(f"{d.id:<25} {d.source:<14} {d.status:<10} {_iso(d.received_at):<20} {d.attempts:>5}  {why}")
    click.echo(f"{len(rows)} deliveries", err=True)


@main.command()
@config_option
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--body", "with_body", is_flag=True, help="Also print the raw body as received.")
def show(config_file: str | None, delivery_id: str, as_json: bool, with_body: bool) -> None:
    """Show one delivery: state, attempts, step results and its event log.

    Example: leadbridge show dlv_0123456789abcdef0123
    """
    _, ledger = _ledger(config_file)
    delivery = ledger.get(delivery_id)
    if delivery is None:
        click.echo(f"no delivery {delivery_id}", err=True)
        raise SystemExit(1)
    data: dict[str, Any] = {**delivery.summary(), "steps": ledger.steps(delivery_id), "events": ledger.events(delivery_id)}
    if with_body:
        data["body"] = delivery.body.decode("utf-8", "replace")
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    for key in ("id", "source", "status", "reason", "last_error", "attempts", "config_version", "idem_key"):
        click.echo(f"{key:>15}: {data[key] if data[key] is not None else '-'}")
    for key in ("received_at", "next_attempt_at", "updated_at"):
        click.echo(f"{key:>15}: {_iso(data[key])}")
    click.echo(f"{'headers':>15}: {json.dumps(delivery.headers, sort_keys=True)}")
    click.echo("steps:")
    for step, result in data["steps"].items():
        click.echo(f"  {step}: {json.dumps(result, sort_keys=True)}")
    click.echo("events:")
    for event in data["events"]:
        click.echo(f"  {_iso(event['at'])}  {event['step']:<9} {event['outcome']:<14} {event['detail']}")
    if with_body:
        click.echo("body:\n" + data["body"])


@main.command()
@config_option
@click.argument("ids", nargs=-1)
@click.option("--status", type=status_choice, help="Replay every delivery in this state, e.g. dead.")
@click.option("--source", help="With --status: only this source.")
@click.option("--since", help="With --status: only deliveries received since, e.g. 2h.")
@click.option("--dry-run", is_flag=True, help="List what would be replayed and change nothing.")
@click.option("--queue", "queue_only", is_flag=True, help="Only requeue for the running worker; do not process here.")
@click.option("--json", "as_json", is_flag=True)
def replay(
    config_file: str | None,
    ids: tuple[str, ...],
    status: str | None,
    source: str | None,
    since: str | None,
    dry_run: bool,
    queue_only: bool,
    as_json: bool,
) -> None:
    """Replay deliveries: finished steps are skipped, so nothing is created or sent twice.

    Example: leadbridge replay --status dead --since 24h --dry-run
    """
    if bool(ids) == bool(status):
        raise click.UsageError("give delivery IDs or --status, not both and not neither")
    if ids and (source or since):
        raise click.UsageError("--source and --since go with --status")
    settings, ledger = _ledger(config_file)
    targets = list(ids) or [d.id for d in ledger.deliveries(status=status, source=source, since=parse_since(since), limit=100000)]
    if dry_run:
        for delivery_id in targets:
            click.echo(delivery_id)
        click.echo(f"would replay {len(targets)} deliveries", err=True)
        return
    _logging()
    pipeline = None if queue_only else Pipeline(settings, ledger)
    from .worker import worker_id

    owner, outcomes = worker_id(), {}
    with click.progressbar(targets, label="replaying", file=sys.stderr) as bar:
        for delivery_id in bar:
            outcome = ledger.requeue(delivery_id)
            if outcome == "requeued" and pipeline is not None:
                claimed = ledger.claim_ids([delivery_id], owner, settings.worker.lease_seconds)
                outcome = pipeline.process(claimed[0], owner) if claimed else "skipped: claimed by a worker"
            outcomes[delivery_id] = str(outcome)
    summary = Counter(outcomes.values())
    if as_json:
        click.echo(json.dumps({"outcomes": outcomes, "summary": summary}, sort_keys=True))
    else:
        for delivery_id, outcome in outcomes.items():
            click.echo(f"{delivery_id}  {outcome}")
        click.echo("summary: " + ", ".join(f"{n} {what}" for what, n in sorted(summary.items())))
    if any(o in (Status.DEAD, Status.REJECTED, Status.RETRYING) for o in outcomes.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
