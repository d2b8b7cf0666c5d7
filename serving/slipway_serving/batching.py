"""Dynamic batching: concurrent requests share one model call, bounded in size and wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic

import numpy as np

from .workers import R


@dataclass
class _Pending(Generic[R]):
    batch: np.ndarray
    future: asyncio.Future[R] = field(repr=False)


class DynamicBatcher(Generic[R]):
    """Collects requests into batches of at most ``max_batch_size`` instances.

    A batch is started by the first waiting request and closed when it is full or when
    ``max_latency`` seconds have passed since that request was taken; with ``max_latency=0``
    it takes only what is already waiting (no added latency at low load; under load requests
    pile up while the previous batch runs, and go together). Given ``in_flight`` (the number
    of inference requests the server is handling), it waits only while more requests are in
    flight than the batch holds, so a lone request is never held back, and under load the
    batch fills with the requests already received. One batch runs at a time, through
    ``run`` (the model threads), never on the event loop; its result has one row per instance
    and each request gets its own rows. A request larger than ``max_batch_size`` runs alone.
    Inputs of one batch must share their per-instance shape and dtype (validation ensures it).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], Awaitable[R]],
        max_batch_size: int,
        max_latency: float,
        on_batch: Callable[[int], None] | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_latency < 0:
            raise ValueError("max_latency must be >= 0")
        self._run_batch = run
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency
        self._on_batch = on_batch
        self._in_flight = in_flight
        self._queue: asyncio.Queue[_Pending[R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: _Pending[R] | None = None

    async def submit(self, batch: np.ndarray) -> R:
        """Predict ``batch`` (``[n, ...]``) as part of a shared batch; returns its ``n`` rows."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(), name="slipway-batcher")
        assert self._queue is not None
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait(_Pending(batch, future))
        return await future

    async def close(self) -> None:
        """Stop the batching task; waiting requests are cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().future.cancel()

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect(self._queue, loop)
            await self._execute(items)

    async def _collect(self, queue: asyncio.Queue[_Pending[R]], loop: asyncio.AbstractEventLoop) -> list[_Pending[R]]:
        first = self._carry if self._carry is not None else await queue.get()
        self._carry = None
        items = [first]
        size = len(first.batch)
        deadline = loop.time() + self.max_latency
        while size < self.max_batch_size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if self._in_flight is not None:
                    # Wait only for requests the server already holds (being read, decoded or
                    # validated on this loop); none: the batch is complete.
                    if self._in_flight() <= len(items):
                        break
                    await asyncio.sleep(0)
                    continue
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(item.batch) > self.max_batch_size:
                self._carry = item
                break
            items.append(item)
            size += len(item.batch)
        return items

    async def _execute(self, items: list[_Pending[R]]) -> None:
        items = [i for i in items if not i.future.done()]
        if not items:
            return
        inputs = items[0].batch if len(items) == 1 else np.concatenate([i.batch for i in items])
        if self._on_batch is not None:
            self._on_batch(len(inputs))
        try:
            outputs = await self._run_batch(inputs)
            if len(outputs) != len(inputs):
                raise RuntimeError(f"the model returned {len(outputs)} rows for {len(inputs)} instances")
        except Exception as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in items:
            end = start + len(item.batch)
            if not item.future.done():
                item.future.set_result(outputs[start:end])
            start = end
