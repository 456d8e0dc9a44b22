"""``make bench``: the figures issue 8 puts numbers on, measured from outside real processes
(``leadbridge sandbox`` with latency and HubSpot's rate limit, ``leadbridge serve``,
``leadbridge worker``, a bare gunicorn "hello" app) and printed as one table with each goal
and ratio. ``python -m bench.run --quick`` runs every phase shorter, in about a minute.

Phases, in order, each bounded in time and each failing on its own (its row says why):
1. on a first ledger, with a worker running: HubSpot calls per new, returning and phone-only
   lead; then webhook -> Slack at 10 new leads/s;
2. on a second ledger: intake acks at an offered 200 req/s with no worker (which queues the
   backlog), then again while a worker drains it; the drain itself, capped in time; memory;
3. intake throughput against the hello app, closed-loop;
4. phase 2's acks and drain on a PostgreSQL ledger (a throwaway server), with one worker and
   then with three sharing the call budget.
Then ``python -m bench.parse`` if that module exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.phases import Memory, Row, backlog_and_drain, calls_per_lead, speed_to_lead, throughput
from bench.stack import ROOT, Relay, Sandbox, relay, sandbox


@dataclass(frozen=True)
class Plan:
    """How long each phase runs; ``QUICK`` keeps every phase but shortens it."""

    s2l_seconds: float = 20.0
    s2l_tail: float = 15.0
    ack_seconds: float = 10.0  # 200 req/s for 10 s queues the 2,000-lead backlog
    drain_cap: float = 90.0
    throughput_seconds: float = 5.0


FULL = Plan()
QUICK = Plan(s2l_seconds=5.0, s2l_tail=5.0, ack_seconds=3.0, drain_cap=20.0, throughput_seconds=2.0)
LEADS_PER_S = 10.0
ACK_RATE = 200.0


class Table:
    """Rows printed as they come, then all together at the end."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, rows: list[Row]) -> None:
        self.rows += rows
        for row in rows:
            print(f"  {row.figure}: {row.value}" + (f"  (goal {row.goal}, ratio {row.ratio})" if row.goal else ""), flush=True)

    def phase(self, name: str, measure: Callable[[], list[Row]]) -> None:
        print(f"{name} ...", flush=True)
        started = time.monotonic()
        try:
            self.add(measure())
        except Exception as exc:  # one failed phase must not hide the others' figures
            self.add([Row(name, f"FAILED: {type(exc).__name__}: {exc}"[:200])])
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)

    def print(self, title: str) -> None:
        widths = [
            max(len(getattr(r, key)) for r in [*self.rows, Row("figure", "value", "goal", "ratio")])
            for key in ("figure", "value", "goal")
        ]
        print(f"\n{title}")
        print(f"{'figure':<{widths[0]}}  {'value':>{widths[1]}}  {'goal':<{widths[2]}}  ratio")
        print("-" * (sum(widths) + 12))
        for row in self.rows:
            print(f"{row.figure:<{widths[0]}}  {row.value:>{widths[1]}}  {row.goal:<{widths[2]}}  {row.ratio}")


def first_ledger(table: Table, tmp: Path, sb: Sandbox, plan: Plan, latency_ms: float) -> None:
    with relay(tmp / "calls", sb.url) as r:
        sb.reset(r.data["routing"]["owners"])
        r.serve()
        r.worker()
        table.phase("HubSpot calls per lead", lambda: calls_per_lead(sb, r, latency_ms))
        table.phase(
            "webhook -> Slack",
            lambda: speed_to_lead(sb, r, LEADS_PER_S, plan.s2l_seconds, latency_ms, plan.s2l_tail),
        )


def second_ledger(table: Table, tmp: Path, sb: Sandbox, plan: Plan, memory: Memory) -> None:
    with relay(tmp / "drain", sb.url) as r:
        sb.reset(r.data["routing"]["owners"])
        r.serve()
        table.phase(
            "intake acks and drain",
            lambda: backlog_and_drain(sb, r, ACK_RATE, plan.ack_seconds, plan.drain_cap, memory, table.add),
        )
        table.phase("intake throughput", lambda: measured_throughput(tmp, r, plan, memory))


def postgres_ledger(table: Table, tmp: Path, sb: Sandbox, plan: Plan) -> None:
    """The drain phase again on a PostgreSQL ledger (a throwaway server, as the tests start
    one): with one worker, then on a fresh database with three sharing the call budget."""
    from tests import postgres

    why = postgres.unavailable()
    if why:
        table.add([Row("PostgreSQL ledger", f"skipped: {why}")])
        return
    server = postgres.start_postgres()
    try:
        for workers in (1, 3):
            url = server.create_database(f"bench{workers}")
            # Each row names its worker processes: no helper workers here.
            with relay(tmp / f"pg{workers}", sb.url, url, processes=1) as r:
                sb.reset(r.data["routing"]["owners"])
                r.serve()
                table.phase(
                    f"PostgreSQL, {workers} worker(s): intake acks and drain",
                    lambda n=workers: backlog_and_drain(
                        sb, r, ACK_RATE, plan.ack_seconds, plan.drain_cap, Memory(), table.add, n, "PostgreSQL: "
                    ),
                )
    finally:
        server.stop()


def measured_throughput(tmp: Path, r: Relay, plan: Plan, memory: Memory) -> list[Row]:
    rows = throughput(tmp, r, plan.throughput_seconds, ACK_RATE)
    memory.sample(r)
    return rows


def commit() -> str:
    found = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h (%cs)"], capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
    )
    return found.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def run_parse() -> None:
    """Another part of the bench may read these figures back; run it when it is there."""
    if importlib.util.find_spec("bench.parse") is None:
        return
    print("\npython -m bench.parse", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "bench.parse"], cwd=ROOT, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        print("bench.parse: timed out after 120 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every phase, shorter (about a minute)")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="upstream latency per HubSpot/Slack call")
    parser.add_argument("--rate-limit", default="100/10s", help="HubSpot's burst limit the sandbox enforces")
    parser.add_argument("--search-rate-limit", default="5/1s")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    table, memory = Table(), Memory()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leadbridge-bench-") as name:
        tmp = Path(name)
        try:
            with sandbox(tmp, args.latency_ms, args.rate_limit, args.search_rate_limit) as sb:
                first_ledger(table, tmp, sb, plan, args.latency_ms)
                second_ledger(table, tmp, sb, plan, memory)
                postgres_ledger(table, tmp, sb, plan)
        except Exception as exc:  # a stack that did not start still gets its table
            table.add([Row("bench", f"FAILED: {type(exc).__name__}: {exc}"[:200])])
        table.add(memory.rows())
    table.print(
        f"leadbridge bench{' --quick' if args.quick else ''} on {commit()}: sandbox {args.latency_ms:g} ms latency, "
        f"{args.rate_limit} (search {args.search_rate_limit}); {time.monotonic() - started:.0f} s"
    )
    run_parse()


if __name__ == "__main__":
    main()
