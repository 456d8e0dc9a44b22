"""Secrets by reference: the one place a secret's value is read.

The config never holds a secret, only where it lives: an environment variable (``*_env``)
or a file (``*_file``, as Docker and Kubernetes mount secrets). Everything that needs a
value (intake's signature checks, the HubSpot and Slack clients, log redaction) asks here,
so both kinds work everywhere and a file is read the same way each time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def env_secret(name: str) -> str | None:
    """The variable's value; None when unset or empty (an empty secret verifies nothing)."""
    return os.environ.get(name) or None


def file_secret(path: Path) -> str | None:
    """The file's text without its trailing newline; None when missing, unreadable or empty.

    Read on every call, so a secret rotated in place (Kubernetes updates mounted files)
    is picked up without a restart, as a changed environment never could be.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # `echo secret > file` and editors add the newline; a secret never ends with one.
    return text.rstrip("\r\n") or None


def read_secret(env: str | None = None, file: Path | None = None) -> str | None:
    """One secret: from ``file`` when one is named, else from the variable ``env``."""
    if file is not None:
        return file_secret(file)
    return env_secret(env) if env else None


def read_secrets(envs: Iterable[str] = (), files: Iterable[Path] = ()) -> list[str]:
    """Every value that is set among several references (several allow rotation)."""
    values = [env_secret(name) for name in envs] + [file_secret(path) for path in files]
    return [value for value in values if value]


def shown(reference: str | Path, value: str | None) -> str:
    """How a reference appears in redacted config: its name and set/unset, never the value."""
    return f"{reference} ({'set' if value else 'unset'})"
