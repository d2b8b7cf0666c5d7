"""Operator start-up and shutdown: kopf settings, shared clients in the memo, the HTTP server."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from slipway.clients.applied import AppliedCache
from slipway.clients.kube import Kube
from slipway.clients.mlflow import Mlflow
from slipway.clients.watch_cache import KINDS, WatchCache
from slipway.receivers import alertmanager
from slipway.receivers.http import server
from slipway.reconcilers.alert_intake import AlertIntake
from slipway.settings import Settings

MLFLOW_THREADS = 6
"""Calls to MLflow at once, shared by the registry mirror and the TrainingRuns."""


class QuietSuccesses(logging.Filter):
    """Drop kopf's "Handler 'x' succeeded." (and "Timer …") lines: one per watch event per handler.

    Every handler is a watch-event or indexing handler now, so each event of each watched object
    logged a line per handler (about 20 lines per ModelDeployment brought up; 20,000 at 1,000).
    Failures and retries are kept, and the operator logs what a pass does on its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith(("Timer ", "Handler ")) and message.endswith(" succeeded."))


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Keep kopf's bookkeeping in annotations (status is ours alone) and start the HTTP server with its routes."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="slipway.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="slipway.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").addFilter(QuietSuccesses())
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    config = Settings.from_env()
    memo.settings = config
    memo.kube = Kube(applied=AppliedCache(config.reapply_seconds), cache=WatchCache(KINDS))
    # One MLflow client (its connections and threads) for the registry mirror and the TrainingRuns.
    memo.mlflow = Mlflow(config.mlflow_uri, max_workers=MLFLOW_THREADS) if config.mlflow_uri else None
    memo.alert_intake = AlertIntake()  # bound to the Driver by alerts.start_alert_intake; defers until then
    receiver = alertmanager.AlertmanagerReceiver(config.alertmanager_token, memo.alert_intake.handle)
    server.route("POST", alertmanager.PATH, receiver)
    port = await server.start(config.http_host, config.http_port)
    logger.info("Slipway operator started; webhooks and /metrics on port %s", port)


@kopf.on.cleanup()
async def shutdown(memo: Any, **_: Any) -> None:
    """Stop the HTTP server and the MLflow client's threads."""
    await server.stop()
    mlflow: Mlflow | None = getattr(memo, "mlflow", None)
    if mlflow is not None:
        mlflow.close()
