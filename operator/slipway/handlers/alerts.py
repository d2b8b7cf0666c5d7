"""kopf glue of alert-driven rollback: bind the alert intake to the Driver, run the poller."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from slipway.reconcilers.alert_intake import AlertIntake
from slipway.reconcilers.alert_poller import AlertPoller
from slipway.reconcilers.writeback import WriteBack


@kopf.on.startup()
async def start_alert_intake(memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Once the Driver (and the registry sync, if MLflow is configured) exist: act on alerts, poll Prometheus."""
    if "md_driver" not in memo or "alert_intake" not in memo:
        raise kopf.TemporaryError("waiting for the ModelDeployment driver", delay=0.1)
    settings = memo.settings
    if settings.mlflow_uri and "registry_sync" not in memo:
        raise kopf.TemporaryError("waiting for the registry sync", delay=0.1)
    sync = getattr(memo, "registry_sync", None)
    write_back = WriteBack(memo.kube, sync.registry if sync else None, sync.trigger if sync else None)
    memo.md_driver.write_back = write_back  # drains status.pendingWriteBacks after passes
    intake: AlertIntake = memo.alert_intake
    intake.bind(memo.md_driver, write_back)
    _start_poller(memo, intake, logger)


def _start_poller(memo: Any, intake: AlertIntake, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Warn about what is not configured; poll Prometheus' alerts when it is."""
    settings = memo.settings
    if not settings.alertmanager_token:
        logger.warning("no SLIPWAY_ALERTMANAGER_TOKEN: the Alertmanager webhook answers 503")
    if not settings.prometheus_url:
        logger.warning("no SLIPWAY_PROMETHEUS_URL: no fallback polling of Prometheus alerts")
        return
    poller = AlertPoller(settings.prometheus_url, settings.alert_poll_seconds, intake.handle)
    memo.alert_poller_task = asyncio.create_task(poller.run(), name="alert poller")


@kopf.on.cleanup()
async def stop_alert_poller(memo: Any, **_: Any) -> None:
    """Stop polling."""
    task: asyncio.Task[None] | None = getattr(memo, "alert_poller_task", None)
    if task is not None:
        task.cancel()
