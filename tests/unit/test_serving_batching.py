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


class Gated(Recorder):
    """A model whose first call waits until the test has queued the requests behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(5)
        return super().__call__(batch)


async def queue_behind_a_busy_model(workers: ModelWorkers[np.ndarray], model: Gated, *batches: np.ndarray) -> list:
    """Run ``batches[0]``, queue the rest while the model holds it, then let the model go."""
    first = asyncio.create_task(workers.run(batches[0]))
    while not model.entered.is_set():
        await asyncio.sleep(0.001)
    rest = [asyncio.create_task(workers.run(b)) for b in batches[1:]]
    await asyncio.sleep(0.01)  # the tasks put their jobs on the queue
    model.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def test_model_threads_batch_what_queued_while_the_model_was_busy():
    model = Gated()
    workers = ModelWorkers(model, max_batch_size=8)
    results = await queue_behind_a_busy_model(workers, model, *(rows(i, i + 0.5) for i in range(6)))
    assert [r.tolist() for r in results] == [[[2 * i], [2 * i + 1]] for i in range(6)]
    # The first ran alone (nothing was queued yet); the other five queued behind it: 4 fit in 8.
    assert model.sizes == [2, 8, 2]
    workers.close()


async def test_a_lone_request_never_waits_for_a_batch():
    model = Recorder()
    workers = ModelWorkers(model, max_batch_size=64)
    started = time.perf_counter()
    for i in range(20):
        assert (await workers.run(rows(i))).tolist() == [[2 * i]]
    assert model.sizes == [1] * 20
    assert time.perf_counter() - started < 1.0
    workers.close()


async def test_model_threads_batch_only_instances_of_one_shape():
    model = Gated()
    workers = ModelWorkers(model, max_batch_size=16)
    results = await queue_behind_a_busy_model(workers, model, rows(0), rows(1), rows(2), np.ones((1, 3)), rows(3))
    assert [r.tolist() for r in results] == [[[0]], [[2]], [[4]], [[2, 2, 2]], [[6]]]
    assert model.sizes == [1, 2, 1, 1]  # [1, 2] together; the wide one alone; [3] after it
    workers.close()


async def test_a_failing_request_fails_alone_in_a_shared_call():
    model = Gated()

    def picky(batch: np.ndarray) -> np.ndarray:
        out = model(batch)
        if (batch == 13).any():
            raise ValueError("13 is unlucky")
        return out

    workers = ModelWorkers(picky, max_batch_size=8)
    done = await queue_behind_a_busy_model(workers, model, *(rows(v) for v in (1, 2, 13, 4)))
    assert [d.tolist() if isinstance(d, np.ndarray) else str(d) for d in done] == [[[2]], [[4]], "13 is unlucky", [[8]]]
    assert model.sizes == [1, 3, 1, 1, 1]  # [2, 13, 4] failed together, then each went alone
    workers.close()


async def test_model_threads_check_the_rows_of_a_shared_call():
    workers = ModelWorkers(lambda b: b[:1], max_batch_size=8)
    results = await asyncio.gather(*(workers.run(rows(v)) for v in (1, 2, 3)), return_exceptions=True)
    assert all(isinstance(r, np.ndarray) and len(r) == 1 for r in results)  # alone, each gets its one row
    with pytest.raises(ValueError):
        ModelWorkers(Recorder(), max_batch_size=0)
    workers.close()
