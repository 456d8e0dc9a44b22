"""The deployment files say what the README says: a non-root image with a /healthz check,
compose with intake and worker on one ledger volume, and systemd units that verify."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import settings_from_dict

from .conftest import ROOT

UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
INSTALLED_BINARY = "/opt/leadbridge/venv/bin/leadbridge"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(word.upper(), rest.strip()) for word, _, rest in (line.partition(" ") for line in lines)]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def unit_settings(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_image_is_python_311_slim_runs_as_a_user_and_checks_healthz_with_python() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    [healthcheck] = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and '"python"' in healthcheck and "curl" not in healthcheck
    assert ("CMD", '["leadbridge", "serve"]') in instructions
    # server.host has no environment override, so the image's config must bind every interface.
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "['server']['host'] = '0.0.0.0'" in runs
    assert "['ledger']['path'] = '/var/lib/leadbridge/leadbridge.db'" in runs


def test_compose_runs_intake_and_worker_from_one_image_on_one_ledger_volume() -> None:
    data = compose()
    intake, worker = data["services"]["intake"], data["services"]["worker"]
    assert intake["image"] == worker["image"] and intake["build"] == "."
    assert intake["command"] == ["leadbridge", "serve"] and worker["command"] == ["leadbridge", "worker"]
    assert list(data["volumes"]) == ["ledger", "pgdata"]
    for service in (intake, worker):
        assert service["profiles"] == ["sqlite"]
        assert service["volumes"] == ["ledger:/var/lib/leadbridge"]
        assert service["env_file"] == ".env"
        assert service["restart"] == "unless-stopped"
    assert "/healthz" in " ".join(intake["healthcheck"]["test"])
    assert worker["healthcheck"] == {"disable": True}
    env = (ROOT / "deploy" / "leadbridge.env.example").read_text()
    assert "\nCOMPOSE_PROFILES=sqlite\n" in env


def test_compose_postgres_profile_is_two_intakes_three_workers_one_database() -> None:
    services = {name: s for name, s in compose()["services"].items() if s.get("profiles") == ["postgres"]}
    intakes = [s for s in services.values() if s.get("command") == ["leadbridge", "serve"]]
    (workers,) = [s for s in services.values() if s.get("command") == ["leadbridge", "worker"]]
    assert len(intakes) == 2 and workers["deploy"]["replicas"] == 3
    assert {s["ports"][0] for s in intakes} == {"8080:8080", "8081:8080"}
    for service in [*intakes, workers]:
        assert service["environment"] == {"LEADBRIDGE_CONFIG": "/app/config.postgres.yaml"}
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}} and "volumes" not in service
    assert services["postgres"]["image"] == "postgres:15"
    runs = " ".join(args for word, args in dockerfile_instructions() if word == "RUN")
    assert "c['ledger']['url'] = 'postgresql://leadbridge@postgres:5432/leadbridge'" in runs
    assert "config.postgres.yaml" in runs


def test_the_env_example_names_every_secret_the_example_config_reads() -> None:
    names = set(re.findall(r"^(\w+)=$", (ROOT / "deploy" / "leadbridge.env.example").read_text(), re.M))
    config = (ROOT / "config.example.yaml").read_text()
    assert names == set(re.findall(r"_env: (\w+)", config))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_restart_on_failure_as_a_user_with_the_ledger_dir_writable(unit: Path) -> None:
    settings = unit_settings(unit)
    assert settings["Restart"] == "on-failure" and settings["RestartSec"]
    assert settings["User"] not in ("root", "0")
    assert settings["EnvironmentFile"] == "/etc/leadbridge/leadbridge.env"
    assert (settings["NoNewPrivileges"], settings["ProtectSystem"]) == ("yes", "strict")
    assert settings["ReadWritePaths"] == "/var/lib/leadbridge"
    assert (settings["KillSignal"], settings["TimeoutStopSec"]) == ("SIGTERM", "30s")
    part = "serve" if "intake" in unit.name else "worker"
    assert settings["ExecStart"] == f"{INSTALLED_BINARY} {part} --config /etc/leadbridge/config.yaml"


def test_there_is_a_unit_for_intake_and_one_for_the_worker() -> None:
    assert [p.name for p in UNITS] == ["leadbridge-intake.service", "leadbridge-worker.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    # verify insists ExecStart exists; point it at this venv's leadbridge instead of /opt.
    binary = str(Path(sys.executable).parent / "leadbridge")
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_BINARY, binary))
        copies.append(str(copy))
    result = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys and bad values too; it only warns, so its output must be empty.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_images_generated_configs_load_and_the_postgres_one_starts_no_helper_workers(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.example.yaml", tmp_path)
    for word, args in dockerfile_instructions():
        if word == "RUN" and args.startswith('python -c "'):
            subprocess.run([sys.executable, "-c", args[len('python -c "') : -1]], cwd=tmp_path, check=True)
    container = settings_from_dict(yaml.safe_load((tmp_path / "config.container.yaml").read_text()), ROOT)
    postgres = settings_from_dict(yaml.safe_load((tmp_path / "config.postgres.yaml").read_text()), ROOT)
    assert (container.server.host, container.worker.processes) == ("0.0.0.0", 3)
    # Three replicas of up to four processes each would pass PostgreSQL's 100 connections.
    assert (postgres.ledger.url, postgres.worker.processes) == ("postgresql://leadbridge@postgres:5432/leadbridge", 1)
