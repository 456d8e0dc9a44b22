"""The leader/follower batcher behind group commit and batch calls: one flush serves many
threads, each gets its own outcome, and a failure never strands the threads queued behind."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bridge.batching import Batcher, Failed


def run_together(batcher: Batcher[int, int], items: range) -> list[object]:
    start = threading.Barrier(len(items))

    def submit(n: int) -> object:
        start.wait()
        try:
            return batcher.submit(n)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(submit, items))


def test_items_from_many_threads_share_flushes_and_each_gets_its_own_outcome() -> None:
    flushes: list[list[int]] = []

    def flush(items: list[int]) -> list[int | Failed]:
        flushes.append(items)
        return [Failed(ValueError(n)) if n == 3 else n * 10 for n in items]

    batcher = Batcher(flush, max_items=20, linger=lambda: 1.0)  # waits for company, up to 20
    outcomes = run_together(batcher, range(20))
    assert [o for o in outcomes if not isinstance(o, Exception)] == [n * 10 for n in range(20) if n != 3]
    assert isinstance(outcomes[3], ValueError)
    assert len(flushes) == 1 and sorted(flushes[0]) == list(range(20))


@pytest.mark.parametrize("broken", ["flush", "linger"])
def test_a_failing_flush_or_linger_strands_nobody(broken: str) -> None:
    calls = {"n": 0}

    def flush(items: list[int]) -> list[int | Failed]:
        calls["n"] += 1
        if broken == "flush" and calls["n"] == 1:
            raise RuntimeError("the batch call failed as a whole")
        return list(items)

    def linger() -> float:
        if broken == "linger":
            raise RuntimeError("no budget reading")
        return 0.05

    batcher = Batcher(flush, max_items=5, linger=linger)
    first = run_together(batcher, range(10))
    assert all(isinstance(o, (int, RuntimeError)) for o in first)
    # And it keeps serving afterwards.
    assert run_together(batcher, range(3)) == [0, 1, 2]


def test_a_wave_arriving_a_little_apart_shares_one_flush_and_a_lone_item_waits_only_the_gap() -> None:
    flushes: list[list[int]] = []

    def flush(items: list[int]) -> list[int | Failed]:
        flushes.append(items)
        return list(items)

    # Ten threads finishing the step before at about the same time: 20 ms apart here, well
    # inside a gap of 0.5 s. Without gathering, the first would go alone (nothing lingers).
    batcher = Batcher(flush, max_items=100, gather=(0.5, 30.0))

    def submit(n: int) -> int:
        time.sleep(0.02 * n)
        return batcher.submit(n)

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(submit, range(10))) == list(range(10))
    assert flushes == [list(range(10))]
    # Alone, with room for 100: it goes once the gap has passed, not after ``most`` (30 s).
    started = threading.Event()
    lone = threading.Thread(target=lambda: (batcher.submit(99), started.set()))
    lone.start()
    assert started.wait(15), "a lone item waited for the whole gather limit"
    lone.join()
    assert flushes[-1] == [99]
