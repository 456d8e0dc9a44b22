"""The README's quick start: `make run`'s command starts everything and the README's curl works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from .conftest import ROOT, with_absolute_mappings
from .procs import BOOT_SECONDS, free_port, started, wait_for, wait_until


def readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {name}.*?-->\s*```bash\n(.*?)\s*```", text, re.S)
    assert match, f"README has no {name} block"
    return match.group(1)


def makefile_run_command() -> str:
    makefile = (ROOT / "Makefile").read_text()
    return re.search(r"^run: install\n\t(.*)$", makefile, re.M).group(1)


def makefile_sandbox_env() -> dict[str, str]:
    line = re.search(r"^SANDBOX_ENV := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    return dict(re.findall(r"(\w+)=\$\$\{\w+:-([^}]*)\}", line))


def test_make_run_starts_everything_and_the_readme_curl_makes_a_contact(tmp_path: Path) -> None:
    assert "leadbridge run --sandbox --config config.example.yaml" in makefile_run_command()
    assert makefile_sandbox_env()["TYPEFORM_SECRET"] == "dev-typeform-secret"  # the README's curl signs with it
    relay, sandbox = free_port(), free_port()
    config = yaml.safe_load((ROOT / "config.example.yaml").read_text().replace(":8025", f":{sandbox}"))
    config["server"]["port"] = relay
    config["ledger"]["path"] = str(tmp_path / "ledger.db")
    with_absolute_mappings(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # The same environment `make run` gives the relay, read from the Makefile.
    sandbox_env = makefile_sandbox_env()
    env = {k: v for k, v in os.environ.items() if k not in sandbox_env} | sandbox_env
    argv = [sys.executable, "-m", "bridge", "run", "--sandbox", "--config", str(tmp_path / "config.yaml")]
    with started(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + BOOT_SECONDS
        wait_for(f"http://127.0.0.1:{relay}/healthz", deadline, proc)
        wait_for(f"http://127.0.0.1:{sandbox}/__sandbox/state", deadline, proc)
        script = readme_block("quickstart-send").replace("127.0.0.1:8080", f"127.0.0.1:{relay}")
        script = script.replace(".venv/bin/python", sys.executable)
        sent = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert '"ok":true' in sent.stdout.replace(" ", "")
        seen: dict[str, Any] = {}

        def delivered() -> bool:
            seen.update(requests.get(f"http://127.0.0.1:{sandbox}/__sandbox/state", timeout=5).json())
            return bool(seen["contacts"] and seen["messages"])

        wait_until(delivered, deadline, "a contact and a message in the sandbox", proc)
        state = seen
        (contact,) = state["contacts"]
        assert contact["properties"]["email"] == "jane.doe@acme-plumbing.com"
        # The example routing works against the sandbox: its owners are seeded, so the
        # water-heater lead goes to pat, who is mentioned in the plumbing channel.
        pat = next(o for o in state["owners"] if o["email"] == "pat@acme-plumbing.example")
        assert contact["properties"]["hubspot_owner_id"] == pat["id"]
        (message,) = state["messages"]
        assert message["channel"] == "#leads-plumbing" and "<@UPAT>" in message["text"]
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_the_five_minute_wordpress_example_runs(tmp_path: Path) -> None:
    command = readme_block("five-minutes-try").strip().replace(".venv/bin/leadbridge", f"{sys.executable} -m bridge.cli")
    env = dict(os.environ) | makefile_sandbox_env()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Outcome: deliver" in done.stdout and "  zip = '94105'" in done.stdout
