"""Where firing alerts go: straight to the in-process Driver, which rolls the named ModelDeployment back at once.

Both sources — Alertmanager's webhook (pushed) and the Prometheus poller (the fallback) — call
:meth:`AlertIntake.handle`. It finds the deployment the alert names (``namespace`` and
``modeldeployment`` labels) and runs the alert pass (:mod:`.alert_rollback`) holding the deployment's
key in the Driver's work queue: read, match, decide, write status, write the route. Then it
posts the events and queues one full pass (which removes the failed version's children and ends
in ``RolledBack``) and writes the rollback back to MLflow.

Why in-process and not an annotation that kopf picks up: the annotation costs a write, a
watch event and a full reconcile pass (resolve, list children, re-apply each InferenceService
and HPA) before the route moves — kopf itself adds no delay (its time-based batching is gone:
``settings.batching.batch_window`` is deprecated and does nothing in kopf 1.45) — while the
alert pass costs one read and two writes. bench/rollback_latency.py measures both. Progress
still lives only in status: the alert pass writes status before traffic, like every pass.

Scope: the operator acts only on deployments kopf has handed it (the namespaces it watches).
An alert about any other deployment — another namespace, another operator's — changes
nothing, even when the operator's credentials could read and write it. Right after start-up,
before kopf has listed the watched objects, such an alert is deferred instead (the webhook
answers 503 and Alertmanager delivers it again; the poller sees it again on its next poll).

Idempotence: a repeated delivery finds the deployment already RollingBack or RolledBack, where
no version is under watch, and does nothing — the state machine, not a cache, is what makes a
second alert harmless (the webhook's ``Seen`` only saves the work).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

import prometheus_client

from slipway.clients.kube_fast import FastKube, KubeCallFailed, plural_path
from slipway.rollout.alerts import Alert, target

from . import rollout_metrics
from .alert_rollback import Reaction, react, react_fast
from .driver import Driver
from .events import post_events
from .modeldeployment import GROUP_VERSION
from .status import Event
from .writeback import WriteBack

log = logging.getLogger(__name__)
Result = Literal["rolled_back", "ignored", "no_target", "not_watched", "not_found"]
STARTUP_GRACE_SECONDS = 10.0
"""After binding, how long an alert about a deployment kopf has not handed over yet is deferred, not dropped."""

ALERTS = prometheus_client.Counter(
    "slipway_alerts_total",
    "Firing alerts handed to the operator, by source and result (rolled_back, ignored, no_target, not_watched, …).",
    ["source", "result"],
)
ALERT_TO_ROUTE = prometheus_client.Histogram(
    "slipway_alert_rollback_seconds",
    "From a firing alert reaching the operator to the traffic write that rolled back (route or InferenceService).",
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5),
)


class AlertDeferred(RuntimeError):
    """The alert could not be handled now (operator starting, API server unreachable): deliver it again."""


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class AlertIntake:
    """Hands firing alerts to the Driver; bound to it once the operator has started."""

    def __init__(self) -> None:
        self.driver: Driver | None = None
        self.write_back: WriteBack | None = None
        self.fast: FastKube | None = None
        self.bound_at = 0.0
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}

    def bind(self, driver: Driver, write_back: WriteBack | None, fast: FastKube | None = None) -> None:
        """Start acting on alerts (before this, :meth:`handle` defers them); ``fast``: the on-loop client."""
        self.driver, self.write_back, self.fast = driver, write_back, fast
        self.bound_at = time.monotonic()

    async def handle(self, alert: Alert) -> Result:
        """Roll back the deployment the alert names if it matches; raises AlertDeferred to be asked again."""
        received = alert.received if alert.received is not None else time.monotonic()
        where = target(alert)
        if where is None:
            ALERTS.labels(alert.source, "no_target").inc()
            return "no_target"
        driver = self.driver
        if driver is None:
            raise AlertDeferred("the operator is starting")
        ns, name = where
        if not driver.watches(ns, name):
            if time.monotonic() - self.bound_at < STARTUP_GRACE_SECONDS:
                raise AlertDeferred(f"{ns}/{name} not listed yet (the operator is starting)")
            log.debug("alert %s for %s/%s: not a deployment this operator watches", alert.name, ns, name)
            ALERTS.labels(alert.source, "not_watched").inc()
            return "not_watched"
        now = datetime.now(UTC)
        try:
            if self.fast is None:
                body, reaction = await driver.exclusive(ns, name, lambda b: react(driver.kube, b, alert, now))
            else:
                body, reaction = await self._react_fast(driver, self.fast, ns, name, alert, now)
        except Exception as exc:
            if _status_code(exc) in (401, 403, 404):  # not ours to see (e.g. another namespace): not a retry
                log.info("alert %s for %s/%s: cannot read the ModelDeployment: %s", alert.name, ns, name, exc)
                ALERTS.labels(alert.source, "not_found").inc()
                return "not_found"
            raise AlertDeferred(f"alert {alert.name} for {ns}/{name}: {exc}") from exc
        if body is None or reaction is None:
            ALERTS.labels(alert.source, "not_found").inc()
            return "not_found"
        if not reaction.rolled_back:
            log.info("alert %s for %s/%s changes nothing: %s", alert.describe(), ns, name, reaction.why)
            ALERTS.labels(alert.source, "ignored").inc()
            return "ignored"
        ALERTS.labels(alert.source, "rolled_back").inc()
        self._report(alert, body, reaction, received)
        driver.spawn(self._follow_up(driver, body, reaction, alert), f"after alert {ns}/{name}")
        return "rolled_back"

    def remember(self, obj: dict[str, Any], deleted: bool = False) -> None:
        """The ModelDeployment as the watch just delivered it: the alert path's first guess at the object."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if deleted:
            self._latest.pop(key, None)
        else:
            self._latest[key] = obj

    async def _react_fast(
        self, driver: Driver, fast: FastKube, ns: str, name: str, alert: Alert, now: datetime
    ) -> tuple[dict[str, Any] | None, Reaction | None]:
        """Under the object's lock, react on the event loop (no thread hop, no pool to queue in).

        First on the object as the watch last delivered it, without reading it: a rollback's
        status write is then conditional on that resourceVersion. Read afresh and decide again
        when the watch had not caught up (409), or when that object called for no rollback (the
        answer "nothing to do" is never given on an object that may be stale).
        """
        async with driver.lock(ns, name):
            latest = self._latest.get((ns, name))
            if latest is not None and not latest["metadata"].get("deletionTimestamp"):
                try:
                    reaction = await react_fast(fast, driver.kube, latest, alert, now, unread=True)
                except KubeCallFailed as exc:
                    if exc.status != 409:
                        raise
                    log.debug("%s/%s changed since the watch saw it: reading it", ns, name)
                else:
                    if reaction.rolled_back:
                        return latest, reaction
            body = await fast.get(plural_path(GROUP_VERSION, "modeldeployments", ns, name))
            if body is None or body["metadata"].get("deletionTimestamp"):
                return body, None
            return body, await react_fast(fast, driver.kube, body, alert, now)

    def _report(self, alert: Alert, body: dict[str, Any], reaction: Reaction, received: float) -> None:
        """Log and export the latency from the alert's arrival to the writes; note it in the rollback's event."""
        ns, name = body["metadata"].get("namespace", ""), body["metadata"].get("name", "")
        assert reaction.outcome is not None and reaction.decision is not None
        assert reaction.read is not None and reaction.status_written is not None
        read_ms, status_ms = (reaction.read - received) * 1000, (reaction.status_written - received) * 1000
        if reaction.route_written is None:
            note = f"status written {status_ms:.0f} ms after the alert arrived; traffic moves once the version is ready"
        else:
            route_ms = (reaction.route_written - received) * 1000
            ALERT_TO_ROUTE.observe(route_ms / 1000)
            note = f"route written {route_ms:.0f} ms after the alert arrived"
            note += f" (read at {read_ms:.0f}, status at {status_ms:.0f})"
        log.info("%s/%s: alert %s via %s rolled back: %s", ns, name, alert.describe(), alert.source, note)
        reaction.outcome.events[:] = [
            Event(e.reason, f"{e.message} ({note})", e.type) if e.reason == "AlertFiring" else e
            for e in reaction.outcome.events
        ]
        rollout_metrics.record(
            ns, name, rollout_metrics.strategy_of(body.get("spec") or {}), reaction.decision, alert.name
        )

    async def _follow_up(self, driver: Driver, body: dict[str, Any], reaction: Reaction, alert: Alert) -> None:
        """Events, and the full pass that finishes the rollback (and starts the registry write-back), queued."""
        assert reaction.outcome is not None
        ns, name = body["metadata"].get("namespace", ""), body["metadata"].get("name", "")
        driver.enqueue(ns, name)
        await post_events(driver.kube, body, reaction.outcome.events, reaction.outcome.status)
        # the registry write-back the rollback owes is in status.pendingWriteBacks: the pass drains it
