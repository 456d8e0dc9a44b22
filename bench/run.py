"""Benchmarks for the promises with numbers on them; run with ``make bench``.

- intake: signed Typeform webhook -> 200 through gunicorn, sequential and 8 at a time
  (target: well under 1 s; Elementor gives up at 5 s);
- worker: deliveries drained through the sandbox per second (each one: score, route, contact
  lookup and upsert, deal, note, task, Slack message);
- end to end: webhook 200 -> Slack message visible in the sandbox, with a running worker
  (target: a rep is pinged within 5 s).
Everything runs on loopback with a temporary ledger and a fresh sandbox.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

from bridge.config import settings_from_dict
from bridge.ledger import Ledger
from bridge.worker import Worker
from connectors.sandbox import SandboxServer, seed_owners
from connectors.typeform import typeform_signature

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"
SAMPLE = json.loads((ROOT / "tests/fixtures/typeform/quote.json").read_text())


def payload(n: int) -> bytes:
    data = json.loads(json.dumps(SAMPLE))
    data["event_id"] = f"bench-{n}-{time.time_ns()}"
    for answer in data["form_response"]["answers"]:
        if answer["type"] == "email":
            answer["email"] = f"lead{n}@bench-roofing.com"
        if answer["type"] == "phone_number":
            # Distinct people: one person's deliveries are processed one at a time, by design.
            answer["phone_number"] = f"(650) 253-{n % 10000:04d}"
    return json.dumps(data).encode()


def post(url: str, body: bytes) -> float:
    return send(url, body)[0]


def send(url: str, body: bytes) -> tuple[float, str]:
    start = time.perf_counter()
    response = requests.post(
        f"{url}/hooks/typeform",
        data=body,
        headers={"Content-Type": "application/json", "Typeform-Signature": typeform_signature(SECRET, body)},
        timeout=10,
    )
    response.raise_for_status()
    return (time.perf_counter() - start) * 1000, response.json()["delivery_id"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def config(tmp: Path, sandbox_url: str, port: int) -> dict:
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    data["server"]["port"] = port
    data["hubspot"]["base_url"] = sandbox_url
    data["slack"]["base_url"] = sandbox_url + "/api/"
    data["ledger"]["path"] = str(tmp / "bench.db")
    data["worker"].update(poll_seconds=0.05, concurrency=8)
    # Measure the relay, not its guards: no intake rate limit, no Slack pacing (which caps a
    # channel at about one message a second in production, by design).
    data["server"]["rate_limit"] = {"per_client_ip": 0, "per_source": 0}
    data["slack"]["min_seconds_between_posts"] = 0
    for source in data["sources"]:
        if "mapping" in source:
            source["mapping"] = str(ROOT / source["mapping"])
        source["forms"] = {key: str(ROOT / path) for key, path in source.get("forms", {}).items()}
    return data


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.update(TYPEFORM_SECRET=SECRET, HUBSPOT_TOKEN="bench", SLACK_BOT_TOKEN="xoxb-bench")
    with tempfile.TemporaryDirectory() as tmpdir, SandboxServer(search_lag=3.0) as sandbox:
        tmp, port = Path(tmpdir), free_port()
        seed_owners(sandbox.url, yaml.safe_load((ROOT / "config.example.yaml").read_text())["routing"]["owners"])
        data = config(tmp, sandbox.url, port)
        (tmp / "config.yaml").write_text(yaml.safe_dump(data))
        url = f"http://127.0.0.1:{port}"
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "bridge.app:create_app()"],
            env=dict(os.environ, LEADBRIDGE_CONFIG=str(tmp / "config.yaml")),
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    requests.get(f"{url}/healthz", timeout=1)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            report(url, data)
        finally:
            gunicorn.terminate()
            gunicorn.wait()


def report(url: str, data: dict) -> None:
    n = 300
    sequential = [post(url, payload(i)) for i in range(n)]
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: post(url, payload(n + i)), range(n)))
    rate = n / (time.perf_counter() - started)
    p99 = pct(sequential, 0.99)
    p50 = pct(sequential, 0.5)
    print(f"intake sequential  n={n}: p50 {p50:.1f} ms  p99 {p99:.1f} ms  (p99 / 1000 ms target = {p99 / 1000:.3f})")
    print(f"intake 8 at a time n={n}: p50 {pct(concurrent, 0.5):.1f} ms  p99 {pct(concurrent, 0.99):.1f} ms  {rate:.0f} req/s")

    settings = settings_from_dict(data, ROOT)
    ledger = Ledger(settings.ledger.path)
    started = time.perf_counter()
    handled = Worker(settings, ledger).drain(timeout=300)
    elapsed = time.perf_counter() - started
    each = elapsed / handled * 1000
    print(f"worker drain: {handled} deliveries in {elapsed:.2f} s = {handled / elapsed:.0f} leads/s ({each:.1f} ms each)")

    worker = Worker(settings, ledger)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    latencies = []
    for i in range(20):
        start = time.perf_counter()
        delivery_id = send(url, payload(10_000 + i))[1]
        # The notify step is recorded right after Slack answered, so this is 200 -> message posted.
        while "notify" not in ledger.steps(delivery_id):
            time.sleep(0.002)
        latencies.append((time.perf_counter() - start) * 1000)
    worker.stop()
    thread.join()
    median = statistics.median(latencies)
    worst = max(latencies)
    ratio = median / 5000
    print(
        f"end to end (200 -> Slack message) n=20: p50 {median:.0f} ms  max {worst:.0f} ms  (p50 / 5000 ms target = {ratio:.3f})"
    )


if __name__ == "__main__":
    main()
