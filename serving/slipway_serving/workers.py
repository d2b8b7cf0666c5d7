"""Model threads: the event loop hands batches to dedicated threads and awaits the results."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, Self, TypeVar

import numpy as np


class Rows(Protocol):
    """A result with one row per input instance, cut per request by slicing."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice, /) -> Self: ...


R = TypeVar("R", bound=Rows)

#: One request handed to the model threads: its instances, its future and the loop awaiting it.
_Job = tuple[np.ndarray, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class ModelWorkers(Generic[R]):
    """``threads`` daemon threads that run ``process`` on batches handed over by the loop.

    The hand-over is a C-level ``SimpleQueue.put`` and the answer comes back with one
    ``call_soon_threadsafe`` per model call (cheaper than ``run_in_executor``: no Python-level
    Condition for the loop to contend for with the worker). With ``max_batch_size > 1`` a thread
    that takes a request also takes the requests already queued behind it (same instance shape
    and dtype, up to ``max_batch_size`` instances in all) and runs them as one call, each request
    getting its own rows back: it never waits for more, so a lone request runs at once and under
    load the requests that queued while the model was busy go together. When a shared call
    fails, its requests are run again one by one, so a request fails only on its own account.
    ``process`` runs in the thread and must return one row per instance (it may do the
    per-batch work that needs no request: interpreting outputs, recording inputs).
    ``initializer`` runs first in each thread: torch's thread settings are per thread (OpenMP),
    and a thread that never set them measured 5x the mean forward latency of the main thread
    here (long tails from idle OpenMP workers).
    """

    def __init__(
        self,
        process: Callable[[np.ndarray], R],
        threads: int = 1,
        name: str = "slipway-predict",
        initializer: Callable[[], None] | None = None,
        max_batch_size: int = 1,
    ) -> None:
        if threads < 1:
            raise ValueError("at least one model thread is needed")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._process = process
        self._initializer = initializer
        self.max_batch_size = max_batch_size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        self._started = False
        self._lock = threading.Lock()

    async def run(self, batch: np.ndarray) -> R:
        """Predict ``batch`` (``[n, ...]``) in a model thread; the loop stays free meanwhile."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._jobs.put((batch, future, loop))
        return await future

    def close(self) -> None:
        """Let the threads finish the jobs already queued, then end."""
        for _ in self._threads:
            self._jobs.put(None)

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                for thread in self._threads:
                    thread.start()
                self._started = True

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        carry: _Job | None = None
        while True:
            job = carry if carry is not None else self._jobs.get()
            carry = None
            if job is None:
                return
            if job[1].cancelled():
                continue
            jobs = [job]
            if self.max_batch_size > 1:
                carry = self._gather(jobs)
            self._execute(jobs)

    def _gather(self, jobs: list[_Job]) -> _Job | None:
        """Add the compatible jobs already queued to ``jobs``; return one that has to wait."""
        first = jobs[0][0]
        size = len(first)
        while size < self.max_batch_size:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return None
            if job is None:
                self._jobs.put(None)  # stop after this batch
                return None
            batch = job[0]
            if job[1].cancelled():
                continue
            if (
                size + len(batch) > self.max_batch_size
                or batch.shape[1:] != first.shape[1:]
                or batch.dtype != first.dtype
                or job[2] is not jobs[0][2]
            ):
                return job
            jobs.append(job)
            size += len(batch)
        return None

    def _execute(self, jobs: list[_Job]) -> None:
        loop = jobs[0][2]
        futures = [job[1] for job in jobs]
        if len(jobs) > 1:
            inputs = np.concatenate([job[0] for job in jobs])
            try:
                whole = self._process(inputs)
                if len(whole) != len(inputs):
                    raise ValueError(f"{len(whole)} rows returned for {len(inputs)} instances")
            except Exception:
                # One request may be what the model cannot take: each goes alone, so only
                # the failing ones fail, as they would have without batching.
                for job in jobs:
                    self._execute([job])
                return
            results: list[Any] = []
            start = 0
            for job in jobs:
                end = start + len(job[0])
                results.append(whole[start:end])
                start = end
            _call_soon(loop, _deliver, futures, results)
            return
        try:
            result = self._process(jobs[0][0])
        except BaseException as exc:  # handed to the awaiting request, which maps it
            _call_soon(loop, _fail, futures, exc)
        else:
            _call_soon(loop, _deliver, futures, [result])


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the model ran
        loop.call_soon_threadsafe(fn, *args)


def _deliver(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for future, result in zip(futures, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
