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
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from .config import CONFIG_ENV, Settings, load_settings
from .errors import BodyTooLargeError, ConfigError, IntakeError
from .followups import followup_lines
from .ledger import Ledger, Status, open_ledger
from .logs import install as install_redaction
from .pipeline import Pipeline
from .ports import ContactWrite, build_crm
from .sources import Interpretation, load_sources, screen

# No click envvar: config_path reads $LEADBRIDGE_CONFIG itself, so a missing file is
# reported under the name it came from.
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Config file (default: $LEADBRIDGE_CONFIG, else ./config.yaml).",
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


# These install their own stop handlers first thing; until then bridge/__main__.py's stays.
SELF_STOPPING_COMMANDS = frozenset({"run", "serve", "worker"})


@click.group()
@click.version_option(package_name="leadbridge")
def main() -> None:
    """leadbridge: form webhooks to one clean HubSpot contact and a Slack ping, durably.

    Example: leadbridge run --sandbox
    """
    if click.get_current_context().invoked_subcommand not in SELF_STOPPING_COMMANDS:
        from .__main__ import restore_default_signals

        restore_default_signals()


@main.command("check-config")
@config_option
@click.option("--show", is_flag=True, help="Also print the effective config, secrets redacted.")
@click.option("--live", is_flag=True, help="Also check it against the real HubSpot and Slack (as `leadbridge doctor`).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, problems, warnings.")
def check_config(config_file: str | None, show: bool, live: bool, as_json: bool) -> None:
    """Validate the config and its mappings; list every problem, exit 1 if any.

    Example: leadbridge check-config --config config.yaml --show
    """
    from .doctor import static_problems

    problems: list[str] = []
    warnings: list[str] = []
    settings = None
    try:
        settings = load_settings(config_file)
        load_sources(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if settings is not None:
        problems.extend(settings.env_problems())
        problems.extend(p.line() for p in static_problems(settings))
        warnings.extend(unused_mappings(settings))
        if live and not problems:
            from .doctor import diagnose
            from .ports import build_crm, build_notifier

            found = diagnose(settings, build_crm(settings), build_notifier(settings))
            problems.extend(p.line() for p in found if p.setting != "secrets")
    if as_json:
        summary = {"ok": not problems, "problems": problems, "warnings": warnings}
        if settings is not None:
            summary.update(path=str(settings.path), version=settings.version, effective=settings.redacted() if show else None)
        click.echo(json.dumps(summary, sort_keys=True, default=str))
        raise SystemExit(1 if problems else 0)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if settings is not None and show:
        click.echo(json.dumps(settings.redacted(), indent=2))
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"ok: {settings.path if settings else '?'} (version {settings.version if settings else '?'})")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(directory: str, force: bool) -> None:
    """Write a working config.yaml, its mappings/ and an .env.example into DIRECTORY.

    Refuses (exit 1, writing nothing) when any of them exists, unless --force. Then fill
    in the secrets .env.example names and run `leadbridge check-config` there.

    Example: leadbridge init /etc/leadbridge
    """
    from .errors import ExistingFilesError
    from .scaffold import write_scaffold

    try:
        written = write_scaffold(Path(directory), force=force)
    except ExistingFilesError as exc:
        for path in exc.paths:
            click.echo(f"exists: {path}", err=True)
        click.echo("error: refusing to overwrite; pass --force to replace these files", err=True)
        raise SystemExit(1) from exc
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from exc
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"next: set the variables in {Path(directory) / '.env.example'}, then `leadbridge check-config`", err=True)


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
        seen, payload = _read_sample(settings, source_name, sample, content_type)
    except IntakeError as exc:
        click.echo(f"the relay would answer {exc.status}: {exc}", err=True)
        raise SystemExit(1) from exc
    except RecursionError as exc:  # a parser without its own depth limit
        click.echo("the sample is nested too deeply to read", err=True)
        raise SystemExit(1) from exc
    verdict = screen(seen)
    outcome, reasons = (str(verdict[0]), [verdict[1]]) if verdict else ("deliver", [])
    absent = seen.mapping.absent(seen.flat, payload)
    planned = build_crm(settings).planned(ContactWrite("try", seen.lead, None, seen.mapping.merge_policies()))
    lead = seen.lead.model_dump(mode="json", exclude_defaults=True)
    report: dict[str, Any] = {
        "lead": lead,
        "hubspot_properties": {prop: {"value": v, "merge": m} for prop, (v, m) in sorted(planned.items())},
        "validation": {"outcome": outcome, "kind": seen.kind, "reasons": reasons, "problems": seen.result.problems},
        "absent_from_sample": absent,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo("Normalised lead:")
        for key, value in lead.items():
            click.echo(f"  {key}: {value}")
        click.echo("HubSpot properties it would write:")
        for prop, (value, merge) in sorted(planned.items()):
            click.echo(f"  {prop} = {value!r}" + (f"  ({merge})" if merge != "overwrite" else ""))
        click.echo(f"Outcome: {outcome}" + (f" ({'; '.join(reasons)})" if reasons else ""))
        for problem in seen.result.problems:
            click.echo(f"  problem: {problem}")
        for warning in absent:
            click.echo(f"warning: {warning}", err=True)
    if outcome != "deliver":
        raise SystemExit(1)


def _read_sample(settings: Settings, source_name: str, sample: str, content_type: str | None) -> tuple[Interpretation, Any]:
    """A sample file read by a configured source's connector and mapping (no I/O beyond the file):
    what it would become, and the payload as the connector parsed it."""
    from .sources import interpret

    kits = load_sources(settings)
    if source_name not in kits:
        raise click.UsageError(f"no source named {source_name!r}; configured: {', '.join(kits)}")
    limit = settings.server.max_body_bytes
    # The intake's own body limit, checked before reading, so a huge sample is a message too.
    if Path(sample).stat().st_size > limit:
        raise BodyTooLargeError(f"body is over {limit} bytes")
    body = Path(sample).read_bytes()
    kit = kits[source_name]
    payload = kit.source.parse(body, content_type or sample_type(sample, body))
    return interpret(kit, payload, settings.lead.default_region), payload


def sample_type(name: str, body: bytes) -> str:
    """A sample's content type: by its name, else by its content (a body saved as .txt)."""
    if name.endswith(".json") or body.lstrip()[:1] in (b"{", b"["):
        return "application/json"
    return "application/x-www-form-urlencoded"


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
    seen, _ = _read_sample(settings, source_name, sample, content_type)
    when = parse_since(at) if at else None
    now = datetime.fromtimestamp(when, UTC) if when is not None else datetime.now(UTC)
    score = score_lead(seen.lead, settings.scoring, ScoreContext(previous_delivery_at=None, now=now))
    counts = {}
    if settings.ledger.url or settings.ledger.path.exists():
        ledger = open_ledger(settings.ledger)
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


def unused_mappings(settings: Settings) -> list[str]:
    """Mapping files next to the config (mappings/) or beside used ones that no source uses."""
    used = {path.resolve() for spec in settings.sources for path in spec.mapping_paths().values()}
    folders = {path.parent for path in used}
    if settings.path is not None:
        folders.add(settings.path.parent / "mappings")
    found = {p.resolve() for folder in folders if folder.is_dir() for p in folder.glob("*.y*ml")}
    # The config file itself may sit among its mappings: it is not an unused mapping.
    found.discard(settings.path.resolve() if settings.path is not None else Path())
    return [f"{path.name}: no source uses this mapping" for path in sorted(found - used)]


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Process what is due now, then exit.")
@click.option("--helper", is_flag=True, hidden=True, help="Started by a worker while a backlog drains.")
def worker(config_file: str | None, once: bool, helper: bool) -> None:
    """Run a worker: claim due deliveries and push them to HubSpot and Slack.

    SIGTERM/SIGINT finish what is in flight and exit 0; SIGHUP does the same, then reads
    the config again and carries on.

    Example: leadbridge worker --config config.yaml
    """
    from .helpers import Helpers
    from .jsonlog import apply_log_format
    from .worker import Worker

    _logging()
    reload = threading.Event()
    current: list[Worker] = []

    def stop(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            reload.set()
        for w in current:
            w.stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    while True:
        reload.clear()
        settings = _settings(config_file)
        _require_tokens(settings)
        apply_log_format(settings.logging)
        if helper:
            w = Worker(settings, open_ledger(settings.ledger), helper_of=os.getppid())
        else:
            w = Worker(settings, open_ledger(settings.ledger), helpers=Helpers(settings.worker, config_file))
        if once:
            click.echo(f"handled {w.drain()} deliveries")
            return
        current[:] = [w]
        w.run()
        if not reload.is_set():
            return
        click.echo("leadbridge worker: SIGHUP, reloading the config", err=True)


@main.command("hubspot-poll")
@config_option
@click.option("--json", "as_json", is_flag=True)
def hubspot_poll(config_file: str | None, as_json: bool) -> None:
    """Poll HubSpot once, now: the deals changed since the last poll, applied to the ledger.

    Runs even when `hubspot.poll` is off or not due; does nothing while a worker is polling.
    Exit 1 when HubSpot could not be searched (the high-water mark then stays).

    Example: leadbridge hubspot-poll --json
    """
    from .crm_poll import CrmPoller, poll_lines
    from .errors import DeliveryError
    from .worker import worker_id

    settings, ledger = _ledger(config_file)
    _require_tokens(settings)
    try:
        result = CrmPoller(settings, ledger, build_crm(settings), worker_id()).poll(force=True)
    except DeliveryError as exc:
        click.echo(f"HubSpot poll failed: {exc}", err=True)
        raise SystemExit(1) from exc
    if as_json:
        click.echo(json.dumps(result.__dict__, sort_keys=True))
        return
    for line in poll_lines(result):
        click.echo(line)


def _require_tokens(settings: Settings) -> None:
    """Refuse (exit 2) before claiming anything when a token is missing: every claimed
    delivery would otherwise fail with 401 and be pushed toward the dead letters."""
    missing = settings.missing_tokens()
    if missing:
        for name in missing:
            click.echo(f"error: {name} is not set (needed to reach HubSpot and Slack)", err=True)
        raise SystemExit(2)


@main.command()
@config_option
@click.option("--sandbox", "with_sandbox", is_flag=True, help="Also start the local HubSpot/Slack sandbox.")
@click.option(
    "--sandbox-state",
    type=click.Path(dir_okay=False),
    help="The sandbox's state file.  [default: sandbox-state.json beside the ledger]",
)
def run(config_file: str | None, with_sandbox: bool, sandbox_state: str | None) -> None:
    """Run intake (gunicorn) and a worker together, supervised, for a single-node install.

    SIGTERM/SIGINT stop every part and exit 0; SIGHUP reloads the config in intake and
    worker; a part that dies is restarted with backoff.

    Example: leadbridge run --sandbox --config config.example.yaml
    """
    from .supervisor import Child, Supervisor

    supervisor = Supervisor([])
    supervisor.install_signal_handlers()  # before anything starts, so no stop signal orphans a child
    _logging()
    settings = _settings(config_file)
    _require_tokens(settings)
    env = _child_env(settings)
    if with_sandbox:
        url = urlparse(settings.hubspot.base_url)
        _check_ports((url.hostname or "127.0.0.1", url.port or 80, "hubspot.base_url"))
        supervisor.children.append(Child("sandbox", sandbox_command(settings, sandbox_state), env))
    _check_ports((settings.server.host, settings.server.port, "server.port"))
    supervisor.children.append(Child("intake", gunicorn_command(settings), env, reloads_on_hup=True))
    supervisor.children.append(Child("worker", [sys.executable, "-m", "bridge", "worker"], env))
    seed = None
    if with_sandbox:
        from connectors.sandbox import seed_owners

        from .doctor import named_channels

        def seed() -> None:
            owners = settings.routing.model_dump(mode="json")["owners"]
            seed_owners(settings.hubspot.base_url, owners, channels=list(named_channels(settings)))

    click.echo(f"leadbridge: intake on http://{settings.server.host}:{settings.server.port}, and a worker", err=True)
    raise SystemExit(supervisor.run(after_start=seed))


@main.command()
@config_option
def serve(config_file: str | None) -> None:
    """Run intake only (gunicorn), for installs that run workers separately.

    SIGTERM/SIGINT stop gunicorn's master and workers and exit 0; SIGHUP reloads the config.

    Example: leadbridge serve --config config.yaml
    """
    from .supervisor import Child, Supervisor

    supervisor = Supervisor([])
    supervisor.install_signal_handlers()
    _logging()
    settings = _settings(config_file)
    _check_ports((settings.server.host, settings.server.port, "server.port"))
    supervisor.children.append(Child("intake", gunicorn_command(settings), _child_env(settings), reloads_on_hup=True))
    raise SystemExit(supervisor.run())


def _check_ports(*ports: tuple[str, int, str]) -> None:
    from .supervisor import PortInUseError, check_port_free

    for host, port, setting in ports:
        try:
            check_port_free(host, port, setting)
        except PortInUseError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(1) from exc


def _child_env(settings: Settings) -> dict[str, str]:
    return dict(os.environ, **{CONFIG_ENV: str(settings.path)})


def gunicorn_command(settings: Settings) -> list[str]:
    """gunicorn's argv: threaded workers with timeouts, so a few slow clients cannot block intake."""
    server = settings.server
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{server.host}:{server.port}",
        "--workers",
        str(server.gunicorn_workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(server.threads),
        "--timeout",
        str(server.timeout_seconds),
        "--graceful-timeout",
        str(server.timeout_seconds),
        "--keep-alive",
        str(server.keepalive_seconds),
        "--access-logfile",
        "-",
        "--access-logformat",
        '%(h)s "%(m)s %(U)s" %(s)s %(M)sms',
        "bridge.app:create_app()",
    ]


SANDBOX_STATE_NAME = "sandbox-state.json"


def sandbox_command(settings: Settings, state_file: str | os.PathLike[str] | None = None) -> list[str]:
    """The sandbox child's argv for ``run --sandbox``: on the host and port the config's HubSpot
    URL names, keeping its records in ``state_file`` (default: beside the ledger), so a restart
    never hands out a contact id the ledger already remembers for someone else."""
    url = urlparse(settings.hubspot.base_url)
    state = Path(state_file) if state_file else Path(settings.ledger.path).parent / SANDBOX_STATE_NAME
    return [
        sys.executable,
        "-m",
        "bridge.cli",
        "sandbox",
        "--host",
        url.hostname or "127.0.0.1",
        "--port",
        str(url.port or 80),
        "--state",
        str(state),
    ]


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=int)
@click.option("--search-lag", default=3.0, show_default=True, type=float, help="Seconds before writes show in search.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False), help="Keep records in this JSON file across restarts.")
@click.option("--reset", is_flag=True, help="Start clean: delete the state file first.")
@click.option(
    "--latency-ms", default=0.0, show_default=True, type=click.FloatRange(0, 600_000), help="Delay every HubSpot/Slack call."
)
@click.option(
    "--rate-limit", is_flag=False, flag_value="100/10s", help="Enforce HubSpot's burst limit per token (alone: 100/10s)."
)
@click.option("--search-rate-limit", is_flag=False, flag_value="5/1s", help="Enforce the search limit per token (alone: 5/1s).")
def sandbox(
    host: str,
    port: int,
    search_lag: float,
    state_file: str | None,
    reset: bool,
    latency_ms: float = 0.0,
    rate_limit: str | None = None,
    search_rate_limit: str | None = None,
) -> None:
    """Serve a local stand-in for HubSpot's CRM API and Slack's Web API.

    State is in memory, or with --state kept in a file after every write (ids never repeat
    across restarts); see it at /__sandbox/state.

    With --latency-ms and --rate-limit it behaves like a busy HubSpot (429s included), for
    benchmarks; POST /__sandbox/limits changes both while it runs.

    Example: leadbridge sandbox --port 8025 --state var/sandbox-state.json

    Example: leadbridge sandbox --latency-ms 150 --rate-limit 100/10s --search-rate-limit 5/1s
    """
    from connectors.sandbox import serve_forever
    from connectors.sandbox.limits import LimitSettings
    from connectors.sandbox.persist import StateFile, StateFileError

    try:
        limits = LimitSettings.parse(latency_ms, rate_limit, search_rate_limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    install_redaction()
    if reset:
        deleted = state_file is not None and StateFile(state_file).delete()
        click.echo(f"sandbox: --reset: starting clean{f' (deleted {state_file})' if deleted else ''}", err=True)
    kept = f", kept in {state_file}" if state_file else ""
    click.echo(f"sandbox on http://{host}:{port} (state: /__sandbox/state{kept})", err=True)
    try:
        serve_forever(host, port, search_lag, state_file, limits)
    except StateFileError as exc:
        raise click.ClickException(str(exc)) from exc


def _ledger(config_file: str | None) -> tuple[Settings, Ledger]:
    settings = _settings(config_file)
    return settings, open_ledger(settings.ledger)


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
    data["followups"] = ledger.followups_of(delivery_id)
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
    follow_ups = list(followup_lines(ledger, delivery_id))
    if follow_ups:
        click.echo("follow-ups:")
        for line in follow_ups:
            click.echo(f"  {line}")
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
    if not queue_only:
        _require_tokens(settings)  # before anything is requeued: a 401 would send them all back to dead
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
    line = "summary: " + (", ".join(f"{n} {what}" for what, n in sorted(summary.items())) or "nothing to replay")
    if as_json:
        click.echo(json.dumps({"outcomes": outcomes, "summary": summary}, sort_keys=True))
    else:
        for delivery_id, outcome in outcomes.items():
            click.echo(f"{delivery_id}  {outcome}")
        click.echo(line)
    if any(not replay_succeeded(o) for o in outcomes.values()):
        raise SystemExit(1)


def replay_succeeded(outcome: str) -> bool:
    """Finished now (delivered, or rightly kept back as spam, partial or test), queued for the
    worker, or delivered before; anything else (dead, rejected, retrying, deferred, no such
    delivery, someone else's lease) is a failed replay: exit 1."""
    finished = (Status.DELIVERED, Status.SPAM, Status.PARTIAL, Status.TEST)
    return outcome in (*finished, "requeued", "skipped: already delivered")


def _register_admin_commands() -> None:
    # Imported late: bridge/admin.py builds its commands from this module's helpers.
    from .admin import copy_ledger_command, doctor_command, forget_command, migrate_command, purge_command

    main.add_command(doctor_command)
    main.add_command(migrate_command)
    main.add_command(copy_ledger_command)
    main.add_command(purge_command)
    main.add_command(forget_command)


@main.command()
@config_option
@click.option("--since", default="7d", show_default=True, help="The period: a duration like 24h or 30d, or an ISO time.")
@click.option("--json", "as_json", is_flag=True)
def stats(config_file: str | None, since: str, as_json: bool) -> None:
    """Volume per source and day, outcomes (drop-off), dead letters, duplicates prevented, speed to lead.

    Example: leadbridge stats --since 30d --json
    """
    from .ratelimit import CallPacer, limits_exist, open_limits
    from .stats import collect_stats, stats_lines

    start = parse_since(since)
    settings, ledger = _ledger(config_file)
    calls = open_limits(settings.ledger).calls_by_day(CallPacer.API, start or 0.0) if limits_exist(settings.ledger) else None
    report = collect_stats(ledger, start or 0.0, calls)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    click.echo(f"since {_iso(start)}")
    for line in stats_lines(report):
        click.echo(line)


if __name__ == "__main__":
    # `python -m bridge.cli`: run the importable module, so bridge/admin.py and this group
    # are the same objects (`python -m bridge` is the usual way).
    from bridge.cli import main as importable_main

    importable_main()
else:
    _register_admin_commands()
