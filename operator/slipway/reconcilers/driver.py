"""The ModelDeployment Driver: runs the reconcile pass on each object from a work queue, one pass per object at a time.

kopf's handlers only put objects in the queue (:meth:`Driver.enqueue`); the queue's workers run
:meth:`Driver.run`: read the object, run :func:`~.modeldeployment.reconcile` (which writes its
status once, if it changed, then the traffic and the children), clear a handled action
annotation, post the events, and ask for the next pass after the pass's ``requeue_after`` (or
RESYNC_SECONDS). An alert runs the same pass (:meth:`Driver.alerted`) at once, holding the
object's key (:meth:`Driver.lock`), not behind other objects' queued passes. A pass that raises is recorded in a
``ReconcileError`` condition and retried with the queue's back-off. Registry write-backs owed
after a rollback are drained in the background, holding the object's key while they write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from slipway.builders.names import ACTION_ANNOTATION
from slipway.clients.kube import KUBE_ERRORS, Kube, error_message, off_loop
from slipway.clients.prometheus import Prometheus
from slipway.rollout.alerts import Alert
from slipway.storage_uris import DEFAULT_PREFIXES
from slipway.tenancy import Tenancy

from . import rollout_metrics
from .events import post_events
from .modeldeployment import GROUP_VERSION, failed, reconcile
from .status import Outcome, status_changed
from .workqueue import WorkQueue
from .writeback import PENDING, WriteBack

log = logging.getLogger(__name__)
RESYNC_SECONDS = 30.0
"""With nothing asked sooner, the wait before the next pass on an object (a resync)."""
RETRY_SECONDS = (1.0, 60.0)
"""After a failed pass, the wait before the next: the first, doubled on each failure up to the last (the work
queue's back-off); reset by a pass that works."""
WORKERS = 8
"""Passes on different ModelDeployments at once by default (the work queue's workers; one pass per object at a time;
``SLIPWAY_WORKERS``)."""
Key = tuple[str, str]
T = TypeVar("T")


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status the API server answered with, if that is what ``exc`` is."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class PassFailed(Exception):
    """A pass raised: its error is recorded on the object (``outcome``, if it could be written); back off."""

    def __init__(self, body: dict[str, Any] | None, outcome: Outcome | None, cause: Exception) -> None:
        super().__init__(error_message(cause))
        self.body, self.outcome = body, outcome


class Driver:
    """Runs passes for each ModelDeployment, one at a time per object, from its work queue.

    kopf's handlers (changes, child news, ModelVersion moves) only :meth:`enqueue`; the queue's
    workers run :meth:`run`, which asks for the next pass after the pass's ``requeue_after`` (or
    RESYNC_SECONDS), and backs off after a failure. Each pass re-reads the object, so it always
    starts from the status the previous pass wrote, writes status once (only if it changed),
    then clears a handled action annotation. Work outside the queue on one object (an alert, a
    registry write-back's status update) holds the object's key in the queue (:meth:`lock`).
    """

    def __init__(
        self,
        kube: Kube,
        prometheus_url: str,
        tenancy: Tenancy | None = None,
        storage_prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
        workers: int = WORKERS,
    ) -> None:
        self.kube = kube
        self.prom = Prometheus(prometheus_url)
        self.tenancy = tenancy or Tenancy()
        self.storage_prefixes = storage_prefixes
        self.write_back: WriteBack | None = None
        self.queue: WorkQueue[Key] = WorkQueue(
            "modeldeployment", self.run, workers=workers, base_delay=RETRY_SECONDS[0], max_delay=RETRY_SECONDS[-1]
        )
        self._draining: set[Key] = set()
        # One thread per worker, plus one for an alert's pass (it holds its key outside the workers):
        # a pass never waits for a thread, in a pool no other work of the process queues in.
        self._threads = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="pass")
        self._watched: set[Key] = set()
        self._seen: dict[Key, str] = {}
        self._background: set[asyncio.Task[None]] = set()

    def watch(self, namespace: str, name: str) -> None:
        """Note an object kopf handed us (it is in a namespace this operator watches)."""
        self._watched.add((namespace, name))

    def noticed(self, namespace: str, name: str, revision: str) -> bool:
        """Note the object as a watch event delivered it; True if what a pass acts on is new (first sight or a change).

        ``revision`` digests what a pass acts on, the object without its status (the handler's
        ``acted_on``): events of the operator's own status writes carry the same one and make no pass.
        """
        key = (namespace, name)
        self._watched.add(key)
        if self._seen.get(key) == revision:
            return False
        self._seen[key] = revision
        return True

    def watches(self, namespace: str, name: str) -> bool:
        """Whether kopf has handed us this object: alerts about any other are not ours to act on."""
        return (namespace, name) in self._watched

    def enqueue(self, namespace: str, name: str) -> None:
        """News of the object (a change, a child's, its model's): a pass soon (bursts coalesce into one pass)."""
        self.queue.add((namespace, name))

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run follow-up work (a write-back) in the background, keeping a reference until it ends."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def lock(self, namespace: str, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the object's key in the work queue: no pass runs on it meanwhile (waits for one that runs)."""
        return self.queue.exclusive((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: stop tracking it (its children's deletion by the garbage collector is no news).

        Its delayed pass and back-off go too, and its metric series.
        """
        key = (namespace, name)
        self.queue.discard(key)
        self._watched.discard(key)
        self._seen.pop(key, None)
        rollout_metrics.forget(namespace, name)

    async def run(self, key: Key) -> float | None:
        """The work queue's work: one pass, its events posted; the seconds until the next (raises: back off)."""
        namespace, name = key
        try:
            body, outcome = await self._drive(namespace, name)
        except PassFailed as exc:
            if exc.body is not None and exc.outcome is not None:
                await post_events(self.kube, exc.body, exc.outcome.events, exc.outcome.status)
            raise
        if body is None or outcome is None:
            return None
        await post_events(self.kube, body, outcome.events, outcome.status)
        return outcome.requeue_after if outcome.requeue_after is not None else RESYNC_SECONDS

    async def drive(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, Outcome | None]:
        """Run one pass on the current object now; returns the object and the outcome (None if it is gone).

        The caller holds the object (a queue worker, or :meth:`lock`). A pass that raises has its
        error in a ``ReconcileError`` condition, and that outcome is returned.
        """
        try:
            return await self._drive(namespace, name)
        except PassFailed as exc:
            return exc.body, exc.outcome

    async def alerted(
        self, namespace: str, name: str, alert: Alert, body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, Outcome | None]:
        """The same pass, with a firing alert observed; the caller holds the object (:meth:`lock`).

        ``body``: the object as the watch last delivered it, not read now (its status write is
        then conditional on its resourceVersion); None: read it. Raises :class:`PassFailed`
        (the error recorded on the object, as for any pass) for the caller to answer.
        """
        return await self._drive(namespace, name, alert, body, fresh=body is None)

    async def _drive(
        self,
        namespace: str,
        name: str,
        alert: Alert | None = None,
        unread: dict[str, Any] | None = None,
        *,
        fresh: bool = False,
    ) -> tuple[dict[str, Any] | None, Outcome | None]:
        body: dict[str, Any] | None = unread
        try:
            if body is None:  # the watch cache's copy (never older than this process's writes), else read now
                read = self.kube.get if fresh else self.kube.observed_get
                body = await self._on_threads(read, GROUP_VERSION, "ModelDeployment", name, namespace)
            if self._gone(namespace, name, body) or body is None:
                return body, None
            return body, await self._pass(namespace, name, body, alert, unread is not None)
        except Exception as exc:
            if unread is not None and _status_of(exc) == 409:  # the watch's copy was stale: nothing written
                raise
            raise PassFailed(body, await self._failed(namespace, name, body, exc), exc) from exc

    def _gone(self, namespace: str, name: str, body: dict[str, Any] | None) -> bool:
        """Whether the object is gone (None) or going (then the Driver forgets it)."""
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return True
        return False

    def cached_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the watch cache holds it (None: not held, or the cache is not filled yet)."""
        cache = self.kube.cache
        return cache.get(GROUP_VERSION, "ModelDeployment", name, namespace) if self._cached() and cache else None

    def _cached(self) -> bool:
        """Whether a ModelDeployment read now comes from the watch cache (its initial listing is in)."""
        cache = self.kube.cache
        return cache is not None and cache.covers(GROUP_VERSION, "ModelDeployment")

    async def _pass(
        self, namespace: str, name: str, body: dict[str, Any], alert: Alert | None = None, unread: bool = False
    ) -> Outcome:
        """One pass on ``body``; ``unread``: an alert's guess from the watch cache, its status write conditional."""
        outcome = await self._on_threads(
            reconcile,
            self.kube,
            self.prom,
            body,
            tenancy=self.tenancy,
            storage_prefixes=self.storage_prefixes,
            alert=alert,
            if_unchanged=unread,
        )
        pending = outcome.status.get(PENDING, (body.get("status") or {}).get(PENDING))
        if pending:
            self.drain_write_backs(namespace, name)
        handled = outcome.ignored is None or (outcome.decision is not None and not unread)  # else nothing was done
        if handled and ACTION_ANNOTATION in ((body["metadata"].get("annotations")) or {}):
            patch = {"metadata": {"annotations": {ACTION_ANNOTATION: None}}}
            await off_loop(self.kube.merge_patch, GROUP_VERSION, "ModelDeployment", name, namespace, patch)
        return outcome

    async def _on_threads(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking part of a pass on the passes' own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    def drain_write_backs(self, namespace: str, name: str) -> None:
        """Work off the object's pending MLflow write-backs in the background (one drain per object at a time)."""
        key = (namespace, name)
        if self.write_back is None or key in self._draining:
            return
        self._draining.add(key)
        self.spawn(self._drain(namespace, name), f"write-backs {namespace}/{name}")

    async def _drain(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        assert self.write_back is not None
        try:
            wait = await self.write_back.drain(functools.partial(self._locked_status_update, namespace, name))
        except Exception as exc:  # the next pass starts another drain
            log.warning("write-backs of %s/%s: %s", namespace, name, error_message(exc), exc_info=True)
            wait = RESYNC_SECONDS
        finally:
            self._draining.discard(key)
        if wait is not None and key in self._watched:  # the next pass (which drains again) no later than the retry
            self.queue.add_after(key, max(wait, 0.5))

    async def _locked_status_update(
        self, namespace: str, name: str, update: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
    ) -> None:
        """Holding the object's key: read it, and merge-patch its status with what ``update`` returns (if anything)."""
        async with self.lock(namespace, name):
            body = await off_loop(self.kube.get, GROUP_VERSION, "ModelDeployment", name, namespace)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            patch = await update(body)
            if patch is not None:
                await off_loop(self.kube.patch_status, GROUP_VERSION, "ModelDeployment", name, namespace, patch)

    async def _failed(self, namespace: str, name: str, body: dict[str, Any] | None, exc: Exception) -> Outcome | None:
        """Record the error on the object when it can be written (the API server may be the trouble)."""
        rollout_metrics.PASS_ERRORS.inc()
        log.warning(
            "pass on ModelDeployment %s/%s failed (retried with back-off): %s",
            namespace,
            name,
            error_message(exc),
            exc_info=not isinstance(exc, KUBE_ERRORS),  # a bug of ours gets its traceback
        )
        if body is None:
            return None
        body = self.cached_body(namespace, name) or body  # with what the failed pass wrote before it failed
        outcome = failed(dict(body.get("status") or {}), body, exc)
        try:
            await self._write_status(namespace, name, body, outcome)
        except Exception as write_exc:
            log.warning("could not record the error on %s/%s: %s", namespace, name, error_message(write_exc))
            return None
        return outcome

    async def _write_status(self, namespace: str, name: str, body: dict[str, Any], outcome: Outcome) -> bool:
        """Write the outcome's status if it changes the object's; True if it was written."""
        if not status_changed(body.get("status"), outcome.status):
            return False
        await off_loop(self.kube.patch_status, GROUP_VERSION, "ModelDeployment", name, namespace, outcome.status)
        return True
