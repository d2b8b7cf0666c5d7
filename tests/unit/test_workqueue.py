"""The work queue: dedup, news during work, delays, back-off, rate bound, workers, exclusivity, metrics."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from slipway.reconcilers.workqueue import TokenBucket, WorkQueue

Key = tuple[str, str]
A, B, C = ("ns", "a"), ("ns", "b"), ("ns", "c")


class Recorder:
    """A ``work`` function that records the keys it processed, optionally slowly, failing, or asking for a requeue."""

    def __init__(self, seconds: float = 0.0, requeue: float | None = None, fail: int = 0) -> None:
        self.seen: list[Key] = []
        self.at: list[float] = []
        self.seconds, self.requeue, self.fail = seconds, requeue, fail
        self.running: set[Key] = set()
        self.most = 0
        self.overlap = False

    async def __call__(self, key: Key) -> float | None:
        if key in self.running:
            self.overlap = True
        self.running.add(key)
        self.most = max(self.most, len(self.running))
        self.seen.append(key)
        self.at.append(time.monotonic())
        try:
            await asyncio.sleep(self.seconds)
            if self.fail > 0:
                self.fail -= 1
                raise RuntimeError("the API server said no")
            return self.requeue
        finally:
            self.running.discard(key)


async def until(check: object, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def metric(name: str, queue: str) -> float:
    return REGISTRY.get_sample_value(name, {"name": queue}) or 0.0


async def test_a_waiting_key_is_queued_once():
    work = Recorder()
    q: WorkQueue[Key] = WorkQueue("t-dedup", work, workers=1)
    for _ in range(5):
        q.add(A)
    q.add(B)
    assert len(q) == 2
    q.start()
    await until(lambda: len(work.seen) == 2)
    await asyncio.sleep(0.05)
    assert work.seen == [A, B]
    await q.stop()


async def test_a_key_added_while_processed_is_processed_again_after_never_twice_at_once():
    work = Recorder(seconds=0.05)
    q: WorkQueue[Key] = WorkQueue("t-again", work, workers=4)
    q.start()
    q.add(A)
    await until(lambda: work.seen == [A])
    assert q.processing(A)
    q.add(A)  # news during the pass
    q.add(A)
    await asyncio.sleep(0.01)
    assert work.seen == [A], "not handed to a second worker"
    await until(lambda: len(work.seen) == 2)
    await asyncio.sleep(0.1)
    assert work.seen == [A, A] and not work.overlap, "once more after, not during, and not twice more"
    await q.stop()


async def test_add_after_waits_and_the_earliest_delayed_add_wins():
    work = Recorder()
    q: WorkQueue[Key] = WorkQueue("t-after", work, workers=1)
    q.start()
    start = time.monotonic()
    q.add_after(A, 0.3)
    q.add_after(A, 0.1)  # earlier: replaces
    q.add_after(A, 0.5)  # later: dropped
    delay = q.delayed(A)
    assert delay is not None and 0.05 < delay <= 0.1
    await until(lambda: work.seen)
    assert 0.09 <= work.at[0] - start < 0.25
    await asyncio.sleep(0.5)
    assert work.seen == [A], "one pass for the three delayed adds"
    await q.stop()


async def test_requeue_after_from_the_work_result():
    work = Recorder(requeue=0.05)
    q: WorkQueue[Key] = WorkQueue("t-requeue", work, workers=1)
    q.start()
    q.add(A)
    await until(lambda: len(work.seen) >= 3)
    gaps = [b - a for a, b in zip(work.at, work.at[1:], strict=False)]
    assert all(g >= 0.045 for g in gaps)
    await q.stop()


async def test_failures_back_off_exponentially_up_to_the_cap_and_forget_resets():
    q: WorkQueue[Key] = WorkQueue("t-backoff", Recorder(), base_delay=0.01, max_delay=0.05, rate=1e6, burst=10**6)
    delays = [q.add_rate_limited(A) for _ in range(5)]
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert q.failures(A) == 5 and q.failures(B) == 0
    assert q.add_rate_limited(B) == pytest.approx(0.01), "per key"
    q.forget(A)
    assert q.add_rate_limited(A) == pytest.approx(0.01)
    await q.stop()


async def test_a_failing_work_item_is_retried_with_back_off_then_forgotten_on_success():
    work = Recorder(fail=3)
    q: WorkQueue[Key] = WorkQueue("t-retry", work, workers=1, base_delay=0.02, max_delay=1.0)
    before = metric("slipway_workqueue_retries_total", "t-retry")
    q.start()
    q.add(A)
    await until(lambda: len(work.seen) == 4)
    gaps = [b - a for a, b in zip(work.at, work.at[1:], strict=False)]
    assert gaps[0] >= 0.019 and gaps[1] >= 0.039 and gaps[2] >= 0.079, gaps
    await asyncio.sleep(0.01)
    assert q.failures(A) == 0, "the success forgot the failures"
    assert metric("slipway_workqueue_retries_total", "t-retry") - before == 3
    await q.stop()


def test_the_token_bucket_bounds_the_overall_rate():
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0], "the burst"
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    now[0] = 10.0
    assert bucket.reserve() == 0.0, "refilled, up to the burst"


async def test_retries_of_many_keys_are_bounded_by_the_overall_rate():
    q: WorkQueue[Key] = WorkQueue("t-rate", Recorder(), base_delay=0.001, max_delay=0.001, rate=100.0, burst=2)
    delays = [q.add_rate_limited(("ns", str(i))) for i in range(6)]
    assert delays[:2] == pytest.approx([0.001, 0.001])
    assert delays[2:] == pytest.approx([0.01, 0.02, 0.03, 0.04], abs=0.002), "first-failure keys wait for the bucket"
    await q.stop()


async def test_a_fixed_number_of_workers():
    work = Recorder(seconds=0.05)
    q: WorkQueue[Key] = WorkQueue("t-workers", work, workers=3)
    q.start()
    for i in range(10):
        q.add(("ns", str(i)))
    await until(lambda: len(work.seen) == 10)
    assert work.most == 3
    await q.stop()


async def test_exclusive_waits_only_for_its_own_key_and_keeps_workers_off_it():
    work = Recorder(seconds=0.2)
    q: WorkQueue[Key] = WorkQueue("t-exclusive", work, workers=1)
    q.start()
    for key in (B, C, A):
        q.add(key)
    await until(lambda: work.seen == [B])
    start = time.monotonic()
    async with q.exclusive(A):  # A waits behind B and C in the queue: the holder does not
        assert time.monotonic() - start < 0.05
        assert q.processing(A)
        q.add(A)  # news while held
        await asyncio.sleep(0.5)
        assert A not in work.seen, "no worker takes a held key"
    await until(lambda: A in work.seen)
    await asyncio.sleep(0.3)
    assert work.seen.count(A) == 1, "the queued entry and the news are one pass, after the hold"
    await q.stop()


async def test_exclusive_waits_for_a_worker_on_the_same_key_and_goes_before_the_news():
    work = Recorder(seconds=0.1)
    q: WorkQueue[Key] = WorkQueue("t-exclusive-2", work, workers=2)
    q.start()
    q.add(A)
    await until(lambda: work.seen == [A])
    q.add(A)  # news during the worker's pass
    order: list[str] = []
    async with q.exclusive(A):
        order.append("held")
        assert not work.running, "the worker's pass is over"
        assert work.seen == [A], "handed to the holder before the news is processed"
    await until(lambda: len(work.seen) == 2)
    assert order == ["held"] and not work.overlap
    await q.stop()


async def test_metrics_depth_adds_and_work_duration():
    work = Recorder(seconds=0.01)
    q: WorkQueue[Key] = WorkQueue("t-metrics", work, workers=1)
    adds = metric("slipway_workqueue_adds_total", "t-metrics")
    q.add(A)
    q.add(A)
    q.add(B)
    assert metric("slipway_workqueue_depth", "t-metrics") == 2
    assert metric("slipway_workqueue_adds_total", "t-metrics") - adds == 2, "a deduplicated add is no add"
    q.start()
    await until(lambda: len(work.seen) == 2)
    await asyncio.sleep(0.05)
    assert metric("slipway_workqueue_depth", "t-metrics") == 0
    assert metric("slipway_workqueue_work_duration_seconds_count", "t-metrics") == 2
    assert metric("slipway_workqueue_work_duration_seconds_sum", "t-metrics") >= 0.02
    assert metric("slipway_workqueue_queue_duration_seconds_count", "t-metrics") == 2
    await q.stop()


async def test_discard_drops_a_delayed_add_and_the_back_off():
    work = Recorder()
    q: WorkQueue[Key] = WorkQueue("t-discard", work, workers=1)
    q.start()
    q.add_after(A, 0.05)
    q.add_rate_limited(B)
    q.discard(A)
    q.discard(B)
    await asyncio.sleep(1.2)
    assert work.seen == [] and q.failures(B) == 0
    await q.stop()
