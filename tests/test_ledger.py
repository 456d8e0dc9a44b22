"""The ledger on a real SQLite file: idempotent intake, leases, person locks, audit log."""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from bridge.config import LedgerSettings
from bridge.groupcommit import GroupCommit, IntakeFirst
from bridge.ledger import _DUE, _EXPIRED_LEASES, LeaseLostError, Ledger, Status, open_ledger

# Raised by either backend when a constraint or trigger refuses a write.
REFUSED = (sqlite3.IntegrityError, psycopg.Error)


@pytest.fixture
def db(tmp_path: Path, ledger_url: str) -> Ledger:
    return open_ledger(LedgerSettings(path=tmp_path / "ledger.db", url=ledger_url))


def accept(db: Ledger, key: str = "k1", now: float = 100.0) -> str:
    delivery_id, _ = db.accept(
        source="typeform", idem_key=key, body=b"{}", content_type="application/json", headers={}, config_version="v1", now=now
    )
    return delivery_id


def test_wal_mode_and_migrations_are_applied_once(tmp_path: Path) -> None:
    first = Ledger(tmp_path / "l.db")
    Ledger(tmp_path / "l.db")  # reopening applies nothing twice
    assert first.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    applied = [r["name"] for r in first.db.query("SELECT name FROM _sqlite_migrations")]
    assert applied[:3] == ["m001_initial", "m002_sales_memory", "m003_claim_indexes"]
    assert len(applied) == len(set(applied))
    assert "m005_heartbeats" in applied
    assert "m004_contact_memory" in applied


def test_the_same_key_is_accepted_once(db: Ledger) -> None:
    first = db.accept(source="typeform", idem_key="k", body=b"a", content_type="", headers={}, config_version="v")
    again = db.accept(source="typeform", idem_key="k", body=b"b", content_type="", headers={}, config_version="v")
    other_source = db.accept(source="google", idem_key="k", body=b"c", content_type="", headers={}, config_version="v")
    assert again == (first[0], False) and first[1] is True and other_source[1] is True
    assert db.get(first[0]).body == b"a"


def test_a_lease_keeps_others_out_until_it_expires(db: Ledger) -> None:
    delivery_id = accept(db)
    assert [d.id for d in db.claim("a", 10, lease_seconds=30, now=100)] == [delivery_id]
    assert db.claim("b", 10, lease_seconds=30, now=110) == []
    taken = db.claim("b", 10, lease_seconds=30, now=131)
    assert [d.lease_owner for d in taken] == ["b"]
    with pytest.raises(LeaseLostError):
        db.record_step(delivery_id, "a", "contact", {"contact_id": "1"}, now=132)
    db.record_step(delivery_id, "b", "contact", {"contact_id": "1"}, now=132)
    assert db.steps(delivery_id) == {"contact": {"contact_id": "1"}}
    assert [(e["step"], e["outcome"]) for e in db.events(delivery_id)] == [
        ("intake", "received"),
        ("claim", "lease_expired"),
        ("contact", "ok"),
    ]


def test_one_persons_deliveries_run_one_at_a_time_and_in_order(db: Ledger) -> None:
    def take(key: str, keys: list[str]) -> str:
        delivery_id, _ = db.accept(
            source="s", idem_key=key, body=b"", content_type="", headers={}, config_version="v", person_keys=keys, now=100
        )
        return delivery_id

    first = take("k1", ["email:a@b.co", "phone:+16502530000"])
    second = take("k2", ["phone:+16502530000"])
    stranger = take("k3", ["email:c@d.co"])
    assert [d.id for d in db.claim("w", 10, 30, now=100)] == [first, stranger]
    assert db.claim("w", 10, 30, now=100) == []
    # Keys learnt later (after mapping) are checked too.
    assert db.lock_person(stranger, "w", ["email:c@d.co", "phone:+16502530000"], now=100) is False
    db.defer(stranger, "w", at=100.5, why="person busy", now=100)
    db.finish(first, "w", Status.DELIVERED, now=101)
    assert [d.id for d in db.claim("w", 10, 30, now=101)] == [second]  # the stranger, now known as the same person, waits


def test_retry_then_replay_resets_the_schedule_but_keeps_the_history(db: Ledger) -> None:
    delivery_id = accept(db)
    db.claim("w", 1, 30, now=100)
    assert db.begin_attempt(delivery_id, "w", now=100) == 1
    db.finish(delivery_id, "w", Status.DEAD, "contact: HubSpot 400", now=101)
    assert db.claim("w", 1, 30, now=1e12) == []
    assert db.requeue(delivery_id, now=200) == "requeued"
    replayed = db.get(delivery_id)
    assert (replayed.status, replayed.attempts, replayed.next_attempt_at) == (Status.RETRYING, 0, 200)
    assert db.events(delivery_id)[-1]["detail"] == "was dead after 1 attempt(s)"


def test_the_event_log_is_append_only(db: Ledger) -> None:
    accept(db)
    with pytest.raises(REFUSED, match="append-only"):
        db.db.execute("UPDATE events SET outcome = 'forged'")
    with pytest.raises(REFUSED, match="append-only"):
        db.db.execute("DELETE FROM events")


def test_states_are_a_closed_set(db: Ledger) -> None:
    delivery_id = accept(db)
    with pytest.raises(REFUSED):
        db.db.execute("UPDATE deliveries SET status = 'lost' WHERE id = ?", [delivery_id])


def test_a_double_click_across_a_content_window_edge_is_still_one_delivery(db: Ledger) -> None:
    from bridge.ports import content_key, key_aliases

    values = {"email": "a@b.co", "message": "Roof leak"}
    first = content_key(values, received_at=599.9, window_seconds=600)
    second = content_key(values, received_at=600.1, window_seconds=600)
    assert first != second and key_aliases(second) == [first]
    stored = db.accept(source="s", idem_key=first, body=b"", content_type="", headers={}, config_version="v")
    again = db.accept(
        source="s", idem_key=second, body=b"", content_type="", headers={}, config_version="v", aliases=key_aliases(second)
    )
    assert again == (stored[0], False)
    later = content_key(values, received_at=2000, window_seconds=600)
    assert db.accept(
        source="s", idem_key=later, body=b"", content_type="", headers={}, config_version="v", aliases=key_aliases(later)
    )[1]


@pytest.mark.sqlite_only  # SQLite's plan; PostgreSQL's planner picks by table size
def test_the_claim_walks_an_index_whatever_the_backlog(db: Ledger) -> None:
    # The query plan, not a timing: both halves of the claim read a partial index, never the table.
    plans = [
        " ".join(row[3] for row in db.db.execute("EXPLAIN QUERY PLAN " + query, {"now": 0, "limit": 1}).fetchall())
        for query in (_EXPIRED_LEASES, _DUE)
    ]
    assert "USING INDEX deliveries_leased" in plans[0] and "USING INDEX deliveries_waiting" in plans[1]
    assert not any("SCAN d" in plan and "USING" not in plan.split("SCAN d")[1][:30] for plan in plans)


def test_concurrent_intake_writes_share_transactions_and_stay_exactly_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    start = threading.Barrier(40)

    def accept(n: int) -> tuple[str, bool]:
        start.wait()
        key = "same-event" if n % 4 == 0 else f"event-{n}"  # a sender retrying while its first try is in flight
        return ledger.accept(
            source="typeform", idem_key=key, body=b"{}", content_type="application/json", headers={}, config_version="v"
        )

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(accept, range(40)))
    same = {results[n] for n in range(0, 40, 4)}
    assert len({delivery_id for delivery_id, _ in same}) == 1
    assert sum(created for _, created in same) == 1
    assert sum(created for _, created in results) == 31
    assert ledger.counts() == {"received": 31}


def _groups(path: Path) -> tuple[IntakeFirst, GroupCommit, GroupCommit]:
    """Intake's group and a worker's (a long defer: a busy CI box)."""
    Ledger(path)
    first = IntakeFirst(path.with_name(path.name + ".test-first"))
    intake = GroupCommit(path, busy_timeout=30, intake_first=first)
    # The worker asks for the lock more often than intake here: only its deference lets intake first.
    worker = GroupCommit(path, busy_timeout=30, poll=0.0002, intake_first=first, defers=True, max_defer=30)
    return first, intake, worker


def _note(who: str) -> object:
    return lambda conn: conn.execute("INSERT INTO identities VALUES ('email', ?, 'c', 0)", (f"{who}@x.example",))


def _written(path: Path) -> list[str]:
    rows = sqlite3.connect(path).execute("SELECT value FROM identities ORDER BY rowid").fetchall()
    return [value.split("@")[0] for (value,) in rows]


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_worker_does_not_take_the_lock_while_intake_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    first, intake, worker = _groups(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # someone else holds the lock: intake waits for it
    with ThreadPoolExecutor(2) as pool:
        from_intake = pool.submit(intake.run, _note("intake"))
        _until(first.anyone_waiting)
        from_worker = pool.submit(worker.run, _note("worker"))
        time.sleep(0.05)  # the worker is asking too (or deferring) when the lock comes free
        other.execute("COMMIT")
        from_intake.result(timeout=30), from_worker.result(timeout=30)
    assert _written(path) == ["intake", "worker"]
    assert not first.anyone_waiting()


def test_a_worker_batch_commits_what_it_has_and_lets_waiting_intake_in(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    first, intake, worker = _groups(path)
    with ThreadPoolExecutor(1) as pool:
        futures = []

        def then_intake_arrives(conn: sqlite3.Connection) -> None:
            _note("w0")(conn)  # type: ignore[operator]
            futures.append(pool.submit(intake.run, _note("intake")))
            _until(first.anyone_waiting)  # intake is now waiting behind this batch

        # The batch a worker's leader forms from the checkpoints queued behind it.
        outcomes = worker._write([then_intake_arrives, _note("w1"), _note("w2")])
        futures[0].result(timeout=30)
    assert len(outcomes) == 3
    assert _written(path) == ["w0", "intake", "w1", "w2"]


def test_a_worker_batch_commits_once_it_has_held_the_lock_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path)
    worker = GroupCommit(path, busy_timeout=30, defers=True, max_hold=0.005)
    seen: list[list[str]] = []

    def slow(conn: sqlite3.Connection) -> None:
        _note("w0")(conn)  # type: ignore[operator]
        time.sleep(0.02)  # a preempted leader: the transaction is now older than max_hold

    def look(conn: sqlite3.Connection) -> None:
        seen.append(_written(path))  # another connection sees only what is committed
        _note("w1")(conn)  # type: ignore[operator]

    # Nobody said they wait, yet the first write commits before the second one runs.
    outcomes = worker._write([slow, look])
    assert len(outcomes) == 2
    assert seen == [["w0"]]
    assert _written(path) == ["w0", "w1"]


def test_a_stale_intake_slot_does_not_hold_the_worker_back(tmp_path: Path) -> None:
    first, _, _ = _groups(tmp_path / "l.db")
    with first.waiting():
        assert first.anyone_waiting()
    assert not first.anyone_waiting()
    # A slot left behind by an intake process killed while waiting ages out.
    struct.pack_into("d", first._map, 8, time.monotonic() - IntakeFirst.STALE_SECONDS - 1)
    assert not first.anyone_waiting()


def test_one_failing_write_in_a_group_fails_only_its_own_request(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.db")
    group = GroupCommit(tmp_path / "l.db", busy_timeout=5)
    start = threading.Barrier(12)

    def write(n: int) -> str:
        def work(conn: sqlite3.Connection) -> str:
            if n == 5:
                conn.execute("INSERT INTO no_such_table VALUES (1)")
            conn.execute("INSERT INTO identities VALUES ('email', ?, ?, 0)", (f"p{n}@x.example", str(n)))
            return str(n)

        start.wait()
        try:
            return str(group.run(work))
        except sqlite3.OperationalError:
            return "failed"

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(write, range(12)))
    assert results == [str(n) if n != 5 else "failed" for n in range(12)]
    stored = sqlite3.connect(tmp_path / "l.db").execute("SELECT count(*) FROM identities").fetchone()[0]
    assert stored == 11
