"""``leadbridge init``: a working config, its mappings and an ``.env.example`` in a folder.

The files are the example the project ships: in a source checkout the repository's own
``config.example.yaml`` and ``mappings/``, once installed from the wheel the same files
carried as data files (``<prefix>/share/leadbridge/``, see setup.cfg). They are copied
byte for byte, so what ``init`` writes is what the tests load; only ``.env.example`` is
made here, from the variables the written config names.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_CONFIG, Settings, load_settings
from .errors import ConfigError, ExistingFilesError

EXAMPLE_CONFIG = "config.example.yaml"
MAPPINGS = "mappings"
ENV_EXAMPLE = ".env.example"
DISTRIBUTION = "leadbridge"


def examples_dir() -> Path:
    """The folder holding the example config and its ``mappings/``."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / EXAMPLE_CONFIG).is_file() and (checkout / MAPPINGS).is_dir():
        return checkout
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == EXAMPLE_CONFIG:
            return Path(str(file.locate())).resolve().parent
    raise ConfigError([f"the example config is not installed (no {EXAMPLE_CONFIG} in the {DISTRIBUTION} package)"])


@dataclass(frozen=True)
class Plan:
    """What ``init`` writes: copies (target <- source) and the generated .env.example."""

    copies: list[tuple[Path, Path]]
    env_file: Path

    def targets(self) -> list[Path]:
        return [target for target, _ in self.copies] + [self.env_file]


def plan(directory: Path) -> Plan:
    examples = examples_dir()
    copies = [(directory / DEFAULT_CONFIG, examples / EXAMPLE_CONFIG)]
    copies += [(directory / MAPPINGS / m.name, m) for m in sorted((examples / MAPPINGS).glob("*.yaml"))]
    return Plan(copies, directory / ENV_EXAMPLE)


def write_scaffold(directory: Path, *, force: bool = False) -> list[Path]:
    """Write config.yaml, mappings/ and .env.example into ``directory``; the paths written.

    Nothing is written when any target exists, unless ``force``: a half-overwritten
    config folder would be worse than either.
    """
    todo = plan(directory)
    existing = [path for path in todo.targets() if path.exists()]
    if existing and not force:
        raise ExistingFilesError(existing)
    for target, source in todo.copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    # Loading what was written proves it works and says which secrets it needs.
    settings = load_settings(directory / DEFAULT_CONFIG)
    todo.env_file.write_text(env_example(settings))
    return todo.targets()


def secret_variables(settings: Settings) -> dict[str, list[str]]:
    """Every environment variable the config reads a secret from, with what reads it."""
    found: dict[str, list[str]] = {}
    for ref in settings.secret_refs():
        if ref.env and ref.file is None:
            found.setdefault(ref.env, []).append(f"{ref.reader} ({ref.note})" if ref.note else ref.reader)
    return found


def env_example(settings: Settings) -> str:
    """An env file (docker compose env_file, systemd EnvironmentFile) naming every secret, values empty."""
    lines = [
        "# Secrets for config.yaml, one VAR=value a line; fill them in and keep the copy out of git.",
        "# Each can come from a file instead: replace `*_env: VAR` with `*_file: /run/secrets/...`.",
    ]
    for name, users in secret_variables(settings).items():
        lines += [f"# {', '.join(users)}", f"{name}="]
    return "\n".join(lines) + "\n"
