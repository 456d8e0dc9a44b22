"""Load for the intake: signed Typeform webhooks, sent open-loop (on a schedule, whatever the
answers' pace, so a slow server shows as latency rather than as a slower client) or closed-loop
(as fast as answers come, from several processes, for throughput); and percentiles.

An open-loop latency is counted from the moment the request was due, not when a free client
thread got to it, so queueing in the client counts against the server as it would for a form
vendor. Every loop is bounded: what was not sent by the phase's deadline is reported unsent.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from connectors.typeform import typeform_signature

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = json.loads((ROOT / "tests/fixtures/typeform/quote.json").read_text())
HOOK = "/hooks/typeform"
AREA_CODES = (650, 415, 408, 510, 925, 707, 831, 209)


def lead_body(tag: str, n: int, email: bool = True, person: int | None = None) -> bytes:
    """A quote-form submission from bench person ``person`` (default ``n``); each call is a new
    event. Without ``email`` the lead is phone-only."""
    person = n if person is None else person
    data = json.loads(json.dumps(SAMPLE))
    data["event_id"] = f"bench-{tag}-{n}-{time.time_ns()}"
    answers = []
    for answer in data["form_response"]["answers"]:
        if answer["type"] == "email":
            if not email:
                continue
            answer["email"] = f"lead{person}.{tag}@bench-roofing.com"
        if answer["type"] == "phone_number":
            # Distinct people (one person's deliveries go one at a time, by design), on real area codes.
            area = AREA_CODES[person // 10_000 % len(AREA_CODES)]
            answer["phone_number"] = f"({area}) 253-{person % 10_000:04d}"
        answers.append(answer)
    data["form_response"]["answers"] = answers
    return json.dumps(data).encode()


def signed_headers(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Typeform-Signature": typeform_signature(secret, body)}


def post(session: requests.Session, url: str, body: bytes, secret: str, timeout: float = 10.0) -> requests.Response:
    return session.post(url + HOOK, data=body, headers=signed_headers(body, secret), timeout=timeout)


@dataclass
class Sent:
    """What an open-loop run saw: latency in ms from due time to answer, per request sent, with
    the answer's status (0 for no answer), the wall time of each 2xx, and how many were never sent."""

    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    acked_at: dict[int, float] = field(default_factory=dict)
    unsent: int = 0

    def ok(self) -> int:
        return sum(200 <= s < 300 for s in self.statuses)


def open_loop(url: str, bodies: list[bytes], rate: float, secret: str, threads: int = 64, grace: float = 10.0) -> Sent:
    """Send ``bodies`` at ``rate`` per second on a fixed schedule. Nothing starts after the
    schedule's end plus ``grace``; a request that is not answered in time counts as status 0."""
    sent = Sent()
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))
    start = time.monotonic() + 0.2
    stop_at = start + len(bodies) / rate + grace

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                due = start + i / rate
                time.sleep(max(0.0, due - time.monotonic()))
                if time.monotonic() > stop_at:
                    with lock:
                        sent.unsent += 1
                    continue
                try:
                    status = post(session, url, bodies[i], secret, timeout=max(1.0, stop_at - time.monotonic())).status_code
                except requests.RequestException:
                    status = 0
                done = time.monotonic()
                with lock:
                    sent.latencies.append((done - due) * 1000)
                    sent.statuses.append(status)
                    if 200 <= status < 300:
                        sent.acked_at[i] = time.time()

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=max(0.0, stop_at - time.monotonic()) + 15)
    return sent


def _closed_loop_process(url: str, secret: str, seconds: float, threads: int, tag: str) -> tuple[int, int]:
    """One client process: ``threads`` clients posting back-to-back for ``seconds``; (2xx, others)."""
    counts = [0, 0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        n = 0
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                n += 1
                try:
                    ok = 200 <= post(session, url, lead_body(f"{tag}{k}", n), secret, timeout=10).status_code < 300
                except requests.RequestException:
                    ok = False
                with lock:
                    counts[0 if ok else 1] += 1

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 20)
    return counts[0], counts[1]


def closed_loop(
    url: str, secret: str, seconds: float, processes: int = 2, threads: int = 8, tag: str = "tp"
) -> tuple[float, int]:
    """Answers per second over ``seconds`` from ``processes`` x ``threads`` clients (processes,
    so the client's GIL is not the limit); and how many answers were not 2xx."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        jobs = [pool.apply_async(_closed_loop_process, (url, secret, seconds, threads, f"{tag}{p}-")) for p in range(processes)]
        results = [job.get(timeout=seconds + 60) for job in jobs]
    return sum(ok for ok, _ in results) / seconds, sum(bad for _, bad in results)


def percentile(values: list[float], p: float, missing: int = 0) -> float:
    """The ``p`` quantile (nearest rank), ``missing`` values counting as infinitely slow."""
    ordered = sorted(values) + [math.inf] * missing
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p) - 1))]
