"""Dynamic batching and the model threads: grouping, limits, waits, errors, off-loop execution."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from slipway_serving.batching import DynamicBatcher
from slipway_serving.workers import ModelWorkers


class Recorder:
    """A model that doubles its input and remembers the batch sizes and threads it ran on."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return batch * 2


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values])


async def test_workers_run_off_the_event_loop():
    model = Recorder()
    workers = ModelWorkers(model, threads=1)
    out = await workers.run(rows(1, 2))
    assert out.tolist() == [[2], [4]]
    assert model.threads == {"slipway-predict-0"}
    workers.close()


async def test_workers_keep_the_loop_responsive():
    workers = ModelWorkers(Recorder(delay=0.2))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await workers.run(rows(1))
    task.cancel()
    assert ticks >= 5  # the loop kept running (about 20 ticks) while the model slept for 0.2 s
    workers.close()


async def test_worker_errors_reach_the_caller():
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    workers = ModelWorkers(broken)
    with pytest.raises(RuntimeError, match="boom"):
        await workers.run(rows(1))
    assert (await ModelWorkers(Recorder()).run(rows(3))).tolist() == [[6]]


async def test_concurrent_requests_share_a_batch_and_get_their_own_rows():
    model = Recorder(delay=0.02)
    batcher = DynamicBatcher(ModelWorkers(model).run, max_batch_size=64, max_latency=0.0)
    results = await asyncio.gather(*(batcher.submit(rows(i, i + 0.5)) for i in range(10)))
    for i, result in enumerate(results):
        assert result.tolist() == [[2 * i], [2 * i + 1]]
    assert sum(model.sizes) == 20
    assert max(model.sizes) > 2  # while the first batch ran, the rest queued and went together
    await batcher.close()


async def test_batches_never_exceed_the_maximum_and_carry_over():
    model = Recorder(delay=0.01)
    batcher = DynamicBatcher(ModelWorkers(model).run, max_batch_size=5, max_latency=0.05)
    results = await asyncio.gather(*(batcher.submit(rows(i, i)) for i in range(7)))
    assert [r.tolist() for r in results] == [[[2 * i], [2 * i]] for i in range(7)]
    assert max(model.sizes) <= 5 and sum(model.sizes) == 14
    await batcher.close()


async def test_a_request_larger_than_the_maximum_runs_alone():
    model = Recorder()
    batcher = DynamicBatcher(ModelWorkers(model).run, max_batch_size=4, max_latency=0.0)
    out = await batcher.submit(np.zeros((10, 1)))
    assert out.shape == (10, 1) and model.sizes == [10]
    await batcher.close()


async def test_max_latency_holds_a_batch_open_for_late_requests():
    model = Recorder()
    batcher = DynamicBatcher(ModelWorkers(model).run, max_batch_size=8, max_latency=0.2)

    async def late(value: float) -> np.ndarray:
        await asyncio.sleep(0.02)
        return await batcher.submit(rows(value))

    await asyncio.gather(batcher.submit(rows(1)), late(2), late(3))
    assert model.sizes == [3]
    await batcher.close()


async def test_in_flight_hint_waits_only_for_requests_the_server_holds():
    model = Recorder()
    in_flight = 1
    batcher = DynamicBatcher(ModelWorkers(model).run, max_batch_size=8, max_latency=1.0, in_flight=lambda: in_flight)
    started = time.perf_counter()
    await batcher.submit(rows(1))  # alone in flight: no wait for the 1 s deadline
    assert time.perf_counter() - started < 0.5
    in_flight = 3

    async def late(value: float) -> np.ndarray:
        await asyncio.sleep(0.01)
        return await batcher.submit(rows(value))

    await asyncio.gather(batcher.submit(rows(1)), late(2), late(3))
    assert model.sizes == [1, 3]
    await batcher.close()


async def test_a_failing_batch_fails_every_request_in_it_and_the_batcher_goes_on():
    calls = 0

    def flaky(batch: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.02)
            raise RuntimeError("model exploded")
        return batch

    batcher = DynamicBatcher(ModelWorkers(flaky).run, max_batch_size=8, max_latency=0.0)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0.005)
    others = [asyncio.create_task(batcher.submit(rows(v))) for v in (2, 3)]
    with pytest.raises(RuntimeError, match="exploded"):
        await first
    assert [(await t).tolist() for t in others] == [[[2]], [[3]]]
    await batcher.close()


async def test_wrong_row_count_from_the_model_is_an_error():
    batcher = DynamicBatcher(ModelWorkers(lambda b: b[:1]).run, max_batch_size=8, max_latency=0)
    with pytest.raises(RuntimeError, match="1 rows for 2 instances"):
        await batcher.submit(rows(1, 2))
    await batcher.close()


def test_arguments_are_checked():
    async def run(batch: np.ndarray) -> np.ndarray:
        return batch

    with pytest.raises(ValueError):
        DynamicBatcher(run, max_batch_size=0, max_latency=0)
    with pytest.raises(ValueError):
        DynamicBatcher(run, max_batch_size=2, max_latency=-1)
    with pytest.raises(ValueError):
        ModelWorkers(Recorder(), threads=0)
