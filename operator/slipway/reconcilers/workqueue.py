"""The operator's work queue: keys deduplicated, delayed and rate-limited requeues, a fixed pool of workers.

Modelled on client-go's workqueue as controller-runtime uses it (read for its behaviour, not
copied), in pure asyncio with no I/O:

- A key (``(namespace, name)`` of one kind) waiting in the queue is there once, however often it
  is added. A key added while a worker processes it is not handed to a second worker: it is
  marked dirty and queued again when the first is done, so the news is never lost and a key is
  never processed by two workers at once.
- :meth:`WorkQueue.add_after` adds a key after a delay; of several delayed adds of one key, the
  earliest wins (a later one is dropped, an earlier one replaces it).
- :meth:`WorkQueue.add_rate_limited` is the retry after a failure: per key, ``base_delay`` doubled
  on each failure up to ``max_delay`` (reset by :meth:`WorkQueue.forget` after a success), and at
  least the wait an overall token bucket imposes (``rate`` per second, ``burst``), so that many
  failing keys cannot retry in a storm.
- :meth:`WorkQueue.exclusive` holds a key outside the workers (the alert path): it waits only for
  a worker busy with that very key, never for the queue ahead of it, and while held no worker
  takes the key (news that arrives meanwhile is processed after).

The workers call ``work(key)``: it returns when to look at the key again (seconds, or None for
never, until news), or raises to be retried with back-off. Metrics are exported per queue
(``name`` label): depth, adds, retries, work and queue durations, as controller-runtime does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import prometheus_client

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

DEPTH = prometheus_client.Gauge("slipway_workqueue_depth", "Keys waiting in the work queue (not delayed).", ["name"])
ADDS = prometheus_client.Counter("slipway_workqueue_adds_total", "Keys added to the work queue.", ["name"])
RETRIES = prometheus_client.Counter(
    "slipway_workqueue_retries_total", "Keys requeued with back-off after a failed work item.", ["name"]
)
WORK = prometheus_client.Histogram(
    "slipway_workqueue_work_duration_seconds",
    "How long processing one key took.",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WAIT = prometheus_client.Histogram(
    "slipway_workqueue_queue_duration_seconds",
    "How long a key waited in the queue before a worker took it.",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class TokenBucket:
    """An overall rate bound: ``rate`` tokens a second, at most ``burst`` saved; :meth:`reserve` says the wait."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def reserve(self) -> float:
        """Take one token (borrowing from the future if none is left); the seconds until it is due."""
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class WorkQueue(Generic[K]):
    """Deduplicated keys, delayed adds, per-key back-off, ``workers`` workers running ``work``; see the module."""

    def __init__(
        self,
        name: str,
        work: Callable[[K], Awaitable[float | None]],
        *,
        workers: int = 4,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        rate: float = 10.0,
        burst: int = 100,
    ) -> None:
        self.name, self.work, self.workers = name, work, workers
        self.base_delay, self.max_delay = base_delay, max_delay
        self.bucket = TokenBucket(rate, burst)
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._added_at: dict[K, float] = {}
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._idle: deque[asyncio.Future[None]] = deque()
        self._holders: dict[K, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._depth, self._adds = DEPTH.labels(name), ADDS.labels(name)
        self._retries, self._work_time, self._wait_time = RETRIES.labels(name), WORK.labels(name), WAIT.labels(name)

    # adding

    def add(self, key: K) -> None:
        """Queue ``key`` now (once: a key already waiting stays where it is; one being processed comes again after)."""
        if key in self._dirty:
            return
        self._adds.inc()
        self._dirty.add(key)
        self._added_at[key] = time.monotonic()
        if key not in self._processing:
            self._enqueue(key)

    def _enqueue(self, key: K) -> None:
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._depth.set(len(self._queued))
        self._wake()

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds (an earlier pending add of the key wins)."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._waiting[key] = (when, loop.call_at(when, self._due, key))

    def _due(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        """Queue ``key`` again after its back-off (and the overall rate bound); returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = max(min(self.base_delay * 2.0**failures, self.max_delay), self.bucket.reserve())
        self._retries.inc()
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """``key`` succeeded: its next failure backs off from ``base_delay`` again."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        """How many times in a row ``key`` has failed."""
        return self._failures.get(key, 0)

    def discard(self, key: K) -> None:
        """The object is gone: drop its delayed add and its back-off (a queued or running key finishes)."""
        pending = self._waiting.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._queued)

    def delayed(self, key: K) -> float | None:
        """Seconds until the delayed add of ``key`` (None: none pending)."""
        pending = self._waiting.get(key)
        return None if pending is None else pending[0] - asyncio.get_running_loop().time()

    # taking

    def _wake(self) -> None:
        """Wake one idle worker (the key it takes may already be gone: it waits again)."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _take(self) -> K | None:
        while self._queue:
            key = self._queue.popleft()
            self._queued.discard(key)
            self._depth.set(len(self._queued))
            if key in self._processing:  # held by exclusive() since it was queued: it comes back when released
                continue
            self._dirty.discard(key)
            self._processing.add(key)
            added = self._added_at.pop(key, None)
            if added is not None:
                self._wait_time.observe(time.monotonic() - added)
            return key
        return None

    async def get(self) -> K:
        """The next key to process (it is then being processed until :meth:`done`)."""
        while (key := self._take()) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the wake-up on
                raise
        if self._queue:
            self._wake()  # more work than this worker: wake the next
        return key

    def done(self, key: K) -> None:
        """Processing ``key`` is over: hand it to a waiting :meth:`exclusive`, or queue it again if added meanwhile."""
        holders = self._holders.get(key)
        while holders:
            waiter = holders.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the key passes to it, still marked as being processed
                return
        self._holders.pop(key, None)
        self._processing.discard(key)
        if key in self._dirty:
            self._enqueue(key)

    def processing(self, key: K) -> bool:
        """Whether a worker (or :meth:`exclusive`) holds ``key`` now."""
        return key in self._processing

    @contextlib.asynccontextmanager
    async def exclusive(self, key: K) -> AsyncIterator[None]:
        """Hold ``key`` as a worker would: wait only for work on this key, and keep the workers off it meanwhile."""
        if key in self._processing:
            waiter = asyncio.get_running_loop().create_future()
            self._holders.setdefault(key, []).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.done(key)  # handed over, then cancelled: pass it on
                raise
        else:
            self._processing.add(key)
        try:
            yield
        finally:
            self.done(key)

    # workers

    def start(self) -> None:
        """Start the workers (on the running loop)."""
        for i in range(self.workers - len(self._tasks)):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{self.name} worker {i}"))

    async def stop(self) -> None:
        """Stop the workers and drop the delayed adds."""
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def process(self, key: K) -> None:
        """Run ``work`` on a key already taken; requeue it as its result (or failure) says."""
        started = time.monotonic()
        try:
            after = await self.work(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = self.add_rate_limited(key)
            log.info("%s %s failed (again in %.1fs): %s", self.name, key, delay, exc, exc_info=log.isEnabledFor(10))
        else:
            self.forget(key)
            if after is not None:
                self.add_after(key, after)
        finally:
            self._work_time.observe(time.monotonic() - started)

    async def _worker(self) -> None:
        while True:
            key = await self.get()
            try:
                await self.process(key)
            finally:
                self.done(key)
