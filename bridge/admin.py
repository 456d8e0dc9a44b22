"""Admin commands: `leadbridge doctor` (the config against the live accounts), `leadbridge
migrate` (the ledger's schema, explicitly), and the two that erase data, `leadbridge purge`
and `leadbridge forget`.

Registered on the main command group by bridge/cli.py, apart from the everyday commands.
"""

from __future__ import annotations

import json

import click

from . import cli
from .ledger import migration_state, open_ledger
from .ledger_retention import BusyPersonError, Removed
from .retention import forget, person_keys, purge


def _report(removed: Removed, as_json: bool, what: str) -> None:
    summary = removed.summary()
    if as_json:
        click.echo(json.dumps({"removed": summary, "what": what}, sort_keys=True))
        return
    counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in summary.items() if name != "file_clean" and n)
    click.echo(f"{what}: {counts or 'nothing to remove'}")
    if not removed.file_clean:
        click.echo(
            "note: old copies may stay in the ledger's files until SQLite's next WAL checkpoint"
            " (another process had it open) or PostgreSQL's next VACUUM"
        )


@click.command("migrate")
@cli.config_option
@click.option("--check", is_flag=True, help="Only say what is pending; change nothing (exit 1 if anything is).")
@click.option("--json", "as_json", is_flag=True)
def migrate_command(config_file: str | None, check: bool, as_json: bool) -> None:
    """Bring the ledger's schema up to date, under its write lock.

    Every command that opens the ledger does this anyway; run it on its own before a
    rolling upgrade, or with --check in a deploy pipeline.

    Example: leadbridge migrate --check
    """
    settings = cli._settings(config_file)
    applied, pending = migration_state(settings.ledger)
    ran: list[str] = []
    if pending and not check:
        open_ledger(settings.ledger)  # applies them; another process may have meanwhile
        after, pending = migration_state(settings.ledger)
        ran = [name for name in after if name not in applied]
        applied = after
    if as_json:
        click.echo(json.dumps({"applied": applied, "pending": pending, "ran": ran}))
    else:
        for name in ran:
            click.echo(f"applied {name}")
        click.echo(f"{len(pending)} pending: {', '.join(pending)}" if pending else f"up to date ({len(applied)} migrations)")
    if pending:
        raise SystemExit(1)


@click.command("copy-ledger")
@cli.config_option
@click.option("--to", "url", required=True, help="The PostgreSQL ledger: postgresql://user@host:port/database (no password).")
@click.option("--json", "as_json", is_flag=True)
def copy_ledger_command(config_file: str | None, url: str, as_json: bool) -> None:
    """Copy the SQLite ledger (ledger.path) into a PostgreSQL database, every table, idempotently.

    Rows already there are brought up to date, never doubled; run it again to pick up what
    arrived since. Stop the relay, copy, set ledger.url, start it again. The password comes
    from ledger.password_env (or password_file), as when the relay runs on it.

    Example: leadbridge copy-ledger --to postgresql://leadbridge@db:5432/leadbridge
    """
    from .config import LedgerSettings
    from .ledger import Ledger
    from .ledger_copy import copy_sqlite_ledger
    from .ledger_pg import PostgresLedger

    settings = cli._settings(config_file)
    try:
        target_settings = LedgerSettings.model_validate({**settings.ledger.model_dump(), "url": url})
    except ValueError as exc:
        raise click.UsageError(str(exc).splitlines()[-1]) from exc
    if not settings.ledger.path.exists():
        raise click.UsageError(f"no SQLite ledger at {settings.ledger.path}")
    target = PostgresLedger(url, target_settings.password(), settings.ledger.busy_timeout_seconds)
    try:
        copied = copy_sqlite_ledger(Ledger(settings.ledger.path), target)
    finally:
        target.close()
    if as_json:
        click.echo(json.dumps({"copied": copied}, sort_keys=True))
        return
    for table, n in copied.items():
        click.echo(f"{table}: {n} rows")
    click.echo(f"copied {sum(copied.values())} rows; now set ledger.url: {url}")


@click.command("purge")
@cli.config_option
@click.option("--older-than", "older_than", required=True, help="Finished before this long ago, e.g. 90d, or an ISO time.")
@click.option("--json", "as_json", is_flag=True)
def purge_command(config_file: str | None, older_than: str, as_json: bool) -> None:
    """Empty raw bodies and person data of deliveries finished before a time.

    States, counts and the event log stay; unfinished deliveries are never touched.
    A purged delivery cannot be replayed (its body is gone).

    Example: leadbridge purge --older-than 90d
    """
    _, ledger = cli._ledger(config_file)
    before = cli.parse_since(older_than)
    assert before is not None  # required option
    _report(purge(ledger, before), as_json, "purged")


@click.command("forget")
@cli.config_option
@click.argument("person")
@click.option("--hubspot", "in_hubspot", is_flag=True, help="Also delete the contact in HubSpot (GDPR delete, by email).")
@click.option("--json", "as_json", is_flag=True)
def forget_command(config_file: str | None, person: str, in_hubspot: bool, as_json: bool) -> None:
    """Erase one person (an email or a phone number) from the ledger.

    Removes their deliveries, bodies, steps, events, person keys and remembered contacts.
    The erasure itself is logged without the address.

    Example: leadbridge forget jane@example.org --hubspot
    """
    settings, ledger = cli._ledger(config_file)
    keys = person_keys(person, settings.lead.default_region)
    if not keys:
        raise click.BadParameter("neither a valid email nor a valid phone number", param_hint="PERSON")
    try:
        removed = forget(ledger, keys)
    except BusyPersonError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1) from exc
    _report(removed, as_json, "forgot")
    if in_hubspot:
        email = next((k.partition(":")[2] for k in keys if k.startswith("email:")), None)
        if email is None:
            click.echo("HubSpot's GDPR delete needs an email; the contact was left in HubSpot", err=True)
            raise SystemExit(1)
        cli._require_tokens(settings)
        from .errors import DeliveryError
        from .ports import build_crm

        try:
            build_crm(settings).forget_contact(email)
        except DeliveryError as exc:
            click.echo(f"HubSpot GDPR delete failed: {exc}", err=True)
            raise SystemExit(1) from exc
        click.echo("HubSpot: contact deleted (GDPR delete)")


@click.command("doctor")
@cli.config_option
@click.option("--create-properties", is_flag=True, help="Create the contact properties leadbridge writes that are missing.")
@click.option("--json", "as_json", is_flag=True)
def doctor_command(config_file: str | None, create_properties: bool, as_json: bool) -> None:
    """Check the config against the real HubSpot portal and Slack workspace.

    Slack channels exist and have the bot, owners exist and are active, the deal pipeline
    and stage exist, every contact property leadbridge writes exists, secrets are set.
    One line per problem, with the fix; exit 1 if any. Run it before going live.

    Example: leadbridge doctor --create-properties
    """
    from .doctor import diagnose
    from .ports import build_crm, build_notifier

    settings = cli._settings(config_file)
    problems = diagnose(settings, build_crm(settings), build_notifier(settings), create_properties=create_properties)
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": [p.__dict__ for p in problems]}, sort_keys=True))
    else:
        for problem in problems:
            click.echo(problem.line())
        click.echo(f"{len(problems)} problem(s)" if problems else "ok: HubSpot and Slack match the config")
    if problems:
        raise SystemExit(1)
