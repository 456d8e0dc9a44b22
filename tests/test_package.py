"""The installable package: the wheel works outside the repository, `init` scaffolds, setup.cfg declares what is imported.

The wheel test builds from a copy of the sources (an in-tree build would leave build/ and
*.egg-info in the checkout) and installs it with --no-deps into a fresh virtualenv made
without pip; that venv reaches the dependencies through a .pth line naming this test
environment's site-packages. A .pth line only appends a folder to sys.path, so the
editable install living there (its finder hook is itself a .pth) is never activated,
and `bridge` can only come from the wheel. That needs no index and takes seconds.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.version import Version

from bridge.cli import main

from .conftest import ENV, ROOT

# What the wheel is built from: the package sources and what setup.cfg and MANIFEST.in name.
BUILD_INPUTS = (
    "bridge",
    "connectors",
    "setup.cfg",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
    "CHANGELOG.md",
    "config.example.yaml",
    "mappings",
)
COMMAND_SECONDS = 300  # a loaded 2-core machine; each step takes a few seconds when idle


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_init_writes_a_config_that_checks_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "relay"
    result = run("init", str(target))
    assert result.exit_code == 0, result.output
    assert (target / "config.yaml").read_bytes() == (ROOT / "config.example.yaml").read_bytes()
    shipped = sorted(p.name for p in (ROOT / "mappings").glob("*.yaml"))
    assert sorted(p.name for p in (target / "mappings").iterdir()) == shipped
    env_lines = (target / ".env.example").read_text().splitlines()
    assert [line for line in env_lines if not line.startswith("#")] == [
        "HUBSPOT_TOKEN=",
        "SLACK_BOT_TOKEN=",
        "HUBSPOT_CLIENT_SECRET=",
        "TYPEFORM_SECRET=",
        "GOOGLE_ADS_KEY=",
        "WORDPRESS_SECRET=",
    ]
    checked = run("check-config", "--config", str(target / "config.yaml"))
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith(f"ok: {target / 'config.yaml'} ")

    (target / "config.yaml").write_text("# mine\n")
    again = run("init", str(target))
    assert again.exit_code == 1
    assert f"exists: {target / 'config.yaml'}" in again.output
    assert "pass --force" in again.output
    assert (target / "config.yaml").read_text() == "# mine\n"  # nothing written, not even the missing ones
    assert run("init", str(target), "--force").exit_code == 0
    assert (target / "config.yaml").read_bytes() == (ROOT / "config.example.yaml").read_bytes()


def test_without_a_config_the_cli_lists_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEADBRIDGE_CONFIG", raising=False)
    (tmp_path / "config.example.yaml").write_bytes((ROOT / "config.example.yaml").read_bytes())  # not a fallback
    result = run("check-config")
    assert result.exit_code == 1
    assert "--config (not set), $LEADBRIDGE_CONFIG (not set), ./config.yaml (" in result.output
    assert "`leadbridge init .`" in result.output


def _build_wheel(tmp: Path) -> Path:
    source = tmp / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(tmp / "dist")]
    # Offline with the test extra's setuptools (>= 70.1 builds wheels itself); an older one
    # (an environment from before it was declared) builds in pip's isolated env instead.
    if Version(importlib.metadata.version("setuptools")) >= Version("70.1"):
        argv.insert(4, "--no-build-isolation")
    subprocess.run(argv, check=True, timeout=COMMAND_SECONDS, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("leadbridge-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=COMMAND_SECONDS)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, timeout=COMMAND_SECONDS)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "leadbridge-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_installed_outside_the_repo_runs_init_then_check_config(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    carried = {name for name in zipfile.ZipFile(wheel).namelist() if "/share/leadbridge/" in name}
    expected = {"config.example.yaml", *(f"mappings/{p.name}" for p in (ROOT / "mappings").glob("*.yaml"))}
    assert {name.split("/share/leadbridge/", 1)[1] for name in carried} == expected

    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEADBRIDGE_CONFIG", "VIRTUAL_ENV")}
    env.update(ENV)
    leadbridge = str(venv / "bin" / "leadbridge")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([leadbridge, *args], cwd=work, env=env, capture_output=True, text=True, timeout=COMMAND_SECONDS)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bridge; print(bridge.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the wheel's code, not the checkout's

    missing = cli("check-config")
    assert missing.returncode == 1
    assert "no config file found; looked at: --config (not set), $LEADBRIDGE_CONFIG (not set), ./config.yaml (" in missing.stderr
    assert "`leadbridge init .`" in missing.stderr

    initialised = cli("init", ".")
    assert initialised.returncode == 0, initialised.stderr
    assert (work / "mappings" / "typeform.yaml").is_file() and (work / ".env.example").is_file()
    checked = cli("check-config")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"ok: {work.resolve() / 'config.yaml'} ")


def _requirements(section: str, key: str) -> list[Requirement]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return [Requirement(line) for line in parser[section][key].splitlines() if line.strip() and not line.startswith("#")]


def _declared() -> dict[str, list[Requirement]]:
    extras = configparser.ConfigParser()
    extras.read(ROOT / "setup.cfg")
    found = {"install_requires": _requirements("options", "install_requires")}
    for extra in extras["options.extras_require"]:
        found[extra] = _requirements("options.extras_require", extra)
    return found


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for folder in ("bridge", "connectors", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("bridge", "connectors", "bench", "tests")}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


# Declared but never imported, on purpose.
NOT_IMPORTED = {
    "gunicorn": "run as `python -m gunicorn`",
    "setuptools": "builds the wheel in test_package",
    "ruff": "a tool",
    "mypy": "a tool",
    "types-pyyaml": "stubs for mypy",
}


def test_setup_cfg_declares_every_import_with_bounds() -> None:
    declared = {_canonical(r.name) for reqs in _declared().values() for r in reqs}
    providers = importlib.metadata.packages_distributions()
    imported = {module: {_canonical(d) for d in providers.get(module, [module])} for module in _third_party_imports()}
    assert {m for m, dists in imported.items() if not dists & declared} == set()
    used = set().union(*imported.values())
    assert {name for name in declared - used if name not in NOT_IMPORTED} == set()
    unbounded = [
        str(r)
        for reqs in _declared().values()
        for r in reqs
        if not any(s.operator in ("<", "<=", "~=", "==") for s in r.specifier)
    ]
    unbounded = [r for r in unbounded if not r.startswith("setuptools")]  # a build tool: newer is fine
    assert unbounded == []
