"""Deliver notifications in the background: a bounded queue, retries with back-off and jitter, never in a pass's way."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import Counter

from slipway.api.notifications import NotificationTarget, SecretKeySelector
from slipway.clients.kube import Kube, error_message, off_loop
from slipway.clients.webhooks import DeliveryFailed, Message, post, request
from slipway.settings import Settings

from .notifications import inconclusive_bound, message_for, notification_events, spec_notifications, targets_for
from .status import Event

log = logging.getLogger(__name__)
DELIVERIES = Counter(
    "slipway_notifications",
    "Notification deliveries by target type and outcome: delivered, retried (a try failed, another comes), "
    "failed (refused, or given up), dropped (the queue was full).",
    ["type", "outcome"],
)
WORKERS = 4
FIRST_BACKOFF_SECONDS = 1.0
TIMEOUT_SECONDS = 10.0
SEEN_LIMIT = 10_000


class SecretUnavailable(RuntimeError):
    """The Secret or its key is missing, or the operator may not read it (retried: it may be created)."""


@dataclass
class Delivery:
    """One message to one target, with its tries so far."""

    message: Message
    target: NotificationTarget
    tries: int = 0
    since: float = field(default_factory=time.monotonic)


class Notifier:
    """Turns events into deliveries and sends them from worker tasks; ``notify`` never waits and never raises."""

    def __init__(self, kube: Kube, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self._client = client
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._pending = 0  # queued or waiting for a retry
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._inconclusive: dict[str, tuple[tuple[Any, ...], float, bool]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self) -> None:
        """Start the worker tasks (on the running loop)."""
        logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry the URL: a credential here
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS)
        self._workers = [asyncio.create_task(self._work(), name=f"notifier-{i}") for i in range(WORKERS)]

    async def stop(self) -> None:
        """Stop the workers; what is still queued is lost (logged)."""
        for timer in self._timers:
            timer.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._pending:
            log.warning("notifier stopped with %d deliveries undelivered", self._pending)
        if self._client is not None:
            await self._client.aclose()

    @property
    def pending(self) -> int:
        """Deliveries queued or waiting for a retry."""
        return self._pending

    def notify(self, body: Mapping[str, Any], events: list[Event], status: Mapping[str, Any] | None = None) -> None:
        """Queue the notifications ``events`` on ``body`` call for (``status``: the status the pass wrote)."""
        kind = str(body.get("kind") or "")
        now_status = {**(body.get("status") or {}), **(status or {})}
        own = spec_notifications(body)
        events = [*events, *self._inconclusive_event(body, now_status, own)]
        for event in events:
            kinds = notification_events(kind, event.reason)
            if not kinds:
                continue
            targets = targets_for(self.settings.notifications, own, kinds)
            if not targets:
                continue
            message = message_for(body, event, kinds[0], now_status)
            for target in targets:
                self._enqueue(Delivery(message, target))

    def _inconclusive_event(self, body: Mapping[str, Any], status: Mapping[str, Any], own: Any) -> list[Event]:
        """AnalysisInconclusive once per step whose analysis has been inconclusive longer than the bound."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        analysis = status.get("analysis") or {}
        if body.get("kind") != "ModelDeployment" or analysis.get("phase") != "Inconclusive":
            self._inconclusive.pop(uid, None)
            return []
        key = (status.get("rolloutStartedAt"), status.get("currentStep"), analysis.get("startedAt"))
        seen = self._inconclusive.get(uid)
        if seen is None or seen[0] != key:
            seen = self._inconclusive[uid] = (key, time.monotonic(), False)
        elapsed = time.monotonic() - seen[1]
        if seen[2] or elapsed < inconclusive_bound(own, self.settings.notification_inconclusive_seconds):
            return []
        self._inconclusive[uid] = (key, seen[1], True)
        message = (
            f"analysis of v{status.get('canaryVersion')} inconclusive for {elapsed:.0f}s "
            f"({analysis.get('inconclusive', 0)} inconclusive measurements): no data or query errors"
        )
        return [Event("AnalysisInconclusive", message, "Warning")]

    def _enqueue(self, delivery: Delivery) -> None:
        key = (delivery.message.id, delivery.target.name)
        if key in self._seen:
            return  # the same occurrence again (queued, or delivered): at most one delivery per id and target
        if self._pending >= self.settings.notification_queue_size:
            DELIVERIES.labels(delivery.target.type, "dropped").inc()
            log.warning("notification queue full: %s to %s dropped", delivery.message.title, delivery.target.name)
            return
        self._seen[key] = None
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        self._pending += 1
        self._queue.put_nowait(delivery)

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._attempt(delivery)
            except Exception as exc:  # a bug of ours must not stop the worker
                log.exception("notification to %s: %s", delivery.target.name, exc)
                self._pending -= 1

    async def _attempt(self, delivery: Delivery) -> None:
        target, message = delivery.target, delivery.message
        delivery.tries += 1
        try:
            url = (await self._secret(message.namespace, target.url_secret_ref)).decode().strip()
            key = (
                await self._secret(message.namespace, target.signing_secret_ref) if target.signing_secret_ref else None
            )
            body, headers = request(target.type, message, int(time.time()), key)
            assert self._client is not None
            await post(self._client, url, body, headers)
        except (DeliveryFailed, SecretUnavailable) as exc:
            retry = not isinstance(exc, DeliveryFailed) or exc.retry
            self._failed(delivery, str(exc), retry=retry)
            return
        self._pending -= 1
        DELIVERIES.labels(target.type, "delivered").inc()
        log.info("notification %s %s to %s delivered (try %d)", message.id, message.title, target.name, delivery.tries)

    def _failed(self, delivery: Delivery, why: str, *, retry: bool) -> None:
        target, message = delivery.target, delivery.message
        if not retry or time.monotonic() - delivery.since > self.settings.notification_retry_seconds:
            self._pending -= 1
            DELIVERIES.labels(target.type, "failed").inc()
            log.warning(
                "notification %s to %s given up after %d tries: %s", message.id, target.name, delivery.tries, why
            )
            return
        DELIVERIES.labels(target.type, "retried").inc()
        delay = backoff(delivery.tries, self.settings.notification_max_backoff_seconds)
        log.info(
            "notification %s to %s failed (try %d, next in %.1fs): %s",
            message.id,
            target.name,
            delivery.tries,
            delay,
            why,
        )
        timer = asyncio.get_running_loop().call_later(delay, self._requeue, delivery)
        self._timers.add(timer)

    def _requeue(self, delivery: Delivery) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()}
        self._queue.put_nowait(delivery)

    async def _secret(self, namespace: str, ref: SecretKeySelector) -> bytes:
        """A key of a Secret in the object's own namespace."""
        try:
            secret = await off_loop(self.kube.get, "v1", "Secret", ref.name, namespace)
        except Exception as exc:
            raise SecretUnavailable(f"Secret {namespace}/{ref.name}: {error_message(exc)}") from exc
        data = (secret or {}).get("data") or {}
        if secret is None or ref.key not in data:
            raise SecretUnavailable(f"Secret {namespace}/{ref.name} has no key {ref.key}")
        return base64.b64decode(data[ref.key])


def backoff(tries: int, ceiling: float) -> float:
    """Exponential back-off with jitter: about 1, 2, 4 … seconds (each half to all of it), up to ``ceiling``."""
    full = min(ceiling, FIRST_BACKOFF_SECONDS * 2.0 ** (tries - 1))
    return full / 2 + random.uniform(0, full / 2)


_current: Notifier | None = None


def install(notifier: Notifier | None) -> None:
    """Make ``notifier`` the one ``notify`` hands events to (None: notifications off)."""
    global _current
    _current = notifier


def notify(body: Mapping[str, Any] | None, events: list[Event], status: Mapping[str, Any] | None = None) -> None:
    """Hand the events just posted on ``body`` to the notifier, if one runs; never raises into a pass."""
    if _current is None or body is None:
        return
    try:
        _current.notify(body, events, status)
    except Exception as exc:
        log.exception("notifications of %s: %s", (body.get("metadata") or {}).get("name"), exc)
