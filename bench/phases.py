"""The measurements, one function per group of figures, each returning table rows.

Everything is observed from outside the relay: acks at the client, Slack posts and HubSpot
calls in the sandbox (its counters and its message log), delivered leads in the ledger file
(falling back to Slack posts if the ledger's layout is not the one known here), memory in /proc.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.load import Sent, closed_loop, lead_body, open_loop, percentile, post
from bench.stack import SECRET, Relay, Sandbox, hello, log_size, rss_mb, served_ms

# With contacts upserted and deals, notes and tasks created 100 to a batch call, a lead costs
# about 4/100 of a call; HubSpot's 100 calls per 10 s then carry 100 / 10 / (4/100) = 250 leads/s.
BATCH_OPTIMUM_LEADS_PER_S = 100 / 10 / (4 / 100)
RSS_GOAL_MB = 100.0
ACK_GOAL_MS = 20.0


@dataclass
class Row:
    figure: str
    value: str
    goal: str = ""
    ratio: str = ""


def ms(value: float, missing: str = "not answered") -> str:
    return missing if math.isinf(value) else f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def ratio(value: float, goal: float) -> str:
    if math.isinf(value) or math.isnan(value) or not goal:
        return "-"
    return f"{value / goal:.2f}" if value / goal >= 0.1 else f"{value / goal:.3f}"


def hubspot_calls(counters: dict[str, int]) -> int:
    return sum(n for key, n in counters.items() if key.startswith(("hubspot ", "search ")))


def hubspot_429s(counters: dict[str, int]) -> int:
    return sum(n for key, n in counters.items() if key in ("hubspot 429", "search 429"))


def slack_posts(counters: dict[str, int]) -> int:
    return counters.get("slack chat.postMessage 200", 0)


def wait_settled(sandbox: Sandbox, before: dict[str, int], quiet: float = 1.5, limit: float = 30.0) -> dict[str, int]:
    """The counters once a lead is done: a Slack post seen (or 15 s passed) and no request for
    ``quiet`` seconds, so steps after the alert (deal link, task) are counted too."""
    start = time.monotonic()
    last, changed = before, time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.25)
        now = sandbox.counters()
        if now != last:
            last, changed = now, time.monotonic()
        posted = slack_posts(now) > slack_posts(before) or time.monotonic() - start > 15
        if posted and time.monotonic() - changed >= quiet:
            break
    return last


def calls_per_lead(sandbox: Sandbox, relay: Relay, latency_ms: float) -> list[Row]:
    """HubSpot calls (search included) for one new, one returning and one phone-only lead, sent
    one at a time to a running worker after a warm-up lead has filled its caches; and the new
    lead's webhook -> Slack time, alone on the relay."""
    session = requests.Session()
    goals = {"new": (3, "new ≤ 3"), "returning": (2, "returning ≤ 2"), "phone-only": (None, "")}
    bodies = {
        "warm-up": lead_body("calls", 70_001),
        "new": lead_body("calls", 70_002),
        "returning": lead_body("calls", 70_003, person=70_002),
        "phone-only": lead_body("calls", 70_004, email=False),
    }
    rows, acked = [], {}
    for kind, body in bodies.items():
        before = sandbox.counters()
        post(session, relay.url, body, SECRET).raise_for_status()
        acked[kind] = time.time()
        after = wait_settled(sandbox, before)
        if kind in goals:
            calls = hubspot_calls(after) - hubspot_calls(before)
            goal, text = goals[kind]
            rows.append(Row(f"HubSpot calls per {kind} lead", str(calls), text, ratio(calls, goal or 0)))
    floor = 2 * latency_ms
    alone = (posted_at(sandbox, "calls").get(70_002, math.inf) - acked["new"]) * 1000
    target = f"≤ {1.3 * floor:.0f} ms (1.3 × floor)"
    times = ratio(alone, floor)
    rows.append(Row("webhook → Slack, one new lead alone", ms(alone, "not alerted"), target, times + " × floor" * (times != "-")))
    return rows


def speed_to_lead(sandbox: Sandbox, relay: Relay, rate: float, seconds: float, latency_ms: float, tail: float) -> list[Row]:
    """Webhook 200 -> Slack post, for new leads at ``rate`` per second, from the ack's wall time
    to the ``ts`` the sandbox gave the message (a lead not alerted by the tail's end counts as
    infinitely slow)."""
    count = max(1, round(rate * seconds))
    posts_before = slack_posts(sandbox.counters())
    sent = open_loop(relay.url, [lead_body("s2l", n) for n in range(count)], rate, SECRET, threads=16)
    end = time.monotonic() + tail
    while time.monotonic() < end and slack_posts(sandbox.counters()) - posts_before < count:
        time.sleep(0.5)
    posted = posted_at(sandbox, "s2l")
    delays = [(posted[i] - acked) * 1000 for i, acked in sent.acked_at.items() if i in posted]
    missing = count - len(delays)
    floor = 2 * latency_ms
    label = f"webhook → Slack at {rate:g} leads/s for {seconds:g} s, {latency_ms:g} ms latency"
    rows = []
    for q in (50, 95):
        value = percentile(delays, q / 100, missing)
        times = ratio(value, floor)
        rows.append(
            Row(
                f"{label}: p{q}",
                ms(value, f"> {tail:g} s (not alerted)"),
                f"≤ {1.3 * floor:.0f} ms (1.3 × floor)",
                times + " × floor" * (times != "-"),
            )
        )
    rows.append(Row("  floor: one contact write + one Slack post", ms(floor)))
    alerted = f"{len(delays)} of {count}" + (f" (their p50 {ms(percentile(delays, 0.5))})" if missing and delays else "")
    rows.append(Row(f"  alerted by {tail:g} s after the last webhook", alerted, f"{count} of {count}"))
    return rows


def posted_at(sandbox: Sandbox, tag: str) -> dict[int, float]:
    """Each bench lead's first Slack post, as a Unix time, found by the email in it (the text
    shows the phone when there is one; the blocks always show the email)."""
    pattern = re.compile(rf"lead(\d+)\.{re.escape(tag)}@")
    found: dict[int, float] = {}
    for message in sandbox.state()["messages"]:
        match = pattern.search(json.dumps([message.get("text"), message.get("blocks")]))
        if match:
            found.setdefault(int(match.group(1)), float(message["ts"]))
    return found


def ack_rows(label: str, sent: Sent, total: int, inside: list[float] | None = None) -> list[Row]:
    """p50 and p99 of the acks as the client saw them, from each request's due time; with
    ``inside`` (gunicorn's own times for the same requests), that p99 too, which leaves out
    what a busy 2-core machine adds on the client's side and between the sockets."""
    missing = total - len(sent.latencies)
    p50, p99 = percentile(sent.latencies, 0.5, missing), percentile(sent.latencies, 0.99, missing)
    failed = len(sent.statuses) - sent.ok()
    note = f" ({failed} not 2xx, {sent.unsent} unsent)" if failed or sent.unsent else ""
    rows = [
        Row(f"ack p50, {label}", ms(p50)),
        Row(f"ack p99, {label}{note}", ms(p99), f"≤ {ACK_GOAL_MS:g} ms", ratio(p99, ACK_GOAL_MS)),
    ]
    if inside:
        rows.append(Row("  the same p99 inside gunicorn (its access log, whole ms)", ms(percentile(inside, 0.99))))
    return rows


def acks(relay: Relay, label: str, bodies: list[bytes], rate: float, report: Callable[[list[Row]], None]) -> Sent:
    """Send ``bodies`` open-loop and report their ack rows, client-side and inside gunicorn."""
    log = relay.folder / "serve.log"
    since = log_size(log)
    sent = open_loop(relay.url, bodies, rate, SECRET)
    report(ack_rows(label, sent, len(bodies), served_ms(log, since)))
    return sent


def delivered(relay: Relay, sandbox: Sandbox) -> int:
    """Leads delivered so far: the ledger's count, or Slack posts if the ledger cannot say."""
    url, ledger = relay.data["ledger"].get("url"), relay.ledger
    if url:
        import psycopg

        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                return int(conn.execute("SELECT count(*) FROM deliveries WHERE status = 'delivered'").fetchone()[0])
        except psycopg.Error:
            return slack_posts(sandbox.counters())
    try:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return slack_posts(sandbox.counters())
    try:
        return int(db.execute("SELECT count(*) FROM deliveries WHERE status = 'delivered'").fetchone()[0])
    except sqlite3.Error:
        return slack_posts(sandbox.counters())
    finally:
        db.close()


@dataclass
class Memory:
    """Peak resident memory seen, per process, for the intake and the worker."""

    intake: float = 0.0
    intake_total: float = 0.0
    worker: float = 0.0
    worker_total: float = 0.0

    def sample(self, relay: Relay) -> None:
        intake = rss_mb(relay.pids["serve"], only="gunicorn") if "serve" in relay.pids else []
        worker = rss_mb(relay.pids["worker"]) if "worker" in relay.pids else []
        self.intake = max([self.intake, *intake])
        self.intake_total = max(self.intake_total, sum(intake))
        self.worker = max([self.worker, *worker])
        self.worker_total = max(self.worker_total, sum(worker))

    def rows(self) -> list[Row]:
        goal = f"≤ {RSS_GOAL_MB:g} MB each"
        return [
            Row("RSS intake, largest gunicorn process (peak)", f"{self.intake:.0f} MB", goal, ratio(self.intake, RSS_GOAL_MB)),
            Row("RSS intake, gunicorn master + workers (peak)", f"{self.intake_total:.0f} MB"),
            Row("RSS worker, largest worker process (peak)", f"{self.worker:.0f} MB", goal, ratio(self.worker, RSS_GOAL_MB)),
            Row("RSS worker and its helper workers (peak)", f"{self.worker_total:.0f} MB"),
        ]


def backlog_and_drain(
    sandbox: Sandbox,
    relay: Relay,
    rate: float,
    seconds: float,
    cap: float,
    memory: Memory,
    report: Callable[[list[Row]], None],
    workers: int = 1,
    prefix: str = "",
) -> list[Row]:
    """Queue ``rate`` x ``seconds`` leads with no worker (ack idle), start ``workers`` workers and,
    from the first HubSpot call, send as many again (ack while draining), then let them drain
    until the queue is empty or ``cap`` seconds after that call; leads/s against the batch
    optimum and 429s answered meanwhile. ``prefix`` names the ledger in every row."""
    count = round(rate * seconds)
    bodies = [lead_body("idle", 10_000 + n) for n in range(count)]
    idle = acks(relay, f"{prefix}intake, {rate:g} req/s, worker idle", bodies, rate, report)
    memory.sample(relay)
    queued = idle.ok()
    before = sandbox.counters()
    worker = relay.worker(workers)
    try:
        # The clock starts at the worker's first HubSpot call, so its start-up is not counted.
        started_at = first_call(sandbox, before)
        who = "worker" if workers == 1 else f"{workers} workers"
        label = f"{prefix}intake, {rate:g} req/s, {who} draining {queued:,}"
        busy = acks(relay, label, [lead_body("busy", 20_000 + n) for n in range(count)], rate, report)
        queued += busy.ok()
        done = 0
        while time.monotonic() - started_at < cap and done < queued:
            memory.sample(relay)
            time.sleep(1.0)
            done = delivered(relay, sandbox)
        elapsed = time.monotonic() - started_at
        after = sandbox.counters()
    finally:
        worker.close()
    return drain_rows(
        done, queued, elapsed, cap, since(after, before), f"{prefix}{'' if workers == 1 else f'{workers} workers, '}"
    )


def since(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counters gained between two readings."""
    return {key: n - before.get(key, 0) for key, n in after.items()}


def drain_rows(done: int, queued: int, elapsed: float, cap: float, counted: dict[str, int], prefix: str = "") -> list[Row]:
    speed = done / elapsed
    capped = f" (capped at {cap:g} s)" if done < queued else ""
    return [
        Row(
            f"{prefix}drain: {done:,} of {queued:,} queued leads in {elapsed:.0f} s{capped}",
            f"{speed:.1f} leads/s",
            f"≥ 90 % of {BATCH_OPTIMUM_LEADS_PER_S:.0f}",
            ratio(speed, BATCH_OPTIMUM_LEADS_PER_S),
        ),
        Row(f"{prefix}drain: HubSpot answers 429", str(hubspot_429s(counted)), "0"),
        Row(
            f"{prefix}drain: HubSpot calls per delivered lead", f"{hubspot_calls(counted) / max(done, 1):.2f}", "≈ 0.04 (batches)"
        ),
    ]


def first_call(sandbox: Sandbox, before: dict[str, int], limit: float = 60.0) -> float:
    """When the first HubSpot call after ``before`` was seen (or ``limit`` s passed)."""
    start = time.monotonic()
    while time.monotonic() - start < limit and hubspot_calls(sandbox.counters()) == hubspot_calls(before):
        time.sleep(0.05)
    return time.monotonic()


def throughput(folder: Path, relay: Relay, seconds: float, rate: float) -> list[Row]:
    """Closed-loop answers per second: the bare hello app, then the intake (worker stopped).
    First the hello app's acks at the open-loop rate: what this machine and client add to any
    ack figure, whatever the relay does."""
    with hello(folder, relay) as url:
        count = round(rate * seconds)
        sent = open_loop(url, [b"{}"] * count, rate, SECRET)
        label = f"bare hello app, {rate:g} req/s (what machine and client add)"
        calibration = ack_rows(label, sent, count, served_ms(folder / "hello.log"))
        for row in calibration:
            row.goal = row.ratio = ""
        bare, bare_failed = closed_loop(url, SECRET, seconds, tag="hello")
    intake, intake_failed = closed_loop(relay.url, SECRET, seconds, tag="tp")
    failed = f" ({intake_failed} not 2xx)" if intake_failed else ""
    bare_note = f" ({bare_failed} not 2xx)" if bare_failed else ""
    return [
        *calibration,
        Row(f"bare Flask hello, same gunicorn settings{bare_note}", f"{bare:.0f} req/s"),
        Row(f"intake throughput{failed}", f"{intake:.0f} req/s", "≥ 0.5 × hello", ratio(intake, bare)),
    ]
