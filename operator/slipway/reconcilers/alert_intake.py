"""Where firing alerts go: to the in-process Driver, which runs the deployment's pass at once, the alert observed.

Both sources — Alertmanager's webhook (pushed) and the Prometheus poller (the fallback) — call
:meth:`AlertIntake.handle`. It finds the deployment the alert names (``namespace`` and
``modeldeployment`` labels) and, holding the deployment's key in the Driver's work queue (at once,
not behind other deployments' queued passes), runs the one reconcile pass with the alert as one
more observation (:meth:`.driver.Driver.alerted`): observe, ``machine.next``, write status, then
the traffic, then the children — the order of every pass. A pass with an alert skips what cannot
change a rollback (measuring, the A/B comparison). Then it posts the events, queues the next
pass (which ends the rollback in ``RolledBack``) and the registry write-back is drained.

The pass starts from the object as the watch last delivered it, without reading it: its status
write is then conditional on that resourceVersion. A newer object (409, nothing written), or an
alert that copy says to ignore, is tried again on the object read afresh ("nothing to do" is
never the answer on a copy that may be stale).

Why in-process and not an annotation that kopf picks up: the annotation costs a write, a
watch event and a queued pass before the route moves. bench/rollback_latency.py measures both.

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

from slipway.builders.router import traffic_version
from slipway.clients.kube import error_message
from slipway.rollout.alerts import Alert, target

from .driver import Driver, PassFailed
from .events import post_events
from .status import Event, Outcome
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
        self.bound_at = 0.0

    def bind(self, driver: Driver, write_back: WriteBack | None) -> None:
        """Start acting on alerts (before this, :meth:`handle` defers them)."""
        self.driver, self.write_back = driver, write_back
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
            body, outcome = await self._alert_pass(driver, ns, name, alert, now)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, PassFailed) and exc.__cause__ is not None else exc
            if _status_code(cause) in (401, 403, 404):  # not ours to see (e.g. another namespace): not a retry
                log.info("alert %s for %s/%s: cannot read the ModelDeployment: %s", alert.name, ns, name, cause)
                ALERTS.labels(alert.source, "not_found").inc()
                return "not_found"
            raise AlertDeferred(f"alert {alert.name} for {ns}/{name}: {error_message(cause)}") from exc
        if body is None or outcome is None:
            ALERTS.labels(alert.source, "not_found").inc()
            return "not_found"
        if outcome.ignored is not None:
            log.info("alert %s for %s/%s changes nothing: %s", alert.describe(), ns, name, outcome.ignored)
            ALERTS.labels(alert.source, "ignored").inc()
            if outcome.decision is not None:  # the pass ran (and wrote what it found to do): its events, its next
                driver.spawn(self._follow_up(driver, body, outcome), f"after alert {ns}/{name}")
            return "ignored"
        ALERTS.labels(alert.source, "rolled_back").inc()
        self._report(alert, body, outcome, received)
        driver.spawn(self._follow_up(driver, body, outcome), f"after alert {ns}/{name}")
        return "rolled_back"

    async def _alert_pass(
        self, driver: Driver, ns: str, name: str, alert: Alert, now: datetime
    ) -> tuple[dict[str, Any] | None, Outcome | None]:
        """Holding the object's key, the pass with the alert observed: on the cached copy first, else read afresh."""
        async with driver.lock(ns, name):
            latest = driver.cached_body(ns, name)
            if latest is not None and not latest["metadata"].get("deletionTimestamp"):
                try:
                    body, outcome = await driver.alerted(ns, name, alert, latest)
                except Exception as exc:
                    if _status_code(exc) != 409:
                        raise
                    log.debug("%s/%s changed since the watch saw it: reading it", ns, name)
                else:
                    if outcome is not None and outcome.ignored is None:
                        return body, outcome
            return await driver.alerted(ns, name, alert)

    def _report(self, alert: Alert, body: dict[str, Any], outcome: Outcome, received: float) -> None:
        """Log and export the latency from the alert's arrival to the writes; note it in the rollback's event."""
        ns, name = body["metadata"].get("namespace", ""), body["metadata"].get("name", "")
        assert outcome.decision is not None and outcome.started is not None
        read_ms = (outcome.started - received) * 1000
        status_ms = ((outcome.status_written or outcome.started) - received) * 1000
        if traffic_version(outcome.decision) is None or outcome.traffic_written is None:
            note = f"status written {status_ms:.0f} ms after the alert arrived; traffic moves once the version is ready"
        else:
            route_ms = (outcome.traffic_written - received) * 1000
            ALERT_TO_ROUTE.observe(route_ms / 1000)
            note = f"route written {route_ms:.0f} ms after the alert arrived"
            note += f" (read at {read_ms:.0f}, status at {status_ms:.0f})"
        log.info("%s/%s: alert %s via %s rolled back: %s", ns, name, alert.describe(), alert.source, note)
        outcome.events[:] = [
            Event(e.reason, f"{e.message} ({note})", e.type) if e.reason == "AlertFiring" else e for e in outcome.events
        ]

    async def _follow_up(self, driver: Driver, body: dict[str, Any], outcome: Outcome) -> None:
        """The pass's events, and the next pass (which ends the rollback and drains the registry write-back), queued."""
        ns, name = body["metadata"].get("namespace", ""), body["metadata"].get("name", "")
        driver.enqueue(ns, name)
        await post_events(driver.kube, body, outcome.events, outcome.status)
