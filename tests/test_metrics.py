"""Metrics and stats (issue 11): /metrics equals the ledger's counts after a scripted run, on every
intake instance alike; the shipped dashboard and alert rules use only names it exposes; and
`leadbridge stats` reports the same run."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from bridge.cli import main
from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.stats import percentile
from bridge.worker import Worker
from bridge.workermetrics import REGISTRY

from .conftest import ROOT, Sandbox, answer, post_typeform, served, typeform_payload
from .procs import BOOT_SECONDS, free_port, started, wait_until

UPSERT = "/crm/v3/objects/contacts/batch/upsert"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    answer = requests.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def lead(n: int, email: str | None = None) -> dict[str, Any]:
    return answer(typeform_payload(event_id=f"metrics-{n}"), "email", email or f"metrics{n}@example-roofing.com")


@pytest.fixture
def scripted(settings: Settings, ledger: Ledger, sandbox: Sandbox) -> Iterator[tuple[str, str]]:
    """Two intake instances on one ledger (as two gunicorn workers) after a run with every outcome."""
    with served(settings) as first, served(settings) as second:
        worker = Worker(settings, ledger)
        sandbox.fault(path=UPSERT, status=400, times=1)
        assert post_typeform(first, lead(1)).status_code == 200  # dead: HubSpot refuses it
        worker.drain()
        for n in (2, 3):
            assert post_typeform(first, lead(n)).status_code == 200  # delivered
        assert post_typeform(second, lead(2)).json()["duplicate"] is True  # the sender retried, twice
        assert post_typeform(first, lead(2)).json()["duplicate"] is True
        assert post_typeform(first, lead(4, "metrics2@example-roofing.com")).status_code == 200  # the same person again
        unreachable = answer(answer(typeform_payload(event_id="metrics-5"), "email", "not-an-email"), "phone", "123")
        assert post_typeform(second, unreachable).status_code == 200  # rejected
        assert post_typeform(first, lead(6), secret="wrong").status_code == 401  # refused
        assert requests.post(f"{second}/hooks/nope", data=b"{}", timeout=5).status_code == 404
        worker.drain()
        yield first, second


def test_metrics_equal_the_ledger_counts_on_every_intake_instance(scripted: tuple[str, str], settings: Settings) -> None:
    first, second = scripted
    samples = scrape(first)
    db = open_ledger(settings.ledger).db
    by_status = {(s, st): n for s, st, n in db.execute("SELECT source, status, count(*) FROM deliveries GROUP BY 1, 2")}
    notified = db.execute("SELECT count(*) FROM steps WHERE step = 'notify' AND result LIKE '%\"ts\"%'").fetchone()[0]
    assert by_status == {("typeform", "dead"): 1, ("typeform", "delivered"): 3, ("typeform", "rejected"): 1}
    assert named(samples, "leadbridge_deliveries") == {
        (("source", s), ("status", st)): float(n) for (s, st), n in by_status.items()
    }
    assert named(samples, "leadbridge_intake_requests_total") == {
        (("code", "200"), ("outcome", "accepted"), ("source", "typeform")): 5.0,
        (("code", "200"), ("outcome", "duplicate"), ("source", "typeform")): 2.0,
        (("code", "401"), ("outcome", "refused"), ("source", "typeform")): 1.0,
        (("code", "404"), ("outcome", "refused"), ("source", "(unknown)")): 1.0,
    }
    assert named(samples, "leadbridge_duplicates_prevented_total") == {
        (("by", "sender_retry"), ("source", "typeform")): 2.0,
        (("by", "person"), ("source", "typeform")): 1.0,
    }
    assert samples[("leadbridge_queue_depth", ())] == 0.0
    assert samples[("leadbridge_oldest_due_age_seconds", ())] == 0.0
    assert samples[("leadbridge_dead_letters_waiting", ())] == float(by_status[("typeform", "dead")])
    # Drained in-process (no worker loop ran): no heartbeat, reported as infinitely old.
    assert samples[("leadbridge_worker_heartbeat_age_seconds", ())] == float("inf")
    counts = named(samples, "leadbridge_speed_to_lead_seconds_count")
    assert sum(counts.values()) == notified == 3
    assert {dict(labels)["source"] for labels in counts} == {"typeform"}
    infinite = named(samples, "leadbridge_speed_to_lead_seconds_bucket")
    assert sum(v for labels, v in infinite.items() if dict(labels)["le"] == "+Inf") == 3
    # The other instance (another gunicorn worker) reads the same ledger: the same numbers.
    again = scrape(second)
    assert {k: v for k, v in again.items() if "age_seconds" not in k[0]} == {
        k: v for k, v in samples.items() if "age_seconds" not in k[0]
    }


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bleadbridge_[a-z_]+\b", text))


def dashboard_exprs() -> str:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    return "\n".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])


def alert_exprs() -> str:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    return "\n".join(str(rule["expr"]) for group in rules["groups"] for rule in group["rules"])


@pytest.mark.parametrize("exprs", [dashboard_exprs, alert_exprs], ids=["grafana", "prometheus-alerts"])
def test_every_metric_the_deploy_files_use_is_exposed(scripted: tuple[str, str], exprs: Any) -> None:
    exposed = {name for name, _labels in scrape(scripted[0])}
    used = used_names(exprs())
    assert len(used) >= 4
    assert sorted(used - exposed) == []


def test_the_readme_lists_every_exposed_metric(scripted: tuple[str, str]) -> None:
    exposed = {re.sub(r"_(bucket|count|sum)$", "", name) for name, _labels in scrape(scripted[0])}
    readme = (ROOT / "README.md").read_text()
    assert sorted(n for n in exposed if f"`{n}" not in readme) == []


def test_a_scrape_of_an_empty_ledger_has_every_family(intake: str, ledger: Ledger) -> None:
    samples = scrape(intake)
    assert samples[("leadbridge_queue_depth", ())] == 0.0
    assert named(samples, "leadbridge_deliveries") == {}
    assert ledger.counts() == {} and Status.DEAD not in ledger.counts()


def test_stats_report_the_same_run_from_the_ledger(
    scripted: tuple[str, str], config_data: dict[str, Any], tmp_path: Path, sandbox: Sandbox
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    result = CliRunner().invoke(main, ["stats", "--since", "1d", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (day,) = report["days"]
    assert {k: v for k, v in day.items() if k != "day"} == {
        "source": "typeform",
        "received": 5,
        "delivered": 3,
        "dead": 1,
        "rejected": 1,
        "spam": 0,
        "partial": 0,
        "test": 0,
        "in_flight": 0,
    }
    assert report["dead_waiting"] == 1
    assert report["duplicates_prevented"] == {"returning_person": 1, "sender_retry_all_time": 2}
    speed = report["speed_to_lead_seconds"]
    assert speed["count"] == 3 and 0 <= speed["p50"] <= speed["p95"]
    # Every HubSpot call the workers made, as HubSpot (the sandbox) saw them, per delivered lead.
    made = sandbox.calls("/crm/")
    assert report["hubspot_calls"] == made and report["hubspot_calls_per_delivered_lead"] == round(made / 3, 2)

    text = CliRunner().invoke(main, ["stats", "--config", str(config)])
    assert text.exit_code == 0
    assert "typeform" in text.output and "dead letters waiting: 1" in text.output
    assert "p50" in text.output and "over 3 leads" in text.output
    assert f"HubSpot calls: {made}" in text.output


@pytest.mark.parametrize(("values", "p50", "p95"), [([], None, None), ([4.0], 4.0, 4.0), ([1.0, 2.0, 3.0, 4.0], 2.0, 4.0)])
def test_percentiles_are_nearest_rank(values: list[float], p50: float | None, p95: float | None) -> None:
    assert (percentile(values, 0.5), percentile(values, 0.95)) == (p50, p95)


def test_a_worker_serves_its_own_call_counts_on_its_metrics_port(
    config_data: dict[str, Any], sandbox: Sandbox, tmp_path: Path
) -> None:
    port = free_port()
    config_data["worker"]["metrics_port"] = port
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_data))
    settings = settings_from_dict(config_data, ROOT)
    sandbox.fault(path="/api/chat.postMessage", status=429, times=1, headers={"Retry-After": "0"})
    argv = [sys.executable, "-m", "bridge", "worker", "--config", str(config)]
    with (
        served(settings) as url,
        (tmp_path / "worker.log").open("ab") as out,
        started(argv, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=out) as proc,
    ):
        assert post_typeform(url, lead(1)).status_code == 200
        worker_url = f"http://127.0.0.1:{port}"

        def delivered() -> bool:
            return (
                scrape(worker_url).get(("leadbridge_worker_deliveries_total", (("outcome", "delivered"), ("source", "typeform"))))
                == 1
            )

        wait_until(delivered, time.monotonic() + BOOT_SECONDS, "the worker to count the delivery", proc)
        samples = scrape(worker_url)
        calls = named(samples, "leadbridge_worker_calls_total")
        # A second lead, Slack unhindered: posted first, then updated with its deal link.
        assert post_typeform(url, lead(2)).status_code == 200

        def updated() -> bool:
            later = named(scrape(worker_url), "leadbridge_worker_calls_total")
            return later.get((("method", "update"), ("outcome", "ok"), ("port", "notifier"))) == 1

        wait_until(updated, time.monotonic() + BOOT_SECONDS, "the worker to count the Slack update", proc)
    # HubSpot requests by endpoint and status, 429s by vendor and policy, retries, step times.
    requests_made = named(samples, "leadbridge_hubspot_requests_total")
    assert requests_made[(("endpoint", "BatchApi.upsert"), ("status", "200"))] == 1
    assert named(samples, "leadbridge_rate_limited_total") == {(("policy", "ratelimited"), ("vendor", "slack")): 1}
    # Slack's 429 was waited out inside the attempt (the post went after the task): no retry at all.
    assert named(samples, "leadbridge_worker_retries_total") == {}
    steps = named(samples, "leadbridge_worker_step_seconds_count")
    assert steps[(("outcome", "ok"), ("step", "contact"))] == 1 and steps[(("outcome", "ok"), ("step", "task"))] == 1
    assert calls[(("method", "upsert_contacts"), ("outcome", "ok"), ("port", "crm"))] == 1
    assert (
        calls[(("method", "create_records"), ("outcome", "ok"), ("port", "crm"))] == 2
    )  # deal, task (batched across deliveries)
    assert calls[(("method", "notify"), ("outcome", "throttled"), ("port", "notifier"))] == 1  # Slack's 429
    assert calls[(("method", "notify"), ("outcome", "ok"), ("port", "notifier"))] == 1


def test_retries_are_counted_by_step_and_kind(intake: str, sandbox: Sandbox, worker: Worker, ledger: Ledger) -> None:
    def retries() -> float:
        return REGISTRY.get_sample_value("leadbridge_worker_retries_total", {"step": "contact", "kind": "retry"}) or 0.0

    before = retries()
    sandbox.fault(path="/crm/v3/objects/contacts/batch/upsert", status=503, times=3)  # 2 quick tries, then 1 more
    delivery_id = post_typeform(intake, lead(7)).json()["delivery_id"]
    worker.drain()
    assert ledger.get(delivery_id).status == Status.DELIVERED
    assert retries() == before + 1
