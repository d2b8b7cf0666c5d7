"""The fallback alert source: poll Prometheus' /api/v1/alerts and hand firing alerts to the intake.

For when no Alertmanager webhook is configured or Alertmanager is down: a matching alert then
rolls back at most one poll interval (plus one pass) after Prometheus marks it firing. Every
firing alert that names a deployment is handed on at every poll; the state machine makes the
repeats harmless (nothing is under watch once a deployment is rolling back), and an alert that
keeps firing still rolls back a rollout that starts later. An outage of Prometheus is logged
once, exported as ``slipway_alert_poll_up 0`` and counted — it never rolls anything back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import prometheus_client

from slipway.clients.alerts import AlertsUnavailable, firing_alerts
from slipway.rollout.alerts import Alert, target

from .alert_intake import AlertDeferred

log = logging.getLogger(__name__)
Fetch = Callable[[str, float], Awaitable[list[Alert]]]

POLL_UP = prometheus_client.Gauge(
    "slipway_alert_poll_up", "1 if the last poll of Prometheus' /api/v1/alerts answered, 0 if it failed."
)
POLL_ERRORS = prometheus_client.Counter(
    "slipway_alert_poll_errors_total", "Polls of Prometheus' /api/v1/alerts that failed (Prometheus down or erring)."
)


async def _fetch(url: str, timeout: float) -> list[Alert]:
    return await firing_alerts(url, timeout=timeout)


class AlertPoller:
    """Polls Prometheus every ``interval`` seconds and hands each firing alert to ``handle``."""

    def __init__(
        self, prometheus_url: str, interval: float, handle: Callable[[Alert], Awaitable[Any]], fetch: Fetch = _fetch
    ) -> None:
        self.url = prometheus_url
        self.interval = interval
        self.handle = handle
        self.fetch = fetch
        self.up: bool | None = None

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            started = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def poll(self) -> int:
        """One poll: returns how many alerts were handed on (0 when Prometheus did not answer)."""
        try:
            alerts = await self.fetch(self.url, min(5.0, max(self.interval, 1.0)))
        except AlertsUnavailable as exc:
            POLL_ERRORS.inc()
            POLL_UP.set(0)
            if self.up is not False:
                log.warning("alert fallback: Prometheus unavailable (nothing rolls back through it): %s", exc)
            self.up = False
            return 0
        if self.up is False:
            log.info("alert fallback: Prometheus answers again")
        self.up = True
        POLL_UP.set(1)
        handed = 0
        now = time.monotonic()
        for alert in alerts:
            if target(alert) is None:
                continue
            try:
                await self.handle(replace(alert, received=now))
                handed += 1
            except AlertDeferred as exc:  # the next poll sees it again
                log.debug("alert fallback: %s deferred: %s", alert.describe(), exc)
            except Exception as exc:  # one alert's trouble must not stop the others; the next poll retries
                log.warning("alert fallback: %s not handled: %s", alert.describe(), exc)
        return handed
