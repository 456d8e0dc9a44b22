"""Secrets by reference: unset ones named at start-up and refused with 503, files as well as variables."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import settings_from_dict
from bridge.ledger import open_ledger
from bridge.secrets import file_secret
from bridge.worker import Worker

from .conftest import ENV, ROOT, SECRET, Sandbox, post_typeform, served, typeform_payload


def test_a_source_without_its_secret_warns_once_and_answers_503(
    config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TYPEFORM_SECRET")
    caplog.set_level(logging.INFO)
    settings = settings_from_dict(config_data, ROOT)
    with served(settings) as url:
        answers = [post_typeform(url, typeform_payload()) for _ in range(3)]
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "source_not_configured"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "bridge.app"]
    assert warnings == ["source typeform has no secret: set TYPEFORM_SECRET (answering 503 until then)"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in (SECRET, *ENV.values()):
        assert value not in logged
    # Nothing was written: the sender retries once the secret is set.
    assert open_ledger(settings.ledger).counts() == {}


def test_every_secret_can_come_from_a_file(
    tmp_path: Path, config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    for name in ("TYPEFORM_SECRET", "HUBSPOT_TOKEN", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # As Docker and `echo value > file` write them: with a trailing newline.
    (secrets / "typeform").write_text("file-typeform-secret\n")
    (secrets / "hubspot").write_text("file-hubspot-token\n")
    (secrets / "slack").write_text("xoxb-file-slack\r\n")
    typeform = config_data["sources"][0]
    del typeform["secret_env"]
    typeform["secret_file"] = "secrets/typeform"  # relative: against the config file's folder
    config_data["hubspot"]["token_file"] = str(secrets / "hubspot")
    config_data["slack"]["token_file"] = "secrets/slack"
    settings = settings_from_dict(config_data, tmp_path)
    assert settings.source("typeform").secrets() == ["file-typeform-secret"]  # type: ignore[union-attr]
    assert (settings.hubspot.token(), settings.slack.token()) == ("file-hubspot-token", "xoxb-file-slack")
    assert settings.env_problems() == []
    shown = settings.redacted()
    assert shown["sources"][0]["secret_file"] == [f"{secrets / 'typeform'} (set)"]
    assert shown["hubspot"]["token_file"] == f"{secrets / 'hubspot'} (set)"
    assert shown["slack"]["token_file"] == f"{secrets / 'slack'} (set)"
    assert "file-" not in repr(shown)

    ledger = open_ledger(settings.ledger)
    with served(settings) as url:
        accepted = post_typeform(url, typeform_payload(), secret="file-typeform-secret")
        assert post_typeform(url, typeform_payload(), secret=SECRET).status_code == 401
    assert accepted.status_code == 200, accepted.text
    Worker(settings, ledger).drain()
    # The sandbox refuses calls without a bearer token, so delivered means both tokens were read.
    assert ledger.counts() == {"delivered": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), ("s3cret", "s3cret"), (" s p \n", " s p "), ("\n", None), ("", None)],
)
def test_a_secret_file_loses_only_its_trailing_newline(tmp_path: Path, text: str, expected: str | None) -> None:
    (tmp_path / "secret").write_bytes(text.encode())
    assert file_secret(tmp_path / "secret") == expected


def test_a_missing_secret_file_is_unset(tmp_path: Path) -> None:
    assert file_secret(tmp_path / "absent") is None
    assert file_secret(tmp_path) is None  # a directory mounted by mistake


def test_check_config_names_sources_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TYPEFORM_SECRET")
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    gravity = next(s for s in data["sources"] if s["name"] == "gravity-quote")
    del gravity["secret_env"]
    gravity["secret_file"] = ["absent.secret"]
    data["slack"]["token_file"] = "/nowhere/slack"
    for source in data["sources"]:
        source["mapping"] = str(ROOT / source["mapping"]) if "mapping" in source else None
        source["forms"] = {k: str(ROOT / v) for k, v in source.get("forms", {}).items()}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-config", "--config", str(tmp_path / "c.yaml"), "--show"])
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: slack.token_file: file /nowhere/slack is missing, unreadable or empty",
        "problem: sources[typeform].secret_env: none of TYPEFORM_SECRET is set",
        f"problem: sources[gravity-quote].secret_file: none of {tmp_path / 'absent.secret'} is set",
    ]
    assert '"/nowhere/slack (unset)"' in result.output
    for value in ENV.values():
        assert value not in result.output


def test_the_worker_refuses_naming_the_token_file_it_could_not_read(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["slack"]["token_file"] = str(tmp_path / "absent-slack-token")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config_data))
    argv = [sys.executable, "-m", "bridge", "worker", "--once", "--config", str(tmp_path / "c.yaml")]
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"error: file {tmp_path / 'absent-slack-token'} is not set (needed to reach HubSpot and Slack)" in done.stderr
    assert "HUBSPOT_TOKEN" not in done.stderr  # that one is set
