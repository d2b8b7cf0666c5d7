"""Model threads: the event loop hands batches to dedicated threads and awaits the results."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]

_Job = tuple[np.ndarray, "asyncio.Future[np.ndarray]", asyncio.AbstractEventLoop]


class ModelWorkers:
    """``threads`` daemon threads that run ``predict`` on batches handed over by the loop.

    Cheaper per call than ``run_in_executor`` on a ``ThreadPoolExecutor``: the hand-over is a
    C-level ``SimpleQueue.put`` (no Python-level Condition for the loop thread to contend for
    with the worker), and the result comes back with one ``call_soon_threadsafe``.
    ``initializer`` runs first in each thread: torch's thread settings are per thread (OpenMP),
    and a thread that never set them measured 5x the mean forward latency of the main thread
    here (long tails from idle OpenMP workers).
    """

    def __init__(
        self,
        predict: PredictFn,
        threads: int = 1,
        name: str = "slipway-predict",
        initializer: Callable[[], None] | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("at least one model thread is needed")
        self._predict = predict
        self._initializer = initializer
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        self._started = False
        self._lock = threading.Lock()

    async def run(self, batch: np.ndarray) -> np.ndarray:
        """Predict ``batch`` in a model thread; the loop stays free meanwhile."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
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
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch, future, loop = job
            if future.cancelled():
                continue
            try:
                result = self._predict(batch)
            except BaseException as exc:  # handed to the awaiting request, which maps it
                _call_soon(loop, _set_exception, future, exc)
            else:
                _call_soon(loop, _set_result, future, result)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the model ran
        loop.call_soon_threadsafe(fn, *args)


def _set_result(future: asyncio.Future[np.ndarray], result: np.ndarray) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[np.ndarray], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
